"""T5's building blocks as pure functions over arrays.

Shape letters: B batch, L/Q query length, S/K key length, D d_model, H heads, K d_kv (in weight names),
F d_ff, V vocab. Attention logits are *not* scaled by 1/sqrt(d_kv): T5 folds that into the init.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30  # masked attention logits; exp() of it is exactly 0 in float32


def rms_norm(x_BLD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
    """T5 LayerNorm: scale * x / rms(x), no mean subtraction and no bias, computed in float32."""
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x * scale_D.astype(jnp.float32)).astype(x_BLD.dtype)


def dropout_seeds(key: jax.Array | None, n: int) -> jax.Array | None:
    """``n`` dropout seeds (uint32 [n, 2]) from one PRNG call; None when ``key`` is None (deterministic)."""
    return None if key is None else jax.random.bits(key, (n, 2), jnp.uint32)


def _mix32(x: jax.Array) -> jax.Array:
    """A 32-bit integer finaliser (Wellons' "lowbias32"): consecutive inputs give uncorrelated outputs."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def dropout_bits(seed: jax.Array | None, *shapes: tuple) -> list:
    """Random uint16 arrays of the given shapes from a counter hash of one seed (uint32 [2]); Nones if None.

    Dropout only needs cheap, well-spread bits: hashing a counter costs a handful of integer ops per two
    draws and compiles to a few HLO ops, where a threefry call site costs ~1 s of CPU compile time and
    ~10x the arithmetic. Seeds come from the real PRNG (:func:`dropout_seeds`), one per layer.
    """
    if seed is None:
        return [None] * len(shapes)
    sizes = [math.prod(s) for s in shapes]
    total = sum(sizes)
    words = _mix32(_mix32(jnp.arange((total + 1) // 2, dtype=jnp.uint32) ^ seed[0]) + seed[1])
    flat = jnp.concatenate([words & 0xFFFF, words >> 16]).astype(jnp.uint16)
    offsets = np.cumsum([0] + sizes)
    return [flat[a:b].reshape(s) for a, b, s in zip(offsets[:-1], offsets[1:], shapes)]


def dropout(x: jax.Array, rate: float, bits: jax.Array | None) -> jax.Array:
    """Inverted dropout from uint16 random ``bits`` (same shape as x); identity when bits is None or rate 0.

    An element is kept when bits < t, t = round((1 - rate) * 2**16), and scaled by 2**16 / t, so the
    expectation is exactly x and the keep probability is within 2**-17 of 1 - rate.
    """
    if bits is None or rate == 0.0:
        return x
    threshold = round((1.0 - rate) * 65536)
    return jnp.where(bits < threshold, x * (65536 / threshold), 0).astype(x.dtype)


def relative_position_bucket(relative_position, bidirectional: bool, num_buckets: int, max_distance: int):
    """Map ``key_pos - query_pos`` to a bucket id, as in Mesh-TensorFlow T5. Works on numpy or jax ints.

    Half the buckets (per direction) are exact small distances, the rest log-spaced up to ``max_distance``.
    """
    xp = jnp if isinstance(relative_position, jax.Array) else np
    rel = relative_position
    bucket = 0
    if bidirectional:
        num_buckets //= 2
        bucket = (rel > 0).astype(np.int32) * num_buckets
        n = xp.abs(rel)
    else:
        n = -xp.minimum(rel, 0)
    max_exact = num_buckets // 2
    is_small = n < max_exact
    # log-spaced buckets; max(n, 1) keeps log() finite where the small branch is taken anyway
    nf = xp.maximum(n, 1).astype(np.float32)
    large = max_exact + (xp.log(nf / max_exact) / math.log(max_distance / max_exact)
                         * (num_buckets - max_exact)).astype(np.int32)
    large = xp.minimum(large, num_buckets - 1)
    return bucket + xp.where(is_small, n, large).astype(np.int32)


def position_bias(table_RH: jax.Array, q_len: int, k_len: int, bidirectional: bool, max_distance: int,
                  q_offset: jax.Array | int = 0) -> jax.Array:
    """Relative position bias [1, H, Q, K] from a [buckets, H] table; queries start at ``q_offset``."""
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + q_offset
    k_pos = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    buckets_QK = relative_position_bucket(k_pos - q_pos, bidirectional, table_RH.shape[0], max_distance)
    bias_QKH = jnp.take(table_RH.astype(jnp.float32), buckets_QK, axis=0)
    return jnp.transpose(bias_QKH, (2, 0, 1))[None]


def attention(p: dict, x_BQD: jax.Array, kv_BSD: jax.Array, bias_B1QS: jax.Array | None,
              mask_B1QS: jax.Array | None, dropout_rate: float = 0.0, bits: jax.Array | None = None) -> jax.Array:
    """Multi-head attention with weights q,k,v [D,H,K] and o [H,K,D]; logits in float32, no scaling."""
    dt = x_BQD.dtype
    q = jnp.einsum("BQD,DHK->BQHK", x_BQD, p["q"].astype(dt))
    k = jnp.einsum("BSD,DHK->BSHK", kv_BSD, p["k"].astype(dt))
    v = jnp.einsum("BSD,DHK->BSHK", kv_BSD, p["v"].astype(dt))
    return attend(p["o"], q, k, v, bias_B1QS, mask_B1QS, dropout_rate, bits)


def attend(o_HKD: jax.Array, q_BQHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
           bias_B1QS: jax.Array | None, mask_B1QS: jax.Array | None, dropout_rate: float = 0.0,
           bits_BHQS: jax.Array | None = None) -> jax.Array:
    """Softmax attention over projected q/k/v and the output projection -> [B, Q, D]."""
    dt = q_BQHK.dtype
    logits = jnp.einsum("BQHK,BSHK->BHQS", q_BQHK, k_BSHK, preferred_element_type=jnp.float32)
    if bias_B1QS is not None:
        logits = logits + bias_B1QS
    if mask_B1QS is not None:
        logits = jnp.where(mask_B1QS, logits, NEG_INF)
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(dt), dropout_rate, bits_BHQS)
    out = jnp.einsum("BHQS,BSHK->BQHK", probs, v_BSHK)
    return jnp.einsum("BQHK,HKD->BQD", out, o_HKD.astype(dt))


_ACT = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def mlp(p: dict, x_BLD: jax.Array, activation: str, dropout_rate: float = 0.0, bits_BLF: jax.Array | None = None):
    """T5 feed-forward: ``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``; wi* [D,F], wo [F,D]."""
    dt = x_BLD.dtype
    if "wi" in p:
        h = _ACT[activation](jnp.einsum("BLD,DF->BLF", x_BLD, p["wi"].astype(dt)))
    else:
        h = (_ACT[activation](jnp.einsum("BLD,DF->BLF", x_BLD, p["wi_0"].astype(dt)))
             * jnp.einsum("BLD,DF->BLF", x_BLD, p["wi_1"].astype(dt)))
    h = dropout(h, dropout_rate, bits_BLF)
    return jnp.einsum("BLF,FD->BLD", h, p["wo"].astype(dt))
