"""TFDS datasets without TensorFlow: builders for the embedded corpus (``python_statements``) and for the
user's text files (``text_lines``), written as array_record and read back with ``as_data_source``, and a
reader for TFDS catalog datasets that are already prepared (as array_record) in a data_dir.

Nothing here imports TensorFlow, and nothing downloads: a catalog dataset that is not prepared is an error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import os
import platform
import re
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from t5vae import corpus

_INSTALL = "pip install tensorflow-datasets array_record importlib_resources  (or: pip install 't5vae[tfds]')"
try:
    import tensorflow_datasets as tfds
except ImportError as e:
    raise ImportError(
        f"TFDS corpora need tensorflow-datasets, which cannot be imported ({e}): {_INSTALL}"
    ) from None
for _mod, _why in (
    ("array_record", "the storage format"),
    ("importlib_resources", "imported by TFDS 4.9.10 without declaring it, tensorflow/datasets#11212"),
):
    if importlib.util.find_spec(_mod) is None:
        raise ImportError(f"TFDS corpora need {_mod} ({_why}), which is not installed: {_INSTALL}")

_ARRAY_RECORD = tfds.core.FileFormat.ARRAY_RECORD


def _features():
    return tfds.features.FeaturesDict({"text": tfds.features.Text()})


# -- builder configs -------------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)
class PythonStatementsConfig(tfds.core.BuilderConfig):
    """``corpus.stdlib_lines(min_chars, max_chars, root)`` split by ``corpus.Corpus.from_lines``."""

    min_chars: int = 10
    max_chars: int = corpus.MAX_CHARS
    validation_percent: float = 2.0
    root: str = ""


def python_statements_config(
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
    validation_percent: float = 2.0,
    root: str | os.PathLike | None = None,
) -> PythonStatementsConfig:
    """A config named by its settings and a hash of (Python version, stdlib root), so corpora of different
    interpreters or roots never share a directory."""
    root = str(Path(root or sysconfig.get_paths()["stdlib"]).resolve())
    tag = hashlib.sha256(f"{platform.python_version()}\0{root}".encode()).hexdigest()[:10]
    return PythonStatementsConfig(
        name=f"c{min_chars}-{max_chars}_v{validation_percent:g}_{tag}",
        min_chars=min_chars,
        max_chars=max_chars,
        validation_percent=validation_percent,
        root=root,
        description=f"Python {platform.python_version()} statements from {root}, {min_chars}-{max_chars} "
        f"characters, {validation_percent:g}% validation",
    )


@dataclasses.dataclass(eq=False)
class TextLinesConfig(tfds.core.BuilderConfig):
    """Text files, one example per non-empty line, split by ``corpus.Corpus.from_lines``."""

    paths: tuple[str, ...] = ()
    validation_percent: float = 2.0


def text_lines_config(paths: Sequence[str | os.PathLike], validation_percent: float = 2.0) -> TextLinesConfig:
    """A config named by a SHA-256 of the files' contents (in order): different files never collide, the
    same contents under another path reuse the prepared dataset."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    if not paths:
        raise ValueError("text_lines needs at least one text file")
    h = hashlib.sha256()
    for p in paths:
        if not Path(p).is_file():
            raise FileNotFoundError(f"no such file: {p}")
        b = Path(p).read_bytes()
        h.update(len(b).to_bytes(8, "little") + b)
    stem = re.sub(r"[^\w\-]", "-", Path(paths[0]).stem)[:40] or "lines"
    return TextLinesConfig(
        name=f"{stem}_v{validation_percent:g}_{h.hexdigest()[:16]}",
        paths=tuple(str(Path(p).resolve()) for p in paths),
        validation_percent=validation_percent,
        description=f"lines of {', '.join(str(p) for p in paths)}",
    )


# -- builders --------------------------------------------------------------------------------------


class _Lines(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Train/validation splits of ``corpus.Corpus.from_lines(self._lines())``, written in order (no shuffle)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES: ClassVar[dict] = {"1.0.0": "Initial release."}

    def _lines(self) -> tuple[list[str], str]:
        raise NotImplementedError

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, description=self.__doc__, features=_features(), disable_shuffling=True
        )

    def _split_generators(self, dl_manager):
        lines, source = self._lines()
        split = corpus.Corpus.from_lines(lines, source, self.builder_config.validation_percent)
        return {
            "train": self._generate_examples(split.train),
            "validation": self._generate_examples(split.validation),
        }

    def _generate_examples(self, lines):
        for i, s in enumerate(lines):
            yield i, {"text": s}


class PythonStatements(_Lines):
    """The embedded default corpus: single-line Python statements from the installed standard library."""

    BUILDER_CONFIGS: ClassVar[list] = [python_statements_config()]

    def _lines(self):
        c = self.builder_config
        return corpus.stdlib_lines(c.min_chars, c.max_chars, c.root), "stdlib"


class TextLines(_Lines):
    """The user's text files, one example per non-empty line."""

    def __init__(self, *, config=None, **kwargs):
        if not isinstance(config, TextLinesConfig):
            raise ValueError(
                "the text_lines builder needs its files: t5vae.tfds_data.text_lines_builder(paths, data_dir)"
            )
        super().__init__(config=config, **kwargs)

    def _lines(self):
        return corpus.read_text_lines(self.builder_config.paths), ",".join(self.builder_config.paths)


def python_statements_builder(
    data_dir: str | os.PathLike | None = None,
    *,
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
    validation_percent: float = 2.0,
    root: str | os.PathLike | None = None,
) -> PythonStatements:
    cfg = python_statements_config(min_chars, max_chars, validation_percent, root)
    if cfg.name in PythonStatements.builder_configs:  # TFDS wants a registered config by name
        cfg = cfg.name
    return PythonStatements(config=cfg, data_dir=_data_dir(data_dir), file_format=_ARRAY_RECORD)


def text_lines_builder(
    paths: Sequence[str | os.PathLike],
    data_dir: str | os.PathLike | None = None,
    *,
    validation_percent: float = 2.0,
) -> TextLines:
    cfg = text_lines_config(paths, validation_percent)
    return TextLines(config=cfg, data_dir=_data_dir(data_dir), file_format=_ARRAY_RECORD)


# -- reading ---------------------------------------------------------------------------------------


def _data_dir(data_dir) -> str:
    """The explicit ``data_dir``, else ``$TFDS_DATA_DIR`` (read now, not at import), else TFDS's default."""
    return str(data_dir or os.environ.get("TFDS_DATA_DIR") or tfds.core.constants.DATA_DIR)


def get_builder(
    name: str,
    data_dir=None,
    *,
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
    validation_percent: float = 2.0,
) -> tfds.core.DatasetBuilder:
    """A prepared builder: ``python_statements`` is prepared on first use; a catalog dataset must already
    be prepared in ``data_dir`` (nothing is downloaded), else FileNotFoundError naming both."""
    data_dir = _data_dir(data_dir)
    if name == PythonStatements.name:
        builder = python_statements_builder(
            data_dir, min_chars=min_chars, max_chars=max_chars, validation_percent=validation_percent
        )
    else:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise ValueError(
                f"no TFDS dataset named {name!r}: not in the TFDS catalog, not a t5vae builder "
                f"({PythonStatements.name}), and not prepared in data_dir {data_dir}"
            ) from None
    _prepare(builder)
    return builder


def _prepare(builder) -> None:
    if builder.is_prepared():
        return
    if isinstance(builder, _Lines):
        builder.download_and_prepare()
        return
    name = builder.info.full_name
    raise FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir {builder.data_dir_root} (no {builder.data_dir}); "
        f"t5vae never downloads datasets: prepare it where it can be downloaded with `tfds build "
        f"{builder.name} --file_format=array_record --data_dir=DIR`, then pass that DIR as data_dir "
        f"(or set TFDS_DATA_DIR)"
    )


def read_split(builder, split: str, field: str = "text", limit: int | None = None) -> list[str]:
    """The ``field`` text of every example of ``split`` (or the first ``limit``), via ``as_data_source``."""
    info, name = builder.info, builder.info.full_name
    if _ARRAY_RECORD not in info.available_file_formats():
        have = ", ".join(getattr(f, "value", str(f)) for f in info.available_file_formats()) or "tfrecord"
        raise ValueError(
            f"TFDS dataset {name!r} in {builder.data_dir} is stored as {have}; "
            f"reading without TensorFlow needs array_record: rebuild it with `tfds build "
            f"{builder.name} --file_format=array_record`"
        )
    if split not in info.splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r} (it has {sorted(info.splits)})")
    feature = info.features[field] if field in info.features else None
    if not isinstance(feature, tfds.features.Text):
        have = {k: type(v).__name__ for k, v in info.features.items()}
        raise ValueError(f"TFDS dataset {name!r} has no text feature {field!r} (its features: {have})")
    src = builder.as_data_source(split=split)
    return corpus.read_texts(
        src, range(len(src) if limit is None else min(limit, len(src))), field, f"tfds:{name}[{split}]"
    )


def load_tfds_corpus(
    name_or_builder,
    data_dir=None,
    field: str = "text",
    *,
    validation_percent: float = 2.0,
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
) -> corpus.Corpus:
    """Train and validation lines of a TFDS dataset (a name or a builder), prepared first if it is one of
    ours. Validation is the ``validation`` split, else ``test``, else the first records of ``train``
    (:func:`t5vae.corpus.held_out_count`), as the grain pipeline holds them out."""
    if isinstance(name_or_builder, tfds.core.DatasetBuilder):
        builder = name_or_builder
        _prepare(builder)
    else:
        builder = get_builder(
            name_or_builder,
            data_dir,
            min_chars=min_chars,
            max_chars=max_chars,
            validation_percent=validation_percent,
        )
    source = f"tfds:{builder.info.full_name}"
    splits = builder.info.splits
    train = read_split(builder, "train", field)
    for held in ("validation", "test"):
        if held in splits:
            return corpus.Corpus(train, read_split(builder, held, field), source)
    return corpus.Corpus.held_out_head(train, source, validation_percent)  # as the grain pipeline holds out


def tfds_lines(
    name: str, split: str, field: str = "text", limit: int | None = None, data_dir: str | None = None
) -> list[str]:
    """Lines of a TFDS dataset read TF-free via ``as_data_source`` (array_record): ``python_statements`` (built
    on first use) or a catalog dataset already prepared in ``data_dir``; ``field`` names the text feature."""
    return read_split(get_builder(name, data_dir), split, field, limit)
