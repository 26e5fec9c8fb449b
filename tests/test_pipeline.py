"""A tiny end-to-end `dvc repro` of the real pipeline in a temporary copy of the repository,
tracked by a real MLflow server whose artifacts live in a real S3 server (SeaweedFS)."""

import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from afd.model.checkpoint import load_enhancer
from conftest import BACKBONE, REPO, make_tiny_project

AUDIT_ENV = "AFD_DEPENDENCY_AUDIT"  # stages/stage.py: where each stage records what it used



TRACKING_ENV: dict[str, str] = {}  # set by the repo fixture: MLFLOW_TRACKING_URI of the test server


def dvc_env(extra: dict | None = None) -> dict:
    return {**os.environ, **TRACKING_ENV, **(extra or {}),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def dvc(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(env),
                          capture_output=True, text=True, timeout=600)


def start_dvc(repo: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    """`dvc <args>` in the background, as its own process group (so it can be killed whole). Its
    output goes to a file, never a pipe that could fill while the test waits (see `output_of`)."""
    log = tempfile.TemporaryFile("w+")
    process = subprocess.Popen([sys.executable, "-m", "dvc", *args], cwd=repo, env=dvc_env(env), text=True,
                               stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    process.log = log
    return process


def output_of(process: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for a `start_dvc` process; its stdout and stderr."""
    process.wait(timeout=timeout)
    process.log.seek(0)
    return process.log.read()


def ran_stages(result: subprocess.CompletedProcess) -> set[str]:
    return {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}


def lock_outputs(repo: Path) -> dict[str, str]:
    """Every stage output's md5 in dvc.lock, by path."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


AUDIT: dict[str, Path] = {}  # set by the repo fixture: where its stages recorded what they used


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_server) -> Path:
    TRACKING_ENV["MLFLOW_TRACKING_URI"] = mlflow_server.url
    root = make_tiny_project(tmp_path_factory.mktemp("repo"))
    AUDIT["folder"] = tmp_path_factory.mktemp("dependency-audit")
    result = dvc(root, "repro", env={AUDIT_ENV: str(AUDIT["folder"])})
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def metrics(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "eval" / f"{BACKBONE}.json").read_text())


def test_dvc_yaml_declares_every_parameter_and_module_that_each_stage_used(repo):
    """Each stage of the tiny repro recorded the params.yaml keys it read and the project modules
    it imported (stages/stage.py); dvc.yaml must declare them all, or DVC keeps a stale output
    when one changes (train@* once read patches.qualities without declaring it)."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    stage_of = {tuple(shlex.split(stage["cmd"])[1:]): name for name, stage in lock.items()}
    records = [json.loads(path.read_text()) for path in AUDIT["folder"].glob("*.json")]
    assert sorted(stage_of[tuple(record["argv"])] for record in records) == sorted(lock)  # all ran
    undeclared = {}
    for record in records:
        name = stage_of[tuple(record["argv"])]
        code = [dep["path"] for dep in lock[name]["deps"]]
        keys = list(lock[name].get("params", {}).get("params.yaml", {}))
        modules = [m for m in record["modules"] if not any(m == d or m.startswith(f"{d}/") for d in code)]
        params = [k for k in record["params"] if not any(k == d or k.startswith(f"{d}.") for d in keys)]
        assert "stages/stage.py" in record["modules"], record  # the audit saw the whole run
        if modules or params:
            undeclared[name] = {"modules": modules, "params": params}
    assert undeclared == {}


def test_the_grid_covers_every_method_and_set(repo):
    result = metrics(repo)
    assert result["methods"] == ["direct", "afd", "arcnn", "afd_tap_stage2"]
    assert result["taps"] == {"direct": "stem", "afd": "stem", "arcnn": "stem", "afd_tap_stage2": "stage2"}
    sets = {"clean", "jpeg_q25", "jpeg_q7", "multi_ct2", "avif_q25", "webp_q25"}
    for method in ("direct", "afd"):  # the headline methods: every set
        assert set(result["grid"][method]) == sets
        assert set(result["averages"][method]) == {"jpeg", "multi", "avif", "webp"}
    for method in ("arcnn", "afd_tap_stage2"):  # the study methods: clean and evaluate.study_families (JPEG)
        assert set(result["grid"][method]) == {"clean", "jpeg_q25", "jpeg_q7"}
        assert set(result["averages"][method]) == {"jpeg"}
    assert result["data"]["images"] == 5 and result["data"]["labelled"] == 0
    assert "top1" not in result["grid"]["direct"]["jpeg_q7"]  # embedded photos have no labels


def test_direct_test_is_the_reference_and_compression_really_drifts(repo):
    grid = metrics(repo)["grid"]["direct"]
    assert grid["clean"] == {"agreement": 1.0, "kl": 0.0, "feature_mse": 0.0}
    assert grid["jpeg_q7"]["feature_mse"] > grid["jpeg_q25"]["feature_mse"] > 0
    assert grid["jpeg_q7"]["kl"] > 0
    assert grid["multi_ct2"]["feature_mse"] > 0


def test_fused_model_equals_the_trained_one_and_is_recorded(repo):
    fuse = json.loads((repo / "metrics" / "fuse" / BACKBONE / "afd.json").read_text())
    assert fuse["max_abs_diff"] < 1e-4 and fuse["params_fused"] < fuse["params_trained"]
    fused, meta = load_enhancer(repo / "models" / BACKBONE / "afd" / "fused.pt")
    assert meta["backbone"] == BACKBONE and meta["tap"] == "stem"


def test_efficiency_report_and_plots_are_written(repo):
    efficiency = json.loads((repo / "metrics" / "efficiency.json").read_text())[BACKBONE]
    assert [row["role"] for row in efficiency["rows"]][:3] == ["backbone", "afd_unfused", "afd_fused"]
    report = (repo / "reports" / "report.md").read_text()
    assert "Table V" in report and "Table VI" in report and "Table IX" in report and "Table VII" in report
    # says what data, how many images and photos, and from which package
    assert "5 images (several 224 views each) of 1 real photos shipped in PyPI packages (1 from scikit-image" in report
    assert "from 1 photos" in report and "bootstrap over photos" in report
    assert "| QF | DirectTest | AFD |" in report and "| CT | DirectTest | AFD |" in report
    assert "### WebP (beyond the paper), " in report and (repo / "reports" / "figures" / f"{BACKBONE}_webp_agreement.png").is_file()
    assert "The paper's claims on this data" in report and "AFD > DirectTest at JPEG QF 7: **" in report
    assert any((repo / "reports" / "figures").glob("*.png"))
    curve = (repo / "plots" / "train" / BACKBONE / "afd.csv").read_text().splitlines()
    assert curve[0] == "step,loss,identity" and len(curve) == 1 + 12 // 10 + 1


def test_killed_training_resumes_to_the_uninterrupted_weights_metrics_and_curve(repo):
    """SIGKILL the train stage right after its first checkpoint (step 2, inside the first logging
    window of 10 steps); the re-run ends where `dvc repro` did: weights, metrics and loss curve,
    so dvc.lock's md5s too. The killed run's MLflow run, left RUNNING, is marked KILLED."""
    outputs = [repo / "models" / BACKBONE / "afd" / "model.pt", repo / "metrics" / "train" / BACKBONE / "afd.json",
               repo / "plots" / "train" / BACKBONE / "afd.csv"]
    uninterrupted = [path.read_bytes() for path in outputs]
    state = repo / "checkpoints" / BACKBONE / "afd" / "state.pt"
    state.unlink()
    command = [sys.executable, "stages/train.py", "--backbone", BACKBONE, "--method", "afd"]
    env = {**os.environ, **TRACKING_ENV}
    process = subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = subprocess.run(command, cwd=repo, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    resumed_from = int(rerun.stdout.rsplit("resumed from step ", 1)[1].split(")")[0])
    assert 0 < resumed_from < 10
    assert [path.read_bytes() for path in outputs] == uninterrupted

    experiment = client().get_experiment_by_name("afd").experiment_id
    runs = client().search_runs([experiment], f"attributes.run_name = 'train@{BACKBONE}-afd'",
                                order_by=["attributes.start_time DESC"], max_results=2)
    assert [run.info.status for run in runs] == ["FINISHED", "KILLED"]  # the re-run, the killed one


def client():
    import mlflow

    return mlflow.MlflowClient(TRACKING_ENV["MLFLOW_TRACKING_URI"])


def runs_by_name(experiment: str = "afd") -> dict:
    mlflow_client = client()
    experiment_id = mlflow_client.get_experiment_by_name(experiment).experiment_id
    runs = mlflow_client.search_runs([experiment_id], order_by=["attributes.start_time ASC"])
    first = {}
    for run in runs:  # the first run of each step: later ones are the kill-and-resume test's
        first.setdefault(run.info.run_name, run)
    return first


def test_every_step_is_tracked_with_params_metrics_and_lineage(repo):
    runs = runs_by_name()
    expected = {f"train@{BACKBONE}-afd", f"train@{BACKBONE}-arcnn", f"fuse@{BACKBONE}-afd",
                f"evaluate@{BACKBONE}", f"register@{BACKBONE}", "efficiency", "report"}
    assert expected <= set(runs)
    train = runs[f"train@{BACKBONE}-afd"]
    assert train.data.params["training.iterations"] == "12" and train.data.params["profile"] == "default"
    assert len(client().get_metric_history(train.info.run_id, "loss")) == 2  # logged at steps 10 and 12
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    clean_md5 = next(o["md5"] for o in lock["stages"]["patches"]["outs"] if o["path"] == "data/div2k_c/clean")
    assert train.data.tags["dvc.data/div2k_c/clean"] == clean_md5
    assert len(train.data.tags["backbone_weights_sha256"]) == 64
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True).stdout.strip()
    assert train.data.tags["git_commit"].startswith(head)
    evaluate = runs[f"evaluate@{BACKBONE}"].data.metrics
    assert evaluate["grid.direct.clean.agreement"] == 1.0 and "averages.afd.jpeg.kl" in evaluate
    assert any(a.path.startswith("report") for a in client().list_artifacts(runs["report"].info.run_id))


def test_the_fused_classifier_is_registered_with_signature_exports_and_lineage(repo, tmp_path):
    import mlflow

    receipt = json.loads((repo / "metrics" / "register" / f"{BACKBONE}.json").read_text())
    assert receipt["alias"] in ("champion", "challenger")
    assert receipt["pte_max_abs_diff"] < 1e-4 and receipt["onnx_max_abs_diff"] < 1e-4
    version = client().get_model_version(f"afd-{BACKBONE}", receipt["version"])
    assert version.tags["gate.decision"].startswith(receipt["alias"])
    assert "metric.jpeg.agreement" in version.tags and "dvc.data/eval/clean" in version.tags
    mlflow.set_tracking_uri(TRACKING_ENV["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(f"models:/afd-{BACKBONE}/{receipt['version']}")
    assert tuple(info.signature.inputs.to_dict()[0]["tensor-spec"]["shape"]) == (-1, 3, 224, 224)
    # one URI gives every format: the program, and the .pte and .onnx inside the same model version
    from afd.data.images import load_image, to_batch
    from afd.ops.export import load_program, lower_to_xnnpack, run_executorch, run_onnx, undelegated_ops

    uri = f"models:/afd-{BACKBONE}/{receipt['version']}"
    local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(tmp_path)))
    model = mlflow.pytorch.load_model(uri)
    images = to_batch([load_image(p) for p in sorted((repo / "data" / "eval" / "jpeg" / "jpeg_q7").iterdir())[:4]])
    expected = model(images)
    assert (run_executorch(local / "extra_files" / f"afd-{BACKBONE}.pte", images) - expected).abs().max() < 1e-4
    assert (run_onnx(local / "extra_files" / f"afd-{BACKBONE}.onnx", images) - expected).abs().max() < 1e-4
    # only what loading the model needs: no packages this project's process happened to import
    requirements = {line.split("==")[0] for line in (local / "requirements.txt").read_text().split()}
    assert requirements == {"mlflow", "torch"}
    # ExecuTorch's own delegation report: XNNPACK runs every node of the registered program
    assert undelegated_ops(lower_to_xnnpack(load_program(local / "data" / "model.pt2"))) == {}
    # the int8 program: its own format in the same version, measured on the clean and JPEG sets
    assert (local / "extra_files" / f"afd-{BACKBONE}.int8.pte").is_file()
    assert set(receipt["int8"]) == {"clean", "jpeg"} and set(receipt["float"]) == {"clean", "jpeg"}
    drop = receipt["agreement_drop_jpeg_points"]
    assert drop["low"] <= drop["value"] <= drop["high"]
    assert float(version.tags["int8.metric.jpeg.agreement"]) == pytest.approx(receipt["int8"]["jpeg"]["agreement"])
    # a deployment team's script, which imports nothing of this project, checks the same URI
    check = subprocess.run([sys.executable, str(REPO / "deploy" / "check_champion.py"), uri], capture_output=True,
                           text=True, cwd=tmp_path, env={**os.environ, **TRACKING_ENV})
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"afd-{BACKBONE}.pte: batch 4, max |format - PyTorch| = " in check.stdout
    assert f"afd-{BACKBONE}.onnx: batch 4" in check.stdout and "(int8)" in check.stdout


@pytest.fixture(scope="module")
def classifier(repo):
    """The fused classifier of the tiny run and two of its evaluation images, for direct registrations."""
    from afd.data.images import load_image, to_batch
    from afd.model.backbones import build_backbone
    from afd.model.classifier import EnhancedClassifier

    module, _ = load_enhancer(repo / "models" / BACKBONE / "afd" / "fused.pt")
    model = EnhancedClassifier(build_backbone(BACKBONE), module, "stem").eval()
    images = to_batch([load_image(p) for p in sorted((repo / "data" / "eval" / "clean").glob("*.png"))[:2]])
    return model, images


def test_the_gate_needs_direct_test_beaten_on_average_and_at_the_lightest_qf():
    from afd.ops.registry import CHALLENGER, CHAMPION, GateScores, gate

    assert gate(GateScores(0.60, 0.50, 0.90, 0.80), None)[0] == CHAMPION
    alias, reason = gate(GateScores(0.40, 0.50, 0.90, 0.80), None)
    assert alias == CHALLENGER and "does not beat DirectTest's 0.5000" in reason
    alias, reason = gate(GateScores(0.60, 0.50, 0.70, 0.80), None)
    assert alias == CHALLENGER and "at the lightest QF 0.7000 is below DirectTest's 0.8000" in reason
    assert gate(GateScores(0.60, 0.50, 0.90, 0.80), 0.65)[0] == CHALLENGER  # below the champion


def test_the_gate_promotes_a_better_model_and_keeps_the_champion_against_a_worse_one(repo, classifier, tmp_path):
    import mlflow

    from afd.data.images import load_image, to_batch
    from afd.ops.registry import GateScores, register_classifier

    mlflow.set_tracking_uri(TRACKING_ENV["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("afd-gate-test")
    model, images = classifier
    name = f"afd-{BACKBONE}"

    def register(score):
        with mlflow.start_run():
            return register_classifier(model, BACKBONE, images, GateScores(score, 0.5, 0.9, 0.8), {"test": "gate"})

    best = register(0.8999996)  # a score that six decimals would round up, past itself
    assert best.alias == "champion"
    worse = register(0.70)  # beats DirectTest, but not the champion
    assert worse.alias == "challenger"
    assert client().get_model_version_by_alias(name, "champion").version == best.version
    # the gate reads the champion's score back exactly: the same score again is not "below" it,
    # and a score below it in the 7th decimal is
    again = register(0.8999996)
    assert again.alias == "champion", again.reason
    assert register(0.8999995).alias == "challenger"
    best = again

    # a deployment team's fresh process: models:/...@champion gives the in-process model's logits
    np.save(tmp_path / "images.npy", images.numpy())
    script = ("import sys, mlflow, numpy as np; "
              f"m = mlflow.pyfunc.load_model('models:/{name}@champion'); "
              f"np.save(sys.argv[1], m.predict(np.load('{tmp_path / 'images.npy'}')))")
    subprocess.run([sys.executable, "-c", script, str(tmp_path / "logits.npy")], check=True,
                   env={**os.environ, **TRACKING_ENV})
    with torch.no_grad():
        assert np.allclose(np.load(tmp_path / "logits.npy"), model(images).numpy(), atol=1e-5)
    coffee = repo / "data" / "eval" / "clean" / sorted(os.listdir(repo / "data" / "eval" / "clean"))[0]
    cli = subprocess.run([sys.executable, "-m", "afd.cli", "classify", "--model", f"models:/{name}@champion",
                          str(coffee), "--top-k", "1"], capture_output=True, text=True,
                         env={**os.environ, **TRACKING_ENV})
    assert cli.returncode == 0, cli.stderr
    with torch.no_grad():
        expected_class = int(model(to_batch([load_image(coffee)])).argmax())
    assert f": {expected_class} " in cli.stdout


def test_a_registration_failing_halfway_keeps_the_champion(repo, classifier, monkeypatch):
    """The registry fails after the new version exists, while it is being tagged: a model that
    would have been promoted is left without an alias, and the champion stays where it was."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from afd.ops.registry import GateScores, register_classifier

    mlflow.set_tracking_uri(TRACKING_ENV["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("afd-gate-test")
    model, images = classifier
    name = f"afd-{BACKBONE}"
    champion = json.loads((repo / "metrics" / "register" / f"{BACKBONE}.json").read_text())["version"]
    client().set_registered_model_alias(name, "champion", champion)  # the pipeline's version, whatever the gate said
    before = {v.version for v in client().search_model_versions(f"name='{name}'")}

    def failing_tag(*args, **kwargs):
        raise MlflowException("injected: the registry stopped answering")

    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", failing_tag)
    with pytest.raises(MlflowException, match="injected"), mlflow.start_run():
        register_classifier(model, BACKBONE, images, GateScores(0.99, 0.5, 0.9, 0.8), {"test": "halfway"})
    monkeypatch.undo()
    half_registered = {v.version for v in client().search_model_versions(f"name='{name}'")} - before
    assert len(half_registered) == 1  # the failure really came after the version was created
    assert client().get_model_version(name, half_registered.pop()).aliases == []
    assert client().get_model_version_by_alias(name, "champion").version == champion


def test_dvc_push_then_pull_into_a_fresh_clone_restores_identical_outputs(repo, s3_server, tmp_path):
    from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    assert dvc(repo, "remote", "add", "-d", "storage", "s3://afd/dvc-test").returncode == 0
    assert dvc(repo, "remote", "modify", "storage", "endpointurl", s3_server.endpoint).returncode == 0
    for key, value in (("access_key_id", TEST_ACCESS_KEY), ("secret_access_key", TEST_SECRET_KEY)):
        assert dvc(repo, "remote", "modify", "--local", "storage", key, value).returncode == 0
    pushed = dvc(repo, "push")
    assert pushed.returncode == 0, pushed.stderr
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny run"], cwd=repo, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(repo), str(clone)], check=True)
    assert TEST_SECRET_KEY not in (clone / ".dvc" / "config").read_text()  # keys stay in config.local

    assert dvc(clone, "remote", "modify", "--local", "storage", "access_key_id", TEST_ACCESS_KEY).returncode == 0
    assert dvc(clone, "remote", "modify", "--local", "storage", "secret_access_key", "wrong-secret").returncode == 0
    denied = dvc(clone, "pull")
    assert denied.returncode != 0
    assert "403" in denied.stderr and "forbidden" in denied.stderr.lower()  # DVC names the refusal

    assert dvc(clone, "remote", "modify", "--local", "storage", "secret_access_key", TEST_SECRET_KEY).returncode == 0
    pulled = dvc(clone, "pull")
    assert pulled.returncode == 0, pulled.stderr
    outputs = ["data/div2k_c/clean", "data/eval/jpeg", f"models/{BACKBONE}/afd/fused.pt"]
    for output in outputs:
        originals = sorted(p for p in (repo / output).rglob("*") if p.is_file()) if (repo / output).is_dir() else [repo / output]
        assert originals
        for original in originals:
            restored = clone / original.relative_to(repo)
            assert restored.read_bytes() == original.read_bytes(), restored


def test_wrong_s3_credentials_reading_data_give_a_clear_error(s3_server, monkeypatch):
    from afd.data.sets import list_images
    from afd.errors import AFDError
    from conftest import TEST_ACCESS_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    with pytest.raises(AFDError, match="s3://afd/dvc-test") as error:
        list_images("s3://afd/dvc-test")
    assert "wrong-secret" not in str(error.value)


def test_s3_lost_during_dvc_push_and_an_artifact_upload_is_a_clear_error_and_a_retry_completes(
        repo, s3_server, mlflow_server, tmp_path, monkeypatch):
    """SeaweedFS stops while `dvc push` uploads and while MLflow stores an artifact in it: each
    fails naming the endpoint, and each completes once the server is back. AWS_MAX_ATTEMPTS=1 and
    no MLflow retries make the failures immediate (botocore's default retries take ~8 s a file)."""
    import mlflow

    from afd.errors import AFDError
    from afd.ops.tracking import tracked_run
    from conftest import TEST_ACCESS_KEY, TEST_SECRET_KEY

    assert dvc(repo, "remote", "add", "faulty", "s3://afd/dvc-fault").returncode == 0
    assert dvc(repo, "remote", "modify", "faulty", "endpointurl", s3_server.endpoint).returncode == 0
    for key, value in (("access_key_id", TEST_ACCESS_KEY), ("secret_access_key", TEST_SECRET_KEY)):
        assert dvc(repo, "remote", "modify", "--local", "faulty", key, value).returncode == 0
    bucket = s3_server.filesystem()

    def uploaded() -> int:
        bucket.invalidate_cache()
        return len(bucket.find("afd/dvc-fault"))

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    artifact = tmp_path / "evaluation.json"
    artifact.write_text("{}")
    push = start_dvc(repo, "push", "-r", "faulty", env={"AWS_MAX_ATTEMPTS": "1"})
    while push.poll() is None and not uploaded():
        time.sleep(0.01)
    push.send_signal(signal.SIGSTOP)  # holds the client, so the server goes away mid-push
    assert push.poll() is None, "the push finished before the server could be stopped"
    s3_server.stop()
    push.send_signal(signal.SIGCONT)
    try:
        pushed_output = output_of(push)
        with pytest.raises(AFDError, match=f"MLflow tracking at {mlflow_server.url} failed during run"):
            with tracked_run("artifact-upload-fault"):
                mlflow.log_artifact(str(artifact))
    finally:
        s3_server.restart()
    assert push.returncode != 0
    # DVC's wording depends on the phase it was in (listing the remote, or uploading an object),
    # but it always names the endpoint and the bucket it could not reach
    assert "ERROR:" in pushed_output
    assert f'Could not connect to the endpoint URL: "{s3_server.endpoint}/afd' in pushed_output
    assert "Traceback" not in pushed_output

    retried = dvc(repo, "push", "-r", "faulty")
    assert retried.returncode == 0 and "pushed" in retried.stdout, retried.stderr
    assert "in sync" in dvc(repo, "status", "--cloud", "-r", "faulty").stdout
    with tracked_run("artifact-upload-retry") as run:
        mlflow.log_artifact(str(artifact))
    assert [a.path for a in client().list_artifacts(run.info.run_id)] == ["evaluation.json"]


@pytest.fixture(scope="module")
def second(tmp_path_factory, repo) -> Path:
    """A second copy of the project, same params and seed: a run of it, hit by faults on the way,
    must end where `repo`'s uninterrupted one did."""
    return make_tiny_project(tmp_path_factory.mktemp("second"))


def test_a_stage_killed_mid_write_leaves_no_partial_output_for_dvc(repo, second):
    """SIGKILL `dvc repro` while a set's files are being written: the output path holds nothing,
    DVC records nothing, and the next repro rebuilds the set and clears the killed writer's files."""
    output = second / "data" / "eval" / "avif"
    run = start_dvc(second, "repro", "eval_sets@avif")
    deadline, partial = time.time() + 300, []
    while run.poll() is None and not partial and time.time() < deadline:
        try:
            partial = [folder for folder in output.parent.glob(".avif.*.tmp") if any(folder.rglob("*.avif"))]
        except FileNotFoundError:  # renamed into place between the listing and the look inside
            pass
        time.sleep(0.002)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert partial, "the stage ended before it could be killed mid-write"
    assert not output.exists()
    assert "eval_sets@avif" not in yaml.safe_load((second / "dvc.lock").read_text())["stages"]
    assert "eval_sets@avif" in dvc(second, "status", "eval_sets@avif").stdout  # still to run

    # As on another machine: one core, and kernels chosen for other CPU features (pinned back by
    # afd.model.determinism, so the models and metrics still equal `repo`'s)
    other_machine = {"OMP_NUM_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE", "MKL_CBWR": "AUTO",
                     "ATEN_CPU_CAPABILITY": "avx512"}
    finished = dvc(second, "repro", f"evaluate@{BACKBONE}", env=other_machine)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert sorted(p.name for p in output.parent.iterdir() if p.name.startswith(".avif")) == []
    assert lock_outputs(second)["data/eval/avif"] == lock_outputs(repo)["data/eval/avif"]


def test_the_same_params_and_seed_give_bit_identical_data_models_and_metrics(repo, second):
    ours, theirs = lock_outputs(repo), lock_outputs(second)
    shared = set(ours) & set(theirs)
    assert {"data/div2k_c/clean", "data/eval/jpeg", f"models/{BACKBONE}/afd/model.pt",
            f"models/{BACKBONE}/afd/fused.pt", f"metrics/eval/{BACKBONE}.json"} <= shared
    assert {path: theirs[path] for path in shared} == {path: ours[path] for path in shared}
    assert metrics(second) == metrics(repo)


def test_a_tracking_server_lost_during_registration_keeps_the_model_and_the_next_repro_registers_it(
        second, mlflow_server):
    name = f"afd-{BACKBONE}"
    fused = f"models/{BACKBONE}/afd/fused.pt"
    versions = len(client().search_model_versions(f"name='{name}'"))
    params = yaml.safe_load((second / "params.yaml").read_text())
    params["register"]["deploy_formats"] = []  # `repo` checks the exports; here they would only cost time
    params["profiles"]["default"]["iterations"] += 2  # a model the registry does not hold yet
    (second / "params.yaml").write_text(yaml.safe_dump(params))
    trained = dvc(second, "repro", f"fuse@{BACKBONE}-afd")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    run = start_dvc(second, "repro", f"register@{BACKBONE}", env={"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"})
    experiment = client().get_experiment_by_name("afd").experiment_id
    started = f"attributes.run_name = 'register@{BACKBONE}' AND attributes.status = 'RUNNING'"
    while run.poll() is None and not client().search_runs([experiment], started):
        time.sleep(0.2)
    mlflow_server.stop()
    try:
        output = output_of(run)
    finally:
        mlflow_server.restart()
    assert run.returncode != 0
    assert f"MLflow tracking at {mlflow_server.url} failed during run 'register@{BACKBONE}'" in output, output
    assert "Traceback" not in output
    assert fused in lock_outputs(second) and (second / fused).is_file()  # the trained model is kept
    assert dvc(second, "status", f"fuse@{BACKBONE}-afd").stdout.strip().startswith("Data and pipelines are up to date")

    rerun = dvc(second, "repro", f"register@{BACKBONE}")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert ran_stages(rerun) == {f"register@{BACKBONE}"}  # nothing retrained
    receipt = json.loads((second / "metrics" / "register" / f"{BACKBONE}.json").read_text())
    assert len(client().search_model_versions(f"name='{name}'")) > versions
    version = client().get_model_version(name, receipt["version"])
    assert version.tags[f"dvc.{fused}"] == lock_outputs(second)[fused]


def test_no_credential_reaches_a_log_an_output_a_tag_or_a_committed_file(repo, second, mlflow_server, s3_server):
    """After every run above (stages, pushes, faults): the test keys are in no file of either
    project, of the tracking server (database, log) or of the S3 server (log, stored objects,
    artifacts included), nor in an MLflow tag or parameter; only in the git-ignored config.local."""
    from conftest import TEST_SECRET_KEY, files_holding_credentials, objects_holding_credentials

    config_local = repo / ".dvc" / "config.local"
    assert TEST_SECRET_KEY in config_local.read_text()  # the push tests really used the keys
    assert subprocess.run(["git", "check-ignore", "-q", str(config_local)], cwd=repo).returncode == 0
    roots = (repo, second, mlflow_server.log_path.parent, s3_server.log_path.parent)
    assert files_holding_credentials(*roots, allowed=(config_local,)) == []
    assert objects_holding_credentials(s3_server) == []
    for run in client().search_runs([e.experiment_id for e in client().search_experiments()]):
        assert TEST_SECRET_KEY not in json.dumps({**run.data.tags, **run.data.params})


def test_repro_is_incremental(repo):
    """Runs last: it changes params. Nothing to do after a repro; one QF changed re-runs only its
    own set and what reads it (repro'd up to the evaluation; `status` names the rest)."""
    again = dvc(repo, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval_sets"]["avif"]["levels"] = [20]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = dvc(repo, "repro", f"evaluate@{BACKBONE}")
    assert rerun.returncode == 0, rerun.stderr
    assert ran_stages(rerun) == {"eval_sets@avif", f"evaluate@{BACKBONE}"}
    assert set(metrics(repo)["grid"]["direct"]) == {"clean", "jpeg_q25", "jpeg_q7", "multi_ct2", "avif_q20", "webp_q25"}
    stale = {line.rstrip(":") for line in dvc(repo, "status").stdout.splitlines() if line and not line[0].isspace()}
    assert stale == {f"register@{BACKBONE}", "report"}
