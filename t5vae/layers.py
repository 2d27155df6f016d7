"""T5's building blocks as pure functions over arrays: this file is the model's definition, in plain JAX.
Faster twins of some of them, chosen per platform, are in t5vae.kernels.

Shape letters: B batch, L/Q query length, S/K key length, D d_model, H heads, K d_kv (in weight names),
F d_ff, V vocab. Attention logits are *not* scaled by 1/sqrt(d_kv): T5 folds that into the init.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

NEG_INF = -1e30  # masked attention logits; exp() of it is exactly 0 in float32


class Mask(NamedTuple):
    """Which keys each query may attend to: the keys' padding ``keys_BS`` (True for a real token; None: all
    real) and, for a decoder's self-attention, ``causal``. Kept as structure rather than one dense
    [B, 1, Q, S] array so that fused attention (t5vae.kernels.dpa_attend) can take padding as sequence
    lengths and causality as a flag, which is how cuDNN wants them. Batches are right-padded (real tokens
    first), which the lengths form assumes."""

    keys_BS: jax.Array | None = None
    causal: bool = False

    def dense(self, q_len: int, k_len: int) -> jax.Array | None:
        """The boolean mask [B or 1, 1, Q, S] (None when every key is visible to every query); causal: query
        i sees keys 0..i, as ``jax.nn.dot_product_attention``'s ``is_causal``."""
        out = None if self.keys_BS is None else self.keys_BS.astype(bool)[:, None, None, :]
        if self.causal:
            tri = jnp.tril(jnp.ones((q_len, k_len), bool))[None, None]
            out = tri if out is None else out & tri
        return out


def rms_norm(x_BLD: jax.Array, scale_D: jax.Array, eps: float) -> jax.Array:
    """T5 LayerNorm: scale * x / rms(x), no mean subtraction and no bias, computed in float32."""
    x = x_BLD.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps)
    return (x * scale_D.astype(jnp.float32)).astype(x_BLD.dtype)


def dropout(x: jax.Array, rate: float, key: jax.Array | None) -> jax.Array:
    """Inverted dropout: keep each element with probability ``1 - rate`` and scale it by ``1 / (1 - rate)``;
    identity when ``key`` is None or ``rate`` is 0."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


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
    large = max_exact + (
        xp.log(nf / max_exact) / math.log(max_distance / max_exact) * (num_buckets - max_exact)
    ).astype(np.int32)
    large = xp.minimum(large, num_buckets - 1)
    return bucket + xp.where(is_small, n, large).astype(np.int32)


def position_bias(
    table_RH: jax.Array,
    q_len: int,
    k_len: int,
    bidirectional: bool,
    max_distance: int,
    q_offset: jax.Array | int = 0,
) -> jax.Array:
    """Relative position bias [1, H, Q, K] from a [buckets, H] table; queries start at ``q_offset``."""
    q_pos = jnp.arange(q_len, dtype=jnp.int32)[:, None] + q_offset
    k_pos = jnp.arange(k_len, dtype=jnp.int32)[None, :]
    buckets_QK = relative_position_bucket(k_pos - q_pos, bidirectional, table_RH.shape[0], max_distance)
    bias_QKH = jnp.take(table_RH.astype(jnp.float32), buckets_QK, axis=0)
    return jnp.transpose(bias_QKH, (2, 0, 1))[None]


def position_bias_at(table_RH: jax.Array, k_len: int, q_pos: jax.Array, max_distance: int) -> jax.Array:
    """A decoder's (causal) relative position bias [1, H, K] of the one query at position ``q_pos``."""
    return position_bias(table_RH, 1, k_len, False, max_distance, q_offset=q_pos)[:, :, 0, :]


def attention(
    p: dict,
    x_BQD: jax.Array,
    kv_BSD: jax.Array,
    bias_B1QS: jax.Array | None,
    mask: Mask | None,
    drop: Callable | None = None,
    attend_fn: Callable | None = None,
) -> jax.Array:
    """Multi-head attention with weights q,k,v [D,H,K] and o [H,K,D]; logits in float32, no scaling.
    ``drop`` (an array -> array function) is the dropout applied to the attention probabilities;
    ``attend_fn`` replaces :func:`attend` (a fast twin from t5vae.kernels).

    Projections run as 2-D dots on [B*L, D] rows, q|k|v fused for self-attention."""
    dt, (B, Q, D), S = x_BQD.dtype, x_BQD.shape, kv_BSD.shape[1]
    _, H, K = p["q"].shape
    w = lambda *names: jnp.concatenate([p[n].astype(dt).reshape(D, H * K) for n in names], axis=1)  # noqa: E731
    if kv_BSD is x_BQD:  # self-attention: one [B*Q, D] x [D, 3*H*K] dot
        q, k, v = jnp.split(x_BQD.reshape(B * Q, D) @ w("q", "k", "v"), 3, axis=1)
    else:
        q = x_BQD.reshape(B * Q, D) @ w("q")
        k, v = jnp.split(kv_BSD.reshape(B * S, D) @ w("k", "v"), 2, axis=1)
    q, k, v = q.reshape(B, Q, H, K), k.reshape(B, S, H, K), v.reshape(B, S, H, K)
    return (attend_fn or attend)(p["o"], q, k, v, bias_B1QS, mask, drop)


def attend(
    o_HKD: jax.Array,
    q_BQHK: jax.Array,
    k_BSHK: jax.Array,
    v_BSHK: jax.Array,
    bias_B1QS: jax.Array | None,
    mask: Mask | None,
    drop: Callable | None = None,
) -> jax.Array:
    """Softmax attention over projected q/k/v and the output projection -> [B, Q, D]."""
    dt = q_BQHK.dtype
    mask_B1QS = None if mask is None else mask.dense(q_BQHK.shape[1], k_BSHK.shape[1])
    logits = jnp.einsum("BQHK,BSHK->BHQS", q_BQHK, k_BSHK, preferred_element_type=jnp.float32)
    if bias_B1QS is not None:
        logits = logits + bias_B1QS
    if mask_B1QS is not None:
        logits = jnp.where(mask_B1QS, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(dt)
    if drop is not None:
        probs = drop(probs)
    return project_out(jnp.einsum("BHQS,BSHK->BQHK", probs, v_BSHK), o_HKD)


def project_out(out_BQHK: jax.Array, o_HKD: jax.Array) -> jax.Array:
    """The attention's output projection as one 2-D dot -> [B, Q, D]."""
    B, Q, H, K = out_BQHK.shape
    return (out_BQHK.reshape(B * Q, H * K) @ o_HKD.astype(out_BQHK.dtype).reshape(H * K, -1)).reshape(
        B, Q, -1
    )


def attend_one(q_BHK, k_BHSK, v_BHSK, bias_1HS, mask_B1S):
    """Attention of one query position over S cached positions -> [B, H*K]; logits in float32, no scaling."""
    logits = jnp.einsum("BHK,BHSK->BHS", q_BHK, k_BHSK, preferred_element_type=jnp.float32)
    if bias_1HS is not None:
        logits = logits + bias_1HS
    if mask_B1S is not None:
        logits = jnp.where(mask_B1S, logits, NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(q_BHK.dtype)
    out = jnp.einsum("BHS,BHSK->BHK", probs, v_BHSK)
    return out.reshape(out.shape[0], -1)


ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def mlp(
    p: dict,
    x_BLD: jax.Array,
    activation: str,
    rate: float = 0.0,
    key: jax.Array | None = None,
    dropout: Callable = dropout,
) -> jax.Array:
    """T5 feed-forward: ``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``; wi* [D,F], wo [F,D];
    the hidden activations [B, L, F] go through ``dropout(h, rate, key)`` (none when key is None or rate 0)."""
    dt, act = x_BLD.dtype, ACTIVATIONS[activation]
    if "wi" in p:
        h = act(jnp.einsum("BLD,DF->BLF", x_BLD, p["wi"].astype(dt)))
    else:
        h = act(jnp.einsum("BLD,DF->BLF", x_BLD, p["wi_0"].astype(dt))) * jnp.einsum(
            "BLD,DF->BLF", x_BLD, p["wi_1"].astype(dt)
        )
    if key is not None and rate > 0.0:
        h = dropout(h, rate, key)
    return jnp.einsum("BLF,FD->BLD", h, p["wo"].astype(dt))


def lm_head_xent(x_BTD: jax.Array, w_DV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token ``-log softmax(x @ w)[label]`` (float32 [B, T]) and the argmax prediction (int32 [B, T])."""
    logits = jnp.einsum("BTD,DV->BTV", x_BTD, w_DV.astype(x_BTD.dtype), preferred_element_type=jnp.float32)
    labels = labels_BT.astype(jnp.int32)
    nll = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
    return nll, argmax(logits)


def argmax(x_BV: jax.Array) -> jax.Array:
    """First index of the maximum over the last axis (int32)."""
    return jnp.argmax(x_BV, axis=-1).astype(jnp.int32)
