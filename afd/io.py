"""Atomic file writes (a killed process never leaves a half-written output behind), and reading YAML."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import torch
import yaml

from afd.errors import OutputError, display_name, first_line

# libyaml's parser where PyYAML was built with it: dvc.lock grows to ~200 KB, which the
# pure-Python parser reads about 3x slower (0.35 s against 0.11 s), in every stage.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str):
    """`yaml.safe_load`, with libyaml's parser when available (the same documents, same errors)."""
    return yaml.load(text, Loader=_YAML_LOADER)


def remove_stale_temporaries(path: Path) -> None:
    """The hidden siblings a killed writer of `path` left (`.<name>.*.tmp` / `.old`). Outputs have
    one writer at a time (DVC's repo lock), so a sibling still there when a new write starts is stale."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*"):
        if stale.suffix in (".tmp", ".old"):
            shutil.rmtree(stale) if stale.is_dir() and not stale.is_symlink() else stale.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to `path`; rename it onto `path` only if the block succeeds.
    The file gets the permissions a plain `open(path, "w")` would (0666 less the umask). An
    output that cannot be written (a folder in the way, a parent that is a file, a full disk) is an
    OutputError naming `path`."""
    path = Path(path)
    with _naming_output(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR))
        remove_stale_temporaries(path)
        tmp = _new_temporary(path)
    try:
        with _naming_output(path, tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _naming_output(path: Path, tmp: Path | None = None) -> Iterator[None]:
    """Turn an OSError about writing `path` (or its temporary `tmp`) into an OutputError naming
    `path`; an OSError about another file (an input read inside the block) passes unchanged."""
    try:
        yield
    except OSError as error:
        if error.filename not in (None, str(path), str(path.parent), str(tmp), *map(str, path.parents)):
            raise
        reason = error.strerror or type(error).__name__
        raise OutputError(f"{display_name(path)}: cannot write it ({reason})") from None


def _new_temporary(path: Path) -> Path:
    """A new hidden sibling of `path`, created with mode 0666 so that the umask applies (mkstemp
    would make it 0600 whatever the umask)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty hidden sibling folder; if the block succeeds it replaces `path` as a whole,
    otherwise it is removed and `path` (old or absent) is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the set is an ordinary folder
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
        try:
            torch.save(obj, file)
        except RuntimeError as error:  # torch's stream writer reports a failed write (disk full) so
            raise OutputError(f"{display_name(path)}: cannot write it ({first_line(error)})") from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, data) -> None:
    """Pretty, key-sorted JSON (stable diffs, `dvc metrics diff` friendly), written atomically."""
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    return _file_digest(path, hashlib.sha256())


def file_md5(path: str | os.PathLike) -> str:
    """The md5 of a file's bytes (what DVC records for a file output)."""
    return _file_digest(path, hashlib.md5())


def _file_digest(path: str | os.PathLike, digest) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
