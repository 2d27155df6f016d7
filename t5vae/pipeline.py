"""The input pipeline at corpus scale (``TrainConfig.pipeline = "grain"``): grain over array_record text lines
(a TFDS dataset's split, read TF-free, or plain array_record files), each process reading its own shard, lines
tokenised and bucketed into the batches of :func:`t5vae.data.pad_batch` in grain's workers, and an iterator
state that is saved with the checkpoint, so a resumed run continues the data exactly where it stopped.

Nothing else imports this module at import time: the default in-memory run (:class:`t5vae.data.BatchStream`)
never imports grain. See docs/pipeline.md.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from t5vae import corpus, data
from t5vae.corpus import record_text
from t5vae.sources import Source, held_lines, open_source, sample_lines

try:
    import grain
except ImportError as e:
    raise ImportError(
        f"the grain input pipeline needs grain, which cannot be imported ({e}): "
        f"pip install 'grain>=0.2.18'  (or: pip install 't5vae[scale]')"
    ) from None

STATE_FORMAT = 1
LONG_LINES = ("truncate", "error")


# -- the grain pipeline ----------------------------------------------------------------------------


class _Tokenize(grain.transforms.Map):
    """A chunk of records -> their int32 token ids, each ending in EOS; a line longer than the largest bucket is
    cut to it (keeping EOS, as :func:`t5vae.data.encode_lines` does) or, with ``long_lines="error"``, raises."""

    def __init__(self, proto: bytes, field: str | None, max_length: int, long_lines: str, name: str):
        self.proto, self.field, self.max_length, self.long_lines, self.name = (
            proto,
            field,
            max_length,
            long_lines,
            name,
        )
        self._sp = None

    def __getstate__(self):  # a sentencepiece processor does not pickle: each worker builds its own
        return {**self.__dict__, "_sp": None}

    def map(self, records, where: Sequence[tuple[str, int]] | None = None) -> list[np.ndarray]:
        """``where``: (file or source, index) of each record, for the error a record that is not text raises."""
        if self._sp is None:
            import sentencepiece as spm

            self._sp = spm.SentencePieceProcessor(model_proto=self.proto)
        texts = [
            record_text(r, self.field, *(where[k] if where else (self.name, "?")))
            for k, r in enumerate(records)
        ]
        out = []
        for text, ids in zip(texts, self._sp.encode(texts)):
            line, cut = data.with_eos(ids, self.max_length)
            if cut and self.long_lines == "error":
                raise ValueError(
                    f"{self.name}: the line {text[:60]!r}... has {len(ids) + 1} tokens (EOS included), "
                    f"more than the largest bucket {self.max_length} (max_length)"
                )
            out.append(line)
        return out


# Lines are read and tokenised a chunk at a time: one batched array_record read, one sentencepiece call. A
# batched read of a file of one-record chunks (group_size:1, as TFDS writes them) has a fixed cost per call
# that grows with the file (docs/pipeline.md), so chunks grow with the shard: N / 500 lines, within [512, 32768]. READ_AHEAD chunks are read
# ahead in READ_THREADS threads. Chunk j holds positions [j * size, (j + 1) * size) of the endless stream of the
# shard's records, each epoch in its own order (grain's index_shuffle, seeded by seed + epoch: none is stored).
MIN_CHUNK, MAX_CHUNK, READ_AHEAD, READ_THREADS, ENDLESS = 512, 32768, 4, 2, 2**62


class _ReadChunk(grain.transforms.Map):
    """Chunk index -> the tokens of its ``size`` lines: records ``[lo, lo + n)`` of ``records``, shuffled per epoch."""

    def __init__(self, records, lo: int, n: int, seed: int, tokenize: _Tokenize):
        self.records, self.lo, self.n, self.seed, self.tokenize = records, lo, n, seed, tokenize
        self.size = min(MAX_CHUNK, max(MIN_CHUNK, n // 500))

    def record_index(self, position: int) -> int:
        epoch, i = divmod(position, self.n)
        return self.lo + grain.experimental.index_shuffle(
            i, max_index=self.n - 1, seed=(self.seed + epoch) % 2**32, rounds=4
        )

    def lines(self, positions) -> list[np.ndarray]:
        """The tokens of the lines at these stream positions (one read)."""
        indices = [self.record_index(q) for q in positions]
        arrays = isinstance(self.records, corpus.ArrayRecords)
        where = [self.records.where(i) if arrays else (self.tokenize.name, i) for i in indices]
        return self.tokenize.map(self.records.__getitems__(indices), where)

    def map(self, j: int) -> list[np.ndarray]:
        return self.lines(range(j * self.size, (j + 1) * self.size))


class _BucketBatches(grain.IterDataset):
    """Batches of ``batch_size`` lines of one length bucket, padded to it, from the chunks of ``read``.

    A line waits in its bucket until the bucket fills; the iterator's state is (the chunk iterator's state
    before the current chunk, the offset in it, the stream positions of the waiting lines), and a restored
    iterator reads its waiting lines again by position, so it continues exactly where the saved one stopped."""

    def __init__(self, read: _ReadChunk, buckets: Sequence[int], batch_size: int):
        self.read, self.buckets, self.batch_size = read, tuple(buckets), batch_size
        self.part = (0, 1)  # this copy reads chunks part[0], part[0] + part[1], ... (a grain worker's slice)
        super().__init__(self._chunks())

    def _chunks(self) -> grain.IterDataset:
        first, step = self.part
        chunks = grain.MapDataset.range(ENDLESS)[first::step].map(self.read)
        return chunks.to_iter_dataset(
            grain.ReadOptions(num_threads=READ_THREADS, prefetch_buffer_size=READ_AHEAD)
        )

    def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
        """What ``mp_prefetch`` calls in each worker: read every ``sl.step``-th chunk from ``sl.start``."""
        if sl.stop is not None or sequential_slice:
            raise ValueError(f"the bucketed pipeline splits over workers by strided slices, got {sl}")
        first, step = self.part
        self.part = (first + (sl.start or 0) * step, step * (sl.step or 1))
        self._parents = (self._chunks(),)

    def lines(self, positions: Sequence[int]) -> list[np.ndarray]:
        """The tokens of these positions of this copy's stream (read again on a restore, in one read)."""
        size, (first, step) = self.read.size, self.part
        return self.read.lines([(first + p // size * step) * size + p % size for p in positions])

    def __iter__(self):
        return _BucketIterator(self)


class _BucketIterator(grain.DatasetIterator):
    def __init__(self, ds: _BucketBatches):
        super().__init__(ds._parent.__iter__())
        self.ds, self.chunk, self.offset, self.position = ds, [], 0, 0
        self.chunk_state = self._parent.get_state()
        self.waiting: dict[int, list[tuple[int, np.ndarray]]] = {b: [] for b in ds.buckets}

    def __next__(self) -> dict:
        while True:
            if self.offset == len(self.chunk):
                self.chunk_state = self._parent.get_state()
                self.chunk, self.offset = next(self._parent), 0
            ids = self.chunk[self.offset]
            self.offset += 1
            b = data.bucket_of(len(ids), self.ds.buckets)
            self.waiting[b].append((self.position, ids))
            self.position += 1
            if len(self.waiting[b]) == self.ds.batch_size:
                batch, self.waiting[b] = self.waiting[b], []
                return data.pad_batch([x for _, x in batch], b)

    def get_state(self) -> dict:
        return {
            "chunk": self.chunk_state,
            "offset": self.offset,
            "position": self.position,
            "waiting": {str(b): [i for i, _ in w] for b, w in self.waiting.items()},
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["chunk"])
        self.chunk_state, self.offset, self.position = (
            state["chunk"],
            int(state["offset"]),
            int(state["position"]),
        )
        self.chunk = next(self._parent) if self.offset else []
        where = [(b, i) for b in self.ds.buckets for i in state["waiting"][str(b)]]
        self.waiting = {b: [] for b in self.ds.buckets}
        for (b, i), ids in zip(where, self.ds.lines([i for _, i in where]) if where else []):
            self.waiting[b].append((i, ids))


class GrainBatches:
    """The training batches of one process's shard of ``source``, as a stream: ``stream(i)`` is batch ``i``
    (asked for in order), :meth:`get_state` / :meth:`set_state` a JSON-able position to checkpoint and resume.

    Each epoch of the shard is shuffled afresh (seeded); ``worker_count`` grain processes (0: in this process)
    each tokenise and bucket their own slice of it, so the stream depends on the worker count (a resume with
    another count is refused). ``shard``: grain ``ShardOptions`` (default: this JAX process of all of them)."""

    def __init__(
        self,
        source: Source,
        tok: data.Tokenizer,
        buckets: Sequence[int],
        batch_size: int,
        seed: int,
        worker_count: int = 0,
        shard=None,
        long_lines: str = "truncate",
    ):
        if long_lines not in LONG_LINES:
            raise ValueError(f"long_lines must be one of {LONG_LINES}, got {long_lines!r}")
        shard = shard if shard is not None else grain.sharding.ShardByJaxProcess(drop_remainder=True)
        lo, hi = shard_bounds(len(source), shard.shard_index, shard.shard_count, shard.drop_remainder)
        where = f"{source.name} (shard {shard.shard_index} of {shard.shard_count}: {hi - lo} lines)"
        if hi - lo < batch_size * max(1, worker_count):
            raise ValueError(
                f"batch of {batch_size} is larger than the lines each of {max(1, worker_count)} "
                f"worker(s) reads in {where}; lower batch_size or add data"
            )
        self.worker_count, self.batch_size, self.where, self.position = worker_count, batch_size, where, 0
        tokenize = _Tokenize(tok.proto, source.field, max(buckets), long_lines, source.name)
        ds = _BucketBatches(
            _ReadChunk(source.records, source.start + lo, hi - lo, seed, tokenize), buckets, batch_size
        )
        if worker_count:
            _absl_flags_defaults()
            ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count))
        self.dataset, self._it = ds, iter(ds)

    def __next__(self) -> dict:
        self.position += 1
        return next(self._it)

    def __iter__(self):
        return self

    def __call__(self, i: int) -> dict:
        if i != self.position:
            raise ValueError(
                f"the grain stream is at batch {self.position}, asked for batch {i}: it reads in order"
            )
        return next(self)

    def get_state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "batches": self.position,
            "workers": self.worker_count,
            "where": self.where,
            "grain": self._it.get_state(),
        }

    def set_state(self, state: dict) -> None:
        if state.get("format") != STATE_FORMAT or "grain" not in state:
            raise ValueError(f"not a t5vae grain pipeline state (format {state.get('format')!r})")
        if state["workers"] != self.worker_count or state["where"] != self.where:
            raise ValueError(
                f"the saved data position is for {state['where']} read by {state['workers']} worker(s); "
                f"this run reads {self.where} with {self.worker_count}: resume with the same settings"
            )
        self._it.set_state(state["grain"])
        self.position = int(state["batches"])

    def close(self) -> None:
        if hasattr(self._it, "close"):
            self._it.close()


def _absl_flags_defaults() -> None:
    """grain's worker processes read absl flags, which only an absl ``app.run`` parses: outside one, use
    their defaults (marking them parsed, as absl's own ``flags.FLAGS(argv)`` would with no flags given)."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def shard_bounds(n: int, index: int, count: int, drop_remainder: bool = True) -> tuple[int, int]:
    """Records ``[lo, hi)`` of shard ``index`` of ``count`` contiguous shards of ``n`` (the first ``n % count``
    shards take one extra record each unless ``drop_remainder``)."""
    if not 0 <= index < count:
        raise ValueError(f"shard index {index} is outside 0..{count - 1}")
    per, extra = divmod(n, count)
    if drop_remainder:
        return index * per, (index + 1) * per
    lo = index * per + min(index, extra)
    return lo, lo + per + (index < extra)


# -- what training asks for ------------------------------------------------------------------------


def load_corpus(tc) -> tuple[corpus.Corpus, int]:
    """What ``t5vae.run_setup.prepare`` needs of a ``TrainConfig`` with ``pipeline="grain"`` -> ``(Corpus of a
    tokenizer-training sample of the training lines and every held-out line, the number of training lines)``."""
    train, held = open_source(
        tc.corpus, "train", tc.validation_percent, min_chars=tc.min_chars, max_chars=tc.max_chars
    )
    if len(train) < tc.batch_size:
        raise ValueError(
            f"the training set of {train.name} ({len(train)} lines) does not fill one batch of "
            f"{tc.batch_size}; lower batch_size or add data"
        )
    return corpus.Corpus(sample_lines(train), held_lines(held), train.name), len(train)


def for_training(
    tc, tok: data.Tokenizer, buckets: Sequence[int], batch_size: int, state: dict | None = None, shard=None
) -> GrainBatches:
    """This process's stream of ``batch_size``-line batches of ``tc.corpus`` (continued from ``state``)."""
    train, _ = open_source(
        tc.corpus, "train", tc.validation_percent, min_chars=tc.min_chars, max_chars=tc.max_chars
    )
    stream = GrainBatches(train, tok, buckets, batch_size, tc.seed, tc.pipeline_workers, shard)
    if state is not None:
        stream.set_state(state)
    return stream


def agree_length(batch: dict) -> dict:
    """Pad each process's batch to the longest of them (one shape for the global batch); one process: as is."""
    import jax

    if jax.process_count() == 1:
        return batch
    from jax.experimental import multihost_utils

    ids = batch["input_ids"]
    return data.pad_batch(ids, int(np.max(multihost_utils.process_allgather(np.int32(ids.shape[1])))))
