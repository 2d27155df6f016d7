"""The T5-VAE (t5vae.vae): init / from_t5 / encode / decode / loss / generate."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import greedy_uncached

import t5vae as tv

CFG = tv.Config(
    t5=tv.preset("tiny"),
    n_latent_tokens=3,
    latent_size=8,
    pooling="mean",
    latent_dropout=0.0,
    latent_noise=0.0,
    input_deletion=0.0,
    latent_mix=0.0,
)  # no training-only perturbation unless a test asks for it
IDS = jnp.array([[5, 6, 7, 8, 1, 0, 0], [9, 10, 1, 0, 0, 0, 0], [11, 12, 13, 14, 15, 16, 1]], jnp.int32)
BATCH = {"input_ids": IDS, "attention_mask": IDS != 0}


@pytest.fixture(scope="module")
def params():
    return tv.init(CFG, jax.random.key(0))


@pytest.fixture(scope="module")
def loss_fn():
    return jax.jit(lambda p, b, k, s: tv.loss(p, CFG, b, k, s, deterministic=True))


def training_metrics(params, cfg):
    """The loss's metrics for ``cfg`` in training (key 1) and the clean model's, after checking that without
    training (deterministic) ``cfg`` gives the clean model's CE: a perturbation for training only."""
    f = jax.jit(lambda k, det: tv.loss(params, cfg, BATCH, k, 0, deterministic=det)[1], static_argnums=1)
    clean = tv.loss(params, CFG, BATCH, None, 0)[1]
    np.testing.assert_allclose(f(jax.random.key(1), True)["ce"], clean["ce"], rtol=1e-6)
    return f(jax.random.key(1), False), clean


def mean_nll(logits):
    """The mean CE of IDS's tokens under teacher-forced ``logits``."""
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), IDS[..., None], -1)[..., 0]
    return nll[IDS != 0].mean()


def test_param_tree_has_t5_and_bottleneck(params):
    assert set(params) == {"t5", "latent_encoder", "latent_decoder"}
    assert params["latent_encoder"]["kernel"].shape == (32, 8)
    assert params["latent_decoder"]["kernel"].shape == (8, 32)
    assert "queries" not in params["latent_encoder"]
    att = jax.eval_shape(lambda: tv.init(CFG.replace(pooling="attention"), jax.random.key(0)))
    assert att["latent_encoder"]["queries"].shape == (3, 32)


def test_from_t5_keeps_backbone_and_checks_shapes(params):
    t5p = tv.t5.init(CFG.t5, jax.random.key(7))
    p = tv.from_t5(CFG, t5p, jax.random.key(1))
    assert p["t5"] is t5p
    with pytest.raises(ValueError, match="does not match"):
        tv.from_t5(CFG.replace(t5=CFG.t5.replace(d_model=48)), t5p, jax.random.key(1))


def test_encode_shapes_and_padding_invariance(params):
    z = tv.encode(params, CFG, IDS, IDS != 0)
    assert z.shape == (3, 3, 8)
    ids2 = IDS.at[0, 5:].set(42)  # garbage behind the mask
    z2 = tv.encode(params, CFG, ids2, IDS != 0)
    np.testing.assert_allclose(z2, z, atol=1e-5)


def test_decoder_depends_on_latent(params):
    z = tv.encode(params, CFG, IDS)
    dec_in = tv.t5.shift_right(IDS, CFG.t5)
    a = tv.decode(params, CFG, z, dec_in)
    b = tv.decode(params, CFG, z[::-1], dec_in)
    assert a.shape == (3, 7, CFG.t5.vocab_size)
    assert not np.allclose(a[0], b[0], atol=1e-4)


def test_loss_metrics_against_numpy(params, loss_fn):
    total, m = loss_fn(params, BATCH, jax.random.key(0), 100)
    z = tv.encode(params, CFG, IDS)
    logits = np.asarray(tv.decode(params, CFG, z, tv.t5.shift_right(IDS, CFG.t5)))
    ids, mask = np.asarray(IDS), np.asarray(IDS != 0)
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    nll = -np.take_along_axis(logp, ids[..., None], -1)[..., 0]
    np.testing.assert_allclose(m["ce"], nll[mask].mean(), rtol=1e-4)
    correct = logits.argmax(-1) == ids
    np.testing.assert_allclose(m["token_acc"], correct[mask].mean(), rtol=1e-6)
    np.testing.assert_allclose(m["seq_acc"], np.mean([correct[i][mask[i]].all() for i in range(3)]))
    np.testing.assert_allclose(m["w"], 1 / (1 + np.exp(-(0.0025 * 100 - 6.25))), rtol=1e-5)
    np.testing.assert_allclose(total, m["ce"] + m["w"] * m["mmd"], rtol=1e-6)


def test_loss_ignores_pads_and_explicit_labels_agree(params, loss_fn):
    _, m1 = loss_fn(params, BATCH, jax.random.key(0), 0)
    labels = jnp.where(IDS != 0, IDS, -100)
    _, m2 = loss_fn(params, {**BATCH, "labels": labels}, jax.random.key(0), 0)
    np.testing.assert_allclose(m1["ce"], m2["ce"], rtol=1e-6)
    # a batch whose rows are padded further gives the same CE
    padded = jnp.pad(IDS, ((0, 0), (0, 5)))
    _, m3 = loss_fn(params, {"input_ids": padded, "attention_mask": padded != 0}, jax.random.key(0), 0)
    np.testing.assert_allclose(m1["ce"], m3["ce"], rtol=1e-5)


def test_dropout_changes_loss_only_when_training(params):
    cfg = CFG.replace(t5=CFG.t5.replace(dropout_rate=0.3))
    f = jax.jit(
        lambda k, det: tv.loss(params, cfg, BATCH, k, 0, deterministic=det)[1]["ce"], static_argnums=1
    )
    assert float(f(jax.random.key(1), True)) == float(f(jax.random.key(2), True))
    assert float(f(jax.random.key(1), False)) != float(f(jax.random.key(2), False))


def test_latent_noise_perturbs_the_decoded_code_only_in_training(params):
    cfg = CFG.replace(latent_noise=0.5, t5=CFG.t5.replace(dropout_rate=0.0))  # the noise alone
    noisy, clean = training_metrics(params, cfg)
    assert abs(float(noisy["ce"]) - float(clean["ce"])) > 1e-4
    # the CE is that of decoding the clean code plus noise; the MMD sees the clean code
    z = tv.encode(params, cfg, IDS)
    _, _, k_mmd = jax.random.split(jax.random.key(1), 3)
    k_noise = jax.random.fold_in(jax.random.key(1), 1)
    logits = tv.decode(
        params, cfg, z + 0.5 * jax.random.normal(k_noise, z.shape), tv.t5.shift_right(IDS, cfg.t5)
    )
    np.testing.assert_allclose(noisy["ce"], mean_nll(logits), rtol=1e-4)
    np.testing.assert_allclose(noisy["mmd"], tv.bottleneck.latent_mmd(cfg, z, k_mmd), rtol=1e-5)
    with pytest.raises(ValueError, match="latent_noise"):
        CFG.replace(latent_noise=-0.1)


def test_latent_mix_decodes_each_line_from_part_way_toward_the_next_lines_code(params):
    cfg = CFG.replace(latent_mix=0.3, t5=CFG.t5.replace(dropout_rate=0.0))  # the mixing alone
    mixed, _ = training_metrics(params, cfg)
    z = tv.encode(params, cfg, IDS)
    frac = 0.3 * jax.random.uniform(jax.random.fold_in(jax.random.key(1), 3), (z.shape[0], 1, 1))
    assert 0 < float(frac.min()) and float(frac.max()) <= 0.3
    logits = tv.decode(params, cfg, z + frac * (jnp.roll(z, 1, axis=0) - z), tv.t5.shift_right(IDS, cfg.t5))
    np.testing.assert_allclose(mixed["ce"], mean_nll(logits), rtol=1e-4)
    for bad in (-0.1, 0.6):
        with pytest.raises(ValueError, match="latent_mix"):
            CFG.replace(latent_mix=bad)


def test_delete_tokens_keeps_eos_and_the_order_of_what_it_keeps():
    ids = jnp.tile(jnp.arange(2, 42, dtype=jnp.int32)[None], (16, 1)).at[:, 30].set(1).at[:, 31:].set(0)
    ids = ids.at[1, 5:].set(0).at[1, 4].set(1)  # a short row
    mask = ids != 0
    out, out_mask = tv.vae.delete_tokens(ids, mask, 0.3, jax.random.key(0), 1)
    assert out.shape == ids.shape and out.dtype == ids.dtype and out_mask.dtype == mask.dtype
    lengths = np.asarray(out_mask.sum(1))
    assert (lengths < np.asarray(mask.sum(1))).any() and (lengths >= 1).all()
    for row, m, orig in zip(np.asarray(out), np.asarray(out_mask), np.asarray(ids)):
        kept = row[m]
        assert (
            kept[-1] == 1 and (row[~m] == 0).all() and m[: m.sum()].all()
        )  # EOS last, closed up to the left
        it = iter(orig[orig != 0])
        assert all(t in it for t in kept)  # a subsequence of the line
    deleted = 1 - (out_mask.sum() - 16) / (mask.sum() - 16)  # the share of tokens but EOS deleted
    assert 0.2 < float(deleted) < 0.4
    same, same_mask = tv.vae.delete_tokens(ids, mask, 0.0, jax.random.key(0), 1)
    np.testing.assert_array_equal(same, ids)
    np.testing.assert_array_equal(same_mask, mask)


def test_input_deletion_encodes_the_shortened_line_and_decodes_the_whole_one(params):
    cfg = CFG.replace(input_deletion=0.5, t5=CFG.t5.replace(dropout_rate=0.0))
    noisy, _ = training_metrics(params, cfg)
    short, short_mask = tv.vae.delete_tokens(IDS, IDS != 0, 0.5, jax.random.fold_in(jax.random.key(1), 4), 1)
    assert int(short_mask.sum()) < int((IDS != 0).sum())
    z = tv.encode(params, cfg, short, short_mask)
    logits = tv.decode(params, cfg, z, tv.t5.shift_right(IDS, cfg.t5))
    np.testing.assert_allclose(noisy["ce"], mean_nll(logits), rtol=1e-4)
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="input_deletion"):
            CFG.replace(input_deletion=bad)


def test_latent_dropout_hides_latent_tokens_from_cross_attention_only_in_training(params):
    cfg = CFG.replace(latent_dropout=0.5, t5=CFG.t5.replace(dropout_rate=0.0))
    dropped, clean = training_metrics(params, cfg)
    # the CE is that of decoding with the kept latent tokens only (the decoder's cross-attention mask)
    keep = jax.random.bernoulli(jax.random.fold_in(jax.random.key(1), 2), 0.5, (3, 3))
    keep = keep.at[:, 0].set(keep[:, 0] | ~jnp.any(keep, axis=1))
    assert not bool(jnp.all(keep)) and bool(jnp.all(jnp.any(keep, axis=1)))
    z = tv.encode(params, cfg, IDS)
    states = tv.vae.latent_states(params, cfg, z)
    logits = tv.t5.decode(params["t5"], cfg.t5, tv.t5.shift_right(IDS, cfg.t5), states, keep)
    np.testing.assert_allclose(dropped["ce"], mean_nll(logits), rtol=1e-4)
    assert abs(float(dropped["ce"]) - float(clean["ce"])) > 1e-4
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="latent_dropout"):
            CFG.replace(latent_dropout=bad)


def test_greedy_generate_is_consistent_with_teacher_forcing(params):
    z = tv.encode(params, CFG, IDS)
    toks = np.asarray(tv.generate(params, CFG, z, 6))
    # the KV-cached generator agrees with the plain re-run-the-decoder loop
    ref = greedy_uncached(params["t5"], CFG.t5, tv.vae.latent_states(params, CFG, z), None, 6)
    np.testing.assert_array_equal(toks, np.asarray(ref))
    assert toks.shape == (3, 6) and toks.dtype == np.int32
    dec_in = tv.t5.shift_right(jnp.asarray(toks), CFG.t5)
    argmax = np.asarray(tv.decode(params, CFG, z, dec_in)).argmax(-1)
    for row, ref in zip(toks, argmax):
        n = len(row) if 1 not in row else list(row).index(1) + 1
        np.testing.assert_array_equal(row[:n], ref[:n])
        assert np.all(row[n:] == 0)


def test_sampling_and_beam_methods_reach_the_backbone_generator(params):
    z = tv.encode(params, CFG, IDS)
    a = np.asarray(tv.generate(params, CFG, z, 5, method="sample", key=jax.random.key(1), temperature=5.0))
    b = np.asarray(tv.generate(params, CFG, z, 5, method="sample", key=jax.random.key(2), temperature=5.0))
    assert a.shape == b.shape == (3, 5) and not np.array_equal(a, b)
    beam = np.asarray(tv.generate(params, CFG, z, 5, method="beam", num_beams=2))
    assert beam.shape == (3, 5)
