"""Many lines through the model at once: tokenized lines to codes and codes to token ids, in padded batches
of a few fixed sizes so that only a few shapes are ever compiled. :class:`t5vae.text.Model` stands on these;
nothing else encodes or decodes in bulk."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from t5vae import data, vae
from t5vae.config import Config
from t5vae.names import DEFAULT_BEAMS

MAX_BATCH = 128


def batch_size(n: int) -> int:
    """Pad to a power of two from 8 to MAX_BATCH, so only five batch shapes are ever compiled (a compile takes
    seconds; padding a few rows costs milliseconds)."""
    return min(MAX_BATCH, max(8, 1 << max(0, (n - 1).bit_length())))


def padded(x: np.ndarray, size: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(start, rows [size, ...], n real rows)`` over ``x`` in order; the last batch is zero-padded, so every
    call sees one shape."""
    for s in range(0, len(x), size):
        part = x[s : s + size]
        yield s, np.concatenate([part, np.zeros((size - len(part),) + part.shape[1:], part.dtype)]), len(part)


@partial(jax.jit, static_argnums=(1,))
def _encode(params, cfg: Config, ids, mask):
    return vae.encode(params, cfg, ids, mask)


def encode(params, cfg: Config, enc: data.Encoded, size: int) -> np.ndarray:
    """Codes [n, N, Z] of tokenized lines (the encoder is deterministic), in batches of ``size`` bucketed by
    length."""
    out = np.zeros((len(enc), cfg.n_latent_tokens, cfg.latent_size), np.float32)
    for idx, b in data.eval_batches(enc, size, data.length_buckets(cfg)):
        z = np.asarray(_encode(params, cfg, b["input_ids"], b["attention_mask"]))
        out[idx] = z[: len(idx)]
    return out


def decode(
    params,
    cfg: Config,
    z: np.ndarray,
    max_new_tokens: int,
    size: int,
    method: str = "greedy",
    seed: int = 0,
    **kwargs,
) -> np.ndarray:
    """Token ids [n, max_new_tokens] of codes [n, N, Z] by :func:`t5vae.vae.generate` (``method`` and its
    ``kwargs``: decoder_weights, vocab_limit, num_beams, all_beams, temperature...; with all_beams
    [n, num_beams, max_new_tokens]); "sample" draws from ``jax.random.key(seed)``, folded in per batch."""
    beams = (kwargs.get("num_beams", DEFAULT_BEAMS),) if kwargs.get("all_beams") else ()
    out = np.zeros((len(z), *beams, max_new_tokens), np.int32)
    key = jax.random.key(seed)
    for s, rows, n in padded(z, size):
        if method == "sample":
            kwargs["key"] = jax.random.fold_in(key, s)
        toks = vae.generate(params, cfg, jnp.asarray(rows), max_new_tokens, method=method, **kwargs)
        out[s : s + n] = np.asarray(toks)[:n]
    return out
