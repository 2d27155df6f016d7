"""Each T5 layer against transformers' torch implementation, with weights copied by hand."""
import numpy as np
import pytest
import jax
import jax.numpy as jnp

import t5vae as tv
from t5vae import layers
from conftest import require


@pytest.fixture(scope="module")
def hf():
    torch = require("torch")
    modeling = require("transformers.models.t5.modeling_t5")
    torch.manual_seed(0)
    return torch, modeling


def rel_err(got, want):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 16), (64, 300), (10, 20)])
def test_relative_position_bucket_matches_transformers(hf, bidirectional, num_buckets, max_distance):
    torch, modeling = hf
    rel = np.arange(-700, 701)[None, :] + np.zeros((3, 1), np.int64)  # a grid of distances, both signs
    want = modeling.T5Attention._relative_position_bucket(
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance).numpy()
    got_np = layers.relative_position_bucket(rel, bidirectional, num_buckets, max_distance)
    got_jax = layers.relative_position_bucket(jnp.asarray(rel), bidirectional, num_buckets, max_distance)
    np.testing.assert_array_equal(got_np, want)
    np.testing.assert_array_equal(np.asarray(got_jax), want)
    assert want.max() == num_buckets - 1  # the grid reaches the last bucket, so the clamp is exercised


def test_rms_norm_matches_transformers(hf):
    torch, modeling = hf
    ln = modeling.T5LayerNorm(16, eps=1e-6)
    with torch.no_grad():
        ln.weight.normal_()
    x = np.random.default_rng(0).normal(size=(2, 5, 16)).astype(np.float32) * 3
    want = ln(torch.tensor(x)).detach().numpy()
    got = layers.rms_norm(jnp.asarray(x), jnp.asarray(ln.weight.detach().numpy()), 1e-6)
    assert rel_err(got, want) < 1e-6
    # bf16 input: statistics in float32, output back in bf16
    got16 = layers.rms_norm(jnp.asarray(x, jnp.bfloat16), jnp.asarray(ln.weight.detach().numpy()), 1e-6)
    assert got16.dtype == jnp.bfloat16 and rel_err(got16, want) < 1e-2


@pytest.mark.parametrize("gated", [False, True])
def test_mlp_matches_transformers(hf, gated):
    torch, modeling = hf
    cfg = modeling.T5Config(d_model=16, d_ff=24, dropout_rate=0.0,
                            feed_forward_proj="gated-gelu" if gated else "relu")
    mod = (modeling.T5DenseGatedActDense if gated else modeling.T5DenseActDense)(cfg).eval()
    w = {k: v.detach().numpy().T for k, v in mod.state_dict().items()}  # torch Linear is [out, in]
    p = {k.removesuffix(".weight"): jnp.asarray(v) for k, v in w.items()}
    x = np.random.default_rng(1).normal(size=(2, 7, 16)).astype(np.float32)
    want = mod(torch.tensor(x)).detach().numpy()
    ours = tv.T5Config(d_model=16, d_ff=24, feed_forward_proj=cfg.feed_forward_proj)
    got = layers.mlp(p, jnp.asarray(x), ours.activation)
    assert rel_err(got, want) < 1e-5


def _hf_attention_to_ours(att, H, K):
    w = {k: v.detach().numpy() for k, v in att.state_dict().items()}
    D = w["q.weight"].shape[1]
    p = {n: jnp.asarray(w[f"{n}.weight"].T.reshape(D, H, K)) for n in "qkv"}
    p["o"] = jnp.asarray(w["o.weight"].T.reshape(H, K, D))
    return p, w


@pytest.mark.parametrize("is_decoder", [False, True])
def test_self_attention_with_position_bias_matches_transformers(hf, is_decoder):
    torch, modeling = hf
    H, K, D, L = 3, 5, 12, 9  # heads * d_kv != d_model on purpose
    cfg = modeling.T5Config(d_model=D, d_kv=K, num_heads=H, dropout_rate=0.0, is_decoder=is_decoder,
                            relative_attention_num_buckets=6, relative_attention_max_distance=10)
    att = modeling.T5Attention(cfg, has_relative_attention_bias=True).eval()
    with torch.no_grad():
        att.relative_attention_bias.weight.normal_()
    p, w = _hf_attention_to_ours(att, H, K)
    x = np.random.default_rng(2).normal(size=(2, L, D)).astype(np.float32)
    valid = np.ones((2, L), bool)
    valid[1, 6:] = False  # right padding in the second row
    mask_B11L = valid[:, None, None, :]
    if is_decoder:
        mask_B11L = mask_B11L & np.tril(np.ones((L, L), bool))[None, None]
    ext = torch.tensor(np.where(mask_B11L, 0.0, torch.finfo(torch.float32).min).astype(np.float32))
    want = att(torch.tensor(x), mask=ext, cache_position=torch.arange(L))[0].detach().numpy()
    bias = layers.position_bias(jnp.asarray(w["relative_attention_bias.weight"]), L, L, not is_decoder, 10)
    got = layers.attention(p, jnp.asarray(x), jnp.asarray(x), bias, jnp.asarray(mask_B11L))
    rows = valid[:, :, None]  # padded query rows are garbage in both; compare the real ones
    assert rel_err(np.where(rows, got, 0), np.where(rows, want, 0)) < 1e-5


def test_cross_attention_has_no_position_bias(hf):
    torch, modeling = hf
    H, K, D = 2, 4, 8
    cfg = modeling.T5Config(d_model=D, d_kv=K, num_heads=H, dropout_rate=0.0, is_decoder=True)
    att = modeling.T5Attention(cfg, has_relative_attention_bias=False).eval()
    p, _ = _hf_attention_to_ours(att, H, K)
    rng = np.random.default_rng(3)
    x, kv = rng.normal(size=(2, 3, D)).astype(np.float32), rng.normal(size=(2, 5, D)).astype(np.float32)
    valid = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    ext = torch.tensor(np.where(valid[:, None, None, :], 0.0, torch.finfo(torch.float32).min).astype(np.float32))
    want = att(torch.tensor(x), key_value_states=torch.tensor(kv), mask=ext, cache_position=torch.arange(3))[0].detach().numpy()
    got = layers.attention(p, jnp.asarray(x), jnp.asarray(kv), None, jnp.asarray(valid[:, None, None, :]))
    assert rel_err(got, want) < 1e-5


def test_dropout_is_inverted_and_seeded():
    x = jnp.ones((20000,), jnp.float32)
    assert layers.dropout(x, 0.3, None) is x
    seeds = layers.dropout_seeds(jax.random.key(0), 2)
    assert seeds.shape == (2, 2) and seeds.dtype == jnp.uint32
    (bits,) = layers.dropout_bits(seeds[0], x.shape)
    y = np.asarray(layers.dropout(x, 0.3, bits))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.015
    threshold = layers.keep_threshold(0.3)
    assert threshold == round(0.7 * 2 ** 32)
    np.testing.assert_allclose(y[kept], 2 ** 32 / threshold, rtol=1e-6)  # keep prob is threshold/2**32: unbiased
    np.testing.assert_array_equal(y, np.asarray(jax.jit(layers.dropout, static_argnums=1)(x, 0.3, bits)))
    (other,) = layers.dropout_bits(seeds[1], x.shape)
    assert not np.array_equal(y, np.asarray(layers.dropout(x, 0.3, other)))
    assert layers.dropout_seeds(None, 3) is None and layers.dropout_bits(None, (2,)) == [None]
    # a site applies to any array of its declared size (the MLP reshapes [B, L, F] to rows), no other
    np.testing.assert_array_equal(np.asarray(layers.dropout(x.reshape(100, 200), 0.3, bits)).ravel(), y)
    with pytest.raises(ValueError, match=r"declared with shape \(20000,\) was applied to shape \(3, 4\)"):
        layers.dropout(jnp.ones((3, 4)), 0.3, bits)


def test_dropout_bits_are_uniform_and_uncorrelated():
    seed = layers.dropout_seeds(jax.random.key(3), 1)[0]
    a, b = layers.dropout_bits(seed, (300, 400), (50000,))  # sites on disjoint counter ranges of one seed
    ua, ub = (np.asarray(layers.random_bits(s, s.shape), np.float64).ravel() / 2 ** 32 for s in (a, b))
    assert ua.size == 120000 and ub.size == 50000
    counts = np.histogram(ua, bins=16, range=(0, 1))[0]
    expected = ua.size / 16
    assert ((counts - expected) ** 2 / expected).sum() < 40  # chi-square, 15 dof: p ~ 5e-4
    assert abs(np.corrcoef(ua[:-1], ua[1:])[0, 1]) < 0.01  # neighbouring counters
    assert abs(np.corrcoef(ua[:50000], ub)[0, 1]) < 0.02  # two sites of one layer
    words = np.asarray(layers.random_bits(a, a.shape)).ravel()
    ones = np.array([((words >> i) & 1).mean() for i in range(32)])
    assert np.all(np.abs(ones - 0.5) < 0.01), ones  # every bit balanced, low ones included


def _rel(a, b):
    return float(jnp.max(jnp.abs(a - b)) / jnp.maximum(jnp.max(jnp.abs(b)), 1e-30))


@pytest.mark.parametrize("gated", [False, True])
@pytest.mark.parametrize("activation", ["relu", "gelu", "gelu_new", "silu"])
def test_mlp_custom_vjp_matches_autodiff(gated, activation):
    """The hand-written MLP backward equals autodiff of the plain formulation, with and without dropout."""
    k = jax.random.split(jax.random.key(1), 5)
    B, L, D, F = 3, 5, 8, 12
    x = jax.random.normal(k[0], (B, L, D))
    p = {"wo": jax.random.normal(k[3], (F, D))}
    if gated:
        p.update(wi_0=jax.random.normal(k[1], (D, F)), wi_1=jax.random.normal(k[2], (D, F)))
    else:
        p["wi"] = jax.random.normal(k[1], (D, F))
    (bits,) = layers.dropout_bits(layers.dropout_seeds(k[4], 1)[0], (B, L, F))
    for rate, b in ((0.0, None), (0.3, bits)):
        def f(fn):
            return lambda p, x: jnp.sum(jnp.sin(fn(p, x, activation, rate, b)))
        v1, g1 = jax.value_and_grad(f(layers.mlp), argnums=(0, 1))(p, x)
        v2, g2 = jax.value_and_grad(f(layers.mlp_reference), argnums=(0, 1))(p, x)
        assert _rel(v1, v2) < 1e-5
        for a, c in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
            assert a.shape == c.shape and _rel(a, c) < 1e-5


def test_lm_head_xent_matches_log_softmax():
    k = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k[0], (2, 7, 16))
    w = jax.random.normal(k[1], (16, 50))
    labels = jax.random.randint(k[2], (2, 7), 0, 50)
    weights = (jnp.arange(7) < 5).astype(jnp.float32)[None]

    def ours(x, w):
        nll, _ = layers.lm_head_xent(x, w, labels)
        return jnp.sum(nll * weights)

    def ref(x, w):
        logp = jax.nn.log_softmax(jnp.einsum("BTD,DV->BTV", x, w), axis=-1)
        return -jnp.sum(jnp.take_along_axis(logp, labels[..., None], -1)[..., 0] * weights)

    (v1, g1), (v2, g2) = [jax.value_and_grad(f, argnums=(0, 1))(x, w) for f in (ours, ref)]
    assert _rel(v1, v2) < 1e-5
    assert _rel(g1[0], g2[0]) < 1e-5 and _rel(g1[1], g2[1]) < 1e-5
    _, pred = layers.lm_head_xent(x, w, labels)
    np.testing.assert_array_equal(pred, jnp.argmax(jnp.einsum("BTD,DV->BTV", x, w), -1))


@pytest.mark.parametrize("V", [50, 300, 384])  # one padded block; padded blocks; whole blocks
def test_argmax_matches_jnp_argmax_ties_and_nan(V):
    x = jax.random.normal(jax.random.key(0), (8, V))
    x = x.at[1, 7].set(9.0).at[1, V - 3].set(9.0)  # a tie across blocks: the first index wins
    x = x.at[2, V - 9].set(jnp.nan).at[2, V - 1].set(jnp.nan)  # NaN wins, the first one
    x = x.at[3].set(-jnp.inf).at[4].set(jnp.inf)
    x = x.at[5, V - 2].set(7.0).at[5, V - 1].set(7.0)  # a tie in the last block
    x = x.at[6, 130 % V].set(8.0).at[6, 129 % V].set(8.0)  # a tie inside one block
    got = layers.argmax(x, block=128)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(np.asarray(got), np.asarray(jnp.argmax(x, axis=-1)))
    assert int(got[1]) == 7 and int(got[2]) == V - 9 and int(got[5]) == V - 2
