"""What every stage script shares: its command line and its error exit."""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from typing import Callable

from afd.errors import AFDError


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
    """Decorate a stage's main(): log to stderr, and turn an AFDError into `error: <message>` on
    stderr with exit status 2 (a user mistake, not a crash: no traceback)."""

    @functools.wraps(main)
    def run() -> None:
        logging.basicConfig(level=logging.INFO, format="%(message)s")
        try:
            main()
        except AFDError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)

    return run
