"""Real services for the tests, on free loopback ports, stopped at the end of the session; and
the tiny copy of the project that the pipeline and flow tests run."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from services.mlflow_server import start_mlflow
from services.s3 import start_s3

TEST_ACCESS_KEY = "afdtestaccesskey"
TEST_SECRET_KEY = "afdtestsecretkey0123456789"  # a test-only secret; grepped for in outputs
BUCKET = "afd"
REPO = Path(__file__).resolve().parents[1]
BACKBONE = "efficientnet_lite0"


def tiny_params() -> dict:
    """params.yaml shrunk to seconds per stage: one eval photo, two QFs, one CT, three methods (AFD,
    ARCNN, and AFD at another tap), 12 iterations."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"]["embedded"].update(train=["astronaut", "china", "flower"], eval=["coffee"], view_sizes=[256])
    params["patches"]["qualities"] = [25, 7]
    params["eval_sets"] = {"jpeg": {"levels": [25, 7], "resave_q85": False},
                           "multi": {"levels": [2], "qualities": [25, 7]}, "avif": {"levels": [25]},
                           "webp": {"levels": [25]}}
    params["train"].update(backbones=[BACKBONE], methods=["afd"], study_backbone=BACKBONE,
                           study_methods=["arcnn", "afd_tap_stage2"])
    params["fuse"].update(methods=["afd"], study_methods=["afd_tap_stage2"])
    # 12 steps are too few to learn anything: the learned-or-refused check has its own tests
    params["train"].update(max_loss_ratio=10.0, min_alive_fraction=0.0)
    params["profiles"]["default"].update(patch_count=8, iterations=12, batch_size=2, crop=64,
                                         lr_drop_at=8, checkpoint_every=2)
    params["evaluate"]["batch_size"] = 4
    params["efficiency"].update(warmup=1, repeats=1, executorch=False)  # tests/test_efficiency.py lowers them
    params["register"]["int8_calibration_patches"] = 4
    return params


def make_tiny_project(root: Path, params: dict | None = None) -> Path:
    """A git + DVC copy of the project (code, dvc.yaml, prefect.yaml) with `params` (default: the
    tiny ones), committed."""
    for name in ("afd", "stages", "flows"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore", "prefect.yaml"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(params or tiny_params()))
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=root, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=root, check=True)
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "code"], cwd=root, check=True)
    return root


CREDENTIALS = (TEST_ACCESS_KEY.encode(), TEST_SECRET_KEY.encode())


def files_holding_credentials(*roots: Path, allowed: tuple[Path, ...] = ()) -> list[Path]:
    """Every file under `roots` (logs, databases, outputs) whose bytes contain a test credential,
    except the `allowed` ones (where a user is meant to keep keys)."""
    return [path for root in roots for path in root.rglob("*")
            if path.is_file() and not path.is_symlink() and path not in allowed
            and any(secret in path.read_bytes() for secret in CREDENTIALS)]


def objects_holding_credentials(s3) -> list[str]:
    """Every object in the S3 server's bucket (DVC remotes, MLflow artifacts) that contains a test
    credential, read back through S3 (the server may store them compressed)."""
    bucket = s3.filesystem()
    return [key for key in bucket.find(s3.bucket) if any(secret in bucket.cat_file(key) for secret in CREDENTIALS)]


END_TO_END_FIRST = ("test_pipeline.py", "test_flows.py")  # the longest files (minutes each)


def pytest_collection_modifyitems(items):
    """Run the end-to-end files first: under `make test` (xdist, one file per worker, in collection
    order) they then start together on the two workers instead of queueing behind each other."""
    items.sort(key=lambda item: END_TO_END_FIRST.index(item.path.name) if item.path.name in END_TO_END_FIRST
               else len(END_TO_END_FIRST))


@pytest.fixture(scope="session", autouse=True)
def temporary_files_under_pytest(tmp_path_factory):
    """Temporary files of the tests and of every process they start (MLflow downloads, Dask
    scratch space) go under pytest's own folder, which keeps only the last three runs: what a
    library leaves behind cannot fill the disk over repeated runs."""
    folder = tmp_path_factory.mktemp("tmp")
    previous = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"], tempfile.tempdir = str(folder), str(folder)
    yield folder
    if previous[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = previous[0]
    tempfile.tempdir = previous[1]


@pytest.fixture(scope="module")
def patch_files(tmp_path_factory):
    """Six 64x64 patches of a real photo, clean (PNG) and at two JPEG qualities."""
    import numpy as np

    from afd.data.codecs import jpeg
    from afd.data.images import load_image, random_crop
    from afd.data.samples import sample_photos

    root = tmp_path_factory.mktemp("patches")
    photo = load_image(sample_photos()["astronaut"])
    rng = np.random.default_rng(0)
    clean, degraded = [], {"jpeg_q10": [], "jpeg_q25": []}
    for i in range(6):
        patch = random_crop(photo, 64, rng)
        clean.append(root / f"p{i}.png")
        patch.save(clean[-1])
        for name, quality in (("jpeg_q10", 10), ("jpeg_q25", 25)):
            degraded[name].append(root / f"p{i}_{name}.png")
            jpeg(patch, quality).save(degraded[name][-1])
    return clean, degraded


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
