"""A service or worker started as its own process group, logged to a file, stopped as a group,
and restartable from the command that started it."""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class ServiceProcess:
    process: subprocess.Popen
    log_path: Path
    command: list[str] = field(default_factory=list)  # what started it, for restart()
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None

    @classmethod
    def launch(cls, command: list[str], env: dict[str, str], log_path: Path, cwd: Path | None = None, **fields):
        """Start `command` as its own process group, logged to `log_path` (not waiting for it)."""
        return cls(spawn(command, env, log_path, cwd), log_path, command, env, cwd, **fields)

    def stop(self) -> None:
        """SIGTERM to the whole group (servers fork workers), SIGKILL after 20 s."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()

    def restart(self, timeout: float = 90.0) -> None:
        """Stop, then run the same command again: same ports, same data (as after a crash)."""
        self.stop()
        self.process = spawn(self.command, self.env, self.log_path, self.cwd)
        self.wait_until_ready(timeout)

    def wait_until_ready(self, timeout: float) -> None:
        raise NotImplementedError(f"{type(self).__name__} has no readiness check")


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
