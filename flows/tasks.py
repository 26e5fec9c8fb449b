"""The retraining flow's tasks. A stage task runs one stage of dvc.yaml exactly as `dvc repro`
would (its command, then its record in dvc.lock); the others move results between the checkout
and the remotes, or publish what the stages wrote. None holds pipeline logic of its own.

Tasks run in the project directory (the one holding dvc.yaml and params.yaml): the training
worker's deployment sets it, and Dask workers must be started from a checkout of it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from filelock import FileLock
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.runtime import flow_run

from afd.errors import AFDError
from afd.ops.benchmark import efficiency_markdown
from afd.ops.layout import METRICS
from afd.ops.report import grid_summary
from flows.dag import Stage
from flows.retries import TRANSIENT_RETRIES

DVC_LOCK = Path(".dvc/tmp/afd-flow.lock")  # one DVC command at a time in this checkout: DVC locks the repo
PROGRESS_INTERVAL_S = 30  # a progress bar inside a flow becomes a log line this often, not a line per refresh
RAN, UNCHANGED = "ran", "unchanged"


class CommandError(AFDError):
    pass


def _environment() -> dict:
    """The stage commands' environment: this interpreter's scripts first on PATH (`python`,
    `dvc`), and tqdm bars redrawn at PROGRESS_INTERVAL_S."""
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "TQDM_MININTERVAL": str(PROGRESS_INTERVAL_S)}


def log() -> logging.Logger:
    """The Prefect run's logger inside a flow or task; a plain one elsewhere (a Dask worker
    running a fanned-out stage, flows/fanout.py)."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("afd.flows")


def run_command(command: list[str] | str, what: str) -> str:
    """Run `command` in the project directory, each output line (a bar's redraw included) to the
    run's log; an AFDError with the output's tail if it fails."""
    logger = log()
    process = subprocess.Popen(command, shell=isinstance(command, str), env=_environment(), text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    lines = []
    for chunk in process.stdout:
        for line in re.split(r"[\r\n]+", chunk):
            if line.strip():
                lines.append(line.rstrip())
                logger.info(lines[-1])
    if process.wait() != 0:
        tail = "\n".join(lines[-15:])
        raise CommandError(f"{what} failed with exit status {process.returncode} in {Path.cwd()}:\n{tail}")
    return "\n".join(lines)


def dvc(*args: str) -> str:
    """`dvc <args>`, one at a time in this checkout."""
    DVC_LOCK.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(DVC_LOCK):
        return run_command([sys.executable, "-m", "dvc", *args], f"`dvc {' '.join(args)}`")


def git(*args: str) -> str:
    result = subprocess.run(["git", *args], capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"`git {' '.join(args)}` failed in {Path.cwd()}: {result.stderr.strip()}")
    return result.stdout.strip()


# ---- the stages ---------------------------------------------------------------------------------


def dvc_remote_configured() -> bool:
    """Whether this checkout has a DVC remote (`dvc remote list` names one)."""
    return bool(dvc("remote", "list").strip())


def dvc_changes(*targets: str) -> dict:
    """`dvc status --json` of `targets` (default: every stage): {stage: what changed}, empty when
    `dvc repro` would run nothing."""
    return json.loads(dvc("status", "--json", *targets).splitlines()[-1] or "{}")


@task(name="dvc-pull", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def pull_outputs() -> bool:
    """Fetch the pipeline's outputs from the DVC remote, where one is configured (a run on a new
    machine reuses what another made); missing ones are left for their stages to make."""
    if not dvc_remote_configured():
        get_run_logger().info("no DVC remote configured: every output is made here")
        return False
    dvc("pull", "--allow-missing")
    return True


@task(name="dvc-status", cache_policy=NO_CACHE)
def changed_stages() -> list[str]:
    """The stages that `dvc repro` would run now (before any upstream stage runs)."""
    return sorted(dvc_changes())


def _stage_name(prefix: str = "", suffix: str = ""):
    def name() -> str:
        from prefect.runtime import task_run

        parameters = task_run.parameters
        part = f" {parameters['command'][-1]}" if "command" in parameters else ""
        return f"{prefix}{parameters['stage'].name}{suffix}{part}"
    return name


@task(task_run_name=_stage_name("check "), cache_policy=NO_CACHE)
def stage_needed(stage: Stage, changed: list[str], upstream: list[str]) -> bool:
    """Whether `dvc repro` would run the stage now: DVC found it changed before the run, or an
    upstream stage ran (`upstream`: their results) and DVC now finds it changed."""
    if stage.name in changed:
        return True
    if RAN not in upstream:
        return False
    return bool(dvc_changes(stage.name))


@task(task_run_name=_stage_name(suffix=" part"), cache_policy=NO_CACHE)
def compute_part(stage: Stage, command: list[str], needed: bool) -> str:
    """One part of a stage computed ahead (afd.ops.steps.parallel_parts), if the stage will run."""
    if not needed:
        return UNCHANGED
    run_command(command, f"a part of stage {stage.name} (`{' '.join(command[1:])}`)")
    return RAN


@task(task_run_name=_stage_name(), cache_policy=NO_CACHE)
def run_stage(stage: Stage, needed: bool, parts: list[str], training_address: str | None = None) -> str:
    """One stage, as `dvc repro` runs it: its command (which uses the `parts` computed ahead), then
    `dvc commit` records its deps, params and outputs in dvc.lock and its outputs in the DVC cache;
    UNCHANGED if it need not run. A stage dvc.yaml lets fan out runs on a worker of the Dask
    scheduler at `training_address` instead, in that worker's checkout (flows/fanout.py)."""
    if not needed:
        return UNCHANGED
    if stage.fan_out and training_address:
        from flows.fanout import train_on_cluster

        train_on_cluster(stage, training_address)
        return RAN
    started = time.monotonic()
    run_command(stage.cmd, f"stage {stage.name} (`{stage.cmd}`)")
    dvc("commit", "--force", stage.name)
    get_run_logger().info("%s: ran in %.0f s and recorded in dvc.lock", stage.name, time.monotonic() - started)
    return RAN


# ---- a versioned result -------------------------------------------------------------------------


@task(name="publish-results", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def publish_results(stages: dict[str, Stage], git_remote: str | None, branch_prefix: str) -> dict:
    """Push every output to the DVC remote, commit dvc.lock, what git keeps of the outputs
    (metrics, plots, the report, .gitignore files) and any change to tracked files (params.yaml)
    on a new branch `<branch_prefix>/<flow run>`, and push it to `git_remote`: a fresh clone of
    that branch gets this state with `dvc pull`.
    Returns {"commit", "branch", "pushed"}."""
    logger = get_run_logger()
    if dvc_remote_configured():
        dvc("push")
    else:
        logger.warning("no DVC remote configured: outputs stay in this checkout only")
    tracked = ["dvc.lock", *sorted({f for stage in stages.values() for f in stage.git_files if Path(f).exists()})]
    branch = f"{branch_prefix}/{flow_run.get_name() or time.strftime('%Y%m%d-%H%M%S')}"
    git("add", "-A", "--", *tracked)
    git("add", "-u")  # and what the run read from git (params.yaml, code): the commit is what produced it
    if git("diff", "--cached", "--name-only"):
        git("switch", "-c", branch)
        identity = [] if _git_identity() else ["-c", "user.name=afd-retrain", "-c", "user.email=afd-retrain@localhost"]
        git(*identity, "commit", "-q", "-m", f"Retraining run {flow_run.get_name()}: dvc.lock, metrics, report")
    else:
        branch = git("rev-parse", "--abbrev-ref", "HEAD")
        logger.info("the pipeline's results equal the checked-out commit's: nothing to commit")
    commit = git("rev-parse", "HEAD")
    pushed = False
    if git_remote and git_remote in git("remote").split():
        git("push", "-q", git_remote, f"HEAD:refs/heads/{branch}")
        pushed = True
    else:
        logger.warning("no git remote %r: the results are committed in this checkout only", git_remote)
    return {"commit": commit, "branch": branch, "pushed": pushed}


def _git_identity() -> bool:
    return subprocess.run(["git", "config", "user.email"], capture_output=True).returncode == 0


@task(name="record-lineage", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def record_lineage(receipts: dict[str, dict], published: dict) -> None:
    """Point each version registered by this run at the commit that holds its results."""
    from afd.ops.registry import set_lineage_commit

    for receipt in receipts.values():
        if receipt.get("registered"):
            set_lineage_commit(receipt["name"], receipt["version"], published["commit"], published["branch"])


# ---- what the stages wrote, as run artifacts ----------------------------------------------------


@task(name="read-registrations", cache_policy=NO_CACHE)
def read_registrations(backbones: list[str], ran: dict[str, str]) -> dict[str, dict]:
    """{backbone: its registration receipt (metrics/register/<backbone>.json)}, "registered"
    telling whether this run made a new version, each published as an artifact."""
    receipts = {}
    for backbone in backbones:
        receipt = json.loads((METRICS / "register" / f"{backbone}.json").read_text())
        receipt["registered"] = ran.get(f"register@{backbone}") == RAN and receipt.get("new_version", True)
        receipts[backbone] = receipt
        create_markdown_artifact(
            key=f"registration-{backbone.replace('_', '-')}", description=f"Registry entry of {backbone}",
            markdown=(f"`{receipt['name']}` version **{receipt['version']}** → **{receipt['alias']}**: "
                      f"{receipt['reason']}." + ("" if receipt["registered"] else " (registered before this run)")))
        grid = json.loads((METRICS / "eval" / f"{backbone}.json").read_text())
        create_markdown_artifact(markdown=grid_summary(grid), key=f"grid-{backbone.replace('_', '-')}",
                                 description=f"Evaluation grid of {backbone}")
    return receipts


@task(name="publish-efficiency", cache_policy=NO_CACHE)
def publish_efficiency() -> dict:
    """The efficiency table (Table VII) that the `efficiency` stage measured, as a run artifact."""
    measured = json.loads((METRICS / "efficiency.json").read_text())
    parts = []
    for backbone, table in measured.items():
        parts += [f"### {backbone}", efficiency_markdown(table)]
    create_markdown_artifact(markdown="\n\n".join(parts), key="efficiency",
                             description="Efficiency (Table VII), measured on the training machine")
    return {backbone: table["ratios"] for backbone, table in measured.items()}
