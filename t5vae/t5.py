"""The T5 backbone: one param spec tree drives init, shardings and conversion; encode/decode are pure.

Params tree (L = num_layers, Ld = num_decoder_layers; layers stacked on a leading axis, run with scan)::

    shared/embedding                    [V, D]         ("vocab", "embed")
    encoder/relpos_bias                 [R, H]         ("relpos_buckets", "heads")
    encoder/layers/attn_norm            [L, D]
    encoder/layers/attn/{q,k,v}         [L, D, H, K]   ("layers", "embed", "heads", "kv")
    encoder/layers/attn/o               [L, H, K, D]
    encoder/layers/mlp_norm             [L, D]
    encoder/layers/mlp/wi | wi_0, wi_1  [L, D, F]      ("layers", "embed", "mlp")
    encoder/layers/mlp/wo               [L, F, D]
    encoder/final_norm                  [D]
    decoder/relpos_bias                 [R, H]
    decoder/layers/{self_attn_norm, cross_attn_norm, mlp_norm}   [Ld, D]
    decoder/layers/{self_attn, cross_attn}/{q,k,v,o}, decoder/layers/mlp/...  as in the encoder
    decoder/final_norm                  [D]
    lm_head                             [D, V]         only when tie_word_embeddings is False

With ``relative_attention_per_layer`` each layer has its own table, ``{encoder,decoder}/layers/relpos_bias``
[L, R, H] ("layers", "relpos_buckets", "heads"), in place of the stack's shared ``relpos_bias``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from t5vae import decoding, kernels, layers, specs, stack
from t5vae.config import T5Config
from t5vae.specs import ParamSpec, normal, ones


def _attn_specs(cfg: T5Config, n: int) -> dict:
    D, H, K = cfg.d_model, cfg.num_heads, cfg.d_kv
    w, o = ("layers", "embed", "heads", "kv"), ("layers", "heads", "kv", "embed")
    return {
        "q": ParamSpec((n, D, H, K), w, normal((D * K) ** -0.5)),
        "k": ParamSpec((n, D, H, K), w, normal(D**-0.5)),
        "v": ParamSpec((n, D, H, K), w, normal(D**-0.5)),
        "o": ParamSpec((n, H, K, D), o, normal((H * K) ** -0.5)),
    }


def _mlp_specs(cfg: T5Config, n: int) -> dict:
    D, F = cfg.d_model, cfg.d_ff
    wi = ParamSpec((n, D, F), ("layers", "embed", "mlp"), normal(D**-0.5))
    specs = {"wi_0": wi, "wi_1": wi} if cfg.is_gated else {"wi": wi}
    specs["wo"] = ParamSpec((n, F, D), ("layers", "mlp", "embed"), normal(F**-0.5))
    return specs


def _norm(*lead: int) -> ParamSpec:
    return ParamSpec(lead, ("layers", "embed")[-len(lead) :], ones)


def param_specs(cfg: T5Config) -> dict:
    """The spec tree: ``ParamSpec(shape, logical axes, initializer)`` for every leaf (see module docstring)."""
    D, V, R, H = cfg.d_model, cfg.vocab_size, cfg.relative_attention_num_buckets, cfg.num_heads
    L, Ld = cfg.num_layers, cfg.num_decoder_layers
    specs = {
        "shared": {"embedding": ParamSpec((V, D), ("vocab", "embed"), normal(1.0))},
        "encoder": {
            "layers": {
                "attn_norm": _norm(L, D),
                "attn": _attn_specs(cfg, L),
                "mlp_norm": _norm(L, D),
                "mlp": _mlp_specs(cfg, L),
            },
            "final_norm": _norm(D),
        },
        "decoder": {
            "layers": {
                "self_attn_norm": _norm(Ld, D),
                "self_attn": _attn_specs(cfg, Ld),
                "cross_attn_norm": _norm(Ld, D),
                "cross_attn": _attn_specs(cfg, Ld),
                "mlp_norm": _norm(Ld, D),
                "mlp": _mlp_specs(cfg, Ld),
            },
            "final_norm": _norm(D),
        },
    }
    for name, n in (("encoder", L), ("decoder", Ld)):  # one table per stack, or one per layer
        if cfg.relative_attention_per_layer:
            specs[name]["layers"]["relpos_bias"] = ParamSpec(
                (n, R, H), ("layers", "relpos_buckets", "heads"), normal(D**-0.5)
            )
        else:
            specs[name]["relpos_bias"] = ParamSpec((R, H), ("relpos_buckets", "heads"), normal(D**-0.5))
    if not cfg.tie_word_embeddings:
        specs["lm_head"] = ParamSpec((D, V), ("embed", "vocab"), normal(D**-0.5))
    return specs


def abstract_params(cfg: T5Config) -> dict:
    """``jax.ShapeDtypeStruct`` per leaf: what a checkpoint must contain."""
    return specs.abstract(param_specs(cfg), cfg.param_dtype)


@functools.partial(jax.jit, static_argnums=0)
def init(cfg: T5Config, key: jax.Array) -> dict:
    """Random parameters in ``cfg.param_dtype`` with T5's initializer scales (one compiled program)."""
    return specs.init(param_specs(cfg), key, cfg.param_dtype)


# -- forward ---------------------------------------------------------------------------------------


def _embed(params: dict, cfg: T5Config, ids_BL: jax.Array) -> jax.Array:
    return jnp.take(params["shared"]["embedding"], ids_BL, axis=0).astype(cfg.dtype)


def encode(
    params: dict,
    cfg: T5Config,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Encoder hidden states [B, L, D] (after the final norm) for token ids [B, L] and a 0/1 mask [B, L]."""
    L = input_ids.shape[1]
    ops, rate, eps = kernels.ops(cfg), cfg.dropout_rate, cfg.layer_norm_epsilon
    mask = layers.Mask(attention_mask)
    bias_of = stack.bias_of(params["encoder"], cfg, L, True)
    key_outer, key_layers = stack.dropout_keys(dropout_key, cfg, cfg.num_layers)

    def block(x, lp_key):
        lp, key = lp_key
        k_probs, k_attn, k_hidden, k_mlp = stack.split(key, 4)
        x = stack.residual(
            ops,
            x,
            lp["attn_norm"],
            eps,
            rate,
            k_attn,
            lambda h: layers.attention(
                lp["attn"], h, h, bias_of(lp), mask, stack.drop(ops, rate, k_probs), ops.attend
            ),
        )
        x = stack.residual(
            ops,
            x,
            lp["mlp_norm"],
            eps,
            rate,
            k_mlp,
            lambda h: ops.mlp(lp["mlp"], h, cfg.activation, rate, k_hidden),
        )
        return stack.constrain(x), None

    return stack.run(
        ops,
        params["encoder"],
        block,
        _embed(params, cfg, input_ids),
        key_outer,
        key_layers,
        eps,
        rate,
        cfg.remat,
    )


def decoder_hidden(
    params: dict,
    cfg: T5Config,
    decoder_input_ids: jax.Array,
    encoder_states: jax.Array,
    attention_mask: jax.Array | None = None,
    decoder_attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Decoder hidden states [B, T, D] (after the final norm), causal self-attention + cross-attention."""
    T = decoder_input_ids.shape[1]
    ops, rate, eps = kernels.ops(cfg), cfg.dropout_rate, cfg.layer_norm_epsilon
    self_mask, cross_mask = layers.Mask(decoder_attention_mask, causal=True), layers.Mask(attention_mask)
    bias_of = stack.bias_of(params["decoder"], cfg, T, False)
    enc = encoder_states.astype(cfg.dtype)
    key_outer, key_layers = stack.dropout_keys(dropout_key, cfg, cfg.num_decoder_layers)

    def block(x, lp_key):
        lp, key = lp_key
        k_self, k_self_out, k_cross, k_cross_out, k_hidden, k_mlp = stack.split(key, 6)
        x = stack.residual(
            ops,
            x,
            lp["self_attn_norm"],
            eps,
            rate,
            k_self_out,
            lambda h: layers.attention(
                lp["self_attn"], h, h, bias_of(lp), self_mask, stack.drop(ops, rate, k_self), ops.attend
            ),
        )
        x = stack.residual(
            ops,
            x,
            lp["cross_attn_norm"],
            eps,
            rate,
            k_cross_out,
            lambda h: layers.attention(
                lp["cross_attn"], h, enc, None, cross_mask, stack.drop(ops, rate, k_cross), ops.attend
            ),
        )
        x = stack.residual(
            ops,
            x,
            lp["mlp_norm"],
            eps,
            rate,
            k_mlp,
            lambda h: ops.mlp(lp["mlp"], h, cfg.activation, rate, k_hidden),
        )
        return stack.constrain(x), None

    return stack.run(
        ops,
        params["decoder"],
        block,
        _embed(params, cfg, decoder_input_ids),
        key_outer,
        key_layers,
        eps,
        rate,
        cfg.remat,
    )


def _lm_head(params: dict, cfg: T5Config, x_BTD: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(scaled hidden states, LM-head weights [D, V]). v1.0 (tied) scales by d_model**-0.5 and reuses the embedding."""
    if cfg.tie_word_embeddings:
        return x_BTD * (cfg.d_model**-0.5), params["shared"]["embedding"].T
    return x_BTD, params["lm_head"]


def logits_from_hidden(params: dict, cfg: T5Config, x_BTD: jax.Array) -> jax.Array:
    """LM head -> float32 logits [B, T, V]."""
    x_BTD, w_DV = _lm_head(params, cfg, x_BTD)
    return jnp.einsum("BTD,DV->BTV", x_BTD, w_DV.astype(x_BTD.dtype), preferred_element_type=jnp.float32)


def token_nll(
    params: dict, cfg: T5Config, x_BTD: jax.Array, labels_BT: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-token negative log-likelihood [B, T] (float32) of ``labels`` and the greedy prediction [B, T] from
    decoder hidden states."""
    x_BTD, w_DV = _lm_head(params, cfg, x_BTD)
    return kernels.ops(cfg).lm_head_xent(x_BTD, w_DV, labels_BT)


def decode(
    params: dict,
    cfg: T5Config,
    decoder_input_ids: jax.Array,
    encoder_states: jax.Array,
    attention_mask: jax.Array | None = None,
    decoder_attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Teacher-forced logits [B, T, V] (float32) given encoder states [B, S, D] and their mask [B, S]."""
    x = decoder_hidden(
        params,
        cfg,
        decoder_input_ids,
        encoder_states,
        attention_mask,
        decoder_attention_mask,
        dropout_key=dropout_key,
    )
    return logits_from_hidden(params, cfg, x)


def apply_hidden(
    params: dict,
    cfg: T5Config,
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    decoder_input_ids: jax.Array,
    decoder_attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Encoder + decoder: decoder hidden states [B, T, D] (for :func:`token_nll` or :func:`logits_from_hidden`)."""
    k_enc, k_dec = (None, None) if dropout_key is None else jax.random.split(dropout_key)
    h = encode(params, cfg, input_ids, attention_mask, dropout_key=k_enc)
    return decoder_hidden(
        params, cfg, decoder_input_ids, h, attention_mask, decoder_attention_mask, dropout_key=k_dec
    )


def apply(
    params: dict,
    cfg: T5Config,
    input_ids: jax.Array,
    attention_mask: jax.Array | None,
    decoder_input_ids: jax.Array,
    decoder_attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Encoder + decoder: logits [B, T, V]."""
    return logits_from_hidden(
        params,
        cfg,
        apply_hidden(
            params,
            cfg,
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            dropout_key=dropout_key,
        ),
    )


def shift_right(labels: jax.Array, cfg: T5Config) -> jax.Array:
    """Decoder inputs from labels: prepend ``decoder_start_token_id``; -100 (ignored) becomes pad."""
    start = jnp.full(labels.shape[:-1] + (1,), cfg.decoder_start_token_id, labels.dtype)
    shifted = jnp.concatenate([start, labels[..., :-1]], axis=-1)
    return jnp.where(shifted == -100, cfg.pad_token_id, shifted)


def generate(
    params: dict,
    cfg: T5Config,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    max_new_tokens: int = 32,
    **kwargs,
) -> jax.Array:
    """Seq2seq generation with a KV cache -> int32 [B, max_new_tokens]; ``kwargs`` as in
    ``t5vae.decoding.generate`` (method, key, ..., ``decoder_weights`` built once for repeated calls)."""
    h = jax.jit(encode, static_argnums=1)(params, cfg, input_ids, attention_mask)
    return decoding.generate(params, cfg, h, attention_mask, max_new_tokens, **kwargs)
