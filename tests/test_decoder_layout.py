"""The decoder laid out for decoding (t5vae.decoder_layout): its step gives the plain step's logits and cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5vae as tv
from t5vae import decoder_layout, decoding, layers


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.parametrize("name", ["tiny", "tiny-v1.1", "tiny-per-layer"])
def test_layout_step_matches_the_plain_step(name):
    """Three decode steps on DecoderWeights give the plain step's logits, cache by cache (per-layer position
    tables: each layer's own, as initialised, so they differ)."""
    cfg = (
        tv.preset("tiny")
        if name == "tiny"
        else tv.preset("tiny", feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    )
    cfg = cfg.replace(relative_attention_per_layer=name.endswith("per-layer"))
    params = tv.t5.init(cfg, jax.random.key(0))
    enc = jax.random.normal(jax.random.key(1), (2, 5, cfg.d_model))
    mask = jnp.asarray(np.array([[1] * 5, [1, 1, 1, 0, 0]], bool))[:, None, :]
    w = decoder_layout.decoder_weights(params, cfg)
    fast = (decoder_layout.layout_cross_kv(w, cfg, enc), decoder_layout.layout_cache(cfg, 2, 4))
    plain = (decoding._cross_kv(params, cfg, enc), decoding._cache(cfg, 2, 4))
    tok = jnp.array([0, 0], jnp.int32)
    for t in range(3):
        lf, cache_f = decoder_layout.layout_step(w, cfg, fast[0], tok, jnp.int32(t), fast[1], mask)
        lp, cache_p = decoding._step(params, cfg, plain[0], tok, jnp.int32(t), plain[1], mask)
        assert _rel(lf, lp) < 1e-5
        fast, plain = (fast[0], cache_f), (plain[0], cache_p)
        tok = layers.argmax(lp)
