"""The T5 backbone's own contracts: spec tree, masks, dtypes, dropout, remat (generation: test_decoding)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny import V10, V11, batch, per_layer

import t5vae as tv

# compiled once per config and shared by every test
_encode = jax.jit(tv.t5.encode, static_argnums=1)
_decode = jax.jit(tv.t5.decode, static_argnums=1)
_apply = jax.jit(tv.t5.apply, static_argnums=1)


@pytest.fixture(scope="module", params=[V10, V11], ids=["v1.0", "v1.1"])
def model(request):
    cfg = request.param
    return cfg, tv.t5.init(cfg, jax.random.key(42))


def test_spec_tree_shapes_and_one_bias_table_per_stack(model):
    cfg, params = model
    shapes = jax.tree.map(lambda x: x.shape, params)
    R, H, D = cfg.relative_attention_num_buckets, cfg.num_heads, cfg.d_model
    assert shapes["encoder"]["relpos_bias"] == (R, H) and shapes["decoder"]["relpos_bias"] == (R, H)
    assert shapes["encoder"]["layers"]["attn"]["q"] == (cfg.num_layers, D, H, cfg.d_kv)
    assert shapes["decoder"]["layers"]["cross_attn"]["o"] == (cfg.num_decoder_layers, H, cfg.d_kv, D)
    assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
    assert set(params["encoder"]["layers"]["mlp"]) == (
        {"wi_0", "wi_1", "wo"} if cfg.is_gated else {"wi", "wo"}
    )
    specs = tv.t5.param_specs(cfg)
    for spec, leaf in zip(jax.tree.leaves(specs, is_leaf=tv.specs.is_spec), jax.tree.leaves(params)):
        assert len(spec.axes) == len(spec.shape) == leaf.ndim and spec.shape == leaf.shape


def test_per_layer_position_tables_are_a_layers_leaf_sharded_by_heads():
    cfg = V11.replace(relative_attention_per_layer=True)
    specs = tv.t5.param_specs(cfg)
    R, H = cfg.relative_attention_num_buckets, cfg.num_heads
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        assert "relpos_bias" not in specs[stack]
        spec = specs[stack]["layers"]["relpos_bias"]
        assert spec.shape == (n, R, H) and spec.axes == ("layers", "relpos_buckets", "heads")
        assert tv.specs.logical_to_spec(spec.axes) == jax.sharding.PartitionSpec(None, None, "model")
    table = tv.t5.init(cfg, jax.random.key(0))["decoder"]["layers"]["relpos_bias"]
    assert table.shape == (cfg.num_decoder_layers, R, H) and not np.array_equal(table[0], table[1])


@pytest.mark.parametrize("kernels", ["plain", "cpu"])
def test_per_layer_tables_that_are_equal_give_the_shared_model(model, kernels):
    """Each layer holding its stack's table is the shared model exactly; tables that differ change it."""
    cfg, params = model
    cfg = cfg.replace(kernels=kernels)
    ids, mask = batch(cfg)
    shared = _apply(params, cfg, ids, mask, ids)
    pl_cfg, pl_params = per_layer(cfg, params)
    np.testing.assert_array_equal(_apply(pl_params, pl_cfg, ids, mask, ids), shared)
    pl_cfg, pl_params = per_layer(cfg, params, jitter=0.5)
    assert np.abs(np.asarray(_apply(pl_params, pl_cfg, ids, mask, ids) - shared)).max() > 1e-2


def test_per_layer_tables_are_each_layers_own(model):
    """Every layer's table is used (each gets a gradient), and changing only the last decoder layer's table
    changes the logits (which layer reads which table: the T5X fixture in test_real_checkpoints)."""
    cfg, params = model
    ids, mask = batch(cfg)
    pl_cfg, pl_params = per_layer(cfg, params, jitter=0.5)

    def loss(table):
        p = {
            **pl_params,
            "decoder": {
                **pl_params["decoder"],
                "layers": {**pl_params["decoder"]["layers"], "relpos_bias": table},
            },
        }
        return jnp.sum(tv.t5.apply(p, pl_cfg, ids, mask, ids) ** 2)

    table = pl_params["decoder"]["layers"]["relpos_bias"]
    grads = jax.grad(loss)(table)
    assert all(np.abs(np.asarray(g)).max() > 0 for g in grads)  # every layer's table is used
    bumped = table.at[-1].add(
        jax.random.normal(jax.random.key(5), table.shape[1:])
    )  # not a constant: softmax
    assert abs(float(loss(bumped)) - float(loss(table))) > 1e-3


def test_padding_is_masked_on_both_sides(model):
    cfg, params = model
    ids, mask = batch(cfg)
    dec = jnp.asarray(np.random.default_rng(1).integers(0, cfg.vocab_size, (3, 5)))
    dmask = jnp.asarray(np.array([[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]], bool))
    junk = jnp.where(mask, ids, 5)  # different tokens under the padding
    djunk = jnp.where(dmask, dec, 3)
    h1, h2 = _encode(params, cfg, ids, mask), _encode(params, cfg, junk, mask)
    np.testing.assert_allclose(np.where(mask[..., None], h1, 0), np.where(mask[..., None], h2, 0), atol=1e-6)
    l1 = _decode(params, cfg, dec, h1, mask, dmask)
    l2 = _decode(params, cfg, djunk, h2, mask, dmask)
    np.testing.assert_allclose(
        np.where(dmask[..., None], l1, 0), np.where(dmask[..., None], l2, 0), atol=1e-5
    )
    # and the mask does matter: without it the padded keys change the result
    assert np.abs(np.asarray(_encode(params, cfg, junk, None) - h1)[1]).max() > 1e-3


def test_compute_dtype_bfloat16_is_close_to_float32(model):
    cfg, params = model
    ids, mask = batch(cfg)
    f32 = _apply(params, cfg, ids, mask, ids)
    bf16 = _apply(params, cfg.replace(dtype="bfloat16"), ids, mask, ids)
    assert bf16.dtype == jnp.float32  # logits always come back in float32
    assert np.abs(np.asarray(bf16 - f32)).max() / np.abs(np.asarray(f32)).max() < 5e-2
    p16 = tv.t5.init(cfg.replace(param_dtype="bfloat16"), jax.random.key(0))
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(p16))


def test_dropout_changes_output_only_with_a_key(model):
    """Dropout runs only with a key, and is a function of the key: the same key draws the same masks, another
    key other masks (test_kernels compares the plain and the CPU dropout streams on the whole model)."""
    cfg, params = model
    cfg = cfg.replace(dropout_rate=0.2)
    ids, mask = batch(cfg)
    a = _apply(params, cfg, ids, mask, ids)
    np.testing.assert_array_equal(a, _apply(params, cfg, ids, mask, ids))
    b = _apply(params, cfg, ids, mask, ids, dropout_key=jax.random.key(1))
    assert np.abs(np.asarray(a - b)).max() > 1e-3
    np.testing.assert_array_equal(b, _apply(params, cfg, ids, mask, ids, dropout_key=jax.random.key(1)))
    c = _apply(params, cfg, ids, mask, ids, dropout_key=jax.random.key(2))
    assert np.abs(np.asarray(c - b)).max() > 1e-3


@pytest.mark.parametrize("cfg, kernels", [(V10, "plain"), (V11, "cpu")], ids=["v1.0-plain", "v1.1-cpu"])
def test_remat_changes_memory_not_numbers(cfg, kernels):
    """Each ``T5Config.remat`` policy gives autodiff's loss and gradients (dropout on: the recomputed masks
    must be the same draws, whether from split keys or the CPU hash), and keeps less of the forward for the
    backward than "none". One backbone per dropout implementation: each case compiles three gradients."""
    params = tv.t5.init(cfg, jax.random.key(42))
    ids, mask = batch(cfg)

    def loss(p, c):
        x = tv.t5.apply_hidden(p, c, ids, mask, ids, mask, dropout_key=jax.random.key(3))
        return jnp.sum(tv.t5.token_nll(p, c, x, ids)[0] * mask)

    results, temps = {}, {}
    for remat in tv.config.REMAT:
        c = cfg.replace(dropout_rate=0.2, remat=remat, kernels=kernels)
        compiled = jax.jit(jax.value_and_grad(loss), static_argnums=1).lower(params, c).compile()
        results[remat] = compiled(params)
        temps[remat] = compiled.memory_analysis().temp_size_in_bytes
    for remat in ("dots", "full"):
        np.testing.assert_allclose(results[remat][0], results["none"][0], rtol=1e-6)
        for (path, a), b in zip(
            jax.tree_util.tree_leaves_with_path(results[remat][1]), jax.tree.leaves(results["none"][1])
        ):
            np.testing.assert_allclose(
                a, b, rtol=1e-5, atol=1e-6, err_msg=f"{remat}: {jax.tree_util.keystr(path)}"
            )
    assert temps["full"] < temps["none"], temps
    with pytest.raises(ValueError, match="remat"):
        cfg.replace(remat="some")
