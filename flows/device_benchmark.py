"""The on-device benchmark flow: it runs on a worker of the `edge-devices` pool, which in
production runs on the device itself and needs only outbound HTTP to Prefect and MLflow.

    fetch the registered classifier + comparison programs -> lower to ExecuTorch (XNNPACK) and time
    them here -> write the results onto the registered version, and a Prefect artifact
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from afd.ops.benchmark import EXECUTORCH, device_ratios, format_table, target_verdicts
from afd.ops.device import device_description, fetch_programs, record_results, resolve_version, run_benchmark
from flows.retries import TRANSIENT_RETRIES


@task(name="fetch-from-registry", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def fetch(backbone: str, version: int | None, workdir: str) -> tuple[str, str, dict[str, str]]:
    found = resolve_version(backbone, version)
    programs = fetch_programs(found, Path(workdir))
    return found.name, str(found.version), {role: str(path) for role, path in programs.items()}


@task(name="time-on-device", cache_policy=NO_CACHE)
def time_on_device(programs: dict[str, str], workdir: str, threads: int, warmup: int, repeats: int) -> list[dict]:
    logger = get_run_logger()
    return run_benchmark({role: Path(path) for role, path in programs.items()}, Path(workdir),
                         threads, warmup, repeats, progress=logger.info)


@task(name="record-on-version", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def record(backbone: str, version: str, rows: list[dict], settings: dict, device: str) -> dict:
    return record_results(resolve_version(backbone, version), rows, settings, device)


@flow(name="afd-device-benchmark", log_prints=True)
def device_benchmark(backbone: str = "efficientnet_lite0", version: int | None = None, threads: int = 1,
                     warmup: int = 3, repeats: int = 20) -> dict:
    """Benchmark models:/afd-<backbone>/<version> (default: @champion) on this machine."""
    device = device_description()
    settings = {"threads": threads, "warmup": warmup, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="afd-device-") as workdir:
        name, version, programs = fetch(backbone, version, workdir)
        rows = time_on_device(programs, workdir, threads, warmup, repeats)
    record(backbone, version, rows, settings, device)
    ratios = device_ratios(rows)
    create_markdown_artifact(
        key=f"device-benchmark-{backbone.replace('_', '-')}",
        description=f"{name} version {version} on {device}",
        markdown=(f"`{name}` version {version} on **{device}**: ExecuTorch (XNNPACK), batch 1 at 224x224, "
                  f"{threads} thread(s), {warmup} warm-up runs, {repeats} interleaved repeats.\n\n"
                  + format_table(rows) + "\n\n" + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()) + "\n\n"
                  + "\n".join(f"- {verdict}" for verdict in target_verdicts(
                      {f"{EXECUTORCH}.{key}": value for key, value in ratios.items()}))))
    print(f"{name} version {version} on {device}: " + ", ".join(f"{r['role']} {r['median_ms']:.1f} ms" for r in rows))
    return {"name": name, "version": version, "device": device, "rows": rows, "ratios": ratios}


if __name__ == "__main__":
    device_benchmark()
