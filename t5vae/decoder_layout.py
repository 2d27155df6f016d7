"""The decoder's weights laid out for fast decoding (:class:`DecoderWeights`) and the decode step that runs on
them: the twin of :mod:`t5vae.decoding`'s plain step over the stacked params, used when the "decoder_layout"
fast path is on (:func:`t5vae.kernels.ops`). Same tokens as the plain step; tested side by side."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from t5vae import layers
from t5vae.config import T5Config


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

    layers: tuple  # per layer: norms and matrices, see _layout
    cross_kv: jax.Array  # [D, L * 2 * H * K]: per layer, cross-attention k then v
    embedding: jax.Array  # [V, D], for the input tokens
    relpos_bias: jax.Array  # [R, H], or [L, R, H] with relative_attention_per_layer
    final_norm: jax.Array  # [D]
    lm_head: jax.Array  # [D, V]


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
        out.append(
            {
                "self_norm": lp["self_attn_norm"],
                "cross_norm": lp["cross_attn_norm"],
                "mlp_norm": lp["mlp_norm"],
                "qkv": jnp.concatenate([sa[n].reshape(D, H * K) for n in ("q", "k", "v")], axis=1),
                "o": sa["o"].reshape(H * K, D),
                "cross_q": ca["q"].reshape(D, H * K),
                "cross_o": ca["o"].reshape(H * K, D),
                "wi": jnp.concatenate(wi, axis=1),
                "wo": mlp["wo"],
            }
        )
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
        raise ValueError(
            f"decoder_weights needs a T5 params tree (keys 'shared', 'decoder', ...), got {got}"
            + (" (a T5-VAE's tree? pass its params['t5'])" if "t5" in got else "")
        )
    as_dt = lambda a: a if a.dtype == jnp.dtype(cfg.dtype) else a.astype(cfg.dtype)  # noqa: E731
    layers_out, cross_kv, tied_head = _layout(params, cfg)
    dec = params["decoder"]
    head = tied_head if cfg.tie_word_embeddings else as_dt(params["lm_head"])
    relpos = dec["layers"]["relpos_bias"] if cfg.relative_attention_per_layer else dec["relpos_bias"]
    return DecoderWeights(
        layers_out, cross_kv, as_dt(params["shared"]["embedding"]), relpos, dec["final_norm"], head
    )


def check_decoder_weights(w: DecoderWeights, cfg: T5Config) -> DecoderWeights:
    """Decoder weights made for another config are an error that names the mismatch, not a shape error."""
    D, HK, dt = cfg.d_model, cfg.num_heads * cfg.d_kv, jnp.dtype(cfg.dtype)
    relpos = (cfg.relative_attention_num_buckets, cfg.num_heads)
    want = {
        "layers": cfg.num_decoder_layers,
        "cross_kv": (D, cfg.num_decoder_layers * 2 * HK),
        "embedding": (cfg.vocab_size, D),
        "lm_head": (D, cfg.vocab_size),
        "relpos_bias": (cfg.num_decoder_layers, *relpos) if cfg.relative_attention_per_layer else relpos,
    }
    got = {
        "layers": len(w.layers),
        "cross_kv": tuple(w.cross_kv.shape),
        "embedding": tuple(w.embedding.shape),
        "lm_head": tuple(w.lm_head.shape),
        "relpos_bias": tuple(w.relpos_bias.shape),
    }
    bad = [f"{k}: {got[k]} (config wants {want[k]})" for k in want if got[k] != want[k]]
    if w.cross_kv.dtype != dt:
        bad.append(f"dtype: {w.cross_kv.dtype} (config's compute dtype is {dt})")
    if bad:
        raise ValueError(
            "DecoderWeights do not match the config: "
            + "; ".join(bad)
            + " (build them with decoder_weights(params, cfg) for this config)"
        )
    return w


def layout_cross_kv(w: DecoderWeights, cfg: T5Config, enc_BSD: jax.Array) -> list:
    """Per layer, the cross-attention keys and values [B, H, S, K] of the encoder states (one matmul)."""
    B, S, _ = enc_BSD.shape
    kv = (enc_BSD.astype(cfg.dtype) @ w.cross_kv).reshape(
        B, S, cfg.num_decoder_layers, 2, cfg.num_heads, cfg.d_kv
    )
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


def layout_step(
    w: DecoderWeights,
    cfg: T5Config,
    cross_kv: list,
    tok_B: jax.Array,
    t: jax.Array,
    cache: list,
    cross_mask_B1S: jax.Array | None,
):
    """One decoder position: token ids [B] at position ``t`` -> (float32 logits [B, V], updated cache)."""
    B, H, K, eps = tok_B.shape[0], cfg.num_heads, cfg.d_kv, cfg.layer_norm_epsilon
    T = cache[0][0].shape[2]
    x = jnp.take(w.embedding, tok_B, axis=0)  # [B, D]
    bias_at = functools.partial(
        layers.position_bias_at, k_len=T, q_pos=t, max_distance=cfg.relative_attention_max_distance
    )
    shared_1HT = None if cfg.relative_attention_per_layer else bias_at(w.relpos_bias)
    self_mask_11T = (jnp.arange(T) <= t)[None, None, :]
    new_cache = []
    for i, (lp, (ck, cv), (xk, xv)) in enumerate(zip(w.layers, cache, cross_kv)):
        bias_1HT = bias_at(w.relpos_bias[i]) if shared_1HT is None else shared_1HT
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
        x = x * cfg.d_model**-0.5
    return jnp.dot(x, w.lm_head, preferred_element_type=jnp.float32), new_cache
