"""What a hostile user tried (issue 10): damaged or mismatched checkpoints, outputs that cannot be
written, credentials in URLs, a dead tracking server, runaway parameters, exposed services. Each
must end in one line naming the file or value and the problem, and leak nothing."""

import os
import resource
import signal
import socket
import subprocess
import sys

import mlflow
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from afd.cli import app
from afd.data.samples import sample_photos
from afd.errors import AFDError
from afd.model.afd_module import AFDConfig, AFDModule
from afd.model.baselines import DDPEnhancer
from afd.model.checkpoint import save_enhancer
from afd.ops.tracking import tracked_run

runner = CliRunner()
LITE0 = {"backbone": "efficientnet_lite0", "tap": "stem"}


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    path = tmp_path_factory.mktemp("photo") / "coffee.png"
    Image.open(sample_photos()["coffee"]).convert("RGB").crop((0, 0, 64, 64)).save(path)
    return path


# ---- checkpoints --------------------------------------------------------------------------------


def test_checkpoints_of_the_wrong_shape_are_one_line(tmp_path, photo):
    good = AFDModule(AFDConfig(feature_channels=32, widths=(8, 16, 32)))
    cases = {
        "meta_list.pt": ({"kind": "afd", "config": good.config.to_dict(), "deploy": False,
                          "state_dict": good.state_dict(), "meta": [1, 2]}, "meta is a list, not a dict"),
        "a_list.pt": ([1, 2, 3], "not an enhancer checkpoint (a list, not a dict)"),
        "bad_kind.pt": ({"kind": "vit", "config": {}, "deploy": False, "state_dict": {}}, "unknown kind 'vit'"),
        "bad_config.pt": ({"kind": "afd", "config": {"feature_channels": 32, "colour": 1}, "deploy": False,
                           "state_dict": {}}, "its afd config cannot be built"),
        "other_width.pt": ({"kind": "afd", "config": {**good.config.to_dict(), "widths": [16, 32, 64]}, "deploy": False,
                            "state_dict": good.state_dict(), "meta": LITE0}, "of another shape, first"),
    }
    for name, (content, problem) in cases.items():
        torch.save(content, tmp_path / name)
        line = _one_error_line(runner.invoke(app, ["classify", str(photo), "--enhancer", str(tmp_path / name)]))
        assert line.startswith(f"error: {tmp_path / name}: ") and problem in line, line
        assert len(line) < 400, line  # a state-dict mismatch once printed 2.9 kB


def test_an_enhancer_for_another_tap_width_is_refused_by_classify_and_efficiency(tmp_path, photo):
    save_enhancer(DDPEnhancer(feature_channels=64), tmp_path / "ddp64.pt", LITE0)
    line = _one_error_line(runner.invoke(app, ["classify", str(photo), "--enhancer", str(tmp_path / "ddp64.pt")]))
    assert line == (f"error: {tmp_path / 'ddp64.pt'}: the DDPEnhancer takes 64-channel features, but "
                    "efficientnet_lite0's tap 'stem' gives 32")
    save_enhancer(AFDModule(AFDConfig(feature_channels=64, widths=(8, 16, 32))), tmp_path / "afd64.pt", LITE0)
    efficiency = ["efficiency", "--backbone", "efficientnet_lite0", "--image-size", "64", "--repeats", "1"]
    line = _one_error_line(runner.invoke(app, [*efficiency, "--enhancer", str(tmp_path / "afd64.pt")]))
    assert "the AFD-Module takes 64-channel features, but efficientnet_lite0's tap 'stem' gives 32" in line
    line = _one_error_line(runner.invoke(app, [*efficiency, "--enhancer", str(tmp_path / "ddp64.pt")]))
    assert "times a trained (unfused) AFD-Module, and this is DDPEnhancer" in line


# ---- outputs ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("trained") / "afd.pt"
    save_enhancer(AFDModule(AFDConfig(feature_channels=32, widths=(8, 16, 32))), path, LITE0)
    return path


@pytest.mark.parametrize("where", ["a_directory", "under_a_file"])
def test_an_output_that_cannot_be_written_is_one_line(tmp_path, photo, trained, where):
    (tmp_path / "file").write_text("x")
    for command, source, name in (("degrade", photo, "out.png"), ("fuse", trained, "out.pt")):
        if where == "a_directory":
            output = tmp_path / name
            output.mkdir()
            reason = "Is a directory"
        else:
            output = tmp_path / "file" / name
            reason = "File exists"  # mkdir of a parent that is a file
        line = _one_error_line(runner.invoke(app, [command, str(source), str(output)]))
        assert line == f"error: {output}: cannot write it ({reason})", line
    assert not [p for p in tmp_path.rglob(".*.tmp")]  # no temporary left behind


@pytest.mark.parametrize("command", ["degrade", "fuse"])
def test_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, photo, trained, command):
    """The file-size limit makes writes fail as a full disk does (EFBIG here, ENOSPC there)."""
    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (256, 256))

    output = tmp_path / ("out.png" if command == "degrade" else "out.pt")
    source = str(photo) if command == "degrade" else str(trained)
    result = subprocess.run([sys.executable, "-m", "afd.cli", command, source, str(output)],
                            capture_output=True, text=True, preexec_fn=limit_file_size)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: {output}: cannot write it (")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_outputs_get_the_permissions_the_umask_allows(tmp_path, photo):
    previous = os.umask(0o022)
    try:
        assert runner.invoke(app, ["degrade", str(photo), str(tmp_path / "shared.png")]).exit_code == 0
        os.umask(0o077)
        assert runner.invoke(app, ["degrade", str(photo), str(tmp_path / "private.png")]).exit_code == 0
    finally:
        os.umask(previous)
    assert (tmp_path / "shared.png").stat().st_mode & 0o777 == 0o644  # was 0600 whatever the umask
    assert (tmp_path / "private.png").stat().st_mode & 0o777 == 0o600


def test_a_runaway_compression_count_is_refused(tmp_path, photo):
    line = _one_error_line(runner.invoke(app, ["degrade", str(photo), str(tmp_path / "o.png"), "--kind", "multi",
                                               "--level", "100000000"]))
    assert "must be an integer in 1..100, got 100000000" in line


# ---- the tracking server ------------------------------------------------------------------------


def _refused_port() -> int:
    with socket.socket() as s:  # bound, never listening: connections to it are refused
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_password_in_the_tracking_uri_is_never_shown_and_a_refused_port_fails_at_once(photo):
    """`afd classify --model` against a refused port took 259 s (MLflow's retries) and printed the
    password. The subprocess timeout is far below the retries' back-off: it checks that no retry
    happens, not how fast the machine is."""
    url = f"http://alice:s3cr3t-pw@127.0.0.1:{_refused_port()}"
    env = {**os.environ, "MLFLOW_TRACKING_URI": url}  # MLflow's default retries left on
    result = subprocess.run([sys.executable, "-m", "afd.cli", "classify", "--model", "models:/afd-x@champion",
                             str(photo)], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2, result.stderr
    assert "s3cr3t-pw" not in result.stdout + result.stderr
    shown = url.replace("alice:s3cr3t-pw", "***")
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: MLflow tracking at {shown} is unreachable (connection refused); "
        "outputs already written are kept: re-run to log them")


def test_a_stage_reports_an_unreachable_server_without_its_password(monkeypatch):
    url = f"http://bob:hunter2@127.0.0.1:{_refused_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    with pytest.raises(AFDError) as error:
        with tracked_run("train@x"):
            pass
    assert "hunter2" not in str(error.value) and "http://***@127.0.0.1" in str(error.value)


def test_runs_of_a_killed_process_are_closed_by_the_next_run_of_the_same_stage(mlflow_server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists, as after a SIGKILL
    with tracked_run("fuse@abandoned") as abandoned:
        mlflow.set_tag("process.pid", str(gone.pid))
        run_id = abandoned.info.run_id
    client = mlflow.MlflowClient()
    client.update_run(run_id, "RUNNING")  # what a SIGKILLed stage leaves on the server
    with tracked_run("fuse@abandoned") as later:
        pass
    assert client.get_run(run_id).info.status == "KILLED"
    assert client.get_run(later.info.run_id).info.status == "FINISHED"

    with pytest.raises(KeyboardInterrupt), tracked_run("fuse@interrupted") as interrupted:
        raise KeyboardInterrupt  # Ctrl-C, or SIGTERM in a stage (stages/stage.py makes it an exit)
    assert client.get_run(interrupted.info.run_id).info.status == "KILLED"


# ---- services -----------------------------------------------------------------------------------


def test_the_local_dask_cluster_listens_on_loopback_only():
    import psutil
    from distributed import LocalCluster

    from flows.retrain import local_cluster_settings

    def listening() -> set:
        return {c.laddr for c in psutil.Process().net_connections(kind="inet") if c.status == "LISTEN"}

    settings = {**local_cluster_settings(), "n_workers": 0}  # the scheduler and its dashboard only
    before = listening()
    with LocalCluster(**settings) as cluster:
        opened = listening() - before
        dashboard = cluster.scheduler.http_server.port
    assert dashboard in {address.port for address in opened}  # the scheduler's and the dashboard's
    assert {address.ip for address in opened} == {"127.0.0.1"}


@pytest.mark.parametrize("text, shown", [
    ("http://u:pw@127.0.0.1:5000/api failed", "http://***@127.0.0.1:5000/api failed"),
    ("https://user:p@ss@host/x", "https://***@host/x"),  # an unescaped @ in the password
    ("s3://key:secret@bucket/photos", "s3://***@bucket/photos"),
    ("http://host/path?mail=a@b.c", "http://host/path?mail=a@b.c"),  # no user-info: unchanged
])
def test_credentials_in_urls_are_redacted(text, shown):
    from afd.errors import display_name, redact

    assert redact(text) == shown
    assert display_name(text) == shown
