"""A tiny end-to-end `dvc repro` of the real pipeline in a temporary copy of the repository."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from afd.checkpoint import load_enhancer

REPO = Path(__file__).resolve().parents[1]
BACKBONE = "efficientnet_lite0"


def tiny_params() -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sources"]["embedded"].update(eval_photos=["coffee"], view_sizes=[256])
    params["patches"]["qualities"] = [25, 7]
    params["eval_sets"].update(jpeg_qualities=[25, 7], compression_times=[1, 2], avif_qualities=[25])
    params["train"].update(backbones=[BACKBONE], methods=["afd", "arcnn"])
    params["fuse"]["methods"] = ["afd"]
    params["profiles"]["default"].update(patch_count=8, iterations=12, batch_size=2, crop=64,
                                         lr_drop_at=8, checkpoint_every=2)
    params["evaluate"]["batch_size"] = 4
    params["efficiency"].update(warmup=1, repeats=1)
    return params


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("repo")
    for name in ("afd", "stages"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(REPO / name, root / name)
    (root / "params.yaml").write_text(yaml.safe_dump(tiny_params()))
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    assert dvc(root, "init", "-q").returncode == 0
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
    process = subprocess.Popen(command, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not state.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    rerun = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    resumed_from = int(rerun.stdout.rsplit("resumed from step ", 1)[1].split(")")[0])
    assert 0 < resumed_from < 12
    resumed = torch.load(repo / "models" / BACKBONE / "afd" / "model.pt", weights_only=True)
    for name, tensor in uninterrupted["state_dict"].items():
        assert torch.equal(tensor, resumed["state_dict"][name]), name


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
    assert ran == {"eval_avif@20", f"evaluate@{BACKBONE}", "report"}
    assert set(metrics(repo)["grid"]["direct"]) == {"clean", "jpeg_q25", "jpeg_q7", "multi_ct1", "multi_ct2", "avif_q20"}
