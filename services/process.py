"""A service or worker started as its own process group, logged to a file, stopped as a group."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    log_path: Path

    def stop(self) -> None:
        """SIGTERM to the whole group (servers fork workers), SIGKILL after 20 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def spawn(command: list[str], env: dict, log_path: Path, cwd: Path | None = None) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        return subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)


def wait_until_healthy(service: ServiceProcess, what: str, health_url: str, timeout: float) -> None:
    """Poll `health_url` until it answers 200; RuntimeError naming the log if the process dies or
    the time runs out (then the process is stopped)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(f"{what} exited with status {service.process.returncode}; see {service.log_path}")
        try:
            with urllib.request.urlopen(health_url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    service.stop()
    raise RuntimeError(f"{what} did not answer on {health_url} within {timeout:.0f} s; see {service.log_path}")
