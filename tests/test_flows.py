"""The Prefect flows end to end on a tiny project: a real Prefect server, the project's deployments
from prefect.yaml, a real process worker polling the device pool, MLflow and S3 servers, a bare
git repository as the project's git remote and an S3 bucket as its DVC remote.

The retraining flow runs as a user's process would (a subprocess in the project directory); the
device benchmark runs on the `edge-devices` worker through `run_deployment`.
"""

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import BACKBONE, make_tiny_project, tiny_params
from services.mlflow_server import start_mlflow
from services.prefect_server import DEVICE_POOL, deploy_project, run_prefect, start_prefect, start_worker

GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory):
    server = start_prefect(tmp_path_factory.mktemp("prefect-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def flows_mlflow(tmp_path_factory, s3_server):
    """A tracking server of this module's own: its registry starts empty."""
    server = start_mlflow(tmp_path_factory.mktemp("flows-mlflow"), s3_server)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(tmp_path_factory, prefect_server, flows_mlflow) -> dict:
    """What the training machine and the device share: the Prefect API and the tracking server.
    (No S3 keys: the tracking server proxies artifacts.)"""
    home = tmp_path_factory.mktemp("prefect-home")
    return {**os.environ, **prefect_server.client_env(), "MLFLOW_TRACKING_URI": flows_mlflow.url,
            "PREFECT_HOME": str(home), "PREFECT_LOGGING_LEVEL": "INFO"}


@pytest.fixture(scope="module")
def training_env(env, s3_server) -> dict:
    """The training machine also holds S3 keys (for `dvc pull` / `push`); they must stay there."""
    return {**env, **s3_server.client_env()}


@pytest.fixture(scope="module")
def git_remote(tmp_path_factory) -> Path:
    remote = tmp_path_factory.mktemp("git-remote") / "afd.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    return remote


@pytest.fixture(scope="module")
def project(tmp_path_factory, env, git_remote, s3_server) -> Path:
    """The training machine's checkout: pushed to `git_remote`, with an S3 bucket as DVC remote
    (its keys come from the environment, see `training_env`)."""
    params = tiny_params()
    params["register"]["deploy_formats"] = []  # these tests read the registry, not the deploy files
    root = make_tiny_project(tmp_path_factory.mktemp("flow-project"), params)
    for command in (["remote", "add", "-d", "storage", "s3://afd/flow-test"],
                    ["remote", "modify", "storage", "endpointurl", s3_server.endpoint]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=root, check=True)
    subprocess.run([*GIT, "commit", "-qam", "DVC remote"], cwd=root, check=True)
    subprocess.run(["git", "remote", "add", "origin", str(git_remote)], cwd=root, check=True)
    subprocess.run(["git", "push", "-q", "origin", "HEAD:refs/heads/main"], cwd=root, check=True)
    deploy_project(root, env)
    return root


@pytest.fixture(scope="module")
def device_worker(project, env, tmp_path_factory):
    """The device's worker: a separate process polling only the device pool, started elsewhere
    than the project (a device has no checkout)."""
    elsewhere = tmp_path_factory.mktemp("device")
    worker = start_worker(DEVICE_POOL, env, elsewhere, name="test-device", poll_seconds=2, cwd=elsewhere)
    yield worker
    worker.stop()


def run_retrain(project: Path, env: dict, **parameters) -> tuple[subprocess.CompletedProcess, float]:
    """The retraining flow in a process of its own; its output is also kept in PREFECT_HOME."""
    script = ("import json, sys; from flows.retrain import retrain; "
              "result = retrain(**json.loads(sys.argv[1]), return_state=True); "
              "print('FLOW_RUN_STATE', result.type.value); "
              "print('RESULT', json.dumps(result.result(raise_on_failure=False), default=str))")
    start = time.monotonic()
    result = subprocess.run([sys.executable, "-c", script, json.dumps(parameters)], cwd=project, env=env,
                            capture_output=True, text=True, timeout=900)
    with open(Path(env["PREFECT_HOME"]) / "retrain-runs.log", "a") as log:
        log.write(result.stdout + result.stderr)
    return result, time.monotonic() - start


def flow_runs(env: dict, flow_name: str, scheduled: bool = False) -> list:
    """The flow's runs, oldest first; without the ones the schedule queued for later, unless asked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with prefect_settings(env), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.EXPECTED_START_TIME_ASC)
    return [run for run in runs if scheduled or not run.state.is_scheduled()]


def task_runs(env: dict, flow_run_id) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with prefect_settings(env), get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))


def prefect_settings(env: dict):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})


def registry(env: dict):
    import mlflow

    return mlflow.MlflowClient(env["MLFLOW_TRACKING_URI"])


@pytest.fixture
def dask_cluster(project, env, tmp_path):
    """A Dask scheduler and one worker, as a user with more machines would start them: separate
    processes, the worker in a checkout of the project."""
    from services.s3 import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    host, port = address.removeprefix("tcp://").split(":")
    commands = [
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host, "--port", port, "--no-dashboard"],
        [sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1", "--nthreads", "1",
         "--no-dashboard"],
    ]
    processes = []
    for number, command in enumerate(commands):
        with open(tmp_path / f"dask-{number}.log", "wb") as log:
            processes.append(subprocess.Popen(command, cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT))
    from distributed import Client

    with Client(address, timeout=60) as client:
        client.wait_for_workers(1, timeout=60)
    yield address
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def first_run(project, training_env, device_worker) -> dict:
    """The retraining flow with the device worker up."""
    result, _ = run_retrain(project, training_env, device_timeout_s=600)
    assert "FLOW_RUN_STATE COMPLETED" in result.stdout, result.stdout[-4000:] + result.stderr[-8000:]
    return json.loads(result.stdout.split("RESULT ", 1)[1])


def test_the_schedule_comes_from_prefect_yaml(project, env):
    from prefect.client.orchestration import get_client

    configured = yaml.safe_load((project / "prefect.yaml").read_text())["deployments"]
    cron = next(d for d in configured if d["name"] == "weekly")["schedules"][0]["cron"]
    listing = run_prefect(["deployment", "ls"], env)
    assert "afd-retrain/weekly" in listing and "afd-device-benchmark/edge" in listing
    with prefect_settings(env), get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("afd-retrain/weekly")
        device = client.read_deployment_by_name("afd-device-benchmark/edge")
    assert [s.schedule.cron for s in deployment.schedules] == [cron] and deployment.schedules[0].active
    assert deployment.work_pool_name == "afd-training" and device.work_pool_name == DEVICE_POOL
    assert deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]["directory"] == str(project)


def dvc(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = env or os.environ
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=root, capture_output=True, text=True,
                          env={**env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"})


def test_every_stage_of_dvc_yaml_runs_as_a_task_after_the_stages_it_reads(first_run, project, env):
    """The flow executes dvc.yaml: one task run per DVC stage (matrix items included), none
    started before the stages it depends on had finished; the evaluation grid's cells are tasks of
    their own (one per method), all finished before their stage assembles them."""
    from flows.dag import read_pipeline

    stages = read_pipeline(project)
    listed = [line.split()[0] for line in dvc(project, "stage", "list").stdout.splitlines()]
    assert sorted(stages) == sorted(listed) and len(listed) > 10
    (pipeline_run,) = flow_runs(env, "afd-pipeline")
    runs = {run.name: run for run in task_runs(env, pipeline_run.id)}
    assert all(run.state.is_completed() for run in runs.values())
    assert sorted(name for name in runs if not name.startswith("check ") and " part " not in name) == sorted(listed)
    assert sorted(name.removeprefix("check ") for name in runs if name.startswith("check ")) == sorted(listed)
    for name, stage in stages.items():
        for upstream in stage.upstream:
            assert runs[upstream].end_time <= runs[name].start_time, (upstream, name)
    cells = sorted(name for name in runs if name.startswith(f"evaluate@{BACKBONE} part "))
    assert cells == sorted(f"evaluate@{BACKBONE} part {m}" for m in ("direct", "afd", "arcnn", "afd_tap_stage2"))
    assert all(runs[cell].end_time <= runs[f"evaluate@{BACKBONE}"].start_time for cell in cells)


def test_the_grid_assembled_from_cells_is_byte_identical_to_the_stage_computing_it(first_run, project, training_env):
    """Cells computed ahead in other processes change nothing: the evaluate stage run alone, with
    no cell cached, writes the same bytes (and dvc.lock the same md5s)."""
    import shutil

    assert any((project / ".afd-cache" / "cells" / BACKBONE).glob("*.json"))  # the flow's cells
    shutil.rmtree(project / ".afd-cache")
    forced = dvc(project, "repro", "--force", "--single-item", f"evaluate@{BACKBONE}", env=training_env)
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert "Running stage" in forced.stdout
    changed = subprocess.run(["git", "status", "--porcelain", "--", "dvc.lock", "metrics"], cwd=project,
                             capture_output=True, text=True).stdout
    assert changed == ""


def test_after_a_run_dvc_is_clean_and_its_metrics_are_the_registered_versions(first_run, project, env):
    status = dvc(project, "status")
    assert status.returncode == 0 and "Data and pipelines are up to date" in status.stdout, status.stdout
    receipt = first_run[BACKBONE]
    recorded = json.loads((project / "metrics" / "register" / f"{BACKBONE}.json").read_text())
    assert recorded["version"] == receipt["version"] and recorded["new_version"] is True
    version = registry(env).get_model_version(f"afd-{BACKBONE}", receipt["version"])
    averages = json.loads((project / "metrics" / "eval" / f"{BACKBONE}.json").read_text())["averages"]["afd"]
    tagged = {key.removeprefix("metric."): float(value) for key, value in version.tags.items()
              if key.startswith("metric.")}
    expected = {f"{family}.{metric}": value for family, by_metric in averages.items()
                for metric, value in by_metric.items()}
    assert tagged.keys() == expected.keys()
    assert tagged == pytest.approx(expected, abs=1e-6)


def test_a_fresh_clone_of_the_retraining_branch_gets_the_registered_state(first_run, project, env, training_env,
                                                                             git_remote, tmp_path):
    receipt = first_run[BACKBONE]
    version = registry(env).get_model_version(f"afd-{BACKBONE}", receipt["version"])
    commit, branch = version.tags["git_commit"], version.tags["git_branch"]
    assert not commit.endswith("-dirty") and branch.startswith("retrain/")
    assert subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=project,
                          capture_output=True, text=True).stdout == ""  # the checkout holds no uncommitted result
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--branch", branch, str(git_remote), str(clone)], check=True)
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=clone, capture_output=True,
                          text=True).stdout.strip() == commit
    pulled = dvc(clone, "pull", env=training_env)
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    status = dvc(clone, "status", env=training_env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout  # no output missing
    fused = f"models/{BACKBONE}/afd/fused.pt"
    assert (clone / fused).read_bytes() == (project / fused).read_bytes()
    assert version.tags["model_md5"] == hashlib.md5((clone / fused).read_bytes()).hexdigest()
    assert json.loads((clone / "metrics" / "register" / f"{BACKBONE}.json").read_text())["version"] == receipt["version"]


def test_the_gate_registers_and_the_device_worker_benchmarks_the_version(first_run, env):
    receipt = first_run[BACKBONE]
    client = registry(env)
    version = client.get_model_version(f"afd-{BACKBONE}", receipt["version"])
    assert receipt["alias"] in version.tags["gate.decision"]
    assert client.get_model_version_by_alias(f"afd-{BACKBONE}", receipt["alias"]).version == receipt["version"]
    # the device's results, on the registered version
    for role in ("afd", "afd_unfused", "arcnn", "direct"):
        assert float(version.tags[f"device.{role}.median_ms"]) > 0
        assert float(version.tags[f"device.{role}.p90_ms"]) >= float(version.tags[f"device.{role}.median_ms"])
    assert float(version.tags["device.fusing_speedup"]) > 0 and version.tags["device.threads"] == "1"
    assert receipt["device"]["device.afd.median_ms"] == version.tags["device.afd.median_ms"]
    # ... measured by the device pool's worker, not by the training process
    (device_run,) = flow_runs(env, "afd-device-benchmark")
    assert device_run.state.is_completed() and device_run.work_pool_name == DEVICE_POOL
    assert device_run.parameters == {"backbone": BACKBONE, "version": int(receipt["version"])}  # `-p version=3` works


def test_each_run_publishes_the_grid_and_efficiency_tables(first_run, env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    keys = ["grid-efficientnet-lite0", "efficiency", "registration-efficientnet-lite0",
            "device-benchmark-efficientnet-lite0"]
    with prefect_settings(env), get_client(sync_client=True) as client:
        artifacts = {a.key: a for a in client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=keys)))}
    assert set(artifacts) == set(keys)
    assert "| QF | DirectTest | AFD | ARCNN |" in artifacts["grid-efficientnet-lite0"].data
    assert "| method | params (M) | MACs (G) |" in artifacts["efficiency"].data
    assert "backbone + AFD (fused)" in artifacts["device-benchmark-efficientnet-lite0"].data


def test_a_run_that_changes_nothing_runs_no_stage_and_registers_no_version(first_run, project, env, training_env):
    client, name = registry(env), f"afd-{BACKBONE}"
    versions_before = len(client.search_model_versions(f"name = '{name}'"))
    head_before = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout
    result, _ = run_retrain(project, training_env, device_timeout_s=60)
    assert "FLOW_RUN_STATE COMPLETED" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    receipt = json.loads(result.stdout.split("RESULT ", 1)[1])[BACKBONE]
    assert receipt["registered"] is False and receipt["version"] == first_run[BACKBONE]["version"]
    assert len(client.search_model_versions(f"name = '{name}'")) == versions_before
    assert subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout == head_before
    assert "stages run: none" in result.stdout + result.stderr


def test_a_device_that_never_answers_fails_the_step_in_time_and_keeps_the_model(first_run, project, env, training_env,
                                                                                 device_worker, dask_cluster):
    """A changed parameter retrains, and registers a new version; its benchmark request times out.
    Also: the stages run on the Dask scheduler named by `dask_address`."""
    from mlflow.exceptions import MlflowException

    client, name = registry(env), f"afd-{BACKBONE}"

    def champion():
        try:
            return client.get_model_version_by_alias(name, "champion").version
        except MlflowException:
            return None

    champion_before = champion()
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["methods"]["afd"]["lr_scale"] = 0.5  # a new AFD model; the other methods' stages and cells are kept
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    device_worker.stop()
    timeout = 10
    result, _ = run_retrain(project, training_env, device_timeout_s=timeout, dask_address=dask_cluster)
    assert "FLOW_RUN_STATE FAILED" in result.stdout, result.stdout[-3000:] + result.stderr[-3000:]
    assert "no worker of 'afd-device-benchmark/edge'" in result.stdout + result.stderr

    retrain_run = flow_runs(env, "afd-retrain")[-1]
    (benchmark,) = [run for run in task_runs(env, retrain_run.id) if run.name.startswith("benchmark-on-device")]
    assert benchmark.state.is_failed() and benchmark.total_run_time.total_seconds() < timeout + 15
    pipeline_run = flow_runs(env, "afd-pipeline")[-1]
    ran = {run.name: run for run in task_runs(env, pipeline_run.id)}
    assert ran[f"register@{BACKBONE}"].state.is_completed()
    # the request is withdrawn, not left for a device to pick up later
    assert flow_runs(env, "afd-device-benchmark")[-1].state.is_cancelled()
    # both registered versions are kept; the champion is where the gate put it, untouched by the failure
    versions = sorted((v for v in client.search_model_versions(f"name = '{name}'")), key=lambda v: int(v.version))
    assert len(versions) == 2
    new = versions[-1]
    expected = new.version if new.tags["gate.decision"].startswith("champion") else champion_before
    assert champion() == expected
    assert "device.afd.median_ms" not in new.tags and "device.afd.median_ms" in versions[0].tags
    # the new version's commit holds the changed params.yaml with its results
    committed = subprocess.run(["git", "show", f"{new.tags['git_commit']}:params.yaml"], cwd=project,
                               capture_output=True, text=True, check=True).stdout
    assert yaml.safe_load(committed)["methods"]["afd"]["lr_scale"] == 0.5
    from distributed import Client

    with Client(dask_cluster, timeout=30) as dask:
        prefixes = dask.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert prefixes == ["compute_part", "run_stage", "stage_needed"]  # the stages and their parts, nothing else


@pytest.fixture
def fan_out(tmp_path, env, training_env, s3_server):
    """A project checkout for the flow, and a Dask scheduler with two workers, each in a checkout of
    its own (a clone, as on another machine) with the S3 DVC remote's keys in its environment."""
    from distributed import Client

    from services.s3 import free_port

    params = tiny_params()
    params["train"]["study_methods"] = ["arcnn"]  # two training items, one per worker
    params["fuse"]["study_methods"] = []
    coordinator = make_tiny_project(tmp_path / "coordinator", params)
    for command in (["remote", "add", "-d", "storage", "s3://afd/fan-out-test"],
                    ["remote", "modify", "storage", "endpointurl", s3_server.endpoint]):
        subprocess.run([sys.executable, "-m", "dvc", *command], cwd=coordinator, check=True)
    subprocess.run([*GIT, "commit", "-qam", "DVC remote"], cwd=coordinator, check=True)
    workers = [tmp_path / f"worker-{number}" for number in (1, 2)]
    address = f"tcp://127.0.0.1:{free_port()}"
    host, port = address.removeprefix("tcp://").split(":")
    commands = [([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", host, "--port", port,
                  "--no-dashboard"], tmp_path)]
    for checkout in workers:
        subprocess.run(["git", "clone", "-q", str(coordinator), str(checkout)], check=True)
        commands.append(([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nthreads", "1",
                          "--no-dashboard", "--name", checkout.name], checkout))
    processes = []
    for number, (command, cwd) in enumerate(commands):
        with open(tmp_path / f"fan-out-dask-{number}.log", "wb") as log:
            processes.append(subprocess.Popen(command, cwd=cwd, env=training_env, stdout=log, stderr=subprocess.STDOUT))
    with Client(address, timeout=60) as client:
        client.wait_for_workers(2, timeout=60)
    yield coordinator, workers, address
    for process in processes:
        process.terminate()
        process.wait(timeout=30)


def test_training_fans_out_to_dask_workers_in_their_own_checkouts(fan_out, training_env):
    """Each training item runs on one of two Dask workers, each in its own checkout: it pulls its
    inputs from the S3 DVC remote, trains and pushes the model; the flow's checkout records the
    results in dvc.lock. The models are byte for byte what a local `dvc repro` of the items makes."""
    coordinator, workers, address = fan_out
    items = [f"train@{BACKBONE}-afd", "train_study@arcnn"]
    result, _ = run_retrain(coordinator, training_env, targets=items, training_address=address, publish=False,
                            device_deployment=None)
    assert "FLOW_RUN_STATE COMPLETED" in result.stdout, result.stdout[-3000:] + result.stderr[-6000:]
    models = {items[0]: f"models/{BACKBONE}/afd/model.pt", items[1]: f"models/{BACKBONE}/arcnn/model.pt"}
    trained_on = {item: [worker for worker in workers if (worker / path).is_file()] for item, path in models.items()}
    assert sorted(map(len, trained_on.values())) == [1, 1]  # each item trained once,
    assert {where[0] for where in trained_on.values()} == set(workers)  # one on each worker
    for item, (worker,) in trained_on.items():
        assert (worker / models[item]).read_bytes() == (coordinator / models[item]).read_bytes()
        assert (worker / "metrics" / "train").is_dir() and (coordinator / models[item]).is_file()
    status = dvc(coordinator, "status", *items, env=training_env)
    assert "Data and pipelines are up to date" in status.stdout, status.stdout
    fanned_out = {item: (coordinator / path).read_bytes() for item, path in models.items()}
    lock = (coordinator / "dvc.lock").read_text()

    local = dvc(coordinator, "repro", "--force", "--single-item", *items, env=training_env)  # here, no worker
    assert local.returncode == 0 and local.stdout.count("Running stage") == 2, local.stdout + local.stderr
    assert {item: (coordinator / path).read_bytes() for item, path in models.items()} == fanned_out
    assert (coordinator / "dvc.lock").read_text() == lock

    # a worker whose checkout holds other code: its result is refused by name, and nothing here changes
    script = ("import json, sys; from dvc.utils.serialize import load_yaml; from flows.dag import read_pipeline; "
              "from flows.fanout import adopt; item = sys.argv[1]; entry = load_yaml('dvc.lock')['stages'][item]; "
              "[dep.update(md5='0' * 32 + '.dir') for dep in entry['deps'] if dep['path'] == 'afd']; "
              "stage = read_pipeline()[item]; files = {path: open(path, 'rb').read() for path in stage.uncached_outs}; "
              "adopt(stage, {'worker': 'elsewhere:/old-checkout', 'lock': entry, 'files': files})")
    refused = subprocess.run([sys.executable, "-c", script, items[0]], cwd=coordinator, env=training_env,
                             capture_output=True, text=True)
    assert refused.returncode != 0
    assert (f"AFDError: {items[0]} as trained on elsewhere:/old-checkout is not this checkout's: `dvc status` finds "
            in refused.stderr and "'afd': 'modified'" in refused.stderr), refused.stderr[-2000:]
    assert (coordinator / "dvc.lock").read_text() == lock
    assert {item: (coordinator / path).read_bytes() for item, path in models.items()} == fanned_out


def test_the_scheduler_queues_the_next_weekly_run(project, env):
    """The schedule is live: the server has queued the coming runs at the cron's times."""
    deadline = time.monotonic() + 90
    while not (queued := flow_runs(env, "afd-retrain", scheduled=True)) and time.monotonic() < deadline:
        time.sleep(3)
    queued = [run for run in queued if run.state.is_scheduled()]
    assert queued
    for run in queued:
        start = run.expected_start_time
        assert (start.weekday(), start.hour, start.minute) == (0, 3, 0)  # Mondays 03:00 UTC


def test_no_credential_reaches_a_prefect_log_an_artifact_or_a_file(first_run, project, env, prefect_server,
                                                                     flows_mlflow, device_worker):
    """The training runs had the S3 keys in their environment: no log line, artifact or run
    parameter on the Prefect server holds them, nor any file of the project, the servers, the
    device worker or the flow processes' output."""
    from prefect.client.orchestration import get_client

    from conftest import CREDENTIALS, files_holding_credentials

    with prefect_settings(env), get_client(sync_client=True) as client:
        logs = []
        while page := client.read_logs(limit=200, offset=len(logs)):
            logs += page
        artifacts = client.read_artifacts()
        runs = client.read_flow_runs()
    text = "\n".join([log.message for log in logs] + [str(artifact.data) for artifact in artifacts]
                     + [json.dumps(run.parameters, default=str) for run in runs])
    assert "Finished in state Completed" in text and len(artifacts) >= 4  # really the runs' records
    assert not [secret for secret in CREDENTIALS if secret.decode() in text]
    roots = (project, Path(env["PREFECT_HOME"]), prefect_server.log_path.parent, flows_mlflow.log_path.parent,
             device_worker.log_path.parent)
    assert files_holding_credentials(*roots) == []
