"""Data: the sentencepiece tokenizer (load or train), the choice of corpus (t5vae.corpus, or TFDS through
t5vae.tfds_data when installed), tokenization with truncation accounting, bucketed batches, and the run's stream of them (with identifier
renaming swapped in per epoch, see t5vae.augment)."""

from __future__ import annotations

import dataclasses
import io
import os
from pathlib import Path
from typing import Iterator, Protocol, Sequence

import numpy as np

from t5vae import corpus

PAD, EOS, UNK = 0, 1, 2


# -- tokenizer -------------------------------------------------------------------------------------


class Tokenizer:
    """A sentencepiece model with T5's ids (pad 0, eos 1, unk 2); ``encode`` appends EOS."""

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm

        self.proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.proto)
        if self.sp.pad_id() != PAD or self.sp.eos_id() != EOS:
            raise ValueError(
                f"tokenizer must use pad id {PAD} and eos id {EOS} (T5 convention), "
                f"got pad {self.sp.pad_id()} eos {self.sp.eos_id()}"
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no sentencepiece model at {path}")
        try:
            return cls(path.read_bytes())
        except RuntimeError as e:
            raise ValueError(f"{path} is not a sentencepiece model: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_bytes(self.proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text) + [EOS]

    def decode(self, ids: Sequence[int]) -> str:
        ids = [int(i) for i in ids]
        if EOS in ids:
            ids = ids[: ids.index(EOS)]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(
                f"token id {bad[0]} is outside this tokenizer's {self.vocab_size} pieces (an embedding "
                f"row with no piece: decode with vocab_limit=tokenizer.vocab_size)"
            )
        return self.sp.decode([i for i in ids if i != PAD])


def train_tokenizer(lines: Sequence[str], vocab_size: int) -> Tokenizer:
    """Train a unigram sentencepiece model on ``lines`` with byte fallback and no normalisation, so that any
    line (tabs, ``@``, non-ASCII, runs of spaces) decodes back exactly."""
    import sentencepiece as spm

    if not lines:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    out = io.BytesIO()
    try:
        _train_spm(spm, lines, out, vocab_size)
    except RuntimeError as e:
        raise ValueError(
            f"sentencepiece training failed (vocab_size={vocab_size}; byte fallback needs 259 "
            f"pieces plus one per distinct character): {e}"
        ) from None
    return Tokenizer(out.getvalue())


def _train_spm(spm, lines, out, vocab_size):
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=out,
        vocab_size=vocab_size,
        model_type="unigram",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=0.9999,
        pad_id=PAD,
        eos_id=EOS,
        unk_id=UNK,
        bos_id=-1,
        hard_vocab_limit=False,
        max_sentence_length=1 << 16,
        num_threads=2,
        minloglevel=2,
        train_extremely_large_corpus=False,
    )


def load_corpus(
    spec: str | None = None,
    validation_percent: float = 2.0,
    min_chars: int = 10,
    max_chars: int = corpus.MAX_CHARS,
) -> corpus.Corpus:
    """Every line of a corpus spec (:func:`t5vae.corpus.parse_spec`) in memory: ``None``/"stdlib" the embedded
    corpus; "prose" the English sentences of :mod:`t5vae.sentences` (5-25 words, then ``min_chars``-``max_chars``
    characters); "py:PACKAGE_OR_DIR" the statements of other Python code chosen the same way (``py:optax``);
    "tfds:NAME[/CONFIG][:VERSION][:FIELD]" a TFDS dataset read TF-free (``tfds:python_statements`` is the
    embedded corpus as a TFDS builder, the same split; a catalog dataset must be prepared as array_record in
    ``$TFDS_DATA_DIR``, see ``tfds_data``); array_record files of UTF-8 lines (their first records held out, as
    the grain pipeline holds them out); otherwise a comma-separated list of text files."""
    spec = corpus.parse_spec(spec)
    if spec.kind == "stdlib":
        return corpus.Corpus.from_lines(
            corpus.stdlib_lines(min_chars, max_chars), "stdlib", validation_percent
        )
    if spec.kind == "prose":  # Python's own English and, where installed, WordNet's examples
        from t5vae import sentences

        lines = [s for s in sentences.prose_corpus() if min_chars <= len(s) <= max_chars]
        return corpus.Corpus.from_lines(lines, spec.text, validation_percent)
    if spec.kind == "py":  # the statements of another Python tree: a directory or an installed package
        lines = corpus.python_lines(corpus.package_root(spec.name), min_chars, max_chars)
        return corpus.Corpus.from_lines(lines, spec.text, validation_percent)
    if spec.kind == "tfds":
        from t5vae import (
            tfds_data,  # optional: raises an ImportError naming the pip install when TFDS is missing
        )

        return tfds_data.load_tfds_corpus(
            spec.name,
            field=spec.field,
            validation_percent=validation_percent,
            min_chars=min_chars,
            max_chars=max_chars,
        )
    if spec.kind == "array_record":
        records = corpus.array_records(spec.paths, spec.text)
        lines = corpus.read_texts(records, range(len(records)), None, spec.text)
        return corpus.Corpus.held_out_head(lines, spec.text, validation_percent)
    return corpus.Corpus.from_lines(corpus.read_text_lines(spec.paths), spec.text, validation_percent)


def check_vocab(tok: Tokenizer, embedding_rows: int) -> None:
    """A tokenizer with more pieces than the model's embedding has rows belongs to another model."""
    if tok.vocab_size > embedding_rows:
        raise ValueError(
            f"the tokenizer has {tok.vocab_size} pieces but the model's embedding has only "
            f"{embedding_rows} rows: tokenizer and checkpoint do not match"
        )


# -- tokenization and batches ----------------------------------------------------------------------


@dataclasses.dataclass
class Encoded:
    """Tokenized lines (each ends in EOS, at most ``max_length`` ids) and which of them were truncated."""

    ids: list[np.ndarray]
    truncated: np.ndarray  # bool [n]: the line was longer than max_length and cut

    def __len__(self):
        return len(self.ids)

    @property
    def n_truncated(self) -> int:
        return int(np.sum(self.truncated))


def with_eos(ids: Sequence[int], max_length: int) -> tuple[np.ndarray, bool]:
    """One line's token ids -> ``(int32 ids ending in EOS, whether they were cut)``: a line longer than
    ``max_length`` (EOS included) is cut to it, keeping EOS."""
    ids = list(ids) + [EOS]
    cut = len(ids) > max_length
    return np.asarray(ids[: max_length - 1] + [EOS] if cut else ids, np.int32), cut


def encode_lines(tok: Tokenizer, lines: Sequence[str], max_length: int) -> Encoded:
    """Tokenize; lines longer than ``max_length`` (EOS included) are cut to it, keeping EOS, and counted."""
    out, cut = [], []
    for ids in tok.sp.encode(list(lines)):
        line, was_cut = with_eos(ids, max_length)
        out.append(line)
        cut.append(was_cut)
    return Encoded(out, np.array(cut, bool))


def swap_in(
    enc: Encoded, lines: dict[int, str], tok: Tokenizer, buckets: Sequence[int]
) -> tuple[Encoded, list[int]]:
    """``enc`` with line i replaced by ``lines[i]`` (a renamed variant of it, say) wherever that one's tokens fit
    line i's length bucket and the original was not truncated, so an epoch's batches keep their count and
    shapes -> ``(encoded, the indices replaced)``."""
    ids, swapped = list(enc.ids), []
    order = sorted(lines)
    for i, new in zip(order, tok.sp.encode([lines[i] for i in order])):
        if not 0 <= i < len(ids):
            raise IndexError(f"swap_in: line index {i} is outside the {len(ids)} encoded lines")
        n = len(new) + 1
        if (
            not enc.truncated[i]
            and n <= buckets[-1]
            and bucket_of(n, buckets) == bucket_of(len(ids[i]), buckets)
        ):
            ids[i] = np.asarray(new + [EOS], np.int32)
            swapped.append(i)
    return Encoded(ids, enc.truncated), swapped


# Bucket lengths as fractions of max_length: 8 shapes (8 compiles of the train step), denser where the
# default corpus's lines are (mostly 5-20 tokens), so little of a batch is padding (benchmarks/NOTES.md).
BUCKET_FRACTIONS = (1 / 6, 1 / 4, 1 / 3, 5 / 12, 1 / 2, 2 / 3, 5 / 6, 1.0)


def buckets_for(max_length: int, min_length: int = 1) -> tuple[int, ...]:
    """A few fixed padded lengths so jit compiles only a handful of shapes: ``max_length`` times
    :data:`BUCKET_FRACTIONS`, rounded up to multiples of 4, none below ``min_length`` (e.g. the latent tokens
    of "first" pooling) or 8 -> (8, 12, 16, 20, 24, 32, 40, 48) for 48."""
    floor = max(8, min_length)
    cands = {
        min(max_length, max(floor, -(-int(round(max_length * f, 6)) // 4) * 4)) for f in BUCKET_FRACTIONS
    }
    return tuple(sorted(cands))


def length_buckets(cfg) -> tuple[int, ...]:
    """The padded lengths batches of a T5-VAE ``cfg`` use (``pooling="first"`` needs ``n_latent_tokens``)."""
    return buckets_for(cfg.max_length, cfg.n_latent_tokens if cfg.pooling == "first" else 1)


def pad_batch(seqs: Sequence[np.ndarray], length: int) -> dict:
    ids = np.zeros((len(seqs), length), np.int32)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
    return {"input_ids": ids, "attention_mask": ids != PAD}


def bucket_of(n: int, buckets: Sequence[int]) -> int:
    for b in buckets:
        if n <= b:
            return b
    raise ValueError(f"sequence of {n} tokens exceeds the largest bucket {buckets[-1]}")


def batches(
    data: Encoded,
    batch_size: int,
    buckets: Sequence[int],
    seed: int,
    epoch: int = 0,
    drop_remainder: bool = True,
) -> Iterator[dict]:
    """One epoch of shuffled batches; each batch holds lines of one length bucket, padded to it."""
    rng = np.random.default_rng([seed, epoch])
    groups: dict[int, list[int]] = {}
    for i in rng.permutation(len(data.ids)):
        groups.setdefault(bucket_of(len(data.ids[i]), buckets), []).append(int(i))
    chunks = []
    for b, idx in groups.items():
        stop = len(idx) - len(idx) % batch_size if drop_remainder else len(idx)
        chunks += [(b, idx[s : s + batch_size]) for s in range(0, stop, batch_size)]
    for j in rng.permutation(len(chunks)):
        b, idx = chunks[j]
        yield pad_batch([data.ids[i] for i in idx], b)


def eval_batches(data: Encoded, batch_size: int, buckets: Sequence[int]) -> Iterator[tuple[list[int], dict]]:
    """Every example once, in bucket order, batches padded to ``batch_size`` rows (extra rows all pad)."""
    order = sorted(range(len(data.ids)), key=lambda i: len(data.ids[i]))
    groups: dict[int, list[int]] = {}
    for i in order:
        groups.setdefault(bucket_of(len(data.ids[i]), buckets), []).append(i)
    for b, idx in groups.items():
        for s in range(0, len(idx), batch_size):
            part = idx[s : s + batch_size]
            seqs = [data.ids[i] for i in part] + [np.zeros(0, np.int32)] * (batch_size - len(part))
            yield part, pad_batch(seqs, b)


class Stream(Protocol):
    """What the training loop reads batches from, whichever pipeline: :class:`BatchStream` (in memory) or
    ``t5vae.pipeline.GrainBatches`` (streamed)."""

    def __call__(self, step: int) -> dict:
        """The batch of step ``step``: {"input_ids", "attention_mask"} [B, L]."""

    def get_state(self) -> dict | None:
        """The position to save with a checkpoint (None: the step alone determines it)."""

    def close(self) -> None:
        """Release workers and files."""


# A renamed training line whose tokens leave its length bucket is renamed again with other names this often.
RENAME_ATTEMPTS = 4


class BatchStream:
    """Batch ``i`` of the run is a pure function of (seed, i): resuming at step i continues the same stream.

    Every epoch has the same number of batches (bucket sizes do not change, only the order), so batch i
    is batch ``i % n`` of epoch ``i // n``. With ``renamer`` (a :class:`t5vae.augment.Renamer` of the
    encoded lines) and ``tok``, each epoch's lines are renamed afresh: a renamed line replaces its original
    where its tokens fit the original's length bucket (``data.swap_in``), which keeps the batches' count and
    shapes, so renaming costs no extra compile and no extra padding.
    """

    def __init__(
        self, enc: Encoded, batch_size: int, buckets, seed: int, renamer=None, tok: Tokenizer | None = None
    ):
        if renamer is not None and (tok is None or len(renamer.lines) != len(enc)):
            raise ValueError("BatchStream: a renamer needs the tokenizer and one line per encoded line")
        self.enc, self.bs, self.buckets, self.seed = enc, batch_size, tuple(buckets), seed
        self.renamer, self.tok = renamer, tok
        self._epoch, self._batches, self.swapped = None, [], 0
        self.per_epoch = len(list(batches(enc, batch_size, buckets, seed, 0)))
        if self.per_epoch == 0:
            raise ValueError(
                f"the training set ({len(enc)} lines) does not fill one batch of {batch_size}; "
                f"lower batch_size or add data"
            )

    def __call__(self, i: int) -> dict:
        epoch = i // self.per_epoch
        if epoch != self._epoch:
            enc = self.enc
            if self.renamer is not None:
                enc, self.swapped = self._renamed(epoch)
            self._epoch, self._batches = epoch, list(batches(enc, self.bs, self.buckets, self.seed, epoch))
        return self._batches[i % self.per_epoch]

    def get_state(self) -> None:
        return None  # batch i is a function of (seed, i): the step is the whole position

    def close(self) -> None:
        pass

    def _renamed(self, epoch: int, attempts: int = RENAME_ATTEMPTS) -> tuple[Encoded, int]:
        """This epoch's lines with the chosen ones renamed; a line whose renaming leaves its length bucket is
        renamed again with other names, up to ``attempts`` times, then kept as it was."""
        enc, todo, swapped = self.enc, set(self.renamer.chosen(self.seed, epoch).tolist()), 0
        for attempt in range(attempts):
            enc, done = swap_in(
                enc, self.renamer.epoch(self.seed, epoch, sorted(todo), attempt), self.tok, self.buckets
            )
            swapped += len(done)
            todo.difference_update(done)
            if not todo:
                break
        return enc, swapped
