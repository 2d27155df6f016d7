"""Each fast path of t5vae.kernels against its plain twin, and the one switch that chooses them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5vae as tv
from t5vae import kernels, layers
from t5vae.config import CPU_PATHS, FAST_PATHS


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


# -- the switch ----------------------------------------------------------------------------------------


def test_switch_names_the_fast_paths():
    assert kernels.enabled("plain") == frozenset()
    assert kernels.enabled("cpu") == frozenset(CPU_PATHS) == frozenset(FAST_PATHS) - {"dpa"}
    assert kernels.enabled("dropout+xent") == {"dropout", "xent"}
    assert jax.default_backend() == "cpu"  # conftest: the tests run on CPU, where "auto" means AUTO["cpu"]
    assert kernels.enabled("auto") == kernels.AUTO["cpu"]
    # on a GPU nothing was measured faster than XLA's plain ops (dpa was slower on the H200): auto there is plain
    assert set(kernels.AUTO) == {"cpu", "gpu"} and kernels.AUTO["gpu"] == frozenset()
    assert "dpa" not in kernels.AUTO["cpu"]
    assert kernels.ops(tv.T5Config(kernels="dpa")).attend is kernels.dpa_attend
    assert kernels.ops(tv.T5Config(kernels="cpu")).attend is layers.attend
    plain, fast = kernels.ops(tv.T5Config(kernels="plain")), kernels.ops(tv.T5Config(kernels="cpu"))
    assert (
        plain.dropout is layers.dropout
        and plain.lm_head_xent is layers.lm_head_xent
        and not plain.decoder_layout
    )
    assert (
        fast.dropout is kernels.hash_dropout
        and fast.lm_head_xent is kernels.lm_head_xent
        and fast.decoder_layout
    )
    for bad in ("gpu", "dropout+typo", "", "auto+cpu", "argmax"):  # argmax: measured slower here, removed
        with pytest.raises(ValueError, match="T5Config.kernels"):
            tv.T5Config(kernels=bad)


def test_kernels_is_a_run_time_field():
    """Like dtype and remat, it is not written to a Hugging Face config.json."""
    assert "kernels" not in tv.T5Config(kernels="plain").to_hf_dict()
    assert tv.T5Config.from_dict({"kernels": "plain", "model_type": "t5"}, hf=True).kernels == "auto"


# -- dropout -------------------------------------------------------------------------------------------


def test_hash_dropout_keep_rate_scale_and_determinism():
    x = jnp.ones((200, 100), jnp.float32)
    assert kernels.hash_dropout(x, 0.3, None) is x and kernels.hash_dropout(x, 0.0, jax.random.key(0)) is x
    y = np.asarray(kernels.hash_dropout(x, 0.3, jax.random.key(0)))
    plain = np.asarray(layers.dropout(x, 0.3, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.015 and abs(kept.mean() - (plain != 0).mean()) < 0.02  # the twin's rate
    t = kernels.keep_threshold(0.3)
    assert t == round(0.7 * 2**32)
    np.testing.assert_allclose(y[kept], 2**32 / t, rtol=1e-6)  # keep prob t / 2**32: unbiased
    again = jax.jit(kernels.hash_dropout, static_argnums=1)(x, 0.3, jax.random.key(0))
    np.testing.assert_array_equal(y, np.asarray(again))  # deterministic for a key, jitted or not
    assert not np.array_equal(y, np.asarray(kernels.hash_dropout(x, 0.3, jax.random.key(1))))
    # the counters come from the array itself: any shape, no declared sites
    assert kernels.hash_dropout(jnp.ones((3, 5, 7)), 0.5, jax.random.key(0)).shape == (3, 5, 7)


def test_hash_bits_are_uniform_and_uncorrelated():
    ua = np.asarray(kernels.hash_bits(jax.random.key(3), (300, 400)), np.float64).ravel() / 2**32
    ub = np.asarray(kernels.hash_bits(jax.random.key(4), (300, 400)), np.float64).ravel() / 2**32
    counts = np.histogram(ua, bins=16, range=(0, 1))[0]
    expected = ua.size / 16
    assert ((counts - expected) ** 2 / expected).sum() < 40  # chi-square, 15 dof: p ~ 5e-4
    assert abs(np.corrcoef(ua[:-1], ua[1:])[0, 1]) < 0.01  # neighbouring elements
    assert abs(np.corrcoef(ua, ub)[0, 1]) < 0.01  # two keys (two sites)
    words = np.asarray(kernels.hash_bits(jax.random.key(3), (300, 400))).ravel()
    ones = np.array([((words >> i) & 1).mean() for i in range(32)])
    assert np.all(np.abs(ones - 0.5) < 0.01), ones  # every bit balanced, low ones included


# -- feed-forward and cross-entropy ---------------------------------------------------------------------


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_new", "silu"])
def test_mlp_2d_matches_plain_mlp_values_and_grads(gated, activation):
    """The hand-written backward equals autodiff of layers.mlp, with the same dropout mask (either dropout)."""
    k = jax.random.split(jax.random.key(1), 5)
    B, L, D, F = 3, 5, 8, 12
    x = jax.random.normal(k[0], (B, L, D))
    p = {"wo": jax.random.normal(k[3], (F, D))}
    if gated:
        p.update(wi_0=jax.random.normal(k[1], (D, F)), wi_1=jax.random.normal(k[2], (D, F)))
    else:
        p["wi"] = jax.random.normal(k[1], (D, F))
    r = jax.random.normal(jax.random.key(9), (B, L, D))  # a linear read-out: a well-conditioned loss
    for rate, key, dropout in (
        (0.0, None, layers.dropout),
        (0.3, k[4], layers.dropout),
        (0.3, k[4], kernels.hash_dropout),
    ):
        fast = lambda p, x: jnp.sum(r * kernels.mlp_2d(p, x, activation, rate, key, dropout))  # noqa: E731
        plain = lambda p, x: jnp.sum(r * layers.mlp(p, x, activation, rate, key, dropout))  # noqa: E731
        (v1, g1), (v2, g2) = (jax.value_and_grad(f, argnums=(0, 1))(p, x) for f in (fast, plain))
        assert _rel(v1, v2) < 1e-5
        for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            assert a.shape == c.shape and _rel(a, c) < 1e-5


def test_lm_head_xent_matches_plain_values_grads_and_predictions():
    k = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k[0], (2, 7, 16))
    w = jax.random.normal(k[1], (16, 50))
    labels = jax.random.randint(k[2], (2, 7), 0, 50)
    weights = (jnp.arange(7) < 5).astype(jnp.float32)[None]
    loss = lambda fn: lambda x, w: jnp.sum(fn(x, w, labels)[0] * weights)  # noqa: E731
    (v1, g1), (v2, g2) = (
        jax.value_and_grad(loss(f), argnums=(0, 1))(x, w) for f in (kernels.lm_head_xent, layers.lm_head_xent)
    )
    assert _rel(v1, v2) < 1e-5 and _rel(g1[0], g2[0]) < 1e-5 and _rel(g1[1], g2[1]) < 1e-5
    np.testing.assert_array_equal(kernels.lm_head_xent(x, w, labels)[1], layers.lm_head_xent(x, w, labels)[1])


# -- attention through jax.nn.dot_product_attention -----------------------------------------------------


def _qkvo(B=2, Q=5, S=7, H=3, K=4, D=6, seed=4):
    k = jax.random.split(jax.random.key(seed), 5)
    return (
        jax.random.normal(k[0], (H, K, D)),
        jax.random.normal(k[1], (B, Q, H, K)),
        jax.random.normal(k[2], (B, S, H, K)),
        jax.random.normal(k[3], (B, S, H, K)),
        jax.random.normal(k[4], (1, H, Q, S)),
    )


@pytest.mark.parametrize("masked", ["none", "padding", "causal", "causal+padding"])
@pytest.mark.parametrize("biased", [False, True])
def test_dpa_attend_matches_attend_values_and_grads(masked, biased):
    """Unscaled logits, T5's additive bias, right padding as key lengths and causality as a flag: the same
    outputs and gradients (bias included) as the einsum path's dense mask."""
    o, q, k, v, bias = _qkvo(S=5 if "causal" in masked else 7)
    B, S = q.shape[0], k.shape[1]
    keys_BS = jnp.arange(S)[None] < jnp.array([S, 3])[:, None]
    mask = {
        "none": None,
        "padding": layers.Mask(keys_BS),
        "causal": layers.Mask(causal=True),
        "causal+padding": layers.Mask(keys_BS, causal=True),
    }[masked]
    bias = bias if biased else None
    r = jax.random.normal(jax.random.key(8), (B, q.shape[1], o.shape[-1]))
    loss = lambda fn: lambda *a: jnp.sum(r * fn(a[0], a[1], a[2], a[3], a[4] if biased else None, mask))  # noqa: E731
    args = (o, q, k, v, bias if biased else jnp.zeros(()))
    (v1, g1), (v2, g2) = (
        jax.value_and_grad(loss(f), argnums=tuple(range(4 + biased)))(*args)
        for f in (kernels.dpa_attend, layers.attend)
    )
    assert _rel(v1, v2) < 1e-5
    assert len(g1) == 4 + biased
    for a, b in zip(g1, g2):
        assert _rel(a, b) < 1e-5
    # T5 does not scale the logits: dot_product_attention's default 1/sqrt(K) would give other numbers
    dense = None if mask is None else mask.dense(q.shape[1], S)
    scaled = layers.project_out(jax.nn.dot_product_attention(q, k, v, bias, dense), o)
    assert _rel(scaled, layers.attend(o, q, k, v, bias, mask)) > 1e-2


def test_mask_dense():
    keys = jnp.array([[1, 1, 0], [1, 0, 0]])
    np.testing.assert_array_equal(
        jnp.broadcast_to(layers.Mask(keys).dense(2, 3), (2, 1, 2, 3))[:, 0],
        [[[1, 1, 0], [1, 1, 0]], [[1, 0, 0], [1, 0, 0]]],
    )
    np.testing.assert_array_equal(
        layers.Mask(keys, causal=True).dense(3, 3)[1, 0], [[1, 0, 0], [1, 0, 0], [1, 0, 0]]
    )
    np.testing.assert_array_equal(layers.Mask(causal=True).dense(2, 2), [[[[1, 0], [1, 1]]]])
    assert layers.Mask().dense(2, 3) is None


def _count_dpa_calls(monkeypatch) -> list:
    calls, real = [], jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", lambda *a, **k: calls.append(k) or real(*a, **k))
    return calls


def test_dpa_attend_with_attention_dropout_is_the_einsum_path(monkeypatch):
    """dot_product_attention has no dropout on the probabilities: with it on, the plain attend runs (the same
    mask, so the same numbers), and without a key or rate the fast path runs."""
    o, q, k, v, bias = _qkvo()
    drop = lambda p: layers.dropout(p, 0.3, jax.random.key(5))  # noqa: E731
    with_drop = kernels.dpa_attend(o, q, k, v, bias, None, drop)
    np.testing.assert_array_equal(with_drop, layers.attend(o, q, k, v, bias, None, drop))
    assert _rel(with_drop, layers.attend(o, q, k, v, bias, None)) > 1e-3  # the dropout did act
    calls = _count_dpa_calls(monkeypatch)
    kernels.dpa_attend(o, q, k, v, bias, None, drop)
    assert calls == []
    kernels.dpa_attend(o, q, k, v, bias, None, None)
    # on the CPU: XLA's implementation, unscaled
    assert calls == [
        {"scale": 1.0, "is_causal": False, "key_value_seq_lengths": None, "implementation": None}
    ]
    assert kernels.dpa_implementation(jnp.bfloat16) is None


@pytest.mark.parametrize("rate", [0.0, 0.1])
def test_model_loss_and_grads_with_dpa_equal_the_einsum_path(vae_setup, rate, monkeypatch):
    """The whole T5-VAE: without dropout dpa gives the plain loss and grads; with dropout 0.1 the attention
    falls back to the plain path, so the same key gives the same loss to float rounding."""
    cfg, params, batch = vae_setup
    cfg = cfg.replace(t5=cfg.t5.replace(dropout_rate=rate))
    key = None if rate == 0.0 else jax.random.key(3)
    calls = _count_dpa_calls(monkeypatch)
    out = {}
    for k in ("plain", "dpa"):
        c = _with(cfg, k)
        out[k] = jax.jit(jax.value_and_grad(lambda p: tv.loss(p, c, batch, key, 100)[0]))(params)
    assert _rel(out["dpa"][0], out["plain"][0]) < 1e-5
    for a, b in zip(jax.tree.leaves(out["dpa"][1]), jax.tree.leaves(out["plain"][1])):
        assert _rel(a, b) < 1e-4
    # traced once per attention site (encoder, decoder self and cross: scanned, so once each), only without
    # dropout on the probabilities
    assert len(calls) == (3 if rate == 0.0 else 0)


@pytest.mark.parametrize("per_layer", [False, True], ids=["shared-bias", "per-layer-bias"])
def test_t5_logits_with_dpa_equal_the_einsum_path(per_layer):
    cfg = tv.preset("tiny", relative_attention_per_layer=per_layer)
    params = tv.t5.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (3, 9), 2, cfg.vocab_size)
    mask = jnp.arange(9)[None] < jnp.array([9, 6, 4])[:, None]
    dec = jax.random.randint(jax.random.key(2), (3, 5), 2, cfg.vocab_size)
    dmask = jnp.arange(5)[None] < jnp.array([5, 5, 3])[:, None]
    a, b = (tv.t5.apply(params, cfg.replace(kernels=k), ids, mask, dec, dmask) for k in ("plain", "dpa"))
    assert _rel(a, b) < 1e-5


# -- the whole model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def vae_setup():
    t5 = tv.preset("tiny", dropout_rate=0.1, feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    cfg = tv.Config(t5=t5, n_latent_tokens=2, latent_size=8, max_length=12)
    params = tv.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (4, 10), 3, t5.vocab_size).at[:, -1].set(1)
    return cfg, params, {"input_ids": ids, "attention_mask": jnp.ones((4, 10), bool)}


def _with(cfg, kernels_value):
    return cfg.replace(t5=cfg.t5.replace(kernels=kernels_value))


def test_model_loss_and_grads_equal_across_kernels_without_dropout(vae_setup):
    cfg, params, batch = vae_setup
    out = {}
    for k in ("plain", "cpu"):
        c = _with(cfg, k)
        out[k] = jax.jit(jax.value_and_grad(lambda p: tv.loss(p, c, batch, None, 100)[0]))(params)
    assert _rel(out["cpu"][0], out["plain"][0]) < 1e-5
    for a, b in zip(jax.tree.leaves(out["cpu"][1]), jax.tree.leaves(out["plain"][1])):
        assert _rel(a, b) < 1e-4


def test_model_dropout_streams_differ_but_each_is_deterministic(vae_setup):
    """With dropout the two kernels draw different masks: each loss is a function of the key, and both
    differ from the deterministic loss."""
    cfg, params, batch = vae_setup
    det = float(tv.loss(params, cfg, batch, None, 100)[0])
    for k in ("plain", "cpu"):
        f = jax.jit(lambda key, c=_with(cfg, k): tv.loss(params, c, batch, key, 100)[0])
        a, b, c = (float(f(jax.random.key(s))) for s in (0, 0, 1))
        assert a == b and a != c and a != det
