"""What every stage script shares: its command line, its error exit, and the dependency audit."""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable

from afd.errors import AFDError
from afd.io import write_json
from afd.params import used_keys

PROJECT = Path(__file__).resolve().parents[1]
# Set to a folder, each stage run writes there the params.yaml keys and project modules it used,
# so a test can check that dvc.yaml declares them (tests/test_pipeline.py).
AUDIT_ENV = "AFD_DEPENDENCY_AUDIT"


def stage_arguments(doc: str, *, backbone: bool = False, method: bool = False) -> argparse.ArgumentParser:
    """The stage's parser: --params always, --backbone / --method for per-model stages."""
    parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    if backbone:
        parser.add_argument("--backbone", required=True)
    if method:
        parser.add_argument("--method", required=True)
    return parser


def stage_main(main: Callable[[], None]) -> Callable[[], None]:
    """Decorate a stage's main(): log to stderr, turn an AFDError into `error: <message>` on
    stderr with exit status 2 (a user mistake, not a crash: no traceback), and turn SIGTERM into
    an exit that runs the stage's cleanup (an MLflow run is then marked KILLED, not left RUNNING)."""

    @functools.wraps(main)
    def run() -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        signal.signal(signal.SIGTERM, _exit_on_signal)
        try:
            main()
        except AFDError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
        finally:
            if os.environ.get(AUDIT_ENV):
                _write_audit(Path(os.environ[AUDIT_ENV]))

    return run


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def _write_audit(folder: Path) -> None:
    """The params.yaml keys and project files (`stages/x.py`, `afd/y.py`) this process used. The
    `afd` package may be installed from another checkout (an editable install), so its files are
    named relative to the package, the stage scripts relative to this project."""
    import afd

    roots = (PROJECT, Path(afd.__file__).resolve().parents[1])
    files = {Path(module.__file__).resolve() for module in list(sys.modules.values())
             if isinstance(getattr(module, "__file__", None), str) and Path(module.__file__).is_absolute()}
    modules = sorted({file.relative_to(root).as_posix() for file in files for root in roots
                      if file.is_relative_to(root) and file.relative_to(root).parts[0] in ("afd", "stages")})
    record = {"argv": sys.argv, "params": used_keys(), "modules": modules}
    name = "_".join(Path(arg).stem if arg.endswith(".py") else arg for arg in sys.argv).replace("/", "_")
    write_json(folder / f"{name}.json", record)
