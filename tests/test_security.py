"""Model files from outside the process never run code when loaded."""

import ast
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch import nn

from afd.errors import AFDError
from afd.model.checkpoint import load_enhancer

REPO = Path(__file__).resolve().parents[1]


def test_every_torch_load_in_the_project_is_weights_only():
    calls = []
    for path in [*REPO.glob("afd/**/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("flows/*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                safe = any(k.arg == "weights_only" and ast.unparse(k.value) == "True" for k in node.keywords)
                calls.append((path.name, node.lineno, safe))
    assert calls, "the scan found no torch.load at all: it is not looking in the right place"
    assert [call for call in calls if not call[2]] == []


class _RunsCodeOnLoad:
    def __reduce__(self):
        return (Path.write_text, (Path(_RunsCodeOnLoad.marker), "pwned"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    _RunsCodeOnLoad.marker = str(tmp_path / "marker")
    malicious = tmp_path / "model.pt"
    torch.save({"kind": "afd", "config": {}, "deploy": False, "state_dict": _RunsCodeOnLoad()}, malicious)
    with pytest.raises(AFDError, match="model.pt: not a readable checkpoint"):
        load_enhancer(malicious)
    assert not (tmp_path / "marker").exists()


def test_a_registered_pickle_model_is_refused(mlflow_server, monkeypatch, tmp_path):
    """The registry may hold models logged by anyone; only torch.export programs are loaded, and
    loading one leaves no download behind (MLflow's default folder for it is never removed)."""
    import tempfile

    import mlflow

    from afd.ops.registry import load_registered

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("security")
    with mlflow.start_run():
        mlflow.pytorch.log_model(nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 registered_model_name="pickled")
        mlflow.pytorch.log_model(nn.Linear(2, 2), name="program", serialization_format="pt2",
                                 input_example=torch.zeros(2, 2).numpy(), registered_model_name="exported")
    temporary = tmp_path / "temporary"
    temporary.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temporary))
    with pytest.raises(AFDError, match="models:/pickled/1: not a torch.export program"):
        load_registered("models:/pickled/1")
    program = load_registered("models:/exported/1")
    assert program(torch.ones(3, 2)).shape == (3, 2)
    assert list(temporary.iterdir()) == []


# ---- poisoned torch.export programs -------------------------------------------------------------


def _writes_marker(marker: Path, result: str) -> object:
    """An object whose unpickling writes `marker`, then evaluates to `result` (an expression): what
    an attacker puts in a program archive so the model still works after running their code."""

    class Payload:
        def __reduce__(self):
            return eval, (f"[__import__('pathlib').Path({str(marker)!r}).write_text('pwned'), {result}][1]",)

    return Payload()


def _rewrite_archive(source: Path, target: Path, edit) -> None:
    """Copy a .pt2 zip entry by entry; `edit(name, data)` returns the new bytes of an entry (or
    None to drop it) and may return extra entries via the `extra` list it is given."""
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        root = old.namelist()[0].split("/")[0]
        extra: list[tuple[str, bytes]] = []
        for name in old.namelist():
            data = edit(name.split("/", 1)[1], old.read(name), extra)
            if data is not None:
                new.writestr(name, data)
        for name, data in extra:
            new.writestr(f"{root}/{name}", data)


def _pickled_weight(marker: Path):
    """An edit that marks the classifier's last weight `use_pickle` and stores it as a pickle that
    runs code: torch.export.load then calls torch.load(weights_only=False) on it."""

    def edit(name, data, extra):
        if name == "data/weights/model_weights_config.json":
            config = json.loads(data)
            key = "head.weight"  # of the tiny classifier below
            edit.file = config["config"][key]["path_name"]
            edit.shape = [int(s["as_int"]) for s in config["config"][key]["tensor_meta"]["sizes"]]
            config["config"][key]["use_pickle"] = True
            return json.dumps(config).encode()
        return data

    def finish(name, data, extra):
        if name == f"data/weights/{edit.file}":
            buffer = io.BytesIO()
            torch.save(_writes_marker(marker, f"__import__('torch').nn.Parameter(__import__('torch').full({edit.shape}, 0.01))"), buffer)
            return buffer.getvalue()
        return data

    return edit, finish


class _TinyClassifier(nn.Module):
    """Image in, 1000 logits out: stands in for a registered classifier."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 1000)

    def forward(self, images):
        return self.head(images.mean(dim=(2, 3)))


def _poison(program: Path, target: Path, marker: Path) -> None:
    edit, finish = _pickled_weight(marker)
    middle = target.with_suffix(".partial.pt2")
    _rewrite_archive(program, middle, edit)
    _rewrite_archive(middle, target, finish)
    middle.unlink()


def _exported(tmp_path: Path) -> Path:
    from afd.ops.export import save_program

    return save_program(_TinyClassifier(), torch.rand(2, 3, 8, 8), tmp_path / "clean.pt2")


def test_a_poisoned_program_runs_code_in_torch_export_load_but_is_refused_by_ours(tmp_path):
    from afd.ops.export import load_program

    marker = tmp_path / "marker"
    _poison(_exported(tmp_path), tmp_path / "poisoned.pt2", marker)
    hijacked = torch.export.load(str(tmp_path / "poisoned.pt2")).module()  # the threat is real:
    assert marker.read_text() == "pwned"  # torch ran the payload, and the model still classifies
    assert hijacked(torch.rand(2, 3, 8, 8)).shape == (2, 1000)
    marker.unlink()
    with pytest.raises(AFDError, match=r"poisoned.pt2: refusing to load this program: "
                                       r"'data/weights/model_weights_config.json' asks to unpickle 'head.weight'"):
        load_program(tmp_path / "poisoned.pt2")
    assert not marker.exists()
    assert load_program(tmp_path / "clean.pt2").module()(torch.rand(2, 3, 8, 8)).shape == (2, 1000)


@pytest.mark.parametrize("attack", ["sample_inputs", "opaque_constant", "aoti_library", "not_a_zip"])
def test_other_ways_to_hide_code_in_a_program_are_refused(tmp_path, attack):
    from afd.ops.export import load_program

    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(_writes_marker(marker, "((__import__('torch').rand(2, 3, 8, 8),), {})"), payload)

    def edit(name, data, extra):
        if attack == "sample_inputs" and name == "data/sample_inputs/model.pt":
            return payload.getvalue()  # fails weights_only=True; torch retries with weights_only=False
        if attack == "opaque_constant" and name == "data/constants/model_constants_config.json":
            extra.append(("data/constants/opaque_obj_0", payload.getvalue()))
            return json.dumps({"config": {"c": {"path_name": "opaque_obj_0", "is_param": False,
                                                "use_pickle": True, "tensor_meta": None}}}).encode()
        if attack == "aoti_library" and name == "archive_format":
            extra.append(("data/aotinductor/model/model.so", b"\x7fELF"))
        return data

    poisoned = tmp_path / "poisoned.pt2"
    if attack == "not_a_zip":
        poisoned.write_bytes(payload.getvalue()[:100])
        reason = "not a torch.export program archive"
    else:
        _rewrite_archive(_exported(tmp_path), poisoned, edit)
        reason = {"sample_inputs": "its sample inputs are not plain tensors",
                  "opaque_constant": "holds 'data/constants/opaque_obj_0'",
                  "aoti_library": "holds 'data/aotinductor/model/model.so'"}[attack]
    with pytest.raises(AFDError, match=re.escape(reason)):
        load_program(poisoned)
    assert not marker.exists()


def test_a_poisoned_champion_in_a_real_registry_is_refused_by_classify_and_the_device_benchmark(
        tmp_path, mlflow_server, monkeypatch):
    """Registered as afd-poisoned@champion on the real tracking server (artifacts in S3): `afd
    classify --model` and the device benchmark's fetch refuse it with one line, and run nothing."""
    import mlflow

    from afd.ops.device import fetch_programs, resolve_version

    marker = tmp_path / "marker"
    model_dir = tmp_path / "model"
    mlflow.pytorch.save_model(_TinyClassifier(), str(model_dir), serialization_format="pt2",
                              input_example=torch.rand(2, 3, 8, 8).numpy())
    program = model_dir / "data" / "model.pt2"
    clean = tmp_path / "clean.pt2"
    program.rename(clean)
    _poison(clean, program, marker)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    mlflow.set_tracking_uri(mlflow_server.url)
    mlflow.set_experiment("security")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(model_dir), "model")
    version = mlflow.register_model(f"runs:/{run.info.run_id}/model", "afd-poisoned")
    mlflow.MlflowClient().set_registered_model_alias("afd-poisoned", "champion", version.version)

    photo = tmp_path / "photo.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(photo)
    uri = "models:/afd-poisoned@champion"
    cli = subprocess.run([sys.executable, "-m", "afd.cli", "classify", "--model", uri, str(photo)],
                         capture_output=True, text=True, env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url})
    assert cli.returncode == 2, cli.stdout + cli.stderr
    assert "Traceback" not in cli.stderr
    assert [line for line in cli.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {uri}: refusing to load this program: 'data/weights/model_weights_config.json' "
        "asks to unpickle 'head.weight' (use_pickle)"]
    with pytest.raises(AFDError, match="models:/afd-poisoned/1: refusing to load this program"):
        fetch_programs(resolve_version("poisoned"), tmp_path / "device")
    assert not marker.exists()
