"""The retraining flow, as the pipeline diagram reads:

    data sets (DVC) -> train each backbone x method (DVC) -> fuse (DVC) -> efficiency (DVC)
    -> evaluation grid, one task per backbone x method x set (Dask) -> gate + register
    -> benchmark on the device (the `edge-devices` pool's worker), waited for with a timeout

Scheduled weekly by the `retrain` deployment in prefect.yaml; trigger it by hand from the UI or
with `prefect deployment run afd-retrain/weekly`.
"""

from __future__ import annotations

import os

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from afd.device import DEVICE_TAG, resolve_version
from afd.errors import AFDError, ConfigError
from afd.layout import DATA_STAGES, backbone_methods, fuse_stage, train_stage
from afd.methods import DIRECT_TEST
from afd.params import load_params
from afd.pipeline import grid_cells
from flows.tasks import (
    evaluate_grid_cell,
    publish_efficiency,
    pull_data,
    record_evaluation,
    register,
    reproduce,
)

DEVICE_DEPLOYMENT = "afd-device-benchmark/edge"


class DeviceTimeout(AFDError):
    pass


def local_cluster_settings(threads_per_cell: int = 1) -> dict:
    """The local Dask cluster's settings: one single-task process per `threads_per_cell` cores (at
    least one; a cell computes with that many PyTorch threads, params.yaml numerics.threads), so
    the cores are not oversubscribed; scheduler and dashboard on loopback only."""
    workers = max(1, (os.cpu_count() or 1) // threads_per_cell)
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True,
            "host": "127.0.0.1", "dashboard_address": "127.0.0.1:8787"}


def grid_task_runner(dask_address: str | None, threads_per_cell: int):
    """Dask for the grid: the scheduler at `dask_address`, else a local cluster."""
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return DaskTaskRunner(address=dask_address)
    return DaskTaskRunner(cluster_kwargs=local_cluster_settings(threads_per_cell))


@flow(name="afd-evaluation-grid")
def evaluation_grid(params: dict, backbones: list[str]) -> dict:
    """{backbone: {method: {set: metrics}}}: every cell its own task, DirectTest included."""
    methods = {b: [DIRECT_TEST, *backbone_methods(params, b)] for b in backbones}
    cells = [(b, m, s) for b in backbones for s, evaluated in grid_cells(params, b).items() for m in evaluated]
    futures = evaluate_grid_cell.map(unmapped(params), *(list(column) for column in zip(*cells)))
    grid: dict = {b: {m: {} for m in methods[b]} for b in backbones}
    for (backbone, method, set_name), future in zip(cells, futures):
        grid[backbone][method][set_name] = future.result()
    return grid


@task(name="benchmark-on-device", cache_policy=NO_CACHE)
def benchmark_on_device(backbone: str, version: str, deployment: str, timeout_s: float) -> dict:
    """Hand the benchmark of the registered version to the device pool and wait for it. A device
    that does not finish in time fails this task (the registered version is untouched) and the
    waiting run is cancelled, so a device that comes back later does not pick up a stale request."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Cancelled

    try:
        run = run_deployment(deployment, parameters={"backbone": backbone, "version": version},
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
    backbones: list[str] | None = None,
    params_file: str = "params.yaml",
    dask_address: str | None = None,
    device_deployment: str | None = DEVICE_DEPLOYMENT,
    device_timeout_s: float = 1800.0,
) -> dict:
    """Retrain, evaluate, register and benchmark `backbones` (default: params.yaml's train.backbones).
    `dask_address`: a Dask scheduler for the evaluation grid (default: a local cluster).
    `device_deployment`: the on-device benchmark deployment (None: skip the benchmark)."""
    params = load_params(params_file)
    backbones = backbones or params["train"]["backbones"]
    unknown = sorted(set(backbones) - set(params["train"]["backbones"]))
    if unknown:
        raise ConfigError(f"{params_file}: backbones {unknown} are not in train.backbones "
                          f"{params['train']['backbones']} (dvc.yaml has no stages for them)")

    pull_data(list(DATA_STAGES))
    reproduce(list(DATA_STAGES))
    for backbone in backbones:
        for method in backbone_methods(params, backbone):
            reproduce([train_stage(params, backbone, method)])
        for method in backbone_methods(params, backbone, "fuse"):
            reproduce([fuse_stage(params, backbone, method)])
    reproduce(["efficiency"])
    publish_efficiency(backbones)

    runner = grid_task_runner(dask_address, params["numerics"]["threads"])
    grids = evaluation_grid.with_options(task_runner=runner)(params, backbones)
    receipts = {}
    for backbone in backbones:
        record = record_evaluation(params, backbone, grids[backbone])
        receipts[backbone] = register(params, backbone, record)

    if device_deployment:  # every backbone gets its chance even if one device fails
        failures = []
        for backbone, receipt in receipts.items():
            state = benchmark_on_device(backbone, receipt["version"], device_deployment, device_timeout_s,
                                        return_state=True)
            if state.is_completed():
                receipt["device"] = state.result()
            else:
                failures.append(state.message or f"{backbone}: {state.name}")
        if failures:
            raise AFDError("device benchmark failed (the registered models are kept):\n" + "\n".join(failures))
    return receipts


if __name__ == "__main__":
    retrain()
