"""Autoregressive decoding with a KV cache, as one compiled ``lax.while_loop``.

``generate`` works from encoder states (a T5 encoder's, or the T5-VAE's decoded latent tokens): the
cross-attention keys/values are projected once per call, each step runs one token through the decoder
layers (unrolled, on per-layer weights: :class:`DecoderWeights`) and writes its self-attention keys/values
into a fixed-size cache. The loop stops early once every row (every beam) has produced EOS. Output: int32
tokens [B, max_new_tokens], without the decoder start token, pad (``cfg.pad_token_id``) after EOS.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from t5vae import layers
from t5vae.config import T5Config

METHODS = ("greedy", "sample", "beam")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class DecoderWeights:
    """The decoder's weights laid out for decoding, in the compute dtype: one [in, out] matrix per layer and
    projection instead of the params' stacked [L, ...] leaves (q|k|v and wi_0|wi_1 fused), every layer's
    cross-attention k|v in one [D, L*2*H*K] matrix, and the LM head as [D, V] (for tied v1.0 weights, a
    transposed copy of the embedding). Build it once with :func:`decoder_weights` and pass it to
    :func:`generate` in place of the params when decoding repeatedly; it holds a second copy of the
    decoder's weights (and of the tied embedding).

    Why: a decode step multiplies a few rows by every weight, so it is bound by reading them. Per-layer
    weights cut from the stacked leaves inside the compiled loop are fresh temporaries on every call (on
    XLA's CPU backend, ~100 MB of page faults per t5-small call), and the [D, V] head reads faster than the
    [V, D] embedding (benchmarks/NOTES.md).
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


def _check_weights(w: DecoderWeights, cfg: T5Config) -> DecoderWeights:
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


def _cross_kv(w: DecoderWeights, cfg: T5Config, enc_BSD: jax.Array) -> list:
    """Per layer, the cross-attention keys and values [B, H, S, K] of the encoder states (one matmul)."""
    B, S, _ = enc_BSD.shape
    kv = (enc_BSD.astype(cfg.dtype) @ w.cross_kv).reshape(B, S, cfg.num_decoder_layers, 2, cfg.num_heads, cfg.d_kv)
    kv = jnp.transpose(kv, (2, 3, 0, 4, 1, 5))  # [L, 2, B, H, S, K]
    return [(kv[i, 0], kv[i, 1]) for i in range(cfg.num_decoder_layers)]


def _mlp_one(lp: dict, cfg: T5Config, h_BD: jax.Array) -> jax.Array:
    """The T5 feed-forward for single positions (wi_0|wi_1 fused when gated)."""
    a = h_BD @ lp["wi"]
    a, b = jnp.split(a, 2, axis=1) if cfg.is_gated else (a, None)
    return layers._mlp_hidden(cfg.activation, 0.0, a, b, None) @ lp["wo"]


def init_cache(cfg: T5Config, batch: int, length: int) -> list:
    """Empty self-attention cache: per layer, keys and values [B, H, T, K] in the compute dtype."""
    shape = (batch, cfg.num_heads, length, cfg.d_kv)
    return [(jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)) for _ in range(cfg.num_decoder_layers)]


def _attend_one(q_BHK, k_BHSK, v_BHSK, bias_1HS, mask_B1S):
    """Attention of one query position over S cached positions -> [B, H*K]; logits in float32, no scaling."""
    logits = jnp.einsum("BHK,BHSK->BHS", q_BHK, k_BHSK, preferred_element_type=jnp.float32)
    if bias_1HS is not None:
        logits = logits + bias_1HS
    if mask_B1S is not None:
        logits = jnp.where(mask_B1S, logits, layers.NEG_INF)
    probs = jax.nn.softmax(logits, axis=-1).astype(q_BHK.dtype)
    out = jnp.einsum("BHS,BHSK->BHK", probs, v_BHSK)
    return out.reshape(out.shape[0], -1)


def decode_step(w: DecoderWeights, cfg: T5Config, cross_kv: list, tok_B: jax.Array, t: jax.Array, cache: list,
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
        x = x + _attend_one(q, ck, cv, bias_1HT, self_mask_11T) @ lp["o"]
        h = layers.rms_norm(x, lp["cross_norm"], eps)
        q = (h @ lp["cross_q"]).reshape(B, H, K)
        x = x + _attend_one(q, xk, xv, None, cross_mask_B1S) @ lp["cross_o"]
        h = layers.rms_norm(x, lp["mlp_norm"], eps)
        x = x + _mlp_one(lp, cfg, h)
    x = layers.rms_norm(x, w.final_norm, eps)
    if cfg.tie_word_embeddings:  # v1.0 scales the hidden states before the tied head
        x = x * cfg.d_model ** -0.5
    return jnp.dot(x, w.lm_head, preferred_element_type=jnp.float32), new_cache


def _filter_logits(logits_BV: jax.Array, temperature, top_k: int, top_p) -> jax.Array:
    """Temperature, then keep the ``top_k`` best tokens (0: all) and the smallest set with mass >= ``top_p``."""
    logits = logits_BV / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    sorted_desc = -jnp.sort(-logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(sorted_desc, axis=-1), axis=-1)
    # the cutoff is the smallest logit whose preceding mass is still below top_p (the best token always stays)
    keep_sorted = (cum - jax.nn.softmax(sorted_desc, axis=-1)) < top_p
    cutoff = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits < cutoff, -jnp.inf, logits)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "method", "top_k"))
def _sample_loop(w, cfg, enc, enc_mask, max_new_tokens, method, key, temperature, top_k, top_p):
    B = enc.shape[0]
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    cross_kv = _cross_kv(w, cfg, enc)
    out = jnp.full((B, max_new_tokens), cfg.pad_token_id, jnp.int32)
    tok = jnp.full((B,), cfg.decoder_start_token_id, jnp.int32)
    state = (jnp.int32(0), tok, out, init_cache(cfg, B, max_new_tokens), jnp.zeros((B,), bool), key)

    def cond(s):
        t, _, _, _, done, _ = s
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(s):
        t, tok, out, cache, done, key = s
        logits, cache = decode_step(w, cfg, cross_kv, tok, t, cache, cross_mask)
        if method == "greedy":
            nxt = layers.argmax(logits)
        else:
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, _filter_logits(logits, temperature, top_k, top_p)).astype(jnp.int32)
        nxt = jnp.where(done, cfg.pad_token_id, nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], t, axis=1)
        return t + 1, nxt, out, cache, done | (nxt == cfg.eos_token_id), key

    return jax.lax.while_loop(cond, body, state)[2]


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "num_beams"))
def _beam_loop(w, cfg, enc, enc_mask, max_new_tokens, num_beams, length_penalty):
    """Beam search. Hypotheses are ranked by sum log p / length**length_penalty (the Hugging Face rule);
    a finished beam keeps its score and competes with the live ones until the loop ends."""
    B, W, T, V = enc.shape[0], num_beams, max_new_tokens, cfg.vocab_size
    rep = lambda x: None if x is None else jnp.repeat(x, W, axis=0)  # noqa: E731  [B*W, ...]
    enc_mask = rep(enc_mask)
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    cross_kv = _cross_kv(w, cfg, rep(enc))
    # only the first beam is live at the start, so the W beams do not all pick the same token
    logp = jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf), (B, 1))
    state = (jnp.int32(0), jnp.full((B * W,), cfg.decoder_start_token_id, jnp.int32),
             jnp.full((B, W, T), cfg.pad_token_id, jnp.int32), init_cache(cfg, B * W, T), logp,
             jnp.zeros((B, W), bool), jnp.zeros((B, W), jnp.int32))

    def score(logp, length):
        return logp / jnp.maximum(length, 1).astype(jnp.float32) ** length_penalty

    def cond(s):
        return (s[0] < T) & ~jnp.all(s[5])

    def body(s):
        t, tok, seqs, cache, logp, done, length = s
        logits, cache = decode_step(w, cfg, cross_kv, tok, t, cache, cross_mask)
        lp_BWV = jax.nn.log_softmax(logits, axis=-1).reshape(B, W, V)
        # a finished beam may only "emit" pad, at no cost; a live one may emit anything
        pad_only = jnp.where(jnp.arange(V) == cfg.pad_token_id, 0.0, -jnp.inf)
        cand = logp[..., None] + jnp.where(done[..., None], pad_only, lp_BWV)
        cand_len = jnp.where(done, length, t + 1)[..., None] * jnp.ones((1, 1, V), jnp.int32)
        top_score, idx = jax.lax.top_k(score(cand, cand_len).reshape(B, W * V), W)
        beam, nxt = idx // V, (idx % V).astype(jnp.int32)
        gather = lambda x: jnp.take_along_axis(x, beam, axis=1)  # noqa: E731
        new_logp = jnp.take_along_axis(cand.reshape(B, W * V), idx, axis=1)
        was_done = gather(done)
        seqs = jnp.take_along_axis(seqs, beam[..., None], axis=1)
        seqs = jax.lax.dynamic_update_slice_in_dim(seqs, nxt[..., None], t, axis=2)
        flat = (beam + jnp.arange(B)[:, None] * W).reshape(-1)
        cache = jax.tree.map(lambda c: jnp.take(c, flat, axis=0), cache)
        length = jnp.where(was_done, gather(length), t + 1)
        done = was_done | (nxt == cfg.eos_token_id)
        return t + 1, nxt.reshape(-1), seqs, cache, new_logp, done, length

    _, _, seqs, _, logp, _, length = jax.lax.while_loop(cond, body, state)
    best = jnp.argmax(score(logp, length), axis=1)
    return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]


def generate(params: dict | DecoderWeights, cfg: T5Config, encoder_states: jax.Array,
             encoder_mask: jax.Array | None, max_new_tokens: int, method: str = "greedy", key: jax.Array | None = None,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, num_beams: int = 4,
             length_penalty: float = 1.0) -> jax.Array:
    """Decode from encoder states [B, S, D] (mask [B, S] or None) -> int32 tokens [B, max_new_tokens].

    ``params`` is the T5 params tree, or its :func:`decoder_weights` when decoding many times with the same
    weights (the same tokens, without re-laying-out the decoder on every call)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if encoder_states.ndim != 3 or encoder_states.shape[-1] != cfg.d_model:
        raise ValueError(f"encoder_states must be [batch, length, d_model={cfg.d_model}], "
                         f"got shape {tuple(encoder_states.shape)}")
    if encoder_mask is not None and tuple(encoder_mask.shape) != tuple(encoder_states.shape[:2]):
        raise ValueError(f"encoder_mask shape {tuple(encoder_mask.shape)} does not match encoder_states "
                         f"{tuple(encoder_states.shape[:2])}")
    w = _check_weights(decoder_weights(params, cfg), cfg)
    if method == "beam":
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        return _beam_loop(w, cfg, encoder_states, encoder_mask, max_new_tokens, num_beams, length_penalty)
    if method == "sample":
        if key is None:
            raise ValueError("method='sample' needs a PRNG key (key=jax.random.key(seed))")
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    else:
        key = jax.random.key(0)  # unused by greedy; keeps one signature for the compiled loop
    return _sample_loop(w, cfg, encoder_states, encoder_mask, max_new_tokens, method, key,
                        temperature, top_k, top_p)
