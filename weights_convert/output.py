"""Where a conversion writes OUT, without ever losing data.

OUT is checked before the source is read: never the source's directory, nor a directory around or inside it;
``--overwrite`` replaces only an empty directory or a previous conversion (config.json + params/ [+ spiece.model]).
OUT is staged next to itself as ``.OUT.partial-<pid>-<random>-<host>`` with the usual permissions
(0777 & ~umask) and renamed into place; an old OUT is moved aside to ``.OUT.old-<pid>-<random>-<host>`` and
deleted once the new one is in place. The next run on OUT removes what a killed run left behind (only when
its process is gone) and reports what it cannot tell about.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import socket
from pathlib import Path

from t5vae import checkpoint
from t5vae.config import T5Config
from weights_convert.rules import ConversionError

log = logging.getLogger("weights_convert")

CONVERSION_FILES = (checkpoint.CONFIG_FILE, checkpoint.PARAMS_DIR, checkpoint.TOKENIZER_FILE)
HOST = socket.gethostname() or "localhost"


def source_dir(src: str | os.PathLike) -> Path:
    """The directory a source checkpoint lives in (a file such as model.ckpt-N.index or a prefix: its parent)."""
    src = Path(src).absolute()
    return src.resolve() if src.is_dir() else src.parent.resolve()


def check(src: str | os.PathLike, out: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an OUT that would destroy the source or anything that is not a previous conversion; raise naming both."""
    src, out = Path(src), Path(out)
    sdir, resolved = source_dir(src), Path(out).absolute().resolve()
    named = f"OUT {out}" + (f" (= {resolved})" if resolved != out.absolute() else "")
    source = f"SRC {src}" + (
        "" if src.absolute() == sdir else f" = {sdir}" if src.is_dir() else f", in {sdir}"
    )
    if resolved == sdir:
        raise ConversionError(
            f"refusing {named}: it is the source checkpoint's directory ({source}); writing "
            f"there could destroy the source: choose an output outside {sdir}"
        )
    if resolved in sdir.parents:
        raise ConversionError(
            f"refusing {named}: it contains the source checkpoint ({source}); replacing it could "
            "destroy the source: choose an output that does not hold it"
        )
    if sdir in resolved.parents:
        raise ConversionError(
            f"refusing {named}: it is inside the source checkpoint's directory ({source}); "
            f"choose an output outside {sdir}"
        )
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output or pass --overwrite")
    what = (
        "--overwrite replaces only an empty directory or a previous conversion (config.json + params/ "
        "[+ spiece.model])"
    )
    if out.is_symlink():
        raise ConversionError(
            f"refusing to overwrite {out}: it is a symbolic link (to {os.readlink(out)}); "
            f"{what}: remove the link or name the directory itself"
        )
    if not out.is_dir():
        raise ConversionError(
            f"refusing to overwrite {out}: it is a file, not a directory; {what}: "
            "remove it yourself or choose another output"
        )
    problem = not_a_conversion(out)
    if problem:
        raise ConversionError(
            f"refusing to overwrite {out}: {problem}; {what}: remove it yourself or choose another output"
        )


def not_a_conversion(out: Path) -> str | None:
    """Why the directory ``out`` is neither empty nor a previous conversion (None when it may be replaced)."""
    names = sorted(p.name for p in out.iterdir())
    if not names:
        return None
    holds = f"it holds {listing(out, names)}"
    extra = [n for n in names if n not in CONVERSION_FILES]
    config, params = out / checkpoint.CONFIG_FILE, out / checkpoint.PARAMS_DIR
    if extra or not config.is_file() or not params.is_dir() or (out / checkpoint.TOKENIZER_FILE).is_dir():
        return holds
    if not any((params / m).is_file() for m in ("_METADATA", "_CHECKPOINT_METADATA")):
        return f"{holds}, and {params} is not an orbax checkpoint"
    try:
        with open(config, "rb") as f:
            model_type = json.loads(f.read(1 << 20)).get("model_type")
    except (ValueError, AttributeError):  # JSONDecodeError, UnicodeDecodeError, a non-object
        model_type = None
    if model_type not in ("t5", "mt5", "umt5"):
        return f"{holds}, and {config} is not a T5 config.json (model_type {model_type!r})"
    return None


def listing(d: Path, names: list[str], n: int = 5) -> str:
    shown = [f"{x}/" if (d / x).is_dir() else x for x in names[:n]]
    return ", ".join(shown) + (f" (+ {len(names) - n} more)" if len(names) > n else "")


# -- leftovers of earlier runs ----------------------------------------------------------------------------


def _owner(out: Path, name: str):
    """-> (kind, pid, host) for a staging name of OUT (host None: this host's legacy name), or None if unparsable.
    ``.OUT.old-<pid>`` (no random part) is what t5vae.checkpoint names an old OUT it moves aside."""
    m = re.fullmatch(rf"\.{re.escape(out.name)}\.(partial|old)-(\d+)(?:-([a-z0-9_]+)(?:-(.+))?)?", name)
    if m is None or (m[1] == "partial" and m[3] is None):  # t5vae's .OUT.partial-<mkdtemp>: no pid in it
        return None
    return m[1], int(m[2]), m[4]


def _alive(pid: int, host: str | None) -> bool | None:
    """Whether the process ``pid`` runs (None: it ran on another host, so this one cannot tell)."""
    if host is not None and host != HOST:
        return None
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _size(p: Path) -> str:
    total = sum(f.stat().st_size for f in p.rglob("*") if f.is_file() and not f.is_symlink())
    return f"{total / 2**20:.1f} MB"


def sweep(out: str | os.PathLike) -> list[Path]:
    """Remove the staging directories of OUT whose process is gone; log what is removed and what is left.
    -> the old OUTs kept because OUT itself is missing (a run killed mid-swap): remove them once OUT is back."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return []
    kept = []
    prefixes = tuple(f".{out.name}.{kind}-" for kind in ("partial", "old"))
    for p in sorted(out.parent.iterdir()):
        if not p.name.startswith(prefixes) or not p.is_dir() or p.is_symlink():
            continue
        owner = _owner(out, p.name)
        alive = None if owner is None else _alive(*owner[1:])
        if alive is None:
            log.warning(
                "found %s (%s) left by an earlier run, but cannot tell whether its process still runs "
                "(%s); remove it if no conversion into %s is running",
                p,
                _size(p),
                "an older version's name" if owner is None else f"process {owner[1]} on {owner[2]}",
                out,
            )
        elif alive:
            log.warning("leaving %s alone: process %d, which is writing it, is still running", p, owner[1])
        elif owner[0] == "old" and not out.exists():
            log.warning(
                "keeping %s, the previous %s (a run was killed while replacing it), until the new %s is "
                "in place",
                p,
                out.name,
                out.name,
            )
            kept.append(p)
        else:
            size = _size(p)
            shutil.rmtree(p)
            log.info("removed %s (%s), left by process %d, which is no longer running", p, size, owner[1])
    return kept


# -- writing --------------------------------------------------------------------------------------------


def _staging(out: Path, kind: str) -> Path:
    return out.with_name(f".{out.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}-{HOST}")


def write(
    src,
    out: str | os.PathLike,
    cfg: T5Config,
    params,
    tokenizer: Path | None,
    overwrite: bool,
    kept: list[Path] = (),
) -> Path:
    """Write config.json + params/ (+ spiece.model) to a staging directory and rename it into place as OUT."""
    out = Path(out).absolute()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = _staging(out, "partial")
    tmp.mkdir()  # 0777 & ~umask, as any directory the user makes
    try:
        cfg.save_json(tmp / checkpoint.CONFIG_FILE)
        if tokenizer is not None:
            shutil.copyfile(tokenizer, tmp / checkpoint.TOKENIZER_FILE)
        checkpoint.save_params(tmp / checkpoint.PARAMS_DIR, params)
        check(src, out, overwrite)  # again: OUT may have appeared or changed while converting
        _swap(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    for p in kept:
        if p.exists():
            shutil.rmtree(p)
            log.info("removed %s, the %s that a killed run had moved aside", p, out.name)
    return out


def _swap(tmp: Path, out: Path) -> None:
    """Rename ``tmp`` to ``out``; an existing ``out`` is moved aside first and deleted last."""
    if not out.exists():
        tmp.rename(out)
        return
    old = _staging(out, "old")
    out.rename(old)
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old)
