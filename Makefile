# molescope: `make setup`, `make demo`, `make test`. Targets source scripts/env.sh for a project-local
# environment (state in .state/, SeaweedFS on 127.0.0.1:8333, Airflow on 127.0.0.1:8080).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
ENV := . scripts/env.sh &&
DATA ?=
BATCH ?=
WEIGHTS ?=
#: auto: resnet50 where TensorFlow sees a GPU, else MobileNet-0.25 (scripts/demo.py says which and why).
BACKBONE ?= auto
PYTEST_ARGS ?=
QUICK_BASE ?=
BENCH_ARGS ?=
HVD_BENCH_ARGS ?=
SHARED ?= $(or $(MOLESCOPE_SHARED),../shared)
#: bench-distributed's inputs: the real HAM10000 images and the MobileNet-0.25 ImageNet weights.
HVD_DATA = --images-dir "$(SHARED)/data/ham10000" --weights "$(SHARED)/models/mobilenet_2_5_224_tf_no_top.h5"

.PHONY: help setup demo down status cluster cluster-down test test-fast test-live test-stress test-faults test-quick test-unit \
        test-dags test-browser test-integration lint format lock \
        bench-clean bench-featurize bench-commit bench-upsample bench-train bench-quality bench-daily bench-similar bench-drift bench-saliency clean-state

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/'

setup:  ## create .venv from requirements.lock, install molescope, fetch the S3A jars (idempotent)
	bash scripts/setup.sh

demo: setup  ## start S3 + Airflow, land a batch (DATA=/path/to/HAM10000 or a synthetic sample), run the DAG
	bash scripts/services.sh start s3
	bash scripts/services.sh start airflow
	$(ENV) python scripts/demo.py $(if $(DATA),--data "$(DATA)") $(if $(BATCH),--batch-id "$(BATCH)") \
	  $(if $(WEIGHTS),--weights "$(WEIGHTS)") --backbone "$(BACKBONE)"
	@$(ENV) echo "Airflow UI: http://localhost:$$AIRFLOW__API__PORT  (login: admin / $$(python scripts/airflow_password.py))"
	@echo "Stop everything 'make demo' started with: make down"

down:  ## stop exactly the processes `make demo` started
	bash scripts/services.sh stop

status:  ## show the embedded services
	bash scripts/services.sh status

cluster: setup  ## Spark standalone master + 2 workers, PostgreSQL, Redis + Celery, S3 on this machine (docs/cluster.md)
	bash scripts/cluster.sh up

cluster-down:  ## stop exactly the processes `make cluster` started
	bash scripts/cluster.sh down

# Fast tests (unit + DAG, no services) run first so a broken build fails in minutes; the live tests (S3
# server, spark-submit, Airflow, browser) after. Exit code 5 = this phase selected no test (PYTEST_ARGS
# named files of the other phase only).
# The fast tests run on FAST_WORKERS pytest-xdist workers (0: one process; docs/testing.md, "What the tests
# cost"). They are CPU-bound and each already uses two threads (local[2] Spark, TensorFlow): one worker per
# two cores, none on a 2-core machine (measured there: 2 workers 1,110 s against 1,173 s in one, for 22 %
# more CPU). A file stays on one worker, so its fixtures are set up once. With LIVE_PARALLEL=1 the live
# packages run side by side, one pytest session per group of whole packages (tests/live_groups.py). Off by
# default: on 2 cores the three groups drove the load average to 11-15 and were not yet measured to the end.
FAST_WORKERS ?= $(shell n=$$(nproc); [ "$$n" -gt 3 ] && echo $$((n / 2)) || echo 0)
LIVE_PARALLEL ?= 0
FAST_TESTS := -m "not integration and not browser and not cluster and not faults" -n $(FAST_WORKERS) --dist loadfile
# The live smoke (tests/integration/test_smoke.py) is test-quick's: the scenario asserts all it does and more.
LIVE_TESTS := -m "(integration or browser or cluster or faults) and not quick_only"
PYTEST := $(ENV) run_pytest() { python -m pytest "$$@" || [ $$? -eq 5 ]; } && run_pytest
LIVE_PYTEST := $(ENV) run_pytest() { python -m $(if $(filter 0,$(LIVE_PARALLEL)),pytest,tests.live_groups) "$$@" || [ $$? -eq 5 ]; } && run_pytest
STRESS_BURNERS ?= $(shell nproc)

test: setup  ## the whole suite: fast unit + DAG tests first, then the live ones (S3, Spark, Airflow, browser, cluster, faults)
	$(PYTEST) $(FAST_TESTS) $(PYTEST_ARGS)
	$(LIVE_PYTEST) $(LIVE_TESTS) $(PYTEST_ARGS)

test-fast:  ## unit + DAG tests only (no services)
	$(PYTEST) $(FAST_TESTS) $(PYTEST_ARGS)

test-live:  ## the live tests only: integration (S3 server, spark-submit, Airflow), browser, cluster, faults
	$(LIVE_PYTEST) $(LIVE_TESTS) $(PYTEST_ARGS)

test-stress: setup  ## the live tests while a busy loop per core (STRESS_BURNERS) loads the machine
	$(LIVE_PYTEST) $(LIVE_TESTS) --cpu-burn=$(STRESS_BURNERS) $(PYTEST_ARGS)

test-quick:  ## the inner loop (~5 min): unit tests of the packages changed since main (or QUICK_BASE), the DAG contract, a live smoke run of the DAG
	$(PYTEST) $$(python3 scripts/changed_tests.py $(QUICK_BASE)) tests/dags/test_contract.py tests/integration/test_smoke.py $(PYTEST_ARGS)

test-unit:  ## unit tests only
	$(ENV) python -m pytest tests/unit $(PYTEST_ARGS)

test-dags:  ## DagBag integrity tests
	$(ENV) python -m pytest tests/dags $(PYTEST_ARGS)

test-browser:  ## the trigger form in headless Chromium (needs Debian's chromium)
	$(ENV) python -m pytest tests/browser $(PYTEST_ARGS)

test-integration:  ## end-to-end tests (S3 server, spark-submit, Airflow)
	$(ENV) python -m pytest tests/integration $(PYTEST_ARGS)

test-faults:  ## fault injection: stages killed at pause points, full disk, denied writes, S3 outage
	$(ENV) python -m pytest tests/faults $(PYTEST_ARGS)

lint:  ## ruff (with Airflow's AIR rules) and the layer contracts (import-linter, [tool.importlinter] in pyproject.toml)
	$(ENV) ruff check . && ruff format --check . && PYTHONPATH=plugins lint-imports --no-cache

format:
	$(ENV) ruff format . && ruff check --fix .

lock:  ## re-resolve requirements.in into requirements.lock (needs network to PyPI)
	rm -rf .state/lock-venv && python3.11 -m venv .state/lock-venv
	.state/lock-venv/bin/pip install --quiet -r requirements.in
	(echo "# Fully pinned lock of requirements.in for Python 3.11 / linux x86_64. Regenerate with 'make lock'."; \
	 .state/lock-venv/bin/pip freeze --exclude-editable) > requirements.lock

bench-clean:  ## clean stage throughput on the full HAM10000 batch (../shared)
	$(ENV) python benchmarks/bench_clean.py $(BENCH_ARGS)

bench-featurize:  ## Spark featurization vs bare Keras (ResNet50, MobileNet-0.25)
	$(ENV) python benchmarks/bench_featurize.py $(BENCH_ARGS)

bench-commit:  ## featurize published by manifest (crash-safe) vs written straight into the partition, A/B
	$(ENV) python benchmarks/bench_commit.py $(BENCH_ARGS)

bench-upsample:  ## time and memory of each upsampling strategy
	$(ENV) python benchmarks/bench_upsample.py $(BENCH_ARGS)

.PHONY: bench-distributed
bench-distributed:  ## Horovod 1 vs 2 ranks vs one process: mlp on real features, finetune on 2,000 images
	mkdir -p bench-results
	$(ENV) python benchmarks/bench_distributed.py --workload mlp $(HVD_DATA) --json bench-results/distributed-mlp.json \
	  $(HVD_BENCH_ARGS)
	$(ENV) python benchmarks/bench_distributed.py --workload finetune --images 2000 --epochs 2 $(HVD_DATA) \
	  --json bench-results/distributed-finetune.json $(HVD_BENCH_ARGS)

bench-train:  ## fit time / memory of each model vs scikit-learn, the fine-tune's rate per recipe, bench-distributed
	$(ENV) python benchmarks/bench_train.py $(BENCH_ARGS)
	mkdir -p bench-results
	$(ENV) python benchmarks/bench_train.py --finetune-images 1024 $(HVD_DATA) --json bench-results/finetune-rate.json
	$(MAKE) --no-print-directory bench-distributed

bench-quality:  ## test-split quality, train time, scoring rate of every recipe (../shared; BENCH_ARGS="--limit 1500")
	$(ENV) python benchmarks/bench_quality.py $(BENCH_ARGS)

bench-daily:  ## the daily run: day 0 trained once, a 500-image batch lands, warm start vs full retrain (../shared)
	$(ENV) python benchmarks/bench_daily.py $(BENCH_ARGS)

bench-similar:  ## exact cosine "similar cases" search, 200 queries k=5: HAM10000 features vs 1M synthetic
	$(ENV) python benchmarks/bench_similar.py $(BENCH_ARGS)

bench-drift:  ## batch drift check on real HAM10000 images: false alarms, device changes, cost
	$(ENV) python benchmarks/bench_drift.py $(BENCH_ARGS)

bench-saliency:  ## Grad-CAM maps per card vs the featurize pass per scored image (MobileNet-0.25, ResNet50)
	$(ENV) python benchmarks/bench_saliency.py $(BENCH_ARGS)

clean-state: down  ## remove all local state (S3 data, Airflow DB, logs)
	rm -rf .state
