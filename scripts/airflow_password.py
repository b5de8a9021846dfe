"""Print the generated password of the Airflow `admin` user (simple auth manager) for the demo banner."""

import json
import os
from pathlib import Path

passwords = Path(os.environ["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"])
print(json.loads(passwords.read_text()).get("admin", "?") if passwords.exists() else "(see api-server log)")
