"""Each T5 layer against transformers' torch implementation, with weights copied by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

import t5vae as tv
from t5vae import layers


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
        torch.tensor(rel), bidirectional=bidirectional, num_buckets=num_buckets, max_distance=max_distance
    ).numpy()
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
    cfg = modeling.T5Config(
        d_model=16, d_ff=24, dropout_rate=0.0, feed_forward_proj="gated-gelu" if gated else "relu"
    )
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
    cfg = modeling.T5Config(
        d_model=D,
        d_kv=K,
        num_heads=H,
        dropout_rate=0.0,
        is_decoder=is_decoder,
        relative_attention_num_buckets=6,
        relative_attention_max_distance=10,
    )
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
    got = layers.attention(
        p, jnp.asarray(x), jnp.asarray(x), bias, layers.Mask(jnp.asarray(valid), causal=is_decoder)
    )
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
    ext = torch.tensor(
        np.where(valid[:, None, None, :], 0.0, torch.finfo(torch.float32).min).astype(np.float32)
    )
    want = (
        att(torch.tensor(x), key_value_states=torch.tensor(kv), mask=ext, cache_position=torch.arange(3))[0]
        .detach()
        .numpy()
    )
    got = layers.attention(p, jnp.asarray(x), jnp.asarray(kv), None, layers.Mask(jnp.asarray(valid)))
    assert rel_err(got, want) < 1e-5


def test_dropout_is_inverted_and_seeded():
    x = jnp.ones((20000,), jnp.float32)
    assert layers.dropout(x, 0.3, None) is x and layers.dropout(x, 0.0, jax.random.key(0)) is x
    y = np.asarray(layers.dropout(x, 0.3, jax.random.key(0)))
    kept = y != 0
    assert abs(kept.mean() - 0.7) < 0.015
    np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)  # inverted: the expectation is x
    np.testing.assert_array_equal(
        y, np.asarray(jax.jit(layers.dropout, static_argnums=1)(x, 0.3, jax.random.key(0)))
    )
    assert not np.array_equal(y, np.asarray(layers.dropout(x, 0.3, jax.random.key(1))))


def test_lm_head_xent_is_log_softmax_and_argmax():
    k = jax.random.split(jax.random.key(2), 3)
    x = jax.random.normal(k[0], (2, 7, 16))
    w = jax.random.normal(k[1], (16, 50))
    labels = jax.random.randint(k[2], (2, 7), 0, 50)
    nll, pred = layers.lm_head_xent(x, w, labels)
    logp = jax.nn.log_softmax(
        np.einsum("btd,dv->btv", np.asarray(x, np.float64), np.asarray(w, np.float64)), -1
    )
    want = -np.take_along_axis(np.asarray(logp), np.asarray(labels)[..., None], -1)[..., 0]
    assert rel_err(nll, want) < 1e-5
    np.testing.assert_array_equal(pred, np.argmax(np.asarray(logp), -1))
    assert pred.dtype == jnp.int32


def test_attend_one_is_attention_of_one_query():
    """Decoding's one-position attention equals the full attention's row for that query."""
    k = jax.random.split(jax.random.key(4), 4)
    B, H, S, K, D = 2, 3, 6, 4, 5
    q, kk, v = (jax.random.normal(k[i], (B, 1 if i == 0 else S, H, K)) for i in range(3))
    o = jax.random.normal(k[3], (H, K, D))
    mask = jnp.asarray(np.array([[1] * 6, [1, 1, 1, 0, 0, 0]], bool))[:, None, None, :]
    want = layers.attend(o, q, kk, v, None, layers.Mask(mask[:, 0, 0]))[:, 0]
    t = lambda a: jnp.transpose(a, (0, 2, 1, 3))  # noqa: E731  [B, S, H, K] -> [B, H, S, K]
    got = layers.attend_one(q[:, 0], t(kk), t(v), None, mask[:, :, 0]) @ o.reshape(H * K, D)
    assert rel_err(got, want) < 1e-6
