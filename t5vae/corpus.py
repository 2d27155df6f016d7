"""Corpora of lines: the one parser of corpus specs (:func:`parse_spec`), the embedded default (single-line
Python statements of the installed standard library), text files, and their train/validation split.

A line's split is fixed by a hash of the line, so it never depends on file order or the machine; a source
read by position (array_record files, a TFDS dataset without a held-out split) holds out its first records
(:func:`held_out_count`). TFDS corpora (t5vae.tfds_data) build on this module; ``t5vae.data.load_corpus``
(in memory) and ``t5vae.sources.open_source`` (streamed) read a spec the same way.
"""

from __future__ import annotations

import ast
import bisect
import dataclasses
import os
import re
import sysconfig
import zlib
from pathlib import Path
from typing import Sequence

from t5vae.names import PROSE, parse_quietly

# The embedded corpus's line-length cap in characters (TrainConfig.max_chars's default): real code lines run
# past 40 characters, and a model that never saw one reconstructs almost none (docs/results.md).
MAX_CHARS = 80

HELD_OUT_MAX = 2_000  # validation lines taken from the head of a source read by position
_VERSION = re.compile(r"(\d+|\*)(\.(\d+|\*)){2}")


@dataclasses.dataclass(frozen=True)
class Spec:
    """A parsed corpus spec: its ``kind`` (one of names.CORPUS_KINDS) and what it names: the package or
    directory of ``py:``, the dataset ``NAME[/CONFIG][:VERSION]`` and text ``field`` of ``tfds:``, the files of
    ``array_record:`` and of text."""

    kind: str
    text: str
    name: str = ""
    field: str = "text"
    paths: tuple[str, ...] = ()


def parse_spec(spec: str | None) -> Spec:
    """``None``/""/"stdlib": the embedded corpus; "prose": the embedded English sentences; "py:PACKAGE_OR_DIR"; "tfds:NAME[/CONFIG][:VERSION][:FIELD]";
    "array_record:PATH[,PATH]" or comma-separated paths that all name array_record files (or shards);
    otherwise comma-separated text files. A malformed spec is a ValueError that shows the expected form."""
    if spec in (None, "", "stdlib"):
        return Spec("stdlib", "stdlib")
    if spec == PROSE:
        return Spec("prose", PROSE)
    if not isinstance(spec, str):
        raise TypeError(f"a corpus spec is a string, got {type(spec).__name__}")
    if spec.startswith("py:"):
        if not spec[3:]:
            raise ValueError(f"corpus {spec!r} names no package or directory: expected py:PACKAGE_OR_DIR")
        return Spec("py", spec, name=spec[3:])
    if spec.startswith("tfds:"):
        parts = spec.removeprefix("tfds:").split(":")
        name = parts.pop(0)
        if parts and _VERSION.fullmatch(parts[0]):
            name += ":" + parts.pop(0)
        field = parts.pop(0) if parts else "text"
        if not name or not field or parts:
            raise ValueError(f"bad TFDS corpus spec {spec!r}: expected tfds:NAME[/CONFIG][:VERSION][:FIELD]")
        return Spec("tfds", spec, name=name, field=field)
    paths = tuple(p for p in spec.removeprefix("array_record:").split(","))
    if any(not p for p in paths):
        raise ValueError(f"corpus {spec!r} has an empty path: expected PATH[,PATH...]")
    if spec.startswith("array_record:") or all(".array_record" in Path(p).name for p in paths):
        return Spec("array_record", spec, paths=paths)
    return Spec("text", spec, paths=paths)


def held_out_count(n: int, validation_percent: float) -> int:
    """How many of a position-read source's ``n`` records are held out (its first ones): ``validation_percent``
    of them, at least 2 and at most HELD_OUT_MAX."""
    return min(HELD_OUT_MAX, max(2, int(n * validation_percent / 100)))


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
        if p.is_dir():
            raise ValueError(
                f"{p} is a directory, not a text file: for the Python statements in it write py:{p}"
            )
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


def record_text(record, field: str | None, name: str, index: int | str = "?") -> str:
    """The text of one record of a random-access source: the record itself (bytes or str) when ``field`` is
    None, else its ``field`` (a TFDS example's feature); ``name`` and ``index`` say which record in the errors."""
    if field is not None:
        if not isinstance(record, dict) or field not in record:
            have = sorted(record) if isinstance(record, dict) else type(record).__name__
            raise ValueError(f"{name}: a record has no text feature {field!r} (it has {have})")
        record = record[field]
    if isinstance(record, bytes):
        try:
            return record.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(
                f"{name}: record {index} is not UTF-8 text ({e.reason} at byte {e.start}: "
                f"{record[max(e.start - 10, 0) : e.start + 10]!r})"
            ) from None
    if isinstance(record, str):
        return record
    raise ValueError(f"{name}: a record's text is a {type(record).__name__}, not bytes or str")


class ArrayRecords:
    """array_record files as one random-access source (``len``, ``[i]``, ``__getitems__``) that knows which file
    and record an index is, so that a read error names them."""

    def __init__(self, paths: Sequence[str], source_class):
        self.paths, self.starts, self._sources = [os.fspath(Path(p).absolute()) for p in paths], [0], []
        for p in self.paths:
            try:
                self._sources.append(source_class([p]))
            except (RuntimeError, OSError, ValueError) as e:
                raise ValueError(
                    f"{p} is not a readable array_record file ({_why(e)}): it is damaged, empty or "
                    f"not array_record; rewrite it or leave it out of the corpus"
                ) from None
            self.starts.append(self.starts[-1] + len(self._sources[-1]))

    def __len__(self) -> int:
        return self.starts[-1]

    def where(self, i: int) -> tuple[str, int]:
        """(the file, the record's index in it) of record ``i``."""
        f = bisect.bisect_right(self.starts, i) - 1
        return self.paths[f], i - self.starts[f]

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """One batched read per file; a read that fails is retried record by record to name the damaged one."""
        by_file: dict[int, list[int]] = {}
        for k, i in enumerate(indices):
            by_file.setdefault(bisect.bisect_right(self.starts, int(i)) - 1, []).append(k)
        out: list = [None] * len(indices)
        for f, ks in by_file.items():
            local = [int(indices[k]) - self.starts[f] for k in ks]
            try:
                got = self._sources[f].__getitems__(local)
            except (RuntimeError, OSError):
                got = [self._one(f, j) for j in local]
            for k, r in zip(ks, got):
                out[k] = r
        return out

    def _one(self, f: int, j: int):
        try:
            return self._sources[f][j]
        except (RuntimeError, OSError) as e:
            raise ValueError(
                f"{self.paths[f]}: record {j} cannot be read ({_why(e)}): the file is damaged; "
                f"rewrite it or leave it out of the corpus"
            ) from None


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0][:160]}" if str(e) else type(e).__name__


def array_records(paths: Sequence[str], spec: str) -> ArrayRecords:
    """A random-access source (``len``, ``__getitems__``) over array_record files; each must exist and open."""
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no array_record file {p} (corpus {spec!r})")
    try:
        from array_record.python.array_record_data_source import ArrayRecordDataSource
    except ImportError as e:
        raise ImportError(
            f"reading array_record corpora needs array_record ({e}): pip install array_record  "
            f"(or: pip install 't5vae[tfds]')"
        ) from None
    return ArrayRecords(paths, ArrayRecordDataSource)


def read_texts(records, indices: Sequence[int], field: str | None, name: str) -> list[str]:
    """The texts of ``records[i]`` for ``i`` in ``indices``, read 4,096 at a time through ``__getitems__`` (an
    array_record or TFDS data source: one batched read each, not a read per record). A record that cannot be
    read or decoded is a ValueError naming its file (or source) and index."""
    out = []
    for s in range(0, len(indices), 4096):
        part = [int(i) for i in indices[s : s + 4096]]
        try:
            got = records.__getitems__(part)
        except (RuntimeError, OSError) as e:  # a TFDS source: its files are not ours to name one by one
            raise ValueError(
                f"{name}: records {part[0]}..{part[-1]} cannot be read ({_why(e)}): the dataset's "
                f"files are damaged; prepare it again"
            ) from None
        for r, i in zip(got, part):
            out.append(
                record_text(r, field, *(records.where(i) if isinstance(records, ArrayRecords) else (name, i)))
            )
    return out


@dataclasses.dataclass
class Corpus:
    """Train and validation lines plus where they came from."""

    train: list[str]
    validation: list[str]
    source: str

    @classmethod
    def held_out_head(cls, lines: Sequence[str], source: str, validation_percent: float = 2.0) -> "Corpus":
        """A position-read source's split: its first :func:`held_out_count` lines validate, the rest train."""
        held = held_out_count(len(lines), validation_percent)
        if len(lines) < held + 1:
            raise ValueError(
                f"{source} holds {len(lines)} lines: too few to hold out {held} for validation and "
                f"train on the rest"
            )
        return cls(list(lines[held:]), list(lines[:held]), source)

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
