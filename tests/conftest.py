"""Real services for the tests, on free loopback ports, stopped at the end of the session."""

import pytest

from services.mlflow_server import start_mlflow
from services.s3 import start_s3

TEST_ACCESS_KEY = "afdtestaccesskey"
TEST_SECRET_KEY = "afdtestsecretkey0123456789"  # a test-only secret; grepped for in outputs
BUCKET = "afd"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("seaweedfs"), TEST_ACCESS_KEY, TEST_SECRET_KEY, BUCKET)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory, s3_server):
    server = start_mlflow(tmp_path_factory.mktemp("mlflow"), s3_server)
    yield server
    server.stop()
