"""A tiny end-to-end `dvc repro` of the real pipeline in a temporary copy of the repository,
tracked by a real MLflow server whose artifacts live in a real S3 server (SeaweedFS)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from afd.checkpoint import load_enhancer
from conftest import BACKBONE, make_tiny_project



TRACKING_ENV: dict[str, str] = {}  # set by the repo fixture: MLFLOW_TRACKING_URI of the test server


def dvc(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, **TRACKING_ENV, **(env or {}),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, mlflow_server) -> Path:
    TRACKING_ENV["MLFLOW_TRACKING_URI"] = mlflow_server.url
    root = make_tiny_project(tmp_path_factory.mktemp("repo"))
    result = dvc(root, "repro")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def metrics(repo: Path) -> dict:
    return json.loads((repo / "metrics" / "eval" / f"{BACKBONE}.json").read_text())


def test_the_grid_covers_every_method_and_set(repo):
    result = metrics(repo)
    assert result["methods"] == ["direct", "afd", "arcnn"]
    sets = {"clean", "jpeg_q25", "jpeg_q7", "multi_ct1", "multi_ct2", "avif_q25"}
    for method in result["methods"]:
        assert set(result["grid"][method]) == sets
        assert set(result["averages"][method]) == {"jpeg", "multi", "avif"}
    assert result["data"]["images"] == 5 and result["data"]["labelled"] == 0
    assert "top1" not in result["grid"]["direct"]["jpeg_q7"]  # embedded photos have no labels


def test_direct_test_is_the_reference_and_compression_really_drifts(repo):
    grid = metrics(repo)["grid"]["direct"]
    assert grid["clean"] == {"agreement": 1.0, "kl": 0.0, "feature_mse": 0.0}
    assert grid["jpeg_q7"]["feature_mse"] > grid["jpeg_q25"]["feature_mse"] > 0
    assert grid["jpeg_q7"]["kl"] > 0
    assert grid["multi_ct2"]["feature_mse"] >= grid["multi_ct1"]["feature_mse"] * 0.9


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
    assert "5 views" in report and "smoke test" in report  # says what data and how many images
    assert any((repo / "reports" / "figures").glob("*.png"))
    curve = (repo / "plots" / "train" / BACKBONE / "afd.csv").read_text().splitlines()
    assert curve[0] == "step,loss" and len(curve) == 1 + 12 // 10 + 1


def test_killed_training_resumes_to_the_uninterrupted_weights(repo):
    """SIGKILL the train stage right after its first checkpoint; the re-run ends where `dvc repro` did."""
    uninterrupted = torch.load(repo / "models" / BACKBONE / "afd" / "model.pt", weights_only=True)
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
    assert 0 < resumed_from < 12
    resumed = torch.load(repo / "models" / BACKBONE / "afd" / "model.pt", weights_only=True)
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


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
    # the attached deploy formats, downloaded from the server (artifacts proxied to S3), still agree
    from afd.export import run_executorch, run_onnx
    from afd.images import load_image, to_batch

    deploy = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="deploy", dst_path=tmp_path))
    model = mlflow.pytorch.load_model(f"models:/afd-{BACKBONE}/{receipt['version']}")
    images = to_batch([load_image(p) for p in sorted((repo / "data" / "eval" / "jpeg_q7").iterdir())[:2]])
    expected = model(images[:1])
    assert (run_executorch(deploy / f"afd-{BACKBONE}.pte", images[:1]) - expected).abs().max() < 1e-4
    assert (run_onnx(deploy / "onnx" / f"afd-{BACKBONE}.onnx", images) - model(images)).abs().max() < 1e-4


def test_the_gate_promotes_a_better_model_and_keeps_the_champion_against_a_worse_one(repo, tmp_path):
    import mlflow

    from afd.backbones import build_backbone
    from afd.checkpoint import load_enhancer
    from afd.classifier import EnhancedClassifier
    from afd.images import load_image, to_batch
    from afd.registry import GateScores, register_classifier

    mlflow.set_tracking_uri(TRACKING_ENV["MLFLOW_TRACKING_URI"])
    mlflow.set_experiment("afd-gate-test")
    module, _ = load_enhancer(repo / "models" / BACKBONE / "afd" / "fused.pt")
    model = EnhancedClassifier(build_backbone(BACKBONE), module, "stem").eval()
    images = to_batch([load_image(p) for p in sorted((repo / "data" / "eval" / "clean").glob("*.png"))[:2]])
    name = f"afd-{BACKBONE}"

    def register(score):
        with mlflow.start_run():
            return register_classifier(model, BACKBONE, images, GateScores(score, 0.5, 0.9, 0.8), {"test": "gate"})

    best = register(0.90)
    assert best.alias == "champion"
    worse = register(0.70)  # beats DirectTest, but not the champion
    assert worse.alias == "challenger"
    assert client().get_model_version_by_alias(name, "champion").version == best.version
    below_direct = register(0.40)
    assert below_direct.alias == "challenger" and "DirectTest" in below_direct.reason
    assert client().get_model_version_by_alias(name, "champion").version == best.version

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
    outputs = ["data/div2k_c/clean", "data/eval/jpeg_q7", f"models/{BACKBONE}/afd/fused.pt"]
    for output in outputs:
        originals = sorted(p for p in (repo / output).rglob("*") if p.is_file()) if (repo / output).is_dir() else [repo / output]
        assert originals
        for original in originals:
            restored = clone / original.relative_to(repo)
            assert restored.read_bytes() == original.read_bytes(), restored


def test_wrong_s3_credentials_reading_data_give_a_clear_error(s3_server, monkeypatch):
    from afd.data import list_images
    from afd.errors import AFDError
    from conftest import TEST_ACCESS_KEY

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEST_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint)
    with pytest.raises(AFDError, match="s3://afd/dvc-test") as error:
        list_images("s3://afd/dvc-test")
    assert "wrong-secret" not in str(error.value)


def test_no_secret_reaches_a_committed_file_a_report_or_mlflow(repo):
    from conftest import TEST_SECRET_KEY

    for path in [repo / "dvc.yaml", repo / "dvc.lock", repo / ".dvc" / "config", *(repo / "metrics").rglob("*.json"),
                 *(repo / "reports").rglob("*.md")]:
        assert TEST_SECRET_KEY not in path.read_text(), path
    for run in runs_by_name().values():
        assert TEST_SECRET_KEY not in json.dumps({**run.data.tags, **run.data.params})


def test_repro_is_incremental(repo):
    """Runs last: it changes params. Nothing to do after a repro; one QF changed re-runs only its
    own set and what reads it."""
    again = dvc(repo, "repro")
    assert again.returncode == 0 and "Running stage" not in again.stdout, again.stdout
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eval_sets"]["avif_qualities"] = [20]
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    rerun = dvc(repo, "repro")
    assert rerun.returncode == 0, rerun.stderr
    ran = {line.split("'")[1] for line in rerun.stdout.splitlines() if line.startswith("Running stage")}
    assert ran == {"eval_avif@20", f"evaluate@{BACKBONE}", f"register@{BACKBONE}", "report"}
    assert set(metrics(repo)["grid"]["direct"]) == {"clean", "jpeg_q25", "jpeg_q7", "multi_ct1", "multi_ct2", "avif_q20"}
