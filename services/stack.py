"""One command for the local stack: `python -m services.stack up | down | status`.

`up` starts, on loopback:
- SeaweedFS (S3) and the MLflow tracking server (SQLite store, artifacts in S3), and configures the
  DVC remote's endpoint and credentials in `.dvc/config.local` (never committed);
- the Prefect server (UI and API on port 4200), the `afd-training` and `edge-devices` process work
  pools with prefect.yaml's deployments, a training worker (in this checkout) and a device worker
  (in .stack/device, as a device without a checkout would run it).
Ports: 8333 (S3), 5000 (MLflow), 4200 (Prefect), or a free one when that is taken; $AFD_S3_PORT,
$AFD_MLFLOW_PORT, $AFD_PREFECT_PORT fix one (a one-line error if it is taken). All are checked
before anything starts. It prints the URLs and the environment a shell needs; state (with the
URLs in use, for `status`) and logs live in `.stack/`.
Credentials: $AFD_S3_ACCESS_KEY / $AFD_S3_SECRET_KEY, else generated once into .stack/ (mode 600).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from pathlib import Path

from .mlflow_server import start_mlflow
from .ports import free_port, port_is_free
from .prefect_server import DEVICE_POOL, TRAINING_POOL, deploy_project, start_prefect, start_worker
from .s3 import start_s3

STATE_DIR = Path(".stack")
STATE_FILE = STATE_DIR / "state.json"
BUCKET = "afd"
DVC_REMOTE = "storage"
# service: (its name in messages, default port, the variable that fixes its port)
PORTS = {"s3": ("S3", 8333, "AFD_S3_PORT"), "mlflow": ("MLflow", 5000, "AFD_MLFLOW_PORT"),
         "prefect": ("Prefect UI", 4200, "AFD_PREFECT_PORT")}


class PortError(RuntimeError):
    """A port the stack cannot use; the message is one line naming the port and the service."""


def plan_ports(environ=os.environ) -> dict[str, int]:
    """Each service's port, chosen before anything starts: the one its variable sets (PortError if
    that one is taken), else its default, else (default taken) a free one."""
    ports: dict[str, int] = {}
    for service in sorted(PORTS, key=lambda service: not environ.get(PORTS[service][2])):  # set ones first
        name, default, variable = PORTS[service]
        wanted = environ.get(variable)
        if not wanted:
            ports[service] = free_port(default, avoid=ports.values())
            continue
        if not wanted.isdigit() or not 0 < int(wanted) < 65536:
            raise PortError(f"{variable}={wanted!r} ({name}) is not a port number")
        port = int(wanted)
        if port in ports.values() or not port_is_free(port):
            raise PortError(f"port {port} ({name}) is in use by another process; "
                            f"set {variable}=<another port> or stop it")
        ports[service] = port
    return ports


def credentials() -> tuple[str, str]:
    key, secret = os.environ.get("AFD_S3_ACCESS_KEY"), os.environ.get("AFD_S3_SECRET_KEY")
    if key and secret:
        return key, secret
    path = STATE_DIR / "credentials.json"
    if not path.exists():
        STATE_DIR.mkdir(exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(json.dumps({"access_key": "afd" + secrets.token_hex(6), "secret_key": secrets.token_hex(20)}))
    stored = json.loads(path.read_text())
    return stored["access_key"], stored["secret_key"]


def configure_dvc_remote(endpoint: str, key: str, secret: str) -> None:
    """The local stack's remote, entirely in the git-ignored .dvc/config.local: the committed
    .dvc/config stays as it is, and the keys never reach a tracked file."""
    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], check=True, capture_output=True)

    dvc("remote", "add", "--local", "--force", "--default", DVC_REMOTE, f"s3://{BUCKET}/dvc")
    for option, value in (("endpointurl", endpoint), ("access_key_id", key), ("secret_access_key", secret)):
        dvc("remote", "modify", "--local", DVC_REMOTE, option, value)


def up() -> None:
    if STATE_FILE.exists():
        sys.exit(f"already up (see {STATE_FILE}); run `python -m services.stack down` first")
    try:
        ports = plan_ports()
    except PortError as error:
        sys.exit(str(error))
    for service, (name, default, _) in PORTS.items():
        if ports[service] != default:
            print(f"port {default} ({name}) is in use: using {ports[service]}")
    key, secret = credentials()
    started = []
    try:
        s3 = start_s3(STATE_DIR / "seaweedfs", key, secret, BUCKET, port=ports["s3"])
        started.append(s3)
        mlflow = start_mlflow(STATE_DIR / "mlflow", s3, port=ports["mlflow"])
        started.append(mlflow)
        configure_dvc_remote(s3.endpoint, key, secret)
        prefect = start_prefect(STATE_DIR / "prefect", port=ports["prefect"])
        started.append(prefect)
        shared = {**prefect.client_env(), "MLFLOW_TRACKING_URI": mlflow.url}
        deploy_project(Path.cwd(), {**os.environ, **shared})
        # The training worker reads and writes data (DVC, s3:// sources): it gets the S3 keys.
        # The device worker talks to Prefect and MLflow only, from a folder without the checkout.
        training_env = {**shared, **s3.client_env(), "PREFECT_HOME": str((STATE_DIR / "prefect-home").resolve())}
        started.append(start_worker(TRAINING_POOL, training_env, STATE_DIR / "logs", cwd=Path.cwd()))
        device_dir = STATE_DIR / "device"
        device_dir.mkdir(parents=True, exist_ok=True)
        started.append(start_worker(DEVICE_POOL, shared, STATE_DIR / "logs", cwd=device_dir))
    except Exception:
        for service in reversed(started):
            service.stop()
        raise
    STATE_FILE.write_text(json.dumps({"pids": [service.process.pid for service in started],
                                      "s3": s3.endpoint, "mlflow": mlflow.url, "prefect": prefect.url,
                                      "prefect_api": prefect.api_url, "ports": ports}))
    print(f"S3 (SeaweedFS):  {s3.endpoint}   bucket {BUCKET}, DVC remote '{DVC_REMOTE}' -> s3://{BUCKET}/dvc")
    print(f"MLflow UI:       {mlflow.url}")
    print(f"Prefect UI:      {prefect.url}   pools {TRAINING_POOL} (1 worker), {DEVICE_POOL} (1 worker); "
          f"logs in {STATE_DIR / 'logs'}")
    print("For this shell:")
    print(f"  export MLFLOW_TRACKING_URI={mlflow.url} PREFECT_API_URL={prefect.api_url}")
    print(f"  export AWS_ENDPOINT_URL={s3.endpoint}   # plus AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
          f"from {STATE_DIR / 'credentials.json'} to read s3:// data")
    print("Retrain now (else it runs on the schedule in prefect.yaml):")
    print(f"  PREFECT_API_URL={prefect.api_url} .venv/bin/prefect deployment run afd-retrain/weekly")


def down(timeout: float = 30.0) -> None:
    if not STATE_FILE.exists():
        print("not running")
        return
    groups = list(reversed(json.loads(STATE_FILE.read_text())["pids"]))  # workers first, storage last
    for pid in groups:
        _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while any(_signal_group(pid, 0) for pid in groups) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in groups:  # whatever ignored SIGTERM
        _signal_group(pid, signal.SIGKILL)
    STATE_FILE.unlink()
    print("stopped")


def _signal_group(pid: int, sig: int) -> bool:
    """Send `sig` to the process group `pid`; False when the group is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # only zombies left in the group
        return False


def status() -> None:
    print(STATE_FILE.read_text() if STATE_FILE.exists() else "not running")


def retrain() -> None:
    """Start the retraining deployment now, on the Prefect server of the running stack
    (PREFECT_API_URL, when set, names another)."""
    api = os.environ.get("PREFECT_API_URL") or (json.loads(STATE_FILE.read_text())["prefect_api"]
                                                 if STATE_FILE.exists() else None)
    if not api:
        sys.exit("no Prefect server: start the stack (`make up`) or set PREFECT_API_URL")
    prefect = Path(sys.executable).parent / "prefect"
    sys.exit(subprocess.run([str(prefect), "deployment", "run", "afd-retrain/weekly"],
                            env={**os.environ, "PREFECT_API_URL": api}).returncode)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "retrain"])
    {"up": up, "down": down, "status": status, "retrain": retrain}[parser.parse_args().command]()


if __name__ == "__main__":
    main()
