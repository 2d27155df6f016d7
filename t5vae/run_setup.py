"""A training run's start: the run directory opened (a new run's tokenizer and configs written, or an existing
run checked against the settings it was started with), the corpus read and its training lines encoded.

Apart from t5vae.train because it is everything before the first step and touches no optimizer state: files,
tokenizer and corpus, in the order that leaves a run directory resumable or clearly incomplete.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import jax

from t5vae import checkpoint, data, rundir, sharding
from t5vae.config import Config
from t5vae.train_config import TrainConfig


def prepare(
    cfg: Config,
    tc: TrainConfig,
    out: str | os.PathLike,
    init_from: str | None = None,
    overwrite: bool = False,
    log=print,
):
    """Set up (or reopen) a run directory, whose lock the caller holds (:func:`t5vae.rundir.claim`) ->
    ``(cfg, tokenizer, corpus, encoded training lines, T5 params of init_from or None)``.

    A new run marks the directory incomplete, then writes spiece.model, train_config.json and config.json
    (whose presence marks a run). An existing one is resumed and must have been started with the same
    settings (only those in ``rundir.RESUMABLE`` and the run-time fields may change); one that failed before its
    first checkpoint is cleared and started over. Only process 0 writes; the others read what it wrote.
    """
    out = Path(out)
    chief = jax.process_index() == 0
    resuming = rundir.reuse_or_clear(out, overwrite, log) if chief else None
    corpus, n_train = rundir.training_corpus(tc)  # streamed: only a tokenizer sample and the held-out lines
    log(
        f"corpus {corpus.source}: {n_train} train / {len(corpus.validation)} validation lines ({tc.pipeline} pipeline)"
    )
    t5_params = None
    if init_from is not None:
        t5_cfg, t5_params = checkpoint.load_t5(init_from)
        bad = checkpoint.non_finite(
            (jax.tree_util.keystr(k), x) for k, x in jax.tree_util.tree_leaves_with_path(t5_params)
        )
        if bad:
            raise FloatingPointError(
                f"{checkpoint.non_finite_message(f'--init-from {init_from}', bad)}: "
                f"training cannot start from it; convert the source again, or use another"
            )
        cfg = cfg.replace(t5=t5_cfg.replace(dropout_rate=cfg.t5.dropout_rate))
    if chief and not resuming:
        cfg, tok, enc = _start(cfg, tc, out, init_from, corpus, log)
    sharding.barrier("t5vae.train.prepare")  # the others read the files process 0 has written
    if not chief or resuming:
        tok = data.Tokenizer.load(out / rundir.TOKENIZER_FILE)
        rundir.check_tokenizer(out, tok)
        cfg = cfg if init_from is not None else cfg.replace(t5=cfg.t5.replace(vocab_size=tok.vocab_size))
        runtime_changed = rundir.check_resumable(out, cfg, tc, log)
        if chief:
            tc.save_json(out / rundir.TRAIN_CONFIG_FILE)
            if runtime_changed:  # the run now stores and computes in these: what tv.load restores into
                cfg.save_json(out / rundir.CONFIG_FILE)
        enc = _encode(tok, corpus, cfg, log, tc)
    return cfg, tok, corpus, enc, t5_params


def _encode(tok: data.Tokenizer, corpus, cfg: Config, log, tc: TrainConfig) -> data.Encoded | None:
    if tc.pipeline == "grain":  # the grain pipeline tokenises as it streams
        return None
    enc = data.encode_lines(tok, corpus.train, cfg.max_length)
    if enc.n_truncated:
        log(
            f"warning: {enc.n_truncated} of {len(enc)} training lines are longer than max_length="
            f"{cfg.max_length} tokens and were truncated"
        )
    return enc


def _start(cfg: Config, tc: TrainConfig, out: Path, init_from, corpus, log):
    """A new run's files, once its data is known to fill a batch: the incomplete mark first, config.json last ->
    ``(cfg, tokenizer, encoded training lines)``."""
    if tc.tokenizer is not None:
        tok = data.Tokenizer.load(tc.tokenizer)
    elif init_from is not None and checkpoint.tokenizer_path(init_from) is not None:
        tok = data.Tokenizer.load(checkpoint.tokenizer_path(init_from))
    else:
        t0 = time.time()
        tok = data.train_tokenizer(corpus.train, tc.vocab_size)
        log(f"trained a {tok.vocab_size}-piece sentencepiece tokenizer in {time.time() - t0:.1f}s")
    if init_from is None and tc.tokenizer is None:
        cfg = cfg.replace(t5=cfg.t5.replace(vocab_size=tok.vocab_size))
    data.check_vocab(tok, cfg.t5.vocab_size)
    enc = _encode(tok, corpus, cfg, log, tc)
    if (
        enc is not None
    ):  # raises if no batch fills: before any write (a grain corpus: checked as it was opened)
        data.BatchStream(enc, tc.batch_size, data.length_buckets(cfg), tc.seed)
    rundir.mark_incomplete(out)
    tok.save(out / rundir.TOKENIZER_FILE)
    rundir.record_tokenizer(out, tok)
    tc.save_json(out / rundir.TRAIN_CONFIG_FILE)
    cfg.save_json(out / rundir.CONFIG_FILE)
    return cfg, tok, enc
