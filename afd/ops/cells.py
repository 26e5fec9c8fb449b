"""Grid cells computed ahead of the `evaluate` stage, and the cache the stage reads them from.

A cell is one method's (or DirectTest's) per-image outcomes on one evaluation set. The retraining
flow computes a backbone's cells in parallel, one process per method
(`python -m afd.ops.cells --backbone B --method M`), and then runs the stage, which only assembles
them; `dvc repro` computes them in the stage itself. Both give the same bytes: a cell is keyed by
everything it depends on (the code, the backbone and its weights, the method's parameters and
model file, the set's and the clean set's files, the batch size and thread count), computed on the
same pinned CPU numerics, and methods never share a computation within a set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from afd.errors import AFDError
from afd.io import atomic_write_text, file_md5, file_sha256
from afd.model.determinism import describe_device, pin_numerics
from afd.model.evaluate import Outcomes, evaluate_grid
from afd.model.methods import DIRECT_TEST, Method
from afd.ops.layout import CELL_CACHE, deployable_model, eval_sets


class CellCache:
    """The cells of one backbone's grid, by (method, set), under CELL_CACHE/<backbone>/."""

    def __init__(self, params: dict, backbone_name: str, weights_file, tap: str, device: torch.device,
                 root: Path = CELL_CACHE):
        self.params, self.backbone_name = params, backbone_name
        self.folder = root / backbone_name
        self.sets = eval_sets(params)
        self.common = {"code": _code_digest(), "backbone": backbone_name, "settings": params["backbones"][backbone_name],
                       "weights": file_sha256(weights_file) if weights_file else "random", "tap": tap,
                       "clean": _folder_digest(self.sets["clean"]),
                       "batch_size": params["evaluate"]["batch_size"], "threads": params["numerics"]["threads"],
                       "device": describe_device(device) if device.type == "cuda" else "cpu"}  # a GPU's cells differ
        self.digests: dict[str, str] = {}

    def key(self, method: str, set_name: str) -> str:
        if set_name not in self.digests:
            self.digests[set_name] = _folder_digest(self.sets[set_name])
        if method == DIRECT_TEST:
            model = None
        else:
            spec = Method.from_params(method, self.params["methods"])
            model = [self.params["methods"][method], file_md5(deployable_model(self.backbone_name, spec))]
        text = json.dumps([self.common, method, model, set_name, self.digests[set_name]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()

    def load(self, method: str, set_name: str) -> Outcomes | None:
        path = self.folder / f"{self.key(method, set_name)}.json"
        if not path.is_file():
            return None
        try:
            return Outcomes(**json.loads(path.read_text()))
        except (ValueError, TypeError):  # not a cell this code wrote: compute it again
            return None

    def save(self, method: str, set_name: str, outcomes: Outcomes) -> None:
        cell = {"agree": outcomes.agree, "correct": outcomes.correct, "kl": outcomes.kl,
                "feature_mse": outcomes.feature_mse}  # floats as repr: they read back exactly
        atomic_write_text(self.folder / f"{self.key(method, set_name)}.json", json.dumps(cell))


def _code_digest() -> str:
    import afd

    package = Path(afd.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package).as_posix()}:{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        digest.update(f"{path.relative_to(folder).as_posix()}:{file_md5(path)}\n".encode())
    return digest.hexdigest()


def compute_method_cells(params: dict, backbone_name: str, method: str) -> str:
    """Every cell of `method` (or DirectTest) in `backbone_name`'s grid that the cache lacks."""
    from afd.ops.pipeline import evaluation_sets, grid_cells, trained_methods

    device, _ = pin_numerics(params["numerics"]["threads"], params["numerics"]["device"])
    trained = trained_methods(params, backbone_name, [method])
    cache = CellCache(params, backbone_name, trained.backbone.weights_file, trained.tap, device)
    missing = [s for s, methods in grid_cells(params, backbone_name).items()
               if method in methods and cache.load(method, s) is None]
    if missing:
        sets = evaluation_sets(params, missing)
        direct = trained.classifiers[DIRECT_TEST]
        grid = evaluate_grid(direct, {method: trained.classifiers[method]}, sets, {s: [method] for s in missing},
                            device=device)
        for set_name, outcomes in grid[method].items():
            cache.save(method, set_name, outcomes)
    return f"{backbone_name}/{method}: {len(missing)} cells computed"


def main() -> None:
    from afd.ops.params import load_params

    parser = argparse.ArgumentParser(description="Compute one method's cells of a backbone's evaluation grid ahead.")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--method", required=True, help=f"a method evaluated for the backbone, or {DIRECT_TEST}")
    args = parser.parse_args()
    try:
        print(compute_method_cells(load_params(args.params), args.backbone, args.method))
    except AFDError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
