"""MLflow tracking for the pipeline's steps: where runs go, what lineage they carry.

On a fresh clone runs go to a local SQLite file (`mlflow.db`, no server needed); set
`MLFLOW_TRACKING_URI` to a server (e.g. `http://127.0.0.1:5000`) to track there instead. Nothing
secret is ever logged: parameters come from params.yaml, tags from git, dvc.lock and file hashes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit

from afd.errors import AFDError, first_line, redact
from afd.io import file_sha256, parse_yaml

log = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT = "afd"


def tracking_uri() -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def use_tracking_server(existing: bool = False) -> str:
    """Point MLflow at `tracking_uri()` and return it as messages may show it (credentials
    redacted). A server that refuses the connection or whose host does not resolve is an AFDError
    at once: MLflow would retry that for minutes. Timeouts and server errors keep MLflow's retries.
    `existing`: for a reader (of a registered model, say): a SQLite store that does not exist is an
    AFDError, where MLflow would create an empty one in the current folder."""
    import mlflow

    uri = tracking_uri()
    shown = redact(uri)
    if existing and uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        unset = "" if os.environ.get("MLFLOW_TRACKING_URI") else "MLFLOW_TRACKING_URI is not set, so "
        raise AFDError(f"{unset}MLflow tracking is the SQLite file {shown}, and there is no {uri[len('sqlite:///'):]} "
                       f"in {Path.cwd()}: set MLFLOW_TRACKING_URI to the server that holds the model")
    mlflow.set_tracking_uri(uri)
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and parts.hostname:
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
            socket.create_connection((parts.hostname, port), timeout=5).close()
        except (ConnectionRefusedError, socket.gaierror, ValueError) as error:
            reason = "connection refused" if isinstance(error, ConnectionRefusedError) else first_line(error)
            raise AFDError(f"MLflow tracking at {shown} is unreachable ({reason}); "
                           "outputs already written are kept: re-run to log them") from None
        except OSError:  # a timeout or a transient network error: MLflow's retries decide
            pass
    return shown


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
    for stage in (parse_yaml(lock_file.read_text()) or {}).get("stages", {}).values():
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


PROCESS_TAGS = ("process.host", "process.pid")  # which process owns a run: see close_abandoned_runs


@contextlib.contextmanager
def tracked_run(run_name: str, params: dict | None = None, tags: dict | None = None) -> Iterator:
    """An MLflow run in the "afd" experiment; an unreachable tracking server is a clear AFDError.
    The run ends FINISHED, FAILED on an error, or KILLED on an interrupt (SIGINT, or SIGTERM in a
    stage); a run of the same name left RUNNING by a process of this host that no longer exists
    (SIGKILL) is marked KILLED first."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = use_tracking_server()
    owner = {PROCESS_TAGS[0]: socket.gethostname(), PROCESS_TAGS[1]: str(os.getpid())}
    try:
        experiment = mlflow.set_experiment(EXPERIMENT)
        close_abandoned_runs(experiment.experiment_id, run_name)
        run = mlflow.start_run(run_name=run_name, tags={**(tags or {}), **owner})
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
    except (KeyboardInterrupt, SystemExit):
        status = "KILLED"
        raise
    finally:
        try:
            mlflow.end_run(status)
        except MlflowException as error:  # unreachable server: the next run of this name closes it
            log.warning("MLflow run %r not closed at %s (%s)", run_name, uri, first_line(error))


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """Metrics of the active run (`tracked_run`)."""
    import mlflow

    mlflow.log_metrics(metrics, step=step)


def log_dict(record: dict, artifact_file: str) -> None:
    import mlflow

    mlflow.log_dict(record, artifact_file)


def log_artifact(path: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifact(str(path), artifact_path)


def log_artifacts(folder: str | os.PathLike, artifact_path: str | None = None) -> None:
    import mlflow

    mlflow.log_artifacts(str(folder), artifact_path)


def close_abandoned_runs(experiment_id: str, run_name: str) -> list[str]:
    """Mark KILLED the runs named `run_name` still RUNNING whose process, on this host, is gone
    (killed with SIGKILL, or its server was down when it ended). Returns their ids."""
    import mlflow

    client = mlflow.MlflowClient()
    host = socket.gethostname().replace("'", "")
    running = client.search_runs(
        [experiment_id],
        f"attributes.run_name = '{run_name}' AND attributes.status = 'RUNNING' AND tags.`{PROCESS_TAGS[0]}` = '{host}'")
    closed = []
    for run in running:
        pid = run.data.tags.get(PROCESS_TAGS[1], "")
        if pid.isdigit() and not _process_exists(int(pid)):
            client.set_terminated(run.info.run_id, "KILLED")
            closed.append(run.info.run_id)
            log.info("MLflow run %s (%r) was left RUNNING by process %s, which is gone: marked KILLED",
                     run.info.run_id, run_name, pid)
    return closed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True
