"""The on-device benchmark of a registered classifier: fetch what to time from the MLflow registry,
time it with ExecuTorch on this machine, and write the results back onto the registered version.

It needs only HTTP access to the tracking server (artifacts are proxied by it), so it runs on the
device itself: a phone-class board with Python, torch and executorch.
"""

from __future__ import annotations

import platform
from pathlib import Path

import torch

from afd.errors import AFDError, first_line
from afd.ops.benchmark import benchmark_executorch, device_ratios
from afd.ops.export import check_program_archive, load_program
from afd.ops.registry import CHAMPION, registered_name
from afd.ops.tracking import tracked_run, use_tracking_server

DEVICE_TAG = "device"  # prefix of the version tags the benchmark writes


def _client():
    import mlflow

    use_tracking_server(existing=True)
    return mlflow.MlflowClient()


def resolve_version(backbone: str, version: int | str | None = None):
    """The registered version to benchmark: `version`, or the current champion."""
    from mlflow.exceptions import MlflowException

    name = registered_name(backbone)
    try:
        if version:
            return _client().get_model_version(name, str(version))
        return _client().get_model_version_by_alias(name, CHAMPION)
    except MlflowException as error:
        which = f"version {version}" if version else f"@{CHAMPION}"
        raise AFDError(f"models:/{name} {which}: not found at {use_tracking_server()} "
                       f"({first_line(error)})") from None


def fetch_programs(version, workdir: Path) -> dict[str, Path]:
    """The registered classifier and its comparison programs (registered with it under
    `benchmark/`) as `.pt2` files, by role (see afd.ops.benchmark.DEVICE_ROLES)."""
    import mlflow

    from afd.ops.registry import registered_program

    workdir.mkdir(parents=True, exist_ok=True)
    uri = f"models:/{version.name}/{version.version}"
    programs = {"afd": registered_program(uri, workdir / "registered")}
    check_program_archive(programs["afd"], uri)  # a poisoned model is refused before anything else
    try:
        folder = Path(mlflow.artifacts.download_artifacts(run_id=version.run_id, artifact_path="benchmark",
                                                          dst_path=str(workdir)))
    except Exception as error:  # MlflowException, or an OSError from the artifact proxy
        raise AFDError(f"{uri}: cannot download its benchmark programs "
                       f"({first_line(error)})") from None
    for path in sorted(folder.glob("*.pt2")):
        check_program_archive(path, f"{uri} (benchmark/{path.name})")
        programs[path.stem] = path
    return programs


def run_benchmark(programs: dict[str, Path], workdir: Path, threads: int, warmup: int, repeats: int,
                  progress=None) -> list[dict]:
    """Lower each program to ExecuTorch (XNNPACK) here and time it (see benchmark_executorch)."""
    loaded = {role: load_program(path) for role, path in programs.items()}
    example = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))  # latency ignores values
    return benchmark_executorch(loaded, example, workdir, threads, warmup, repeats, progress)


def device_description() -> str:
    return f"{platform.node()} ({platform.machine()}, {platform.system()}, torch {torch.__version__})"


def record_results(version, rows: list[dict], settings: dict, device: str) -> dict[str, str]:
    """Write the results onto the registered version: tags (visible in the registry UI), metrics
    on its logged model, and an MLflow run with the full table. Returns the tags written."""
    import mlflow

    ratios = device_ratios(rows)
    latencies = {f"{row['role']}.{key}": row[key] for row in rows for key in ("median_ms", "p90_ms")}
    tags = {f"{DEVICE_TAG}.name": device, f"{DEVICE_TAG}.threads": str(settings["threads"]),
            f"{DEVICE_TAG}.runtime": "executorch-xnnpack",
            **{f"{DEVICE_TAG}.{key}": f"{value:.3f}" for key, value in latencies.items()},
            **{f"{DEVICE_TAG}.{key}": f"{value:.4f}" for key, value in ratios.items()}}
    metrics = {f"{DEVICE_TAG}.{key}": value for key, value in {**latencies, **ratios}.items()}
    client = _client()
    run_tags = {"stage": "device-benchmark", "model": version.name, "model_version": str(version.version),
                "device": device}
    with tracked_run(f"device-benchmark@{version.name}-v{version.version}", settings, run_tags):
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"device": device, "rows": rows, "ratios": ratios}, "device_benchmark.json")
        if getattr(version, "model_id", None):
            mlflow.log_metrics(metrics, model_id=version.model_id)
    for key, value in tags.items():
        client.set_model_version_tag(version.name, version.version, key, value)
    return tags

