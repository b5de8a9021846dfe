"""A SeaweedFS S3 server the fault tests can stop and start again on the same data folder and port (an outage
of a few seconds in the middle of a write), private to the test session."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scripts.seaweedfs_ports import weed_port_flags
from tests.helpers import free_port, s3_client, weed_mini

READY_TIMEOUT_S = 120
STOP_TIMEOUT_S = 30


@dataclass
class SeaweedFS:
    """`weed mini` on 127.0.0.1:<port> with its data in `folder`; `stop()` and `start()` keep both."""

    folder: Path
    bucket: str = "faults"
    port: int = field(default_factory=free_port)
    #: The other servers' ports, chosen once: a restart keeps every address the data folder knows.
    inner_ports: list[str] = field(default_factory=weed_port_flags)
    access_key: str = field(default_factory=lambda: f"faults{secrets.token_hex(4)}")
    secret_key: str = field(default_factory=lambda: secrets.token_hex(16))
    proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        """What a molescope process needs to reach this server (S3A and boto3 alike)."""
        return {
            "MOLESCOPE_S3_ENDPOINT": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
        }

    def client(self) -> Any:
        return s3_client(self.endpoint, self.access_key, self.secret_key, max_attempts=1)

    def start(self) -> None:
        log = (self.folder / "weed.log").open("a")
        self.proc = subprocess.Popen(
            weed_mini(self.folder, self.port, self.bucket, self.inner_ports),
            env={
                **os.environ,
                "AWS_ACCESS_KEY_ID": self.access_key,
                "AWS_SECRET_ACCESS_KEY": self.secret_key,
            },
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            try:
                self.client().head_bucket(Bucket=self.bucket)
                return
            except Exception:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"SeaweedFS did not become ready; see {self.folder / 'weed.log'}"
                    ) from None
                time.sleep(0.5)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL); the data folder stays."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        self.proc = None

    def upload(self, folder: Path, prefix: str) -> None:
        client = self.client()
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            client.upload_file(str(path), self.bucket, f"{prefix}/{path.relative_to(folder)}")
