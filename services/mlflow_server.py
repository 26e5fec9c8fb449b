"""A real MLflow tracking server on loopback: SQLite backend, artifacts proxied to S3
(`--artifacts-destination s3://... --serve-artifacts`), so clients need no S3 credentials."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .process import ServiceProcess, spawn, wait_until_healthy
from .s3 import S3Server, free_port


@dataclass
class MlflowServer(ServiceProcess):
    url: str = ""
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    def restart(self, timeout: float = 90.0) -> None:
        """Stop, then serve again from the same store, on the same port (as after a crash)."""
        self.stop()
        self.process = spawn(self.command, self.env, self.log_path)
        wait_until_healthy(self, "mlflow server", f"{self.url}/health", timeout)


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
    server = MlflowServer(spawn(command, env, log_path), log_path, url=f"http://127.0.0.1:{port}",
                          command=command, env=env)
    wait_until_healthy(server, "mlflow server", f"{server.url}/health", timeout)
    return server

