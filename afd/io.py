"""Atomic file writes: a killed process never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch


def remove_stale_temporaries(path: Path) -> None:
    """The hidden siblings a killed writer of `path` left (`.<name>.*.tmp` / `.old`). Outputs have
    one writer at a time (DVC's repo lock), so a sibling still there when a new write starts is stale."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if stale.suffix in (".tmp", ".old"):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; if the block succeeds it replaces `path` as a whole,
    otherwise it is removed and `path` (old or absent) is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the set is an ordinary folder
    try:
        yield tmp
        if path.exists() or path.is_symlink():
            old = tmp.with_suffix(".old")
            os.rename(path, old)
            os.rename(tmp, path)
            old.unlink() if old.is_symlink() else shutil.rmtree(old)  # DVC may link outputs
        else:
            os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def atomic_torch_save(obj, path: str | os.PathLike) -> None:
    # Through a file object: given a name, torch.save names the archive's inner folder after it,
    # and the random temporary name would make equal checkpoints differ byte for byte.
    with atomic_path(path) as tmp, open(tmp, "wb") as file:
        torch.save(obj, file)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data) -> None:
    """Pretty, key-sorted JSON (stable diffs, `dvc metrics diff` friendly), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
