"""A real MLflow tracking server on loopback: SQLite backend, artifacts proxied to S3
(`--artifacts-destination s3://... --serve-artifacts`), so clients need no S3 credentials."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .s3 import S3Server, free_port


@dataclass
class MlflowServer:
    url: str
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)  # the server forks workers: stop the whole group
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def start_mlflow(state_dir: Path, s3: S3Server, port: int | None = None, timeout: float = 90.0) -> MlflowServer:
    """Start `mlflow server` with a SQLite store in `state_dir` and artifacts in s3://<bucket>/mlflow."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
        "--backend-store-uri", f"sqlite:///{(state_dir / 'mlflow.db').resolve()}",
        "--artifacts-destination", f"s3://{s3.bucket}/mlflow",
        "--serve-artifacts",
    ]
    env = {**os.environ, **s3.client_env()}
    log_path = state_dir / "mlflow.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = MlflowServer(f"http://127.0.0.1:{port}", process, log_path)
    _wait_until_healthy(server, timeout)
    return server


def _wait_until_healthy(server: MlflowServer, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with status {server.process.returncode}; see {server.log_path}")
        try:
            with urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer on {server.url} within {timeout:.0f} s; see {server.log_path}")
