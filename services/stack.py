"""One command for the local services: `python -m services.stack up | down | status`.

`up` starts SeaweedFS (S3) and the MLflow tracking server (SQLite store, artifacts in S3) on
loopback, configures the DVC remote's endpoint and credentials in `.dvc/config.local` (never
committed), and prints the URLs and the environment a shell needs. State lives in `.stack/`.
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
from pathlib import Path

from .mlflow_server import start_mlflow
from .s3 import start_s3

STATE_DIR = Path(".stack")
STATE_FILE = STATE_DIR / "state.json"
BUCKET = "afd"
DVC_REMOTE = "storage"
S3_PORT, MLFLOW_PORT = 8333, 5000


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
    """The remote (url, endpoint) in .dvc/config; the keys only in .dvc/config.local."""
    def dvc(*args: str) -> None:
        subprocess.run([sys.executable, "-m", "dvc", *args], check=True, capture_output=True)

    dvc("remote", "add", "--force", "--default", DVC_REMOTE, f"s3://{BUCKET}/dvc")
    dvc("remote", "modify", DVC_REMOTE, "endpointurl", endpoint)
    dvc("remote", "modify", "--local", DVC_REMOTE, "access_key_id", key)
    dvc("remote", "modify", "--local", DVC_REMOTE, "secret_access_key", secret)


def up() -> None:
    if STATE_FILE.exists():
        sys.exit(f"already up (see {STATE_FILE}); run `python -m services.stack down` first")
    key, secret = credentials()
    s3 = start_s3(STATE_DIR / "seaweedfs", key, secret, BUCKET, port=S3_PORT)
    try:
        mlflow = start_mlflow(STATE_DIR / "mlflow", s3, port=MLFLOW_PORT)
    except Exception:
        s3.stop()
        raise
    configure_dvc_remote(s3.endpoint, key, secret)
    STATE_FILE.write_text(json.dumps({"pids": [s3.process.pid, mlflow.process.pid],
                                      "s3": s3.endpoint, "mlflow": mlflow.url}))
    print(f"S3 (SeaweedFS):  {s3.endpoint}   bucket {BUCKET}, DVC remote '{DVC_REMOTE}' -> s3://{BUCKET}/dvc")
    print(f"MLflow UI:       {mlflow.url}")
    print("For this shell:")
    print(f"  export MLFLOW_TRACKING_URI={mlflow.url}")
    print(f"  export AWS_ENDPOINT_URL={s3.endpoint}   # plus AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY "
          f"from {STATE_DIR / 'credentials.json'} to read s3:// data")


def down() -> None:
    if not STATE_FILE.exists():
        print("not running")
        return
    for pid in json.loads(STATE_FILE.read_text())["pids"]:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    STATE_FILE.unlink()
    print("stopped")


def status() -> None:
    print(STATE_FILE.read_text() if STATE_FILE.exists() else "not running")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status"])
    {"up": up, "down": down, "status": status}[parser.parse_args().command]()


if __name__ == "__main__":
    main()
