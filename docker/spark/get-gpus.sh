#!/usr/bin/env bash
# Spark resource discovery script (spark.worker.resource.gpu.discoveryScript): prints the GPUs this container
# sees as {"name": "gpu", "addresses": ["0", "1"]}. The NVIDIA Container Toolkit mounts nvidia-smi into the
# container and numbers the GPUs reserved for it (compose `deploy.resources.reservations.devices`) from 0.
set -euo pipefail
indices=$(nvidia-smi --query-gpu=index --format=csv,noheader,nounits)
addresses=""
while IFS= read -r index; do
  index=${index//[[:space:]]/}
  [[ -n $index ]] || continue
  addresses+="${addresses:+, }\"${index}\""
done <<< "$indices"
printf '{"name": "gpu", "addresses": [%s]}\n' "$addresses"
