"""The benchmark harness's two train-step losses compute the same function (benchmarks/ is timing-only code;
this checks that the fast path it times is the same loss as the plain logits path the reference uses)."""

import jax
import jax.numpy as jnp
from conftest import require

import t5vae as tv
from benchmarks import harness


def test_t5vae_loss_equals_logits_cross_entropy():
    cfg = tv.preset("tiny", dropout_rate=0.0)
    params = tv.t5.init(cfg, jax.random.key(0))
    batch = harness.random_batch(cfg.vocab_size, 3, 9, seed=1)

    def logits_fn(p, b, k):
        return tv.t5.apply(
            p, cfg, b["input_ids"], b["attention_mask"], b["decoder_input_ids"], b["decoder_attention_mask"]
        )

    key = jax.random.key(1)
    (l1, g1), (l2, g2) = [
        jax.value_and_grad(f)(params, batch, key)
        for f in (harness.t5vae_loss(cfg), harness.logits_loss(logits_fn))
    ]
    assert abs(float(l1) - float(l2)) < 1e-5 * abs(float(l2))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * max(float(jnp.max(jnp.abs(b))), 1e-6)


def test_both_train_losses_drop_out():
    """Both timed train steps run dropout at the configured rate: the loss depends on the key, and the
    reference's dropout-free model gets it back through ``reference.with_dropout`` (a model built from a
    config with dropout_rate 0 ignores ``train=True``)."""
    require("flax")
    from benchmarks import reference

    cfg = tv.preset("tiny", dropout_rate=0.0)
    model, ref_params, params = reference.make_reference(cfg)
    batch = harness.random_batch(cfg.vocab_size, 3, 9, seed=1)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    ref_off = harness.logits_loss(reference.train_loss_fn(model))
    assert float(ref_off(ref_params, batch, k1)) == float(ref_off(ref_params, batch, k2))
    ref_on = harness.logits_loss(reference.train_loss_fn(reference.with_dropout(model, 0.1)))
    ours_on = harness.t5vae_loss(cfg.replace(dropout_rate=0.1))
    for loss, p in ((ref_on, ref_params), (ours_on, params)):
        assert float(loss(p, batch, k1)) != float(loss(p, batch, k2))


def test_t5vae_bench_passes_its_arguments_to_the_benchmarks(capsys):
    import pytest

    from t5vae import cli

    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m benchmarks") and "--quick" in out


def test_only_rejects_an_unknown_workload_by_name(capsys):
    import pytest

    from benchmarks.__main__ import main

    with pytest.raises(SystemExit) as e:
        main(["--only", "train,fwd"])
    assert e.value.code == 2
    assert "unknown workload(s) ['fwd']" in capsys.readouterr().err
