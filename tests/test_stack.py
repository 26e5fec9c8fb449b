"""`python -m services.stack up` when its ports are taken: a busy default port moves to a free one
(and every printed or recorded URL follows it), a busy port the user fixed is one line naming the
port and the service, and nothing starts before the ports are checked."""

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, make_tiny_project
from services.ports import free_port, port_is_free
from services.stack import PORTS, PortError, plan_ports


@contextlib.contextmanager
def listening_on(port: int):
    """A listener on 127.0.0.1:`port` for the duration, as another program would hold it; if one
    already holds it, the port is busy anyway."""
    with socket.socket() as holder:
        try:
            holder.bind(("127.0.0.1", port))
            holder.listen()
        except OSError:
            assert not port_is_free(port)
        yield


def can_listen(port: int) -> bool:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))
        probe.listen()
    return True


def default_ports_taken():
    stack = contextlib.ExitStack()
    for _, default, _ in PORTS.values():
        stack.enter_context(listening_on(default))
    return stack


def test_a_busy_port_is_reported_and_another_free_one_is_chosen():
    port = free_port()
    assert port_is_free(port) and free_port(port) == port  # a free preferred port is kept
    with listening_on(port):
        assert not port_is_free(port)
        other = free_port(port)
        assert other != port and can_listen(other)
        assert free_port(avoid={other}) != other


def test_the_plan_moves_busy_default_ports_to_distinct_free_ones():
    with default_ports_taken():
        ports = plan_ports({})
        assert set(ports) == set(PORTS)
        for service, (_, default, _) in PORTS.items():
            assert ports[service] != default
            assert can_listen(ports[service])
        assert len(set(ports.values())) == len(ports)


def test_a_default_port_taken_by_a_port_the_user_set_moves():
    _, mlflow_default, _ = PORTS["mlflow"]
    if not port_is_free(mlflow_default):
        pytest.skip(f"port {mlflow_default} is busy here")
    ports = plan_ports({"AFD_PREFECT_PORT": str(mlflow_default)})
    assert ports["prefect"] == mlflow_default and ports["mlflow"] != mlflow_default


@pytest.mark.parametrize("service", list(PORTS))
def test_a_busy_port_the_user_set_is_an_error_naming_the_port_and_the_service(service):
    name, _, variable = PORTS[service]
    port = free_port()
    with listening_on(port), pytest.raises(PortError) as error:
        plan_ports({variable: str(port)})
    message = str(error.value)
    assert f"port {port} ({name})" in message and variable in message and "\n" not in message


def test_a_port_setting_that_is_not_a_port_is_refused():
    with pytest.raises(PortError, match=r"AFD_S3_PORT='80a' \(S3\) is not a port number"):
        plan_ports({"AFD_S3_PORT": "80a"})


def stack_env(tmp_path: Path, **extra: str) -> dict:
    """The environment of a user's shell without the stack's settings (ports, keys, servers)."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AFD_", "AWS_")) and key not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    home = tmp_path / "prefect-home"
    home.mkdir(exist_ok=True)
    return {**env, "PREFECT_HOME": str(home), **extra}


def stack(command: str, cwd: Path, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.stack", command], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_up_with_a_busy_fixed_port_fails_in_one_line_before_starting_anything(tmp_path):
    port = free_port()
    env = stack_env(tmp_path, PYTHONPATH=str(REPO), AFD_PREFECT_PORT=str(port))
    with listening_on(port):
        result = stack("up", tmp_path, env, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip() == (f"port {port} (Prefect UI) is in use by another process; "
                                     f"set AFD_PREFECT_PORT=<another port> or stop it")
    assert not (tmp_path / ".stack").exists()  # no credentials, no state, no server data


def answers(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.status


def test_up_moves_off_busy_default_ports_and_everything_points_at_the_ports_in_use(tmp_path):
    """The real stack in a copy of the project, with all three default ports held by another program."""
    project = make_tiny_project(tmp_path / "project")
    shutil.copytree(REPO / "services", project / "services", ignore=shutil.ignore_patterns("__pycache__"))
    env = stack_env(tmp_path)
    try:
        with default_ports_taken():
            result = stack("up", project, env)
        assert result.returncode == 0, result.stdout + result.stderr
        printed = dict(re.findall(r"^(S3 \(SeaweedFS\)|MLflow UI|Prefect UI):\s+(\S+)", result.stdout, re.M))
        s3, mlflow, prefect = printed["S3 (SeaweedFS)"], printed["MLflow UI"], printed["Prefect UI"]
        for (name, default, _), url in zip(PORTS.values(), (s3, mlflow, prefect)):
            assert url.startswith("http://127.0.0.1:") and not url.endswith(f":{default}")
            assert f"port {default} ({name}) is in use: using {url.rsplit(':', 1)[1]}" in result.stdout

        assert answers(f"{mlflow}/health") == 200
        assert answers(f"{prefect}/api/health") == 200
        with urllib.request.urlopen(f"{prefect}/ui-settings", timeout=5) as response:
            assert json.load(response)["api_url"] == f"{prefect}/api"  # the UI calls its own server
        import botocore.session

        keys = json.loads((project / ".stack" / "credentials.json").read_text())
        botocore.session.get_session().create_client(
            "s3", endpoint_url=s3, aws_access_key_id=keys["access_key"], aws_secret_access_key=keys["secret_key"],
            region_name="us-east-1").head_bucket(Bucket="afd")

        assert f"endpointurl = {s3}" in (project / ".dvc" / "config.local").read_text()
        assert f"export MLFLOW_TRACKING_URI={mlflow} PREFECT_API_URL={prefect}/api" in result.stdout
        assert f"export AWS_ENDPOINT_URL={s3}" in result.stdout
        state = json.loads(stack("status", project, env).stdout)
        assert (state["s3"], state["mlflow"], state["prefect"]) == (s3, mlflow, prefect)
    finally:
        stopped = stack("down", project, env, timeout=120)
    assert stopped.stdout.strip() == "stopped"
    assert all(port_is_free(int(url.rsplit(":", 1)[1])) for url in (s3, mlflow, prefect))
