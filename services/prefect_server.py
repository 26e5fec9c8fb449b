"""A real Prefect server and process workers on loopback, and the project's deployments.

The server keeps its state (SQLite) in the directory given; workers are `prefect worker start`
processes polling one work pool each: `afd-training` runs the retraining flow in the project
directory, `edge-devices` runs the on-device benchmark (on a real device, start that worker there).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .process import ServiceProcess, wait_until_healthy

TRAINING_POOL, DEVICE_POOL = "afd-training", "edge-devices"


@dataclass
class Worker(ServiceProcess):
    name: str = ""


@dataclass
class PrefectServer(ServiceProcess):
    url: str = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"

    def client_env(self) -> dict[str, str]:
        return {"PREFECT_API_URL": self.api_url}

    def wait_until_ready(self, timeout: float) -> None:
        wait_until_healthy(self, "prefect server", f"{self.api_url}/health", timeout)


def prefect_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def server_env(state_dir: Path) -> dict[str, str]:
    """Settings for a self-contained server: its own home and database, no telemetry."""
    return {
        "PREFECT_HOME": str(state_dir.resolve()),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{(state_dir / 'prefect.db').resolve()}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_SERVER_LOGGING_LEVEL": "WARNING",
    }


def start_prefect(state_dir: Path, port: int | None = None, timeout: float = 120.0) -> PrefectServer:
    """`prefect server start` on 127.0.0.1 (UI and API at the same URL), waiting until healthy."""
    state_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = state_dir / "prefect-server.log"
    command = prefect_command("server", "start", "--host", "127.0.0.1", "--port", str(port))
    url = f"http://127.0.0.1:{port}"
    # The UI asks its server which API to call: by default $PREFECT_API_URL or port 4200, not --port.
    env = {**os.environ, **server_env(state_dir), "PREFECT_API_URL": f"{url}/api",
           "PREFECT_UI_API_URL": f"{url}/api"}
    server = PrefectServer.launch(command, env, log_path, url=url)
    server.wait_until_ready(timeout)
    return server


def run_prefect(args: list[str], env: dict, cwd: Path | None = None) -> str:
    """A `prefect` CLI command (no prompts); RuntimeError with its output if it fails."""
    result = subprocess.run(prefect_command("--no-prompt", *args), env=env, cwd=cwd, capture_output=True,
                            text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result.stdout


def deploy_project(project_dir: Path, env: dict) -> None:
    """Create the two process work pools and apply prefect.yaml's deployments. The retraining
    deployment runs in `project_dir` (its pull step reads $AFD_PROJECT_DIR at deploy time)."""
    for pool in (TRAINING_POOL, DEVICE_POOL):
        run_prefect(["work-pool", "create", pool, "--type", "process", "--overwrite"], env)
    run_prefect(["deploy", "--all"], {**env, "AFD_PROJECT_DIR": str(project_dir.resolve())}, cwd=project_dir)


def start_worker(pool: str, env: dict, log_dir: Path, name: str | None = None, poll_seconds: int = 5,
                 cwd: Path | None = None) -> Worker:
    """A process worker polling `pool`; its flow runs inherit `env` (tracking URI, credentials)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"{pool}-worker"
    log_path = log_dir / f"{name}.log"
    command = prefect_command("worker", "start", "--pool", pool, "--type", "process", "--name", name)
    worker_env = {**os.environ, **env, "PREFECT_WORKER_QUERY_SECONDS": str(poll_seconds)}
    return Worker.launch(command, worker_env, log_path, cwd, name=name)
