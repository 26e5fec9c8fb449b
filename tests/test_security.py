"""Model files from outside the process never run code when loaded."""

import ast
from pathlib import Path

import pytest
import torch
from torch import nn

from afd.checkpoint import load_enhancer
from afd.errors import AFDError

REPO = Path(__file__).resolve().parents[1]


def test_every_torch_load_in_the_project_is_weights_only():
    calls = []
    for path in [*REPO.glob("afd/*.py"), *REPO.glob("stages/*.py"), *REPO.glob("flows/*.py")]:
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


def test_a_registered_pickle_model_is_refused(tmp_path, monkeypatch):
    """The registry may hold models logged by anyone; only torch.export programs are loaded."""
    import mlflow

    from afd.registry import load_registered

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    mlflow.set_experiment("security")
    with mlflow.start_run():
        mlflow.pytorch.log_model(nn.Linear(2, 2), name="model", serialization_format="pickle",
                                 registered_model_name="pickled")
        mlflow.pytorch.log_model(nn.Linear(2, 2), name="program", serialization_format="pt2",
                                 input_example=torch.zeros(2, 2).numpy(), registered_model_name="exported")
    with pytest.raises(AFDError, match="models:/pickled/1: not a torch.export program"):
        load_registered("models:/pickled/1")
    program = load_registered("models:/exported/1")
    assert program(torch.ones(3, 2)).shape == (3, 2)
