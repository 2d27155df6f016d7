"""Corpora of lines: the embedded default (single-line Python statements of the installed standard
library), text files, and their train/validation split.

A line's split is fixed by a hash of the line, so it never depends on file order or the machine. TFDS
corpora (t5vae.tfds_data) build on this module; ``t5vae.data.load_corpus`` chooses between them.
"""
from __future__ import annotations

import ast
import dataclasses
import os
import sysconfig
import zlib
from pathlib import Path
from typing import Sequence

from t5vae.names import parse_quietly


# The embedded corpus's line-length cap in characters (TrainConfig.max_chars's default): real code lines run
# past 40 characters, and a model that never saw one reconstructs almost none (docs/results.md).
MAX_CHARS = 80

def split_of(line: str, validation_percent: float) -> str:
    """``"validation"`` or ``"train"``, fixed by a CRC32 hash of the line (stable across machines)."""
    return "validation" if zlib.crc32(line.encode("utf-8")) % 10_000 < validation_percent * 100 else "train"


def _is_statement(s: str) -> bool:
    tree = parse_quietly(s)
    if tree is None:
        return False
    if len(tree.body) != 1:
        return False
    node = tree.body[0]
    if isinstance(node, ast.Expr) and not isinstance(node.value, ast.Call):
        return False  # docstring fragments, bare names and other non-statements
    return "#" not in s and "\\" not in s


def stdlib_lines(min_chars: int = 10, max_chars: int = MAX_CHARS, root: str | None = None) -> list[str]:
    """The embedded default corpus: single-line Python statements from the installed standard library.

    Every stripped line of every ``.py`` file (tests, encodings tables and vendored packages skipped) that
    parses with ``ast.parse`` as one statement, has no comment or backslash, and is within the length
    bounds; deduplicated and sorted, so the result depends only on the stdlib's contents.
    """
    return python_lines(root or sysconfig.get_paths()["stdlib"], min_chars, max_chars)


def package_root(name_or_dir: str) -> str:
    """A directory, or the directory of an importable package (``optax``, ``jax``), without importing it."""
    if Path(name_or_dir).is_dir():
        return str(name_or_dir)
    import importlib.util

    try:
        spec = importlib.util.find_spec(name_or_dir)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"py:{name_or_dir}: neither a directory nor an installed package")
    return list(spec.submodule_search_locations)[0]


def python_lines(root: str, min_chars: int = 10, max_chars: int = MAX_CHARS) -> list[str]:
    """Single-line statements of the ``.py`` files under ``root``, chosen as :func:`stdlib_lines` chooses."""
    skip = {"site-packages", "test", "tests", "idlelib", "lib2to3", "encodings", "__pycache__", "turtledemo"}
    found = set()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip)
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                text = Path(dirpath, name).read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            for line in text.splitlines():
                s = line.strip()
                if min_chars <= len(s) <= max_chars and s not in found and _is_statement(s):
                    found.add(s)
    if not found:
        raise ValueError(f"found no Python statements under {root}")
    return sorted(found)


def read_text_lines(paths: Sequence[str | os.PathLike]) -> list[str]:
    """One example per non-empty line (trailing newline / CR removed, everything else kept) from text files."""
    lines = []
    for p in paths:
        p = Path(p)
        if not p.is_file():
            raise FileNotFoundError(f"no such file: {p}")
        data = p.read_bytes()
        if b"\0" in data[:65536]:
            raise ValueError(f"{p} is not a text file (it contains NUL bytes)")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{p} is not UTF-8 text: {e}") from None
        lines += [ln.rstrip("\r") for ln in text.split("\n") if ln.rstrip("\r").strip()]
    if not lines:
        raise ValueError(f"the corpus is empty: no non-empty lines in {[str(p) for p in paths]}")
    return lines


def record_text(record, field: str | None, name: str) -> str:
    """The text of one record of a random-access source: the record itself (bytes or str) when ``field`` is
    None, else its ``field`` (a TFDS example's feature); ``name`` says which source in the errors."""
    if field is not None:
        if not isinstance(record, dict) or field not in record:
            have = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{name}: a record has no text feature {field!r} (it has {have})")
        record = record[field]
    if isinstance(record, bytes):
        return record.decode("utf-8")
    if isinstance(record, str):
        return record
    raise ValueError(f"{name}: a record's text is a {type(record).__name__}, not bytes or str")


def read_texts(records, indices: Sequence[int], field: str | None, name: str) -> list[str]:
    """The texts of ``records[i]`` for ``i`` in ``indices``, read 4,096 at a time through ``__getitems__`` (an
    array_record or TFDS data source: one batched read each, not a read per record)."""
    out = []
    for s in range(0, len(indices), 4096):
        part = [int(i) for i in indices[s: s + 4096]]
        out += [record_text(r, field, name) for r in records.__getitems__(part)]
    return out


@dataclasses.dataclass
class Corpus:
    """Train and validation lines plus where they came from."""

    train: list[str]
    validation: list[str]
    source: str

    @classmethod
    def from_lines(cls, lines: Sequence[str], source: str, validation_percent: float = 2.0) -> "Corpus":
        lines = list(dict.fromkeys(lines))  # dedup, keep order
        if not lines:
            raise ValueError(f"the corpus {source} is empty")
        train = [s for s in lines if split_of(s, validation_percent) == "train"]
        val = [s for s in lines if split_of(s, validation_percent) == "validation"]
        if (len(val) < 2 or not train) and len(lines) >= 4:  # tiny corpora: at least 2 validation lines
            by_hash = sorted(lines, key=lambda s: zlib.crc32(s.encode("utf-8")))
            held = set(by_hash[: max(2, len(lines) // 50)])
            val, train = [s for s in lines if s in held], [s for s in lines if s not in held]
        return cls(train, val, source)
