"""Autoregressive decoding with a KV cache, as one compiled ``lax.while_loop``.

``generate`` works from encoder states (a T5 encoder's, or the T5-VAE's decoded latent tokens): the
cross-attention keys/values are projected once, each step runs one token through the decoder stack
(``scan`` over layers) and writes its self-attention keys/values into a fixed-size cache. The loop stops
early once every row (every beam) has produced EOS. Output: int32 tokens [B, max_new_tokens], without the
decoder start token, pad (``cfg.pad_token_id``) after EOS.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t5vae import layers
from t5vae.config import T5Config

METHODS = ("greedy", "sample", "beam")


def prepare(params: dict, cfg: T5Config, enc_BSD: jax.Array) -> dict:
    """Decoding weights, once per call: per layer 2-D matrices in the compute dtype stored output-major
    ([out, in], so each step computes ``W @ h.T``), the cross-attention keys/values [B, H, S, K] of the
    encoder states, and the LM head as [V, D].

    Inside the loop every operand is then used as it lies: slicing a stacked [L, ...] weight in a ``scan``
    copies it on every step, which doubles the memory traffic of a memory-bound decode. And with a few
    rows, ``W[out, in] @ h.T`` streams the weights 1.3-4x faster on XLA's CPU backend than ``h @ W[in, out]``
    (t5-small shapes, batch 8; benchmarks/NOTES.md).
    """
    D, H, K, dt = cfg.d_model, cfg.num_heads, cfg.d_kv, cfg.dtype
    stack = params["decoder"]["layers"]
    enc = enc_BSD.astype(dt)
    t = lambda w_IO: w_IO.T  # noqa: E731  [in, out] -> output-major [out, in]
    layers_out = []
    for i in range(cfg.num_decoder_layers):
        lp = jax.tree.map(lambda a: a[i].astype(dt), stack)
        sa, ca, mlp = lp["self_attn"], lp["cross_attn"], lp["mlp"]
        ck, cv = (jnp.einsum("BSD,DHK->BHSK", enc, ca[n]) for n in ("k", "v"))
        wi = [mlp["wi"]] if "wi" in mlp else [mlp["wi_0"], mlp["wi_1"]]
        layers_out.append({
            "self_norm": lp["self_attn_norm"], "cross_norm": lp["cross_attn_norm"], "mlp_norm": lp["mlp_norm"],
            "qkv": t(jnp.concatenate([sa[n].reshape(D, H * K) for n in ("q", "k", "v")], axis=1)),
            "o": t(sa["o"].reshape(H * K, D)), "cross_q": t(ca["q"].reshape(D, H * K)),
            "cross_o": t(ca["o"].reshape(H * K, D)), "cross_k": ck, "cross_v": cv,
            "wi": t(jnp.concatenate(wi, axis=1)), "wo": t(mlp["wo"])})
    if cfg.tie_word_embeddings:  # v1.0: the embedding [V, D] is already output-major; fold in d_model**-0.5
        head, head_scale = params["shared"]["embedding"].astype(dt), cfg.d_model ** -0.5
    else:
        head, head_scale = t(params["lm_head"].astype(dt)), 1.0
    return {"layers": layers_out, "head": head, "head_scale": head_scale}


def _mv(h_BI: jax.Array, w_OI: jax.Array) -> jax.Array:
    """``h @ w.T`` for a few rows h [B, in] and an output-major weight [out, in] -> [B, out].

    Computed as ``w @ h.T`` -> [out, B]; the barrier stops XLA from folding the final (tiny) transpose into
    the dot, which would turn it back into the slow ``h @ w.T`` form."""
    return jax.lax.optimization_barrier(w_OI @ h_BI.T).T


def _mlp_one(lp: dict, cfg: T5Config, h_BD: jax.Array) -> jax.Array:
    """The T5 feed-forward for single positions with output-major weights (wi_0|wi_1 fused when gated)."""
    a = _mv(h_BD, lp["wi"])
    a, b = jnp.split(a, 2, axis=1) if cfg.is_gated else (a, None)
    return _mv(layers._mlp_hidden(cfg.activation, 0.0, a, b, None), lp["wo"])


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


def decode_step(params: dict, cfg: T5Config, prepared: dict, tok_B: jax.Array, t: jax.Array, cache: list,
                cross_mask_B1S: jax.Array | None):
    """One decoder position: token ids [B] at position ``t`` -> (float32 logits [B, V], updated cache)."""
    B, H, K, eps = tok_B.shape[0], cfg.num_heads, cfg.d_kv, cfg.layer_norm_epsilon
    T = cache[0][0].shape[2]
    x = jnp.take(params["shared"]["embedding"], tok_B, axis=0).astype(cfg.dtype)  # [B, D]
    bias_1HT = layers.position_bias(params["decoder"]["relpos_bias"], 1, T, False,
                                    cfg.relative_attention_max_distance, q_offset=t)[:, :, 0, :]
    self_mask_11T = (jnp.arange(T) <= t)[None, None, :]
    new_cache = []
    for lp, (ck, cv) in zip(prepared["layers"], cache):
        h = layers.rms_norm(x, lp["self_norm"], eps)
        q, k, v = jnp.split(_mv(h, lp["qkv"]).reshape(B, 3 * H, K), 3, axis=1)
        ck = jax.lax.dynamic_update_slice_in_dim(ck, k[:, :, None, :], t, axis=2)
        cv = jax.lax.dynamic_update_slice_in_dim(cv, v[:, :, None, :], t, axis=2)
        new_cache.append((ck, cv))
        x = x + _mv(_attend_one(q, ck, cv, bias_1HT, self_mask_11T), lp["o"])
        h = layers.rms_norm(x, lp["cross_norm"], eps)
        q = _mv(h, lp["cross_q"]).reshape(B, H, K)
        x = x + _mv(_attend_one(q, lp["cross_k"], lp["cross_v"], None, cross_mask_B1S), lp["cross_o"])
        h = layers.rms_norm(x, lp["mlp_norm"], eps)
        x = x + _mlp_one(lp, cfg, h)
    x = layers.rms_norm(x, params["decoder"]["final_norm"], eps)
    logits_VB = jnp.dot(prepared["head"], (x * prepared["head_scale"]).T, preferred_element_type=jnp.float32)
    return jax.lax.optimization_barrier(logits_VB).T, new_cache


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
def _sample_loop(params, cfg, enc, enc_mask, max_new_tokens, method, key, temperature, top_k, top_p):
    B = enc.shape[0]
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    prepared = prepare(params, cfg, enc)
    out = jnp.full((B, max_new_tokens), cfg.pad_token_id, jnp.int32)
    tok = jnp.full((B,), cfg.decoder_start_token_id, jnp.int32)
    state = (jnp.int32(0), tok, out, init_cache(cfg, B, max_new_tokens), jnp.zeros((B,), bool), key)

    def cond(s):
        t, _, _, _, done, _ = s
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(s):
        t, tok, out, cache, done, key = s
        logits, cache = decode_step(params, cfg, prepared, tok, t, cache, cross_mask)
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
def _beam_loop(params, cfg, enc, enc_mask, max_new_tokens, num_beams, length_penalty):
    """Beam search. Hypotheses are ranked by sum log p / length**length_penalty (the Hugging Face rule);
    a finished beam keeps its score and competes with the live ones until the loop ends."""
    B, W, T, V = enc.shape[0], num_beams, max_new_tokens, cfg.vocab_size
    rep = lambda x: None if x is None else jnp.repeat(x, W, axis=0)  # noqa: E731  [B*W, ...]
    enc_mask = rep(enc_mask)
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    prepared = prepare(params, cfg, rep(enc))
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
        logits, cache = decode_step(params, cfg, prepared, tok, t, cache, cross_mask)
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


def generate(params: dict, cfg: T5Config, encoder_states: jax.Array, encoder_mask: jax.Array | None,
             max_new_tokens: int, method: str = "greedy", key: jax.Array | None = None, temperature: float = 1.0,
             top_k: int = 0, top_p: float = 1.0, num_beams: int = 4, length_penalty: float = 1.0) -> jax.Array:
    """Decode from encoder states [B, S, D] (mask [B, S] or None) -> int32 tokens [B, max_new_tokens]."""
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
    if method == "beam":
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        return _beam_loop(params, cfg, encoder_states, encoder_mask, max_new_tokens, num_beams, length_penalty)
    if method == "sample":
        if key is None:
            raise ValueError("method='sample' needs a PRNG key (key=jax.random.key(seed))")
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}")
    else:
        key = jax.random.key(0)  # unused by greedy; keeps one signature for the compiled loop
    return _sample_loop(params, cfg, encoder_states, encoder_mask, max_new_tokens, method, key,
                        temperature, top_k, top_p)
