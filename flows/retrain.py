"""The retraining flow, as the pipeline diagram reads:

    dvc pull -> every stage of dvc.yaml, in DVC's order, independent ones at once (Dask);
       the training items optionally on the workers of another Dask cluster, each in its own
       checkout, through the DVC remote (flows/fanout.py)
    -> dvc push + a commit of dvc.lock and the metrics on a retraining branch (git push)
    -> the registered versions point at that commit -> benchmark on the device (the
       `edge-devices` pool's worker), waited for with a timeout

dvc.yaml is the one description of the pipeline: the flow reads its stages and their order from
DVC (flows/dag.py) and runs each as a task that does what `dvc repro` does for it, so after a run
`dvc status` is clean and `dvc metrics show` and the report show what was registered.

Scheduled weekly by the `weekly` deployment in prefect.yaml; trigger it by hand from the UI or
with `prefect deployment run afd-retrain/weekly`.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from afd.errors import AFDError, ConfigError
from afd.ops.device import DEVICE_TAG, resolve_version
from afd.ops.params import load_params
from afd.ops.steps import parallel_parts
from flows.dag import Stage, needed_for, read_pipeline
from flows.tasks import (
    changed_stages,
    compute_part,
    publish_efficiency,
    publish_results,
    pull_outputs,
    read_registrations,
    record_lineage,
    run_stage,
    stage_needed,
)

DEVICE_DEPLOYMENT = "afd-device-benchmark/edge"


class DeviceTimeout(AFDError):
    pass


def local_cluster_settings(threads_per_stage: int = 2) -> dict:
    """The local Dask cluster's settings: one single-task process per `threads_per_stage` cores
    (at least one; a stage computes with that many PyTorch threads, params.yaml numerics.threads),
    so the cores are not oversubscribed; scheduler and dashboard on loopback only."""
    workers = max(1, (os.cpu_count() or 1) // threads_per_stage)
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787"}


def stage_task_runner(dask_address: str | None):
    """Dask for the stages: the scheduler at `dask_address`, else a local cluster."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_settings(load_params()["numerics"]["threads"]))


@flow(name="afd-pipeline")
def run_pipeline(stages: dict[str, Stage], changed: list[str], training_address: str | None = None) -> dict[str, str]:
    """Every stage as a task, submitted with its upstream stages' futures, so the task runner
    starts it as soon as those have finished; a stage with parts that can be computed ahead (the
    evaluation grid's cells) gets one task per part first; a training stage goes to the workers
    at `training_address` when given (flows/fanout.py). {stage: RAN or UNCHANGED}."""
    params = load_params()
    futures = {}
    for name, stage in stages.items():  # upstream first
        needed = stage_needed.submit(stage, changed, [futures[up] for up in stage.upstream if up in futures])
        parts = [compute_part.submit(stage, command, needed) for command in parallel_parts(params, name)]
        futures[name] = run_stage.submit(stage, needed, parts, training_address)
    return {name: future.result() for name, future in futures.items()}


@task(name="benchmark-on-device", cache_policy=NO_CACHE)
def benchmark_on_device(backbone: str, version: str, deployment: str, timeout_s: float) -> dict:
    """Hand the benchmark of the registered version to the device pool and wait for it. A device
    that does not finish in time fails this task (the registered version is untouched) and the
    waiting run is cancelled, so a device that comes back later does not pick up a stale request."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    try:
        run = run_deployment(deployment, parameters={"backbone": backbone, "version": int(version)},
                             timeout=timeout_s, poll_interval=2)
    except ObjectNotFound:
        raise AFDError(f"deployment {deployment!r} does not exist: deploy prefect.yaml (`make up`)") from None
    if run.state is None or not run.state.is_final():
        with get_client(sync_client=True) as client:
            client.set_flow_run_state(run.id, Cancelled(message=f"no device answered within {timeout_s:.0f} s"),
                                      force=True)
        raise DeviceTimeout(
            f"device benchmark of afd-{backbone} version {version}: no worker of {deployment!r}'s pool finished it "
            f"within {timeout_s:.0f} s (flow run {run.name} was {run.state.name if run.state else 'unknown'}; "
            "cancelled). The registered version and its alias are unchanged; start a device worker and run "
            f"the `{deployment}` deployment again.")
    if not run.state.is_completed():
        raise AFDError(f"device benchmark flow run {run.name} ended {run.state.name}: {run.state.message}")
    tags = resolve_version(backbone, version).tags
    results = {key: value for key, value in tags.items() if key.startswith(f"{DEVICE_TAG}.")}
    get_run_logger().info("afd-%s version %s on %s: %s", backbone, version, results.get(f"{DEVICE_TAG}.name"),
                          results)
    return results


@flow(name="afd-retrain", log_prints=True)
def retrain(
    targets: list[str] | None = None,
    dask_address: str | None = None,
    publish: bool = True,
    git_remote: str | None = "origin",
    branch_prefix: str = "retrain",
    device_deployment: str | None = DEVICE_DEPLOYMENT,
    device_timeout_s: float = 1800.0,
    training_address: str | None = None,
) -> dict:
    """Reproduce dvc.yaml's `targets` (stage names or base names, as `dvc repro` takes them;
    default: the whole pipeline), publish the result, and benchmark each newly registered version.
    `dask_address`: a Dask scheduler for the stages (default: a local cluster).
    `publish`: push outputs to the DVC remote and commit the results on a new branch
    `<branch_prefix>/<flow run>`, pushed to `git_remote` (None: commit only).
    `device_deployment`: the on-device benchmark deployment (None: skip the benchmark).
    `training_address`: a Dask scheduler whose workers, each in a checkout of its own on another
    machine, train the `train` items (dvc.yaml's fan-out stages) in parallel (flows/fanout.py);
    default: they run with the other stages."""
    try:
        stages = needed_for(read_pipeline(), targets)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    pull_outputs()
    changed = changed_stages()
    ran = run_pipeline.with_options(task_runner=stage_task_runner(dask_address))(stages, changed, training_address)
    backbones = [name.split("@", 1)[1] for name in stages if name.startswith("register@")]
    receipts = read_registrations(backbones, ran)
    if "efficiency" in stages:
        publish_efficiency()
    if publish:
        published = publish_results(stages, git_remote, branch_prefix)
        record_lineage(receipts, published)
        for receipt in receipts.values():
            receipt["git_commit"] = published["commit"]

    if device_deployment:  # every new version gets its chance even if one device fails
        failures = []
        for backbone, receipt in receipts.items():
            if not receipt["registered"]:
                continue
            state = benchmark_on_device(backbone, receipt["version"], device_deployment, device_timeout_s,
                                        return_state=True)
            if state.is_completed():
                receipt["device"] = state.result()
            else:
                failures.append(state.message or f"{backbone}: {state.name}")
        if failures:
            raise AFDError("device benchmark failed (the registered models are kept):\n" + "\n".join(failures))
    get_run_logger().info("stages run: %s", ", ".join(n for n, r in ran.items() if r == "ran") or "none")
    return receipts


if __name__ == "__main__":
    retrain()
