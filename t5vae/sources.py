"""The sources of a corpus's lines for the grain pipeline (t5vae.pipeline): random access to the records of a
TFDS split, of array_record files or of lines held in memory, each with its held-out part, and the samples of
them that a tokenizer and an evaluation read.

Apart from the pipeline because none of it needs grain: opening a corpus at scale, and checking it, costs
nothing of the pipeline's imports.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from t5vae import corpus, data

TOKENIZER_LINES = 100_000  # training lines sampled (evenly spaced) to train a tokenizer on


# -- sources ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Source:
    """A random-access source of records (``len``, ``[i]``), the dict key of their text (None: a record is
    the UTF-8 text itself), a name for error messages, and which records it holds: ``[start, stop)``."""

    records: Any
    field: str | None
    name: str
    start: int = 0
    stop: int | None = None  # None: to the end

    def __len__(self) -> int:
        return (len(self.records) if self.stop is None else self.stop) - self.start

    def texts(self, indices: Sequence[int]) -> list[str]:
        """The texts of records ``indices`` of this source (counted from ``start``), read in batches."""
        return corpus.read_texts(self.records, [self.start + int(i) for i in indices], self.field, self.name)


def open_source(
    spec: str | None,
    split: str = "train",
    validation_percent: float = 2.0,
    *,
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
    data_dir: str | None = None,
) -> tuple[Source, Source | None]:
    """``(training source, held-out source or None)`` of a corpus spec (:func:`t5vae.corpus.parse_spec`), the
    same lines :func:`t5vae.data.load_corpus` reads: ``tfds:NAME[/CONFIG][:VERSION][:FIELD]`` (None/"stdlib":
    ``tfds:python_statements``, the embedded corpus's split), array_record files of UTF-8 lines, text files
    (prepared once as the ``text_lines`` TFDS dataset), or ``py:`` statements and the ``prose`` sentences
    (collected in memory). A source
    without a validation/test split holds out its first records (:func:`t5vae.corpus.held_out_count`)."""
    parsed = corpus.parse_spec(spec)
    if parsed.kind in ("py", "prose"):  # built in memory: the same split as the in-memory pipeline's
        lines = data.load_corpus(spec, validation_percent, min_chars, max_chars)
        return (
            Source(_Lines(lines.train), None, f"{spec}[train]"),
            Source(_Lines(lines.validation), None, f"{spec}[validation]"),
        )
    if parsed.kind == "array_record":
        return _hold_out(Source(corpus.array_records(parsed.paths, spec), None, spec), validation_percent)
    from t5vae import tfds_data  # optional: raises an ImportError naming the pip install

    if parsed.kind in ("tfds", "stdlib"):
        name, field = (
            ("python_statements", "text") if parsed.kind == "stdlib" else (parsed.name, parsed.field)
        )
        builder = tfds_data.get_builder(
            name, data_dir, min_chars=min_chars, max_chars=max_chars, validation_percent=validation_percent
        )
    else:
        builder, field = (
            tfds_data.text_lines_builder(list(parsed.paths), data_dir, validation_percent=validation_percent),
            "text",
        )
        if not builder.is_prepared():
            builder.download_and_prepare()
    train = _tfds_split(tfds_data, builder, split, field)
    for held in ("validation", "test"):
        if held in builder.info.splits and held != split:
            return train, _tfds_split(tfds_data, builder, held, field)
    return _hold_out(train, validation_percent)


def _tfds_split(tfds_data, builder, split: str, field: str) -> Source:
    """A split as a source, after the checks :func:`t5vae.tfds_data.read_split` makes (array_record, split, text)."""
    tfds_data.read_split(builder, split, field, limit=1)  # raises naming the dataset, split or feature
    return Source(builder.as_data_source(split=split), field, f"tfds:{builder.info.full_name}[{split}]")


class _Lines:
    """Lines in memory as a random-access source of UTF-8 records, as an array_record file would give them."""

    def __init__(self, lines: Sequence[str]):
        self._records = [s.encode("utf-8") for s in lines]

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, i: int) -> bytes:
        return self._records[i]

    def __getitems__(self, indices: Sequence[int]) -> list[bytes]:
        return [self._records[i] for i in indices]


def _hold_out(src: Source, validation_percent: float) -> tuple[Source, Source]:
    n = len(src.records)
    held = corpus.held_out_count(n, validation_percent)
    if n < held + 1:
        raise ValueError(
            f"{src.name} holds {n} lines: too few to hold out {held} for validation and train on the rest"
        )
    return dataclasses.replace(src, start=held), Source(
        src.records, src.field, f"{src.name}[:{held}]", 0, held
    )


def held_lines(src: Source, n: int | None = None) -> list[str]:
    """The first ``n`` (all) texts of ``src`` (a held-out source: :func:`open_source`'s second item)."""
    return src.texts(range(len(src) if n is None else min(n, len(src))))


def sample_lines(src: Source, n: int = TOKENIZER_LINES) -> list[str]:
    """``n`` texts evenly spaced over the source (all of it when smaller): what a tokenizer is trained on."""
    return src.texts(np.unique(np.linspace(0, len(src) - 1, min(n, len(src))).astype(np.int64)))


def write_lines(path: str | os.PathLike, lines) -> int:
    """Write ``lines`` (an iterable of str) as an array_record file of UTF-8 records -> how many were written.
    One record per chunk (``group_size:1``, as TFDS writes them) so that shuffled reads decode one line each."""
    from array_record.python.array_record_module import ArrayRecordWriter

    writer, n = ArrayRecordWriter(os.fspath(path), "group_size:1"), 0
    try:
        for s in lines:
            writer.write(s.encode("utf-8"))
            n += 1
    finally:
        writer.close()
    return n
