"""MLflow tracking when the server misbehaves: one clear error, nothing already written is lost."""

import mlflow
import pytest

from afd.errors import AFDError
from afd.io import write_json
from afd.ops.tracking import tracked_run
from services.mlflow_server import start_mlflow


def test_a_tracking_server_lost_mid_run_is_one_clear_error_and_keeps_the_outputs(tmp_path, s3_server, monkeypatch):
    server = start_mlflow(tmp_path / "mlflow", s3_server)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # fail now, not after minutes of back-off
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    model = tmp_path / "models" / "model.json"
    try:
        with pytest.raises(AFDError, match=f"MLflow tracking at {server.url} failed during run 'train@x'") as error:
            with tracked_run("train@x", {"lr": 0.1}):
                mlflow.log_metric("loss", 1.0)
                write_json(model, {"weights": [1, 2, 3]})  # the stage's output, written before the loss
                server.stop()
                mlflow.log_metric("loss", 0.5)
    finally:
        server.stop()
    assert "re-run to log them" in str(error.value)
    assert model.exists() and mlflow.active_run() is None


def test_an_unreachable_tracking_server_stops_before_any_work(tmp_path, monkeypatch):
    from services.s3 import free_port

    url = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    worked = []
    with pytest.raises(AFDError, match=f"MLflow tracking at {url} is unreachable"):
        with tracked_run("evaluate@x"):
            worked.append(True)
    assert worked == []


def test_quoted_library_errors_are_one_line_even_when_empty():
    from afd.errors import first_line

    assert first_line(RuntimeError("first\nsecond")) == "first"
    assert first_line(RuntimeError("x" * 500), 300) == "x" * 300
    assert first_line(OSError()) == "OSError"  # an empty message would otherwise raise IndexError
