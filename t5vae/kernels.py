"""Fast paths chosen per platform, each the twin of a plain function in :mod:`t5vae.layers` (or, for the
decoder layout, of the plain decode step in :mod:`t5vae.decoding`). They change speed, not the numbers:
each has a test that it matches its twin (dropout: same keep rate, deterministic per key).

``T5Config.kernels`` is the one switch: "plain" (none), "cpu" (the CPU's, ``config.CPU_PATHS``), "auto"
(the set measured faster on the running backend, :data:`AUTO`; benchmarks/NOTES.md has the numbers), or
names from ``config.FAST_PATHS`` joined by "+" (for measuring one at a time). The model asks :func:`ops` only.
"""
from __future__ import annotations

import dataclasses
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
    dropout: Callable        # (x, rate, key) -> x
    mlp: Callable            # (p, x_BLD, activation, rate, key) -> y_BLD
    lm_head_xent: Callable   # (x_BTD, w_DV, labels_BT) -> (nll_BT, pred_BT)
    decoder_layout: bool     # decode on DecoderWeights instead of the stacked params
    attend: Callable         # (o_HKD, q_BQHK, k_BSHK, v_BSHK, bias_B1QS, mask_B1QS, drop) -> y_BQD


@functools.lru_cache(maxsize=None)
def _ops(on: frozenset) -> Ops:
    dropout = hash_dropout if "dropout" in on else layers.dropout

    def mlp(p, x, activation, rate, key):
        if "mlp" in on:
            return mlp_2d(p, x, activation, rate, key, dropout)
        drop = None if key is None or rate == 0.0 else functools.partial(dropout, rate=rate, key=key)
        return layers.mlp(p, x, activation, drop)

    return Ops(dropout, mlp, lm_head_xent if "xent" in on else layers.lm_head_xent, "decoder_layout" in on,
               dpa_attend if "dpa" in on else layers.attend)


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
    return min(max(round((1.0 - rate) * 2 ** 32), 1), 2 ** 32 - 1)


def hash_bits(key: jax.Array, shape: tuple) -> jax.Array:
    """Uniform uint32 bits of ``shape``: a hash of each element's index, seeded by two words of ``key``."""
    n = math.prod(shape)
    if n >= 2 ** 32:
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
    return jnp.where(hash_bits(key, x.shape) < jnp.uint32(t), x * (2 ** 32 / t), 0).astype(x.dtype)


# -- attention through jax.nn.dot_product_attention ---------------------------------------------------

def dpa_implementation(dtype) -> str | None:
    """cuDNN's fused attention on a GPU for bf16/f16 (the dtypes it takes); XLA's (None) otherwise."""
    return "cudnn" if jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16) else None


def dpa_attend(o_HKD: jax.Array, q_BQHK: jax.Array, k_BSHK: jax.Array, v_BSHK: jax.Array,
               bias_B1QS: jax.Array | None, mask: layers.Mask | None, drop: Callable | None = None) -> jax.Array:
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
    out = jax.nn.dot_product_attention(q_BQHK, k_BSHK, v_BSHK, bias_B1QS, scale=1.0, is_causal=mask.causal,
                                       key_value_seq_lengths=lengths, implementation=impl)
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
        return 0.5 * (1.0 + jax.lax.erf(a * (1 / math.sqrt(2.0)))) + a * jnp.exp(-0.5 * a * a) / math.sqrt(2 * math.pi)
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


def mlp_2d(p: dict, x_BLD: jax.Array, activation: str, rate: float, key: jax.Array | None,
           dropout: Callable = layers.dropout) -> jax.Array:
    """Twin of ``layers.mlp`` (hidden dropout by ``dropout(h, rate, key)``) on [B*L, D] rows with the
    hand-written VJP above instead of autodiff's."""
    dt, (B, L, D) = x_BLD.dtype, x_BLD.shape
    wi, wi1 = (p["wi"], None) if "wi" in p else (p["wi_0"], p["wi_1"])
    on = key is not None and rate > 0.0
    y = _mlp_2d(activation, float(rate) if on else 0.0, dropout, x_BLD.reshape(B * L, D), wi.astype(dt),
                None if wi1 is None else wi1.astype(dt), p["wo"].astype(dt), key if on else None)
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
    nll, pred = _xent_2d(x_BTD.reshape(B * T, D), w_DV.astype(x_BTD.dtype), labels_BT.reshape(B * T).astype(jnp.int32))
    return nll.reshape(B, T), pred.reshape(B, T)


# -- decoding on per-layer weights (twin of decoding's plain step over the stacked params) ---------------

@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    """The decoder's weights laid out for decoding, in the compute dtype: one [in, out] matrix per layer and
    projection instead of the params' stacked [L, ...] leaves (q|k|v and wi_0|wi_1 fused), every layer's
    cross-attention k|v in one [D, L*2*H*K] matrix, and the LM head as [D, V] (for tied v1.0 weights, a
    transposed copy of the embedding). Build it once with :func:`decoder_weights` and pass it to
    ``decoding.generate`` in place of the params when decoding repeatedly; it holds a second copy of the
    decoder's weights (and of the tied embedding).

    Why: a decode step multiplies a few rows by every weight, so it is bound by reading them; per-layer
    slices of the stacked leaves inside the compiled loop are fresh temporaries on every call on XLA's CPU
    backend (benchmarks/NOTES.md).
    """
    layers: tuple            # per layer: norms and matrices, see _layout
    cross_kv: jax.Array      # [D, L * 2 * H * K]: per layer, cross-attention k then v
    embedding: jax.Array     # [V, D], for the input tokens
    relpos_bias: jax.Array   # [R, H]
    final_norm: jax.Array    # [D]
    lm_head: jax.Array       # [D, V]


@functools.partial(jax.jit, static_argnums=1)
def _layout(params: dict, cfg: T5Config) -> tuple:
    """(per-layer weights, fused cross-attention k|v, the tied head transposed or None)."""
    D, H, K, dt = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.dtype
    stack = params["decoder"]["layers"]
    out, cross = [], []
    for i in range(cfg.num_decoder_layers):
        lp = jax.tree.map(lambda a: a[i].astype(dt), stack)
        sa, ca, mlp = lp["self_attn"], lp["cross_attn"], lp["mlp"]
        cross += [ca["k"].reshape(D, H * K), ca["v"].reshape(D, H * K)]
        wi = [mlp["wi"]] if "wi" in mlp else [mlp["wi_0"], mlp["wi_1"]]
        out.append({"self_norm": lp["self_attn_norm"], "cross_norm": lp["cross_attn_norm"],
                    "mlp_norm": lp["mlp_norm"],
                    "qkv": jnp.concatenate([sa[n].reshape(D, H * K) for n in ("q", "k", "v")], axis=1),
                    "o": sa["o"].reshape(H * K, D), "cross_q": ca["q"].reshape(D, H * K),
                    "cross_o": ca["o"].reshape(H * K, D), "wi": jnp.concatenate(wi, axis=1), "wo": mlp["wo"]})
    head = params["shared"]["embedding"].T.astype(dt) if cfg.tie_word_embeddings else None
    return tuple(out), jnp.concatenate(cross, axis=1), head


def decoder_weights(params: dict, cfg: T5Config) -> DecoderWeights:
    """T5 params -> :class:`DecoderWeights` (one compiled call; the embedding, bias table, final norm and
    untied LM head are the params' own arrays when already in the compute dtype). Given DecoderWeights,
    returns them."""
    if isinstance(params, DecoderWeights):
        return params
    if not isinstance(params, dict) or not {"shared", "decoder"} <= params.keys():
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"decoder_weights needs a T5 params tree (keys 'shared', 'decoder', ...), got {got}"
                         + (" (a T5-VAE's tree? pass its params['t5'])" if "t5" in got else ""))
    as_dt = lambda a: a if a.dtype == jnp.dtype(cfg.dtype) else a.astype(cfg.dtype)  # noqa: E731
    layers_out, cross_kv, tied_head = _layout(params, cfg)
    dec = params["decoder"]
    head = tied_head if cfg.tie_word_embeddings else as_dt(params["lm_head"])
    return DecoderWeights(layers_out, cross_kv, as_dt(params["shared"]["embedding"]), dec["relpos_bias"],
                          dec["final_norm"], head)


def check_decoder_weights(w: DecoderWeights, cfg: T5Config) -> DecoderWeights:
    """Decoder weights made for another config are an error that names the mismatch, not a shape error."""
    D, HK, dt = cfg.d_model, cfg.num_heads * cfg.d_kv, jnp.dtype(cfg.dtype)
    want = {"layers": cfg.num_decoder_layers, "cross_kv": (D, cfg.num_decoder_layers * 2 * HK),
            "embedding": (cfg.vocab_size, D), "lm_head": (D, cfg.vocab_size)}
    got = {"layers": len(w.layers), "cross_kv": tuple(w.cross_kv.shape), "embedding": tuple(w.embedding.shape),
           "lm_head": tuple(w.lm_head.shape)}
    bad = [f"{k}: {got[k]} (config wants {want[k]})" for k in want if got[k] != want[k]]
    if w.cross_kv.dtype != dt:
        bad.append(f"dtype: {w.cross_kv.dtype} (config's compute dtype is {dt})")
    if bad:
        raise ValueError("DecoderWeights do not match the config: " + "; ".join(bad)
                         + " (build them with decoder_weights(params, cfg) for this config)")
    return w


def layout_cross_kv(w: DecoderWeights, cfg: T5Config, enc_BSD: jax.Array) -> list:
    """Per layer, the cross-attention keys and values [B, H, S, K] of the encoder states (one matmul)."""
    B, S, _ = enc_BSD.shape
    kv = (enc_BSD.astype(cfg.dtype) @ w.cross_kv).reshape(B, S, cfg.num_decoder_layers, 2, cfg.num_heads, cfg.d_kv)
    kv = jnp.transpose(kv, (2, 3, 0, 4, 1, 5))  # [L, 2, B, H, S, K]
    return [(kv[i, 0], kv[i, 1]) for i in range(cfg.num_decoder_layers)]


def _layout_mlp(lp: dict, cfg: T5Config, h_BD: jax.Array) -> jax.Array:
    """The T5 feed-forward for single positions (wi_0|wi_1 fused when gated)."""
    a = h_BD @ lp["wi"]
    a, b = jnp.split(a, 2, axis=1) if cfg.is_gated else (a, None)
    h = layers.ACTIVATIONS[cfg.activation](a)
    return (h if b is None else h * b) @ lp["wo"]


def layout_cache(cfg: T5Config, batch: int, length: int) -> list:
    """Empty self-attention cache: per layer, keys and values [B, H, T, K] in the compute dtype."""
    shape = (batch, cfg.num_heads, length, cfg.d_kv)
    return [(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)) for _ in range(cfg.num_decoder_layers)]


def layout_step(w: DecoderWeights, cfg: T5Config, cross_kv: list, tok_B: jax.Array, t: jax.Array, cache: list,
                cross_mask_B1S: jax.Array | None):
    """One decoder position: token ids [B] at position ``t`` -> (float32 logits [B, V], updated cache)."""
    B, H, K, eps = tok_B.shape[0], cfg.num_heads, cfg.d_kv, cfg.layer_norm_epsilon
    T = cache[0][0].shape[2]
    x = jnp.take(w.embedding, tok_B, axis=0)  # [B, D]
    bias_1HT = layers.position_bias(w.relpos_bias, 1, T, False, cfg.relative_attention_max_distance,
                                    q_offset=t)[:, :, 0, :]
    self_mask_11T = (jnp.arange(T) <= t)[None, None, :]
    new_cache = []
    for lp, (ck, cv), (xk, xv) in zip(w.layers, cache, cross_kv):
        h = layers.rms_norm(x, lp["self_norm"], eps)
        q, k, v = jnp.split((h @ lp["qkv"]).reshape(B, 3 * H, K), 3, axis=1)
        ck = jax.lax.dynamic_update_slice_in_dim(ck, k[:, :, None, :], t, axis=2)
        cv = jax.lax.dynamic_update_slice_in_dim(cv, v[:, :, None, :], t, axis=2)
        new_cache.append((ck, cv))
        x = x + layers.attend_one(q, ck, cv, bias_1HT, self_mask_11T) @ lp["o"]
        h = layers.rms_norm(x, lp["cross_norm"], eps)
        q = (h @ lp["cross_q"]).reshape(B, H, K)
        x = x + layers.attend_one(q, xk, xv, None, cross_mask_B1S) @ lp["cross_o"]
        h = layers.rms_norm(x, lp["mlp_norm"], eps)
        x = x + _layout_mlp(lp, cfg, h)
    x = layers.rms_norm(x, w.final_norm, eps)
    if cfg.tie_word_embeddings:  # v1.0 scales the hidden states before the tied head
        x = x * cfg.d_model ** -0.5
    return jnp.dot(x, w.lm_head, preferred_element_type=jnp.float32), new_cache
