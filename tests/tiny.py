"""Tiny T5 backbones and inputs shared by test_t5, test_decoding and test_checkpoint."""

import jax.numpy as jnp
import numpy as np

import t5vae as tv

V10 = tv.T5Config(
    vocab_size=7,
    d_model=16,
    d_kv=6,
    d_ff=24,
    num_layers=2,
    num_decoder_layers=3,
    num_heads=3,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=12,
    dropout_rate=0.0,
)
V11 = V10.replace(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=11)


def batch(cfg, B=3, L=6, seed=0):
    """Token ids [B, L] and a mask with two padded rows (row 1 from position 4, rows 2.. from position 2)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.vocab_size, size=(B, L))
    mask = np.ones((B, L), bool)
    mask[1, 4:] = False
    mask[2:, 2:] = False
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def per_layer(cfg, params, jitter: float = 0.0, seed: int = 0):
    """(cfg, params) with ``relative_attention_per_layer``: every layer gets its stack's table, plus
    ``jitter`` times Gaussian noise drawn per layer (0: all layers' tables equal the shared one)."""
    rng = np.random.default_rng(seed)
    cfg = cfg.replace(relative_attention_per_layer=True)
    out = {**params}
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        st = {k: v for k, v in params[stack].items() if k != "relpos_bias"}
        table = np.broadcast_to(
            np.asarray(params[stack]["relpos_bias"]), (n, *params[stack]["relpos_bias"].shape)
        )
        table = table + jitter * rng.standard_normal(table.shape).astype(np.float32)
        st["layers"] = {**st["layers"], "relpos_bias": jnp.asarray(table, params[stack]["relpos_bias"].dtype)}
        out[stack] = st
    return cfg, out
