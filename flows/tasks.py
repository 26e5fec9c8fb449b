"""The retraining flow's tasks. Each runs DVC stages or calls one step of `afd.pipeline`; none
holds logic of its own, so a flow run and a `dvc repro` give the same data, models and metrics.

Tasks run in the project directory (the one holding dvc.yaml and params.yaml): the training
worker's deployment sets it, and Dask workers must be started from a checkout of it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import task_run

from afd.benchmark import format_table
from afd.determinism import pin_cpu_numerics
from afd.errors import AFDError
from afd.layout import METRICS, eval_sets, fused_model, trained_model
from afd.methods import Method
from afd.evaluate import Outcomes
from afd.pipeline import evaluate_cell, evaluation_record, log_evaluation, register_backbone, trained_methods
from afd.report import grid_summary
from afd.tracking import dvc_lock_hashes

TRANSIENT_RETRIES = dict(retries=2, retry_delay_seconds=[10, 30])  # S3 and the registry: network hiccups


class DvcError(AFDError):
    pass


def dvc(*args: str) -> str:
    """Run `dvc <args>` in the project directory, streaming its output to the run's log."""
    logger = get_run_logger()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    process = subprocess.Popen([sys.executable, "-m", "dvc", *args], env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for line in process.stdout:
        lines.append(line.rstrip())
        logger.info(lines[-1])
    if process.wait() != 0:
        tail = "\n".join(lines[-15:])
        raise DvcError(f"`dvc {' '.join(args)}` failed with exit status {process.returncode} in {Path.cwd()}:\n{tail}")
    return "\n".join(lines)


@task(name="dvc-pull", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def pull_data(stages: list[str]) -> bool:
    """Fetch the stages' outputs from the DVC remote, where one is configured (a first run on a
    machine reuses what another already made); missing ones are left for `dvc repro`."""
    if not dvc("remote", "list").strip():
        get_run_logger().info("no DVC remote configured: data sets are made locally")
        return False
    dvc("pull", "--allow-missing", *stages)
    return True


def _repro_run_name() -> str:
    return "dvc-repro " + " ".join(task_run.parameters["stages"])


@task(task_run_name=_repro_run_name, cache_policy=NO_CACHE, retries=1, retry_delay_seconds=10)
def reproduce(stages: list[str]) -> str:
    """`dvc repro` of the stages: DVC re-runs only what changed (it is the cache here)."""
    return dvc("repro", *stages)


def _cell_cache_key(context, parameters: dict) -> str | None:
    """A cell's result is reused while its inputs are unchanged: the model and data versions
    (dvc.lock md5s), the parameters that shape the cell, and the evaluation code."""
    params, backbone, method, set_name = (parameters[k] for k in ("params", "backbone", "method", "set_name"))
    sets = eval_sets(params)
    inputs = {sets["clean"], sets[set_name]}  # one path for the clean set's own cell
    if method != "direct":
        spec = Method.from_params(method, params["methods"])
        inputs.add(fused_model(backbone, method) if spec.fusable else trained_model(backbone, method))
    versions = dvc_lock_hashes(sorted(inputs))
    if len(versions) < len(inputs):  # not made by DVC here: no version to key on
        return None
    import afd.evaluate
    import afd.pipeline

    code = b"".join(Path(module.__file__).read_bytes() for module in (afd.evaluate, afd.pipeline))
    key = json.dumps([backbone, method, set_name, versions, params["backbones"][backbone],
                      params["methods"].get(method), params["evaluate"], hashlib.sha256(code).hexdigest()],
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()


@task(task_run_name="evaluate {backbone} {method} {set_name}", cache_key_fn=_cell_cache_key, persist_result=True)
def evaluate_grid_cell(params: dict, backbone: str, method: str, set_name: str) -> Outcomes:
    """One cell of the grid (method or DirectTest on one set), on the pinned CPU code paths of the
    `evaluate` stage, so the cell equals the stage's."""
    pin_cpu_numerics(params["numerics"]["threads"])
    return evaluate_cell(params, backbone, method, set_name)


@task(name="record-evaluation", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def record_evaluation(params: dict, backbone: str, grid: dict[str, dict[str, Outcomes]]) -> dict:
    """The evaluation record, logged to MLflow and published as the run's grid artifact."""
    trained = trained_methods(params, backbone)
    record = evaluation_record(params, trained, grid)
    log_evaluation(params, trained, record)
    create_markdown_artifact(markdown=grid_summary(record), key=f"grid-{backbone.replace('_', '-')}",
                             description=f"Evaluation grid of {backbone}")
    return record


@task(name="register", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def register(params: dict, backbone: str, record: dict) -> dict:
    """Register backbone + fused AFD (with exports and comparison programs) and apply the gate."""
    receipt = register_backbone(params, backbone, record)
    checks = {"ExecuTorch": receipt.get("pte_max_abs_diff"), "ONNX": receipt.get("onnx_max_abs_diff")}
    checked = ", ".join(f"{name} max |Δ| {difference:.2e}" for name, difference in checks.items()
                        if difference is not None)
    create_markdown_artifact(
        key=f"registration-{backbone.replace('_', '-')}",
        markdown=(f"`{receipt['name']}` version **{receipt['version']}** → **{receipt['alias']}**: "
                  f"{receipt['reason']}.\n\n"
                  + (f"Exports checked against PyTorch: {checked}." if checked else
                     "No deploy exports (params: register.deploy_formats).")),
        description=f"Registry entry of {backbone}")
    get_run_logger().info("%s version %s: %s (%s)", receipt["name"], receipt["version"], receipt["alias"],
                          receipt["reason"])
    return receipt


@task(name="publish-efficiency", cache_policy=NO_CACHE)
def publish_efficiency(backbones: list[str]) -> dict:
    """The efficiency table (Table VII) that the `efficiency` stage measured, as a run artifact."""
    measured = json.loads((METRICS / "efficiency.json").read_text())
    parts = []
    for backbone in backbones:
        parts += [f"### {backbone}", measured[backbone]["setup"], format_table(measured[backbone]["rows"])]
    create_markdown_artifact(markdown="\n\n".join(parts), key="efficiency",
                             description="Efficiency (Table VII), measured on the training machine")
    return {backbone: measured[backbone]["ratios"] for backbone in backbones}
