"""MLflow tracking for the pipeline's steps: where runs go, what lineage they carry.

On a fresh clone runs go to a local SQLite file (`mlflow.db`, no server needed); set
`MLFLOW_TRACKING_URI` to a server (e.g. `http://127.0.0.1:5000`) to track there instead. Nothing
secret is ever logged: parameters come from params.yaml, tags from git, dvc.lock and file hashes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
from pathlib import Path
from typing import Iterator

import yaml

from .errors import AFDError, first_line
from .io import file_sha256

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT = "afd"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def git_commit() -> str:
    """HEAD's commit, with "-dirty" when tracked files have uncommitted changes; "unknown" outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("-dirty" if dirty else "")


def dvc_lock_hashes(paths: list[str | os.PathLike], lock_file: str | os.PathLike = "dvc.lock") -> dict[str, str]:
    """The md5 that dvc.lock records for each output path (data sets, models) among `paths`."""
    lock_file = Path(lock_file)
    if not lock_file.is_file():
        return {}
    wanted = {Path(p).as_posix() for p in paths}
    hashes = {}
    for stage in (yaml.safe_load(lock_file.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if out["path"] in wanted:
                hashes[out["path"]] = out.get("md5", "")
    return hashes


def lineage_tags(backbone: str, weights_file: str | os.PathLike | None, data_paths: list) -> dict[str, str]:
    """Tags tying a run to its code, its data sets' versions and its backbone weights."""
    tags = {"git_commit": git_commit(), "backbone": backbone,
            "backbone_weights_sha256": file_sha256(weights_file) if weights_file else "random"}
    for path, md5 in dvc_lock_hashes(data_paths).items():
        tags[f"dvc.{path}"] = md5
    return tags


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """{"a": {"b": 1}} -> {"a.b": 1}: MLflow params and metrics are flat."""
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


@contextlib.contextmanager
def tracked_run(run_name: str, params: dict | None = None, tags: dict | None = None) -> Iterator:
    """An MLflow run in the "afd" experiment; an unreachable tracking server is a clear AFDError."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        mlflow.set_experiment(EXPERIMENT)
        run = mlflow.start_run(run_name=run_name, tags=tags)
    except MlflowException as error:
        raise AFDError(f"MLflow tracking at {uri} is unreachable ({first_line(error)}); "
                       "outputs already written are kept: re-run to log them") from None
    status = "FAILED"
    try:
        if params:
            mlflow.log_params(flatten(params))
        yield run
        status = "FINISHED"
    except MlflowException as error:  # the server went away mid-run
        raise AFDError(f"MLflow tracking at {uri} failed during run {run_name!r} "
                       f"({first_line(error)}); outputs already written are kept: "
                       "re-run to log them") from None
    finally:
        try:
            mlflow.end_run(status)
        except MlflowException as error:  # unreachable server: the run stays open there
            logging.getLogger(__name__).warning("MLflow run %r not closed at %s (%s)", run_name, uri,
                                                first_line(error))
