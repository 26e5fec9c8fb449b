"""Training fanned out over machines: each stage that dvc.yaml marks `meta: {fan_out: true}` (the
`train` and `train_study` items) runs on a worker of another Dask cluster, in that worker's own
checkout of the project, and comes back to this checkout through the DVC remote.

    this checkout (the flow's)                 a worker's checkout (another machine)
    dvc push <upstream stages>         ->      params.yaml + dvc.lock := this checkout's
                                               dvc pull <upstream stages>
                                               dvc repro --single-item <stage>
    dvc.lock[<stage>] := the worker's  <-      dvc push <stage>; its lock entry, metrics and plots
    dvc pull <stage>; dvc status <stage> must be clean

The last check is what makes a worker's result this checkout's: `dvc status` re-hashes every dep
(the code, the data, the params) here, so a worker on other code or data is refused by name.

A worker machine needs a checkout of the same commit, the DVC remote's credentials in its
environment, and a Dask worker started in the checkout's root (one per checkout: a checkout
trains one stage at a time):

    cd afd && python -m distributed.cli.dask_worker tcp://scheduler:8786 --nthreads 1
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

from filelock import FileLock

from afd.errors import AFDError, first_line
from afd.io import atomic_path
from flows.dag import Stage
from flows.tasks import DVC_LOCK, dvc, dvc_changes, dvc_remote_configured, log

WORKER_LOCK = Path(".dvc/tmp/afd-fanout.lock")  # one fanned-out stage at a time per worker checkout
PIPELINE_STATE = ("params.yaml", "dvc.lock")  # what a worker's checkout takes from the flow's
WAIT_FOR_WORKERS_S = 120
CONNECT_TIMEOUT_S = 30


def train_on_cluster(stage: Stage, address: str) -> None:
    """Run `stage` on a worker of the Dask scheduler at `address` and record its result in this
    checkout's dvc.lock."""
    from distributed import Client

    if not dvc_remote_configured():
        raise AFDError(f"{stage.name}: training on other machines goes through the DVC remote, and this checkout "
                       "has none (`dvc remote add -d ...`, the same one the workers' checkouts use)")
    dvc("push", *stage.upstream)  # the worker's inputs, by the md5s in this dvc.lock
    state = _snapshot(PIPELINE_STATE)
    started = time.monotonic()
    try:
        client = Client(address, timeout=CONNECT_TIMEOUT_S, set_as_default=False)
    except OSError as error:
        raise AFDError(f"{stage.name}: cannot reach the Dask scheduler at {address} ({first_line(error)})") from None
    with client:
        try:
            client.wait_for_workers(1, timeout=WAIT_FOR_WORKERS_S)
        except TimeoutError:
            raise AFDError(f"{stage.name}: no Dask worker joined the scheduler at {address} within "
                           f"{WAIT_FOR_WORKERS_S} s; start one in a checkout of the project") from None
        trained = client.submit(run_in_this_checkout, stage, state, pure=False).result()
    adopt(stage, trained)
    log().info("%s: trained on %s in %.0f s, recorded in dvc.lock", stage.name, trained["worker"],
               time.monotonic() - started)


def run_in_this_checkout(stage: Stage, state: dict[str, bytes | None]) -> dict:
    """On the worker, in its checkout: take the flow's params.yaml and dvc.lock, pull the stage's
    inputs, run it as `dvc repro` would and push its outputs. Returns its dvc.lock entry and the
    bytes of its uncached outputs (metrics, plots), which git keeps rather than the DVC remote."""
    from dvc.utils.serialize import load_yaml

    root = Path.cwd()
    if not (root / "dvc.yaml").is_file():
        raise AFDError(f"the Dask worker on {platform.node()} runs in {root}, not in a checkout of the project "
                       "(no dvc.yaml): start it from the checkout's root")
    WORKER_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(WORKER_LOCK):
        _restore(state)
        dvc("pull", *stage.upstream)
        dvc("repro", "--single-item", stage.name)
        dvc("push", stage.name)
        entry = load_yaml("dvc.lock")["stages"][stage.name]  # DVC's YAML 1.2 reader: `off` stays a string
        files = {path: Path(path).read_bytes() for path in stage.uncached_outs}  # bytes: the plots' csv has CRLF
    return {"worker": f"{platform.node()}:{root}", "lock": entry, "files": files}


def adopt(stage: Stage, trained: dict) -> None:
    """Make a worker's run of `stage` this checkout's: its uncached outputs written here, its
    dvc.lock entry merged, its cached outputs pulled; refused unless `dvc status` then finds the
    stage up to date here. A refused or unreachable result leaves the stage's entry and outputs here
    as they were."""
    from dvc.utils.serialize import modify_yaml

    if sorted(trained["files"]) != sorted(stage.uncached_outs):  # a worker writes nothing else here
        raise AFDError(f"{stage.name}: the worker {trained['worker']} sent {sorted(trained['files'])}, "
                       f"not the stage's uncached outputs {sorted(stage.uncached_outs)}")
    with FileLock(DVC_LOCK):  # no other DVC command of this flow writes dvc.lock meanwhile
        before = _snapshot(("dvc.lock", *trained["files"]))
        _restore(trained["files"])
        with modify_yaml("dvc.lock") as lock:
            lock.setdefault("schema", "2.0")
            lock.setdefault("stages", {})[stage.name] = trained["lock"]
    try:
        dvc("pull", stage.name)
        changes = dvc_changes(stage.name)
        if changes:
            raise AFDError(f"{stage.name} as trained on {trained['worker']} is not this checkout's: `dvc status` "
                           f"finds {changes.get(stage.name, changes)}. The worker's checkout must hold the same code "
                           "(git commit) and reach the same DVC remote")
    except AFDError:  # a refused result, or a model the remote does not hold: this checkout as it was
        with FileLock(DVC_LOCK):
            _restore(before)
        dvc("checkout", "--force", "--allow-missing", stage.name)
        raise


def _snapshot(paths) -> dict[str, bytes | None]:
    """{path: its bytes, or None where there is no such file}: what `_restore` puts back."""
    return {path: Path(path).read_bytes() if Path(path).is_file() else None for path in paths}


def _restore(snapshot: dict[str, bytes | None]) -> None:
    """Each path as `snapshot` holds it (written atomically), or removed where it holds None."""
    for path, content in snapshot.items():
        if content is None:
            Path(path).unlink(missing_ok=True)
        else:
            with atomic_path(path) as tmp:
                tmp.write_bytes(content)
