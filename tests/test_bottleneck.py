"""The bottleneck: pooling variants (padding respected), latent decoder, MMD estimators, schedule."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5vae as tv
from t5vae import bottleneck, specs

T5 = tv.preset("tiny")


def _bottleneck(cfg, seed=0):
    return specs.init(bottleneck.param_specs(cfg), jax.random.key(seed), "float32")


def _cfg(pooling, **kw):
    return tv.Config(t5=T5, n_latent_tokens=3, latent_size=8, pooling=pooling, **kw)


def test_segment_weights_match_numpy_reference():
    mask = np.array([[1, 1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0, 0], [1] * 7], bool)
    w = np.asarray(bottleneck.segment_weights(jnp.asarray(mask), 3))
    for b, row in enumerate(mask):
        m = row.sum()
        for j in range(3):
            lo, hi = int(np.floor(j * m / 3)), int(np.ceil((j + 1) * m / 3))
            want = np.zeros(7)
            want[lo:hi] = 1.0 / (hi - lo)
            np.testing.assert_allclose(w[b, j], want, atol=1e-6)
    assert np.all(w[:, :, ~mask.any(0)] == 0)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_pooling_ignores_padding(pooling):
    cfg = _cfg(pooling)
    p = _bottleneck(cfg)
    h = jax.random.normal(jax.random.key(1), (2, 6, T5.d_model))
    mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
    h2 = h.at[0, 4:].set(100.0)  # garbage in the padded positions
    z1 = bottleneck.latent_encode(p["latent_encoder"], cfg, h, mask)
    z2 = bottleneck.latent_encode(p["latent_encoder"], cfg, h2, mask)
    np.testing.assert_allclose(z1[0], z2[0], atol=1e-5)
    # without the mask the garbage leaks in: the test can fail
    z3 = bottleneck.latent_encode(p["latent_encoder"], cfg, h2, None)
    assert not np.allclose(z1[0], z3[0], atol=1e-3)
    assert z1.shape == (2, 3, 8) and np.all(np.abs(z1) < 1)


def test_first_pooling_takes_first_positions():
    cfg = _cfg("first")
    p = _bottleneck(cfg)["latent_encoder"]
    h = jax.random.normal(jax.random.key(1), (2, 6, T5.d_model))
    z = bottleneck.latent_encode(p, cfg, h, None)
    want = np.tanh(np.asarray(h[:, :3]) @ np.asarray(p["kernel"]) + np.asarray(p["bias"]))
    np.testing.assert_allclose(z, want, atol=1e-5)
    with pytest.raises(ValueError, match="at least"):
        bottleneck.latent_encode(p, cfg, h[:, :2], None)


def test_latent_decoder_is_dense_then_rms_norm():
    cfg = _cfg("mean")
    p = _bottleneck(cfg)["latent_decoder"]
    p = {**p, "norm": jnp.linspace(0.5, 1.5, T5.d_model)}
    z = jax.random.uniform(jax.random.key(2), (2, 3, 8), minval=-1, maxval=1)
    x = np.asarray(z) @ np.asarray(p["kernel"]) + np.asarray(p["bias"])
    want = x / np.sqrt(np.mean(x**2, -1, keepdims=True) + T5.layer_norm_epsilon) * np.asarray(p["norm"])
    np.testing.assert_allclose(bottleneck.latent_decode(p, cfg, z), want, rtol=1e-5, atol=1e-5)


def _mmd_ref(x, y, h, unbiased):
    k = lambda a, b: np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / h)  # noqa: E731
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    if unbiased:
        n, m = len(x), len(y)
        return (
            (kxx.sum() - np.trace(kxx)) / (n * (n - 1))
            + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return kxx.mean() + kyy.mean() - 2 * kxy.mean()


@pytest.mark.parametrize("unbiased", [False, True])
def test_mmd_matches_reference(unbiased):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 5)), rng.normal(1.0, 1.0, size=(9, 5))
    got = bottleneck.mmd(jnp.asarray(x), jnp.asarray(y), 5.0, unbiased)
    np.testing.assert_allclose(got, _mmd_ref(x, y, 5.0, unbiased), rtol=1e-4, atol=1e-6)


def test_unbiased_mmd_is_centred_and_biased_is_not():
    rng = np.random.default_rng(1)
    draws = [(rng.normal(size=(16, 4)), rng.normal(size=(16, 4))) for _ in range(40)]
    biased = np.mean([float(bottleneck.mmd(jnp.asarray(a), jnp.asarray(b), 4.0, False)) for a, b in draws])
    unbiased = np.mean([float(bottleneck.mmd(jnp.asarray(a), jnp.asarray(b), 4.0, True)) for a, b in draws])
    assert abs(unbiased) < 0.3 * biased
    shifted = float(bottleneck.mmd(jnp.asarray(draws[0][0] + 2.0), jnp.asarray(draws[0][1]), 4.0, True))
    assert shifted > 10 * abs(unbiased)


def test_schedule_is_the_original_sigmoid():
    cfg = _cfg("mean")
    np.testing.assert_allclose(bottleneck.mmd_weight(cfg, 0), 1 / (1 + np.exp(6.25)), rtol=1e-5)
    np.testing.assert_allclose(bottleneck.mmd_weight(cfg, 2500), 0.5, rtol=1e-6)
    assert float(bottleneck.mmd_weight(cfg, 10_000)) > 0.999
