"""A real MLflow tracking server on loopback: SQLite backend, artifacts proxied to S3
(`--artifacts-destination s3://... --serve-artifacts`), so clients need no S3 credentials."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .process import ServiceProcess, wait_until_healthy
from .s3 import S3Server


@dataclass
class MlflowServer(ServiceProcess):
    url: str = ""

    def wait_until_ready(self, timeout: float) -> None:
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
    server = MlflowServer.launch(command, env, log_path, url=f"http://127.0.0.1:{port}")
    server.wait_until_ready(timeout)
    return server

