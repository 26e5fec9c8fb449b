"""What every stage script shares: its command line, its error exit, and the dependency audit.

A stage script is its docstring and one line, `run_step(__doc__, steps.<step>, <arguments>)`: the
step itself (in `afd.ops.steps`) does the work, so the scripts hold no logic."""

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
from afd.ops.params import load_params, used_keys

PROJECT = Path(__file__).resolve().parents[1]
# Set to a folder, each stage run writes there the params.yaml keys and project modules it used,
# so a test can check that dvc.yaml declares them (tests/test_pipeline.py).
AUDIT_ENV = "AFD_DEPENDENCY_AUDIT"


def run_step(doc: str, step: Callable[..., str], *arguments: str) -> None:
    """Run `step(params, *values of arguments)` as a stage: --params plus one required option per
    name in `arguments` (--backbone, --method, --codec), in the step's argument order, with
    `stage_main`'s error handling; prints the step's one-line summary."""

    @stage_main
    def main() -> None:
        parser = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
        parser.add_argument("--params", default="params.yaml")
        for name in arguments:
            parser.add_argument(f"--{name}", required=True)
        args = vars(parser.parse_args())
        print(step(load_params(args["params"]), *(args[name] for name in arguments)))

    main()


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
