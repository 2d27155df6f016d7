"""The benchmark harness's two train-step losses compute the same function (benchmarks/ is timing-only code;
this checks that the fast path it times is the same loss as the plain logits path the reference uses)."""
import jax
import jax.numpy as jnp

import t5vae as tv
from benchmarks import harness


def test_t5vae_loss_equals_logits_cross_entropy():
    cfg = tv.preset("tiny", dropout_rate=0.0)
    params = tv.t5.init(cfg, jax.random.key(0))
    batch = harness.random_batch(cfg.vocab_size, 3, 9, seed=1)
    logits_fn = lambda p, b, k: tv.t5.apply(p, cfg, b["input_ids"], b["attention_mask"],  # noqa: E731
                                           b["decoder_input_ids"], b["decoder_attention_mask"])
    key = jax.random.key(1)
    (l1, g1), (l2, g2) = [jax.value_and_grad(f)(params, batch, key)
                          for f in (harness.t5vae_loss(cfg), harness.logits_loss(logits_fn))]
    assert abs(float(l1) - float(l2)) < 1e-5 * abs(float(l2))
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        assert float(jnp.max(jnp.abs(a - b))) <= 1e-5 * max(float(jnp.max(jnp.abs(b))), 1e-6)
