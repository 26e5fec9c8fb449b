"""The MLflow model registry: the deployable classifier (backbone + fused AFD, image in, logits
out) registered as `afd-<backbone>`, and the promotion gate that moves the `champion` alias.

A new version gets its metrics and lineage as tags first; only then is an alias moved, and the
alias move is the last step, so a registration that fails or is interrupted part-way leaves the
current champion where it was.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from afd.data.codecs import CODECS, EvalSet, set_family

CHAMPION, CHALLENGER = "champion", "challenger"
SCORE_TAG = "gate.score"
MODEL_MD5_TAG = "model_md5"  # the md5 of the fused module's file: what makes two versions the same model


def registered_name(backbone: str) -> str:
    return f"afd-{backbone}"


def registered_program(uri: str, into: Path) -> Path:
    """The `torch.export` program file (`data/model.pt2`) of the model at a URI such as
    models:/afd-efficientnet_lite0@champion, downloaded into the folder `into` from the tracking
    server in $MLFLOW_TRACKING_URI (default: the local mlflow.db). A model in another format (a
    pickle, which would run arbitrary code on load) is refused. The caller owns `into`: MLflow's
    own default, a fresh temporary folder per call, is never removed."""
    import mlflow

    from afd.errors import AFDError, first_line
    from afd.ops.tracking import use_tracking_server

    server = use_tracking_server(existing=True)
    try:
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(into)))
    except Exception as error:  # MlflowException, or an OSError / HTTP error from the artifact store
        raise AFDError(f"{uri}: cannot load it from {server} ({first_line(error, 300)})") from None
    program = local / "data" / "model.pt2"
    if not program.is_file():
        raise AFDError(f"{uri}: not a torch.export program (no data/model.pt2); refusing to unpickle a model")
    return program


def load_registered(uri: str) -> nn.Module:
    """The classifier at a model URI (see `registered_program`), in inference form. The program
    archive is inspected first: one that would unpickle or execute anything is refused (see
    afd.ops.export.check_program_archive). Prefer this to `mlflow.pytorch.load_model` for a registry
    that others can write to: MLflow loads the archive as it is."""
    from afd.ops.export import load_program

    with tempfile.TemporaryDirectory(prefix="afd-registered-") as folder:
        return load_program(registered_program(uri, Path(folder)), name=uri).module()


@dataclass(frozen=True)
class GateScores:
    """What the gate compares, from the evaluation grid (headline metric: top-1 or agreement)."""

    candidate: float  # the new model, averaged over the compressed sets' families
    direct: float  # DirectTest, averaged the same way
    candidate_lightest: float  # at the lightest JPEG compression (highest QF)
    direct_lightest: float

    @classmethod
    def from_evaluation(cls, result: dict, method: str = "afd", metric: str | None = None) -> "GateScores":
        from afd.model.evaluate import headline_metric

        metric = metric or headline_metric(result)
        jpeg = CODECS["jpeg"]
        levels = {EvalSet.parse(s).level: s for s in result["grid"]["direct"] if set_family(s) == jpeg.name}
        lightest = levels[jpeg.light_to_heavy(levels)[0]]

        def average(name: str) -> float:
            families = result["averages"][name].values()
            return sum(f[metric] for f in families) / len(families)

        return cls(average(method), average("direct"),
                   result["grid"][method][lightest][metric], result["grid"]["direct"][lightest][metric])


def gate(scores: GateScores, champion_score: float | None) -> tuple[str, str]:
    """(alias, reason): champion only if the candidate beats DirectTest on average, is not worse
    than DirectTest at the lightest QF, and is not worse than the current champion."""
    if scores.candidate <= scores.direct:
        return CHALLENGER, f"average {scores.candidate:.4f} does not beat DirectTest's {scores.direct:.4f}"
    if scores.candidate_lightest < scores.direct_lightest:
        return CHALLENGER, (f"at the lightest QF {scores.candidate_lightest:.4f} is below DirectTest's "
                            f"{scores.direct_lightest:.4f}")
    if champion_score is not None and scores.candidate < champion_score:
        return CHALLENGER, f"average {scores.candidate:.4f} is below the champion's {champion_score:.4f}"
    return CHAMPION, f"average {scores.candidate:.4f} beats DirectTest's {scores.direct:.4f}"


def champion_score(client, name: str) -> float | None:
    from mlflow.exceptions import MlflowException

    try:
        version = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no champion yet
        return None
    return float(version.tags[SCORE_TAG]) if SCORE_TAG in version.tags else None


@dataclass(frozen=True)
class Registration:
    name: str
    version: str
    alias: str
    reason: str
    run_id: str


def model_requirements() -> list[str]:
    """What loading a registered classifier needs besides MLflow: torch alone (it is a torch.export
    program). MLflow would otherwise infer the requirements from every module imported while the
    model is loaded, which drags in what this project's own process happened to import."""
    return [f"torch=={torch.__version__.split('+')[0]}"]


def register_classifier(
    model: nn.Module,
    backbone: str,
    example: torch.Tensor,
    scores: GateScores,
    tags: dict[str, str],
    deploy_files: list[Path] = (),
    attachments: dict[str, Path] | None = None,
) -> Registration:
    """Log `model` (pytorch flavour, pyfunc-loadable) with signature and input example, register
    it as afd-<backbone>, tag the version, then apply the gate. Call inside an active MLflow run.
    `example` needs a batch of 2 or more, so the stored program keeps a dynamic batch dimension.
    `deploy_files` (the other formats) become part of the model version itself, under
    `extra_files/`, so one model URI gives every format; `attachments` go to the run only."""
    import mlflow
    from mlflow.models import infer_signature

    name = registered_name(backbone)
    model = model.eval()
    with torch.no_grad():
        logits = model(example)
    info = mlflow.pytorch.log_model(
        model, name="model", serialization_format="pt2",  # a program, never a pickle
        signature=infer_signature(example.numpy(), logits.numpy()),
        input_example=example.numpy(), registered_model_name=name,
        extra_files=[str(path) for path in deploy_files] or None, pip_requirements=model_requirements(),
    )
    for folder, path in (attachments or {}).items():  # a file, or a folder's files, under `folder`
        if Path(path).is_dir():
            mlflow.log_artifacts(str(path), artifact_path=folder)
        else:
            mlflow.log_artifact(str(path), artifact_path=folder)
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    # repr: the exact float, so the gate compares a later candidate with the champion's true score
    for key, value in {**tags, SCORE_TAG: repr(scores.candidate), "gate.direct_score": repr(scores.direct)}.items():
        client.set_model_version_tag(name, version, key, str(value))
    alias, reason = gate(scores, champion_score(client, name))
    client.set_model_version_tag(name, version, "gate.decision", f"{alias}: {reason}")
    client.set_registered_model_alias(name, alias, version)  # last: nothing before it touches the champion
    return Registration(name, version, alias, reason, mlflow.active_run().info.run_id)


def champion_with_model(backbone: str, model_md5: str) -> dict | None:
    """The champion of afd-<backbone> if its fused module's file has md5 `model_md5` (re-registering
    it would add a copy of the same model), as a receipt; else None."""
    import mlflow
    from mlflow.exceptions import MlflowException

    name = registered_name(backbone)
    try:
        version = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
    except MlflowException:  # no such model or no champion yet
        return None
    if version.tags.get(MODEL_MD5_TAG) != model_md5:
        return None
    return {"name": name, "version": version.version, "alias": CHAMPION, "run_id": version.run_id,
            "reason": f"unchanged: the fused model equals the champion's (md5 {model_md5})"}


def set_lineage_commit(name: str, version: str, commit: str, branch: str) -> None:
    """Point a registered version at the git commit (and branch) that holds its results."""
    import mlflow

    client = mlflow.MlflowClient()
    client.set_model_version_tag(name, version, "git_commit", commit)
    client.set_model_version_tag(name, version, "git_branch", branch)
