"""T5's building blocks as pure functions over arrays.

Shape letters: B batch, L/Q query length, S/K key length, D d_model, H heads, K d_kv (in weight names),
F d_ff, V vocab. Attention logits are *not* scaled by 1/sqrt(d_kv): T5 folds that into the init.
"""
from __future__ import annotations

import dataclasses
import functools
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


@functools.partial(jax.tree_util.register_dataclass, data_fields=["seed"], meta_fields=["offset", "shape"])
@dataclasses.dataclass(frozen=True)
class DropoutBits:
    """One dropout site's random stream: the layer's seed (uint32 [2], traced), the site's first counter value
    and the shape it was declared with (static: a site of N elements owns counters ``offset .. offset + N - 1``)."""
    seed: jax.Array
    offset: int
    shape: tuple


def dropout_bits(seed: jax.Array | None, *shapes: tuple) -> list:
    """One :class:`DropoutBits` per shape, on disjoint counter ranges of one seed (uint32 [2]); Nones if None.

    Dropout only needs cheap, well-spread bits: a counter hash costs a handful of integer ops per element and
    is computed inside the fusion that applies the mask (and again in the backward pass), so no random array
    is ever written to memory. A threefry call site costs ~1 s of CPU compile time and ~10x the arithmetic.
    Seeds come from the real PRNG (:func:`dropout_seeds`), one per layer.
    """
    if seed is None:
        return [None] * len(shapes)
    offsets = np.cumsum([0] + [math.prod(s) for s in shapes])
    if offsets[-1] >= 2 ** 32:
        raise ValueError(f"dropout sites {shapes} need {offsets[-1]} counters; one seed has 2**32")
    return [DropoutBits(seed, int(o), tuple(s)) for o, s in zip(offsets[:-1], shapes)]


def random_bits(bits: DropoutBits, shape: tuple) -> jax.Array:
    """Uniform uint32 bits of ``shape`` (same size as the site's declared shape): hash(seed, counter)."""
    n = math.prod(shape)
    if n != math.prod(bits.shape):
        raise ValueError(f"dropout site declared with shape {bits.shape} was applied to shape {tuple(shape)}")
    counter = jax.lax.iota(jnp.uint32, n).reshape(shape) + jnp.uint32(bits.offset)
    return _mix32(_mix32(counter ^ bits.seed[0]) + bits.seed[1])


def keep_threshold(rate: float) -> int:
    """Keep an element when its uint32 bits are below this: round((1 - rate) * 2**32), in [1, 2**32 - 1]."""
    return min(max(round((1.0 - rate) * 2 ** 32), 1), 2 ** 32 - 1)


def keep_mask(rate: float, bits: DropoutBits, shape: tuple) -> jax.Array:
    """Boolean keep mask of ``shape`` for dropout at ``rate`` (keep probability within 2**-33 of 1 - rate)."""
    return random_bits(bits, shape) < jnp.uint32(keep_threshold(rate))


def dropout(x: jax.Array, rate: float, bits: DropoutBits | None) -> jax.Array:
    """Inverted dropout with a site's :class:`DropoutBits`; identity when bits is None or rate 0.

    An element is kept when its bits are below t = :func:`keep_threshold` and scaled by 2**32 / t, so the
    expectation is exactly x.
    """
    if bits is None or rate == 0.0:
        return x
    scale = 2 ** 32 / keep_threshold(rate)
    return jnp.where(keep_mask(rate, bits, x.shape), x * scale, 0).astype(x.dtype)


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
              mask_B1QS: jax.Array | None, dropout_rate: float = 0.0, bits: DropoutBits | None = None) -> jax.Array:
    """Multi-head attention with weights q,k,v [D,H,K] and o [H,K,D]; logits in float32, no scaling.

    Projections run as 2-D dots on [B*L, D] rows with q|k|v fused (XLA's CPU backend lays out the backward
    pass of 4-D einsums with slow transposing copies; 2-D dots cut the default train step by ~20 %)."""
    dt, (B, Q, D), S = x_BQD.dtype, x_BQD.shape, kv_BSD.shape[1]
    _, H, K = p["q"].shape
    w = lambda *names: jnp.concatenate([p[n].astype(dt).reshape(D, H * K) for n in names], axis=1)
    if kv_BSD is x_BQD:  # self-attention: one [B*Q, D] x [D, 3*H*K] dot
        q, k, v = jnp.split(x_BQD.reshape(B * Q, D) @ w("q", "k", "v"), 3, axis=1)
    else:
        q = x_BQD.reshape(B * Q, D) @ w("q")
        k, v = jnp.split(kv_BSD.reshape(B * S, D) @ w("k", "v"), 2, axis=1)
    q, k, v = q.reshape(B, Q, H, K), k.reshape(B, S, H, K), v.reshape(B, S, H, K)
    return attend(p["o"], q, k, v, bias_B1QS, mask_B1QS, dropout_rate, bits)


def attend(o_HKD: jax.Array, q_BQHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
           bias_B1QS: jax.Array | None, mask_B1QS: jax.Array | None, dropout_rate: float = 0.0,
           bits_BHQS: DropoutBits | None = None) -> jax.Array:
    """Softmax attention over projected q/k/v and the output projection -> [B, Q, D]."""
    dt = q_BQHK.dtype
    logits = jnp.einsum("BQHK,BSHK->BHQS", q_BQHK, k_BSHK, preferred_element_type=jnp.float32)
    if bias_B1QS is not None:
        logits = logits + bias_B1QS
    if mask_B1QS is not None:
        logits = jnp.where(mask_B1QS, logits, NEG_INF)
    probs = dropout(jax.nn.softmax(logits, axis=-1).astype(dt), dropout_rate, bits_BHQS)
    out = jnp.einsum("BHQS,BSHK->BQHK", probs, v_BSHK)
    B, Q, H, K = out.shape
    return (out.reshape(B * Q, H * K) @ o_HKD.astype(dt).reshape(H * K, -1)).reshape(B, Q, -1)


_ACT = {
    "relu": jax.nn.relu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "silu": jax.nn.silu,
}


def _act_grad(activation: str, a: jax.Array) -> jax.Array:
    """d act(a) / da, elementwise, from the pre-activation alone (the backward pass recomputes it)."""
    if activation == "relu":
        return (a > 0).astype(a.dtype)
    if activation == "gelu_new":
        c = math.sqrt(2.0 / math.pi)
        t = jnp.tanh(c * (a + 0.044715 * a * a * a))
        return 0.5 * (1.0 + t) + 0.5 * a * (1.0 - t * t) * c * (1.0 + 3 * 0.044715 * a * a)
    if activation == "gelu":
        return 0.5 * (1.0 + jax.lax.erf(a * (1 / math.sqrt(2.0)))) + a * jnp.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
    if activation == "silu":
        s = jax.nn.sigmoid(a)
        return s * (1.0 + a * (1.0 - s))
    raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_ACT)}")


def _mlp_hidden(activation: str, rate: float, a_NF, b_NF, bits_NF):
    """The hidden activations: act(a) (* b when gated), then dropout."""
    h = _ACT[activation](a_NF)
    return dropout(h if b_NF is None else h * b_NF, rate, bits_NF)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _mlp_2d(activation: str, rate: float, x_ND, wi_DF, wi1_DF, wo_FD, bits):
    return _mlp_2d_fwd(activation, rate, x_ND, wi_DF, wi1_DF, wo_FD, bits)[0]


def _mlp_2d_fwd(activation, rate, x_ND, wi_DF, wi1_DF, wo_FD, bits):
    a = x_ND @ wi_DF
    b = None if wi1_DF is None else x_ND @ wi1_DF
    y = _mlp_hidden(activation, rate, a, b, bits) @ wo_FD
    return y, (x_ND, wi_DF, wi1_DF, wo_FD, bits, a, b)


def _mlp_2d_bwd(activation, rate, res, g_ND):
    """Hand-written backward: only x and the pre-activations are kept (the dropout mask is re-hashed from its
    seed); act(a) and act'(a) are recomputed in one elementwise pass, and every weight gradient is one plain
    2-D dot (XLA's CPU backend otherwise fuses autodiff's chain of saved intermediates into slow transposing
    copies: 3.7x on the whole MLP)."""
    x, wi, wi1, wo, bits, a, b = res
    keep = None if bits is None or rate == 0.0 else dropout(jnp.ones(a.shape, g_ND.dtype), rate, bits)
    act = _ACT[activation](a)
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


def mlp(p: dict, x_BLD: jax.Array, activation: str, dropout_rate: float = 0.0, bits: DropoutBits | None = None):
    """T5 feed-forward: ``wo(act(wi x))`` or, gated, ``wo(act(wi_0 x) * wi_1 x)``; wi* [D,F], wo [F,D]; dropout
    on the hidden activations [B, L, F] from ``bits``.

    Runs on [B*L, D] rows with a hand-written VJP (see :func:`_mlp_2d_bwd`); tested against autodiff.
    """
    dt, (B, L, D) = x_BLD.dtype, x_BLD.shape
    wi, wi1 = (p["wi"], None) if "wi" in p else (p["wi_0"], p["wi_1"])
    on = bits is not None and dropout_rate > 0.0
    y = _mlp_2d(activation, float(dropout_rate) if on else 0.0, x_BLD.reshape(B * L, D), wi.astype(dt),
                None if wi1 is None else wi1.astype(dt), p["wo"].astype(dt), bits if on else None)
    return y.reshape(B, L, -1)


def mlp_reference(p: dict, x_BLD: jax.Array, activation: str, dropout_rate: float = 0.0,
                  bits: DropoutBits | None = None):
    """:func:`mlp` written plainly with autodiff's backward (the tests' reference for the custom VJP)."""
    dt = x_BLD.dtype
    if "wi" in p:
        h = _ACT[activation](jnp.einsum("BLD,DF->BLF", x_BLD, p["wi"].astype(dt)))
    else:
        h = (_ACT[activation](jnp.einsum("BLD,DF->BLF", x_BLD, p["wi_0"].astype(dt)))
             * jnp.einsum("BLD,DF->BLF", x_BLD, p["wi_1"].astype(dt)))
    h = dropout(h, dropout_rate, bits)
    return jnp.einsum("BLF,FD->BLD", h, p["wo"].astype(dt))


def argmax(x_BV: jax.Array, block: int = 128) -> jax.Array:
    """``jnp.argmax(x, axis=-1)`` as int32 (first index of the maximum; the first NaN if any) of float logits,
    for decoding's few rows, without argmax's variadic (value, index) reduce, which XLA's CPU backend runs
    3-6x slower on [8, 32128] (0.65-1.1 vs 0.2 ms of a ~10 ms t5-small step).

    In blocks of ``block``: each block's max, the first block holding the row's max (or a NaN), then the
    first hit inside that block; the comparison pass reads one block per row instead of the whole row
    (8-14 ms less per 32-token t5-small generate call than a max pass plus a full compare pass). The row
    is padded with -inf to whole blocks (t5's 32128 needs none). Not for many rows: on [512, 32128]
    two passes over memory cost more than the variadic reduce (49 vs 35 ms)."""
    *lead, V = x_BV.shape
    nb = -(-V // block)
    if nb * block != V:
        x_BV = jnp.pad(x_BV, [(0, 0)] * len(lead) + [(0, nb * block - V)], constant_values=-jnp.inf)
    x_BNK = x_BV.reshape(*lead, nb, block)
    first = lambda hit, n: jnp.min(jnp.where(hit, jnp.arange(n, dtype=jnp.int32), n), axis=-1)  # noqa: E731
    max_BN = jnp.max(x_BNK, axis=-1)  # NaN where the block holds one
    m_B1 = jnp.max(max_BN, axis=-1, keepdims=True)
    blk_B = first((max_BN == m_B1) | jnp.isnan(max_BN), nb)
    row_BK = jnp.take_along_axis(x_BNK, blk_B[..., None, None], axis=-2)[..., 0, :]
    return blk_B * block + first((row_BK == m_B1) | jnp.isnan(row_BK), block)


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
    """d nll / d logits = softmax - onehot, formed once, then two plain 2-D dots (no [N, V] scatter/zeros)."""
    x, w, labels, logits, lse = res
    g_nll = g[0]
    onehot = labels[:, None] == jnp.arange(logits.shape[-1], dtype=labels.dtype)[None, :]
    d_logits = ((jnp.exp(logits - lse[:, None]) - onehot) * g_nll[:, None]).astype(x.dtype)
    return d_logits @ w.T, x.T @ d_logits, None


_xent_2d.defvjp(_xent_2d_fwd, _xent_2d_bwd)


def lm_head_xent(x_BTD: jax.Array, w_DV: jax.Array, labels_BT: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Per-token ``-log softmax(x @ w)[label]`` (float32 [B, T]) and the argmax prediction (int32 [B, T]).

    The logits never leave this function: its hand-written VJP turns them into ``softmax - onehot`` in one
    pass. ``labels`` must be valid ids (mask ignored positions outside: their cotangent is what zeroes them).
    """
    B, T, D = x_BTD.shape
    nll, pred = _xent_2d(x_BTD.reshape(B * T, D), w_DV.astype(x_BTD.dtype), labels_BT.reshape(B * T).astype(jnp.int32))
    return nll.reshape(B, T), pred.reshape(B, T)
