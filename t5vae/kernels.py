"""Fast paths chosen per platform, each the twin of a plain function in :mod:`t5vae.layers` with the same
arguments (the decoder layout, twin of the plain decode step, is :mod:`t5vae.decoder_layout`). They change
speed, not the numbers:
each has a test that it matches its twin (dropout: same keep rate, deterministic per key).

``T5Config.kernels`` is the one switch: "plain" (none), "cpu" (the CPU's, ``config.CPU_PATHS``), "auto"
(the set measured faster on the running backend, :data:`AUTO`; benchmarks/NOTES.md has the numbers), or
names from ``config.FAST_PATHS`` joined by "+" (for measuring one at a time). The model asks :func:`ops` only.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from t5vae import layers
from t5vae.config import CPU_PATHS, T5Config

# What "auto" turns on, per jax.default_backend(). Only what was measured faster on that backend goes here
# (benchmarks/NOTES.md, docs/accelerator.md). On an H200, dpa ran the dropout-free T5-VAE step at t5-base
# 256 x 64 at 0.90x the einsum path, and the CPU's paths are shaped for the CPU, so "gpu" is XLA's plain ops,
# the model as written; a backend not listed (tpu) is too, until measured.
AUTO: dict[str, frozenset] = {"cpu": frozenset(CPU_PATHS), "gpu": frozenset()}


def enabled(kernels: str) -> frozenset:
    """The fast paths a ``T5Config.kernels`` value turns on (on the current backend, for "auto")."""
    if kernels == "plain":
        return frozenset()
    if kernels == "cpu":
        return frozenset(CPU_PATHS)
    if kernels == "auto":
        return AUTO.get(jax.default_backend(), frozenset())
    return frozenset(kernels.split("+"))


class Ops(NamedTuple):
    """The functions the model runs, plain or fast, with the plain functions' signatures."""

    dropout: Callable  # (x, rate, key) -> x
    mlp: Callable  # (p, x_BLD, activation, rate, key) -> y_BLD, dropout bound to this set's
    lm_head_xent: Callable  # (x_BTD, w_DV, labels_BT) -> (nll_BT, pred_BT)
    decoder_layout: bool  # decode on DecoderWeights instead of the stacked params
    attend: Callable  # (o_HKD, q_BQHK, k_BSHK, v_BSHK, bias_B1QS, layers.Mask | None, drop) -> y_BQD


@functools.lru_cache(maxsize=None)
def _ops(on: frozenset) -> Ops:
    dropout = hash_dropout if "dropout" in on else layers.dropout

    mlp = functools.partial(mlp_2d if "mlp" in on else layers.mlp, dropout=dropout)
    return Ops(
        dropout,
        mlp,
        lm_head_xent if "xent" in on else layers.lm_head_xent,
        "decoder_layout" in on,
        dpa_attend if "dpa" in on else layers.attend,
    )


def ops(cfg: T5Config) -> Ops:
    """The model's functions for ``cfg.kernels`` on the current backend."""
    return _ops(enabled(cfg.kernels))


# -- dropout: a counter hash computed inside the fusion that applies it --------------------------------


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (Wellons' "lowbias32"): consecutive inputs give uncorrelated outputs."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def keep_threshold(rate: float) -> int:
    """Keep an element when its uint32 bits are below this: round((1 - rate) * 2**32), in [1, 2**32 - 1]."""
    return min(max(round((1.0 - rate) * 2**32), 1), 2**32 - 1)


def hash_bits(key: jax.Array, shape: tuple) -> jax.Array:
    """Uniform uint32 bits of ``shape``: a hash of each element's index, seeded by two words of ``key``."""
    n = math.prod(shape)
    if n >= 2**32:
        raise ValueError(f"hashed dropout counts elements in uint32; shape {tuple(shape)} has {n}")
    seed = jax.random.bits(key, (2,), jnp.uint32)
    counter = jax.lax.iota(jnp.uint32, n).reshape(shape)
    return _mix32(_mix32(counter ^ seed[0]) + seed[1])


def hash_dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Twin of ``layers.dropout``: kept where the hash bits are below t = :func:`keep_threshold`, scaled by
    2**32 / t (the expectation is exactly x). No random array is written to memory: XLA fuses the hash
    into the op that applies the mask, and the backward pass recomputes it."""
    if key is None or rate == 0.0:
        return x
    t = keep_threshold(rate)
    return jnp.where(hash_bits(key, x.shape) < jnp.uint32(t), x * (2**32 / t), 0).astype(x.dtype)


# -- attention through jax.nn.dot_product_attention ---------------------------------------------------


def dpa_implementation(dtype) -> str | None:
    """cuDNN's fused attention on a GPU for bf16/f16 (the dtypes it takes); XLA's (None) otherwise."""
    return (
        "cudnn"
        if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
        else None
    )


def dpa_attend(
    o_HKD: jax.Array,
    q_BQHK: jax.Array,
    k_BSHK: jax.Array,
    v_BSHK: jax.Array,
    bias_B1QS: jax.Array | None,
    mask: layers.Mask | None,
    drop: Callable | None = None,
) -> jax.Array:
    """Twin of ``layers.attend`` through ``jax.nn.dot_product_attention``: scale 1 (T5 does not scale), the
    relative position bias as its ``bias`` ([1, H, Q, S], in the inputs' dtype on cuDNN), padding as key
    lengths and causality as ``is_causal``. Lengths rather than a boolean mask because cuDNN folds a mask
    into the bias, which makes it [B, H, Q, S] and loses the bias gradient; they assume right padding (real
    tokens first), as every batch here is. It has no dropout on the probabilities, so with attention dropout
    on (``drop`` given) this is ``layers.attend``."""
    if drop is not None:
        return layers.attend(o_HKD, q_BQHK, k_BSHK, v_BSHK, bias_B1QS, mask, drop)
    impl = dpa_implementation(q_BQHK.dtype)
    if bias_B1QS is not None and impl == "cudnn":
        bias_B1QS = bias_B1QS.astype(q_BQHK.dtype)  # cuDNN takes the bias in the inputs' dtype
    mask = mask or layers.Mask()
    lengths = None if mask.keys_BS is None else jnp.sum(mask.keys_BS.astype(jnp.int32), axis=-1)
    out = jax.nn.dot_product_attention(
        q_BQHK,
        k_BSHK,
        v_BSHK,
        bias_B1QS,
        scale=1.0,
        is_causal=mask.causal,
        key_value_seq_lengths=lengths,
        implementation=impl,
    )
    return layers.project_out(out, o_HKD)


# -- feed-forward with a hand-written backward ---------------------------------------------------------


def _act_grad(activation: str, a: jax.Array) -> jax.Array:
    """d act(a) / da, elementwise, from the pre-activation alone."""
    if activation == "relu":
        return (a > 0).astype(a.dtype)
    if activation == "gelu_new":
        c = math.sqrt(2.0 / math.pi)
        t = jnp.tanh(c * (a + 0.044715 * a * a * a))
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * a * a)
    if activation == "gelu":
        return 0.5 * (1.0 + jax.lax.erf(a * (1 / math.sqrt(2.0)))) + a * jnp.exp(-0.5 * a * a) / math.sqrt(
            2 * math.pi
        )
    if activation == "silu":
        s = jax.nn.sigmoid(a)
        return s * (1.0 + a * (1.0 - s))
    raise ValueError(f"unknown activation {activation!r}; choose from {sorted(layers.ACTIVATIONS)}")


def _drop(dropout, rate, key, h):
    return h if key is None or rate == 0.0 else dropout(h, rate, key)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2))
def _mlp_2d(activation: str, rate: float, dropout, x_ND, wi_DF, wi1_DF, wo_FD, key):
    return _mlp_2d_fwd(activation, rate, dropout, x_ND, wi_DF, wi1_DF, wo_FD, key)[0]


def _mlp_2d_fwd(activation, rate, dropout, x_ND, wi_DF, wi1_DF, wo_FD, key):
    a = x_ND @ wi_DF
    b = None if wi1_DF is None else x_ND @ wi1_DF
    h = layers.ACTIVATIONS[activation](a)
    y = _drop(dropout, rate, key, h if b is None else h * b) @ wo_FD
    return y, (x_ND, wi_DF, wi1_DF, wo_FD, key, a, b)


def _mlp_2d_bwd(activation, rate, dropout, res, g_ND):
    """Keeps only x and the pre-activations (the dropout mask is drawn again from its key); act(a) and
    act'(a) are recomputed in one elementwise pass, and every weight gradient is one plain 2-D dot."""
    x, wi, wi1, wo, key, a, b = res
    keep = None if key is None or rate == 0.0 else dropout(jnp.ones(a.shape, g_ND.dtype), rate, key)
    act = layers.ACTIVATIONS[activation](a)
    h = act if b is None else act * b
    d_wo = (h if keep is None else h * keep).T @ g_ND
    dh = g_ND @ wo.T
    if keep is not None:
        dh = dh * keep
    if b is None:
        da = dh * _act_grad(activation, a)
        return da @ wi.T, x.T @ da, None, d_wo, None
    da, db = dh * b * _act_grad(activation, a), dh * act
    dab = jnp.concatenate([da, db], axis=1)
    d_wi = x.T @ dab
    F = wi.shape[1]
    return dab @ jnp.concatenate([wi, wi1], axis=1).T, d_wi[:, :F], d_wi[:, F:], d_wo, None


_mlp_2d.defvjp(_mlp_2d_fwd, _mlp_2d_bwd)


def mlp_2d(
    p: dict,
    x_BLD: jax.Array,
    activation: str,
    rate: float,
    key: jax.Array | None,
    dropout: Callable = layers.dropout,
) -> jax.Array:
    """Twin of ``layers.mlp`` (hidden dropout by ``dropout(h, rate, key)``) on [B*L, D] rows with the
    hand-written VJP above instead of autodiff's."""
    dt, (B, L, D) = x_BLD.dtype, x_BLD.shape
    wi, wi1 = (p["wi"], None) if "wi" in p else (p["wi_0"], p["wi_1"])
    on = key is not None and rate > 0.0
    y = _mlp_2d(
        activation,
        float(rate) if on else 0.0,
        dropout,
        x_BLD.reshape(B * L, D),
        wi.astype(dt),
        None if wi1 is None else wi1.astype(dt),
        p["wo"].astype(dt),
        key if on else None,
    )
    return y.reshape(B, L, -1)


# -- cross-entropy over the LM head with a hand-written backward ---------------------------------------


@jax.custom_vjp
def _xent_2d(x_ND, w_DV, labels_N):
    return _xent_2d_fwd(x_ND, w_DV, labels_N)[0]


def _xent_2d_fwd(x_ND, w_DV, labels_N):
    logits = jnp.dot(x_ND, w_DV, preferred_element_type=jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    nll = lse - jnp.take_along_axis(logits, labels_N[:, None], axis=-1)[:, 0]
    pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return (nll, pred), (x_ND, w_DV, labels_N, logits, lse)


def _xent_2d_bwd(res, g):
    """d nll / d logits = softmax - onehot, formed once, then two plain 2-D dots."""
    x, w, labels, logits, lse = res
    onehot = labels[:, None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)[None, :]
    d_logits = ((jnp.exp(logits - lse[:, None]) - onehot) * g[0][:, None]).astype(x.dtype)
    return d_logits @ w.T, x.T @ d_logits, None


_xent_2d.defvjp(_xent_2d_fwd, _xent_2d_bwd)


def lm_head_xent(x_BTD: jax.Array, w_DV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Twin of ``layers.lm_head_xent``; the logits never leave it (its backward is ``softmax - onehot``)."""
    B, T, D = x_BTD.shape
    nll, pred = _xent_2d(
        x_BTD.reshape(B * T, D), w_DV.astype(x_BTD.dtype), labels_BT.reshape(B * T).astype(jnp.int32)
    )
    return nll.reshape(B, T), pred.reshape(B, T)
