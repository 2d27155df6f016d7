"""Autoregressive decoding with a KV cache, as one compiled ``lax.while_loop``: greedy, sampling, beam.

``generate`` works from encoder states (a T5 encoder's, or the T5-VAE's decoded latent tokens): the
cross-attention keys/values are projected once per call, each step runs one token through the decoder
layers and writes its self-attention keys/values into a fixed-size cache. The loop stops early once every
row (every beam) has produced EOS. Output: int32 tokens [B, max_new_tokens], without the decoder start
token, pad (``cfg.pad_token_id``) after EOS. The plain step scans the stacked params; with the
"decoder_layout" fast path it runs on ``decoder_layout.DecoderWeights``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t5vae import decoder_layout, kernels, layers
from t5vae.config import T5Config
from t5vae.decoder_layout import DecoderWeights, decoder_weights  # noqa: F401  (decoding's public names)
from t5vae.names import DEFAULT_BEAMS, METHODS

# -- the plain step: a scan over the stacked decoder layers ---------------------------------------------


def _cross_kv(params: dict, cfg: T5Config, enc_BSD: jax.Array):
    """Cross-attention keys and values of every layer, stacked: ([L, B, H, S, K], [L, B, H, S, K])."""
    ca = params["decoder"]["layers"]["cross_attn"]
    enc = enc_BSD.astype(cfg.dtype)
    return tuple(jnp.einsum("BSD,LDHK->LBHSK", enc, ca[n].astype(cfg.dtype)) for n in ("k", "v"))


def _cache(cfg: T5Config, batch: int, length: int):
    """Empty self-attention cache: keys and values [L, B, H, T, K] in the compute dtype."""
    shape = (cfg.num_decoder_layers, batch, cfg.num_heads, length, cfg.d_kv)
    return jnp.zeros(shape, cfg.dtype), jnp.zeros(shape, cfg.dtype)


def _step(params: dict, cfg: T5Config, cross_kv, tok_B: jax.Array, t: jax.Array, cache, cross_mask_B1S):
    """One decoder position: token ids [B] at position ``t`` -> (float32 logits [B, V], updated cache)."""
    dt, eps, T = cfg.dtype, cfg.layer_norm_epsilon, cache[0].shape[3]
    dec = params["decoder"]
    x = jnp.take(params["shared"]["embedding"], tok_B, axis=0).astype(dt)  # [B, D]
    bias_at = functools.partial(
        layers.position_bias_at, k_len=T, q_pos=t, max_distance=cfg.relative_attention_max_distance
    )
    shared_1HT = None if cfg.relative_attention_per_layer else bias_at(dec["relpos_bias"])
    self_mask_11T = (jnp.arange(T) <= t)[None, None, :]
    proj = lambda h, w: jnp.einsum("BD,DHK->BHK", h, w.astype(dt))  # noqa: E731
    out = lambda a, w: a @ w.astype(dt).reshape(-1, cfg.d_model)  # noqa: E731

    def layer(x, inputs):
        lp, ck, cv, xk, xv = inputs
        sa, ca = lp["self_attn"], lp["cross_attn"]
        h = layers.rms_norm(x, lp["self_attn_norm"], eps)
        ck = jax.lax.dynamic_update_slice_in_dim(ck, proj(h, sa["k"])[:, :, None, :], t, axis=2)
        cv = jax.lax.dynamic_update_slice_in_dim(cv, proj(h, sa["v"])[:, :, None, :], t, axis=2)
        bias_1HT = bias_at(lp["relpos_bias"]) if shared_1HT is None else shared_1HT
        x = x + out(layers.attend_one(proj(h, sa["q"]), ck, cv, bias_1HT, self_mask_11T), sa["o"])
        h = layers.rms_norm(x, lp["cross_attn_norm"], eps)
        x = x + out(layers.attend_one(proj(h, ca["q"]), xk, xv, None, cross_mask_B1S), ca["o"])
        h = layers.rms_norm(x, lp["mlp_norm"], eps)
        x = x + layers.mlp(lp["mlp"], h[:, None], cfg.activation)[:, 0]
        return x, (ck, cv)

    x, cache = jax.lax.scan(layer, x, (dec["layers"], *cache, *cross_kv))
    x = layers.rms_norm(x, dec["final_norm"], eps)
    if cfg.tie_word_embeddings:  # v1.0 scales the hidden states before the tied head
        return jnp.dot(
            x * cfg.d_model**-0.5,
            params["shared"]["embedding"].T.astype(dt),
            preferred_element_type=jnp.float32,
        ), cache
    return jnp.dot(x, params["lm_head"].astype(dt), preferred_element_type=jnp.float32), cache


def _decoder(w, cfg: T5Config):
    """(cross_kv, cache, step, the cache's batch axis) for plain params or DecoderWeights."""
    if isinstance(w, DecoderWeights):
        return decoder_layout.layout_cross_kv, decoder_layout.layout_cache, decoder_layout.layout_step, 0
    return _cross_kv, _cache, _step, 1


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


def effective_vocab_limit(vocab_limit: int | None, vocab_size: int) -> int | None:
    """``vocab_limit``, or None when it masks nothing (so callers compile one loop either way)."""
    return None if vocab_limit is None or vocab_limit >= vocab_size else vocab_limit


def _known_only(logits_BV: jax.Array, vocab_limit: int | None) -> jax.Array:
    """Logits of ids at or past ``vocab_limit`` (embedding rows the tokenizer has no piece for) set to -inf."""
    if vocab_limit is None or vocab_limit >= logits_BV.shape[-1]:
        return logits_BV
    return jnp.where(jnp.arange(logits_BV.shape[-1]) < vocab_limit, logits_BV, -jnp.inf)


@functools.partial(jax.jit, static_argnames=("cfg", "max_new_tokens", "method", "top_k", "vocab_limit"))
def _sample_loop(w, cfg, enc, enc_mask, max_new_tokens, method, key, temperature, top_k, top_p, vocab_limit):
    B = enc.shape[0]
    cross_kv_of, cache_of, step, _ = _decoder(w, cfg)
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    cross_kv = cross_kv_of(w, cfg, enc)
    out = jnp.full((B, max_new_tokens), cfg.pad_token_id, jnp.int32)
    tok = jnp.full((B,), cfg.decoder_start_token_id, jnp.int32)
    state = (jnp.int32(0), tok, out, cache_of(cfg, B, max_new_tokens), jnp.zeros((B,), bool), key)

    def cond(s):
        t, _, _, _, done, _ = s
        return (t < max_new_tokens) & ~jnp.all(done)

    def body(s):
        t, tok, out, cache, done, key = s
        logits, cache = step(w, cfg, cross_kv, tok, t, cache, cross_mask)
        logits = _known_only(logits, vocab_limit)
        if method == "greedy":
            nxt = layers.argmax(logits)
        else:
            key, sub = jax.random.split(key)
            nxt = jax.random.categorical(sub, _filter_logits(logits, temperature, top_k, top_p)).astype(
                jnp.int32
            )
        nxt = jnp.where(done, cfg.pad_token_id, nxt)
        out = jax.lax.dynamic_update_slice_in_dim(out, nxt[:, None], t, axis=1)
        return t + 1, nxt, out, cache, done | (nxt == cfg.eos_token_id), key

    return jax.lax.while_loop(cond, body, state)[2]


@functools.partial(
    jax.jit, static_argnames=("cfg", "max_new_tokens", "num_beams", "vocab_limit", "all_beams")
)
def _beam_loop(w, cfg, enc, enc_mask, max_new_tokens, num_beams, length_penalty, vocab_limit, all_beams):
    """Beam search. Hypotheses are ranked by sum log p / length**length_penalty (the Hugging Face rule);
    a finished beam keeps its score and competes with the live ones until the loop ends. The best one
    [B, T], or with ``all_beams`` every one, best first [B, W, T]."""
    B, W, T, V = enc.shape[0], num_beams, max_new_tokens, cfg.vocab_size
    cross_kv_of, cache_of, step, batch_axis = _decoder(w, cfg)
    rep = lambda x: None if x is None else jnp.repeat(x, W, axis=0)  # noqa: E731  [B*W, ...]
    enc_mask = rep(enc_mask)
    cross_mask = None if enc_mask is None else enc_mask.astype(bool)[:, None, :]
    cross_kv = cross_kv_of(w, cfg, rep(enc))
    # only the first beam is live at the start, so the W beams do not all pick the same token
    logp = jnp.tile(jnp.where(jnp.arange(W) == 0, 0.0, -jnp.inf), (B, 1))
    state = (
        jnp.int32(0),
        jnp.full((B * W,), cfg.decoder_start_token_id, jnp.int32),
        jnp.full((B, W, T), cfg.pad_token_id, jnp.int32),
        cache_of(cfg, B * W, T),
        logp,
        jnp.zeros((B, W), bool),
        jnp.zeros((B, W), jnp.int32),
    )

    def score(logp, length):
        return logp / jnp.maximum(length, 1).astype(jnp.float32) ** length_penalty

    def cond(s):
        return (s[0] < T) & ~jnp.all(s[5])

    def body(s):
        t, tok, seqs, cache, logp, done, length = s
        logits, cache = step(w, cfg, cross_kv, tok, t, cache, cross_mask)
        logits = _known_only(logits, vocab_limit)
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
        cache = jax.tree.map(lambda c: jnp.take(c, flat, axis=batch_axis), cache)
        length = jnp.where(was_done, gather(length), t + 1)
        done = was_done | (nxt == cfg.eos_token_id)
        return t + 1, nxt.reshape(-1), seqs, cache, new_logp, done, length

    _, _, seqs, _, logp, _, length = jax.lax.while_loop(cond, body, state)
    if all_beams:
        order = jnp.argsort(-score(logp, length), axis=1, stable=True)
        return jnp.take_along_axis(seqs, order[..., None], axis=1)
    best = jnp.argmax(score(logp, length), axis=1)
    return jnp.take_along_axis(seqs, best[:, None, None], axis=1)[:, 0]


def generate(
    params: dict | DecoderWeights,
    cfg: T5Config,
    encoder_states: jax.Array,
    encoder_mask: jax.Array | None,
    max_new_tokens: int,
    method: str = "greedy",
    key: jax.Array | None = None,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    num_beams: int = DEFAULT_BEAMS,
    length_penalty: float = 1.0,
    decoder_weights: DecoderWeights | None = None,  # noqa: F811
    vocab_limit: int | None = None,
    all_beams: bool = False,
) -> jax.Array:
    """Decode from encoder states [B, S, D] (mask [B, S] or None) -> int32 tokens [B, max_new_tokens]
    (``method="beam"`` with ``all_beams``: every beam, best first, [B, num_beams, max_new_tokens]).

    ``params``: the T5 params tree. ``decoder_weights``: ``decoder_weights(params, cfg)`` built once
    for many calls (the same tokens; used in place of ``params``); without them, the "decoder_layout" fast
    path lays the weights out on every call, and the plain path decodes on the stacked params.
    ``vocab_limit``: only ids below it are ever produced (pass the tokenizer's size: T5 checkpoints have more
    embedding rows than pieces, 32128 vs 32100)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if encoder_states.ndim != 3 or encoder_states.shape[-1] != cfg.d_model:
        raise ValueError(
            f"encoder_states must be [batch, length, d_model={cfg.d_model}], "
            f"got shape {tuple(encoder_states.shape)}"
        )
    if vocab_limit is not None and (not isinstance(vocab_limit, int) or not 2 < vocab_limit):
        raise ValueError(
            f"vocab_limit must be an int above 2 (pad, eos and unk are ids 0-2), got {vocab_limit!r}"
        )
    if encoder_mask is not None and tuple(encoder_mask.shape) != tuple(encoder_states.shape[:2]):
        raise ValueError(
            f"encoder_mask shape {tuple(encoder_mask.shape)} does not match encoder_states "
            f"{tuple(encoder_states.shape[:2])}"
        )
    vocab_limit = effective_vocab_limit(vocab_limit, cfg.vocab_size)
    w = params if decoder_weights is None else decoder_weights
    if isinstance(w, DecoderWeights) or kernels.ops(cfg).decoder_layout:
        w = decoder_layout.check_decoder_weights(decoder_layout.decoder_weights(w, cfg), cfg)
    elif not isinstance(w, dict) or not {"shared", "decoder"} <= w.keys():
        got = sorted(w) if isinstance(w, dict) else type(w).__name__
        raise ValueError(
            f"generate needs a T5 params tree (keys 'shared', 'decoder', ...), got {got}"
            + (" (a T5-VAE's tree? pass its params['t5'])" if "t5" in got else "")
        )
    if method == "beam":
        if num_beams < 1:
            raise ValueError(f"num_beams must be >= 1, got {num_beams}")
        beam = (max_new_tokens, num_beams, length_penalty, vocab_limit, bool(all_beams))
        return _beam_loop(w, cfg, encoder_states, encoder_mask, *beam)
    if all_beams:
        raise ValueError(f"all_beams is for method='beam', got method={method!r}")
    if method == "sample":
        if key is None:
            raise ValueError("method='sample' needs a PRNG key (key=jax.random.key(seed))")
        if temperature <= 0 or not 0 < top_p <= 1 or top_k < 0:
            raise ValueError(
                f"need temperature > 0, 0 < top_p <= 1, top_k >= 0; got {temperature}, {top_p}, {top_k}"
            )
    else:
        key = jax.random.key(0)  # unused by greedy; keeps one signature for the compiled loop
    sampling = (max_new_tokens, method, key, temperature, top_k, top_p, vocab_limit)
    return _sample_loop(w, cfg, encoder_states, encoder_mask, *sampling)
