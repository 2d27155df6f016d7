"""Atomic writes: a file or a directory is written beside its destination and renamed into place, so a crash
never leaves half of it, and what is written gets the permissions the umask gives any new file (0666 & ~umask
for files, 0777 & ~umask for directories), as the rest of a run directory has. Imports nothing from t5vae."""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def umask() -> int:
    """The process's umask (read by setting it and setting it back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """Where t5vae keeps what it computes for a run it only reads: ``$XDG_CACHE_HOME/t5vae`` (default
    ``~/.cache/t5vae``), so that a viewer never writes into a run directory."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "t5vae"


def _staging(path: Path, kind: str) -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator:
    """Yield a file opened in ``mode`` that replaces ``path`` only if the block finishes without error;
    otherwise the temporary file is removed and ``path`` is untouched."""
    path = Path(path)
    tmp = _staging(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as to open(path, "w")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj) -> None:
    """``obj`` as indented JSON with sorted keys and a final newline, written atomically."""
    with atomic_file(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


@contextmanager
def atomic_directory(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``out`` only if the block finishes without error; an existing
    ``out`` is a FileExistsError unless ``overwrite``, and is then replaced only once the new one is whole."""
    out = Path(out).absolute()
    if out.exists() and not overwrite:
        raise FileExistsError(
            f"{out} already exists; choose another output or pass overwrite=True (--overwrite)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(out, "partial")
    tmp.mkdir()  # not mkdtemp, whose 0700 the finished directory would keep: mkdir applies the umask
    try:
        yield tmp
        replace_directory(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def replace_directory(tmp: Path, out: Path) -> None:
    """Rename a finished ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted last."""
    if out.exists():
        old = _staging(out, "old")
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old)
    else:
        tmp.rename(out)
