"""The pipeline as DVC declares it (dvc.yaml, with its matrix and foreach items expanded): what the
retraining flow executes. Read through DVC's Python API, so the flow holds no copy of the stage
names, their commands or their order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Stage:
    name: str  # DVC's address: "train@efficientnet_lite0-afd"
    cmd: str
    upstream: tuple[str, ...]  # the stages whose outputs it reads
    git_files: tuple[str, ...]  # what git keeps of its outputs: its uncached outputs and the .gitignore of each cached one
    uncached_outs: tuple[str, ...] = ()  # its outputs that git keeps (metrics, plots), not the DVC remote
    fan_out: bool = False  # dvc.yaml's `meta: {fan_out: true}`: it may run on a worker in another checkout


def read_pipeline(root: str | Path = ".") -> dict[str, Stage]:
    """Every stage of dvc.yaml, upstream stages first (a topological order)."""
    import networkx as nx
    from dvc.repo import Repo

    root = Path(root).resolve()
    with Repo(str(root)) as repo:
        graph = repo.index.graph  # an edge runs from a stage to a stage it depends on
        stages = {}
        for stage in reversed(list(nx.topological_sort(graph))):
            if not getattr(stage, "cmd", None):  # a .dvc file (imported data): nothing to run
                continue
            git_files, uncached = set(), set()
            for out in stage.outs:
                path = Path(out.fs_path).relative_to(root)
                git_files.add((path.parent / ".gitignore").as_posix() if out.use_cache else path.as_posix())
                if not out.use_cache:
                    uncached.add(path.as_posix())
            stages[stage.name] = Stage(stage.name, stage.cmd,
                                       tuple(sorted(up.name for up in graph.successors(stage))),
                                       tuple(sorted(git_files)), tuple(sorted(uncached)),
                                       bool((stage.meta or {}).get("fan_out")))
    return stages


def needed_for(stages: dict[str, Stage], targets: list[str] | None) -> dict[str, Stage]:
    """The `targets` (stage names, or a matrix/foreach stage's base name: "train") and every stage
    they depend on, as `dvc repro <targets>` would take them; all stages when `targets` is None."""
    if not targets:
        return stages
    chosen = set()
    for target in targets:
        matched = [name for name in stages if name == target or name.split("@", 1)[0] == target]
        if not matched:
            raise ValueError(f"dvc.yaml has no stage {target!r}; stages: {', '.join(stages)}")
        chosen.update(matched)
    pending = list(chosen)
    while pending:
        for upstream in stages[pending.pop()].upstream:
            if upstream not in chosen:
                chosen.add(upstream)
                pending.append(upstream)
    return {name: stage for name, stage in stages.items() if name in chosen}
