"""The T5 backbone's own contracts: spec tree, masks, dtypes, KV-cache decoding, config and checkpoints."""
import itertools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

import t5vae as tv
from t5vae.generate import decoder_weights, generate

V10 = tv.T5Config(vocab_size=7, d_model=16, d_kv=6, d_ff=24, num_layers=2, num_decoder_layers=3, num_heads=3,
                  relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0)
V11 = V10.replace(feed_forward_proj="gated-gelu", tie_word_embeddings=False, vocab_size=11)

# compiled once per config and shared by every test
_encode = jax.jit(tv.t5.encode, static_argnums=1)
_decode = jax.jit(tv.t5.decode, static_argnums=1)
_apply = jax.jit(tv.t5.apply, static_argnums=1)


@pytest.fixture(scope="module", params=[V10, V11], ids=["v1.0", "v1.1"])
def model(request):
    cfg = request.param
    return cfg, tv.t5.init(cfg, jax.random.key(42))


def batch(cfg, B=3, L=6, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, cfg.vocab_size, size=(B, L))
    mask = np.ones((B, L), bool)
    mask[1, 4:] = False
    mask[2:, 2:] = False
    return jnp.asarray(np.where(mask, ids, 0)), jnp.asarray(mask)


def test_spec_tree_shapes_and_one_bias_table_per_stack(model):
    cfg, params = model
    shapes = jax.tree.map(lambda x: x.shape, params)
    R, H, D = cfg.relative_attention_num_buckets, cfg.num_heads, cfg.d_model
    assert shapes["encoder"]["relpos_bias"] == (R, H) and shapes["decoder"]["relpos_bias"] == (R, H)
    assert shapes["encoder"]["layers"]["attn"]["q"] == (cfg.num_layers, D, H, cfg.d_kv)
    assert shapes["decoder"]["layers"]["cross_attn"]["o"] == (cfg.num_decoder_layers, H, cfg.d_kv, D)
    assert ("lm_head" in params) == (not cfg.tie_word_embeddings)
    assert set(params["encoder"]["layers"]["mlp"]) == ({"wi_0", "wi_1", "wo"} if cfg.is_gated else {"wi", "wo"})
    specs = tv.t5.param_specs(cfg)
    for spec, leaf in zip(jax.tree.leaves(specs, is_leaf=tv.t5.is_spec), jax.tree.leaves(params)):
        assert len(spec.axes) == len(spec.shape) == leaf.ndim and spec.shape == leaf.shape


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
    np.testing.assert_allclose(np.where(dmask[..., None], l1, 0), np.where(dmask[..., None], l2, 0), atol=1e-5)
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
    cfg, params = model
    cfg = cfg.replace(dropout_rate=0.2)
    ids, mask = batch(cfg)
    a = _apply(params, cfg, ids, mask, ids)
    np.testing.assert_array_equal(a, _apply(params, cfg, ids, mask, ids))
    b = _apply(params, cfg, ids, mask, ids, dropout_key=jax.random.key(1))
    assert np.abs(np.asarray(a - b)).max() > 1e-3




def test_remat_changes_memory_not_numbers(model):
    """Each ``T5Config.remat`` policy gives autodiff's loss and gradients (dropout on: the recomputed masks
    must be the same draws), and keeps less of the forward for the backward than "none"."""
    cfg, params = model
    ids, mask = batch(cfg)

    def loss(p, c):
        x = tv.t5.apply_hidden(p, c, ids, mask, ids, mask, dropout_key=jax.random.key(3))
        return jnp.sum(tv.t5.token_nll(p, c, x, ids)[0] * mask)

    results, temps = {}, {}
    for remat in tv.config.REMAT:
        c = cfg.replace(dropout_rate=0.2, remat=remat)
        compiled = jax.jit(jax.value_and_grad(loss), static_argnums=1).lower(params, c).compile()
        results[remat] = compiled(params)
        temps[remat] = compiled.memory_analysis().temp_size_in_bytes
    for remat in ("dots", "full"):
        np.testing.assert_allclose(results[remat][0], results["none"][0], rtol=1e-6)
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(results[remat][1]),
                                jax.tree.leaves(results["none"][1])):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{remat}: {jax.tree_util.keystr(path)}")
    assert temps["full"] < temps["none"], temps
    with pytest.raises(ValueError, match="remat"):
        cfg.replace(remat="some")


def uncached_greedy(params, cfg, ids, mask, T):
    """Greedy decoding by re-running the full decoder on the whole prefix each step (no cache)."""
    h = _encode(params, cfg, ids, mask)
    dec = np.full((ids.shape[0], T), cfg.decoder_start_token_id)  # fixed shape: one compile
    out = np.zeros_like(dec)
    for t in range(T):
        out[:, t] = np.asarray(jnp.argmax(_decode(params, cfg, jnp.asarray(dec), h, mask)[:, t], -1))
        if t + 1 < T:
            dec[:, t + 1] = out[:, t]
    after_eos = np.cumsum(out == cfg.eos_token_id, 1) - (out == cfg.eos_token_id) > 0
    return np.where(after_eos, cfg.pad_token_id, out)


def test_kv_cache_greedy_equals_full_recompute(model):
    cfg, params = model
    cfg = cfg.replace(eos_token_id=cfg.vocab_size + 5)  # never emitted: run the full length
    ids, mask = batch(cfg)
    got = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=7)
    assert got.shape == (3, 7) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, uncached_greedy(params, cfg, ids, mask, 7))


def test_generation_stops_at_eos_and_pads():
    cfg = V11.replace(eos_token_id=8)  # this init emits 8 first in one row, later in another, never in a third
    params = tv.t5.init(cfg, jax.random.key(42))
    ids, mask = batch(cfg)
    want = uncached_greedy(params, cfg, ids, mask, 9)
    got = np.asarray(tv.t5.generate(params, cfg, ids, mask, max_new_tokens=9))
    np.testing.assert_array_equal(got, want)
    stops = [list(row).index(8) if 8 in row else None for row in want]
    assert stops[2] == 0 and stops[1] not in (None, 0) and stops[0] is None, stops
    assert (want[2, 1:] == cfg.pad_token_id).all()


def test_sampling_and_beam_reduce_to_greedy(model):
    cfg, params = model
    ids, mask = batch(cfg)
    greedy = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=6)
    top1 = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=6, method="sample", key=jax.random.key(3), top_k=1)
    beam1 = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=6, method="beam", num_beams=1)
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(beam1, greedy)
    hot = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=6, method="sample", key=jax.random.key(3),
                         temperature=5.0)
    assert not np.array_equal(hot, greedy)


def test_decoder_weights_built_once_give_the_same_tokens(model):
    cfg, params = model
    ids, mask = batch(cfg)
    w = decoder_weights(params, cfg)
    assert decoder_weights(w, cfg) is w
    for kw in ({}, {"method": "beam", "num_beams": 2}, {"method": "sample", "key": jax.random.key(3)}):
        np.testing.assert_array_equal(tv.t5.generate(params, cfg, ids, mask, 6, decoder_weights=w, **kw),
                                      tv.t5.generate(params, cfg, ids, mask, 6, **kw), err_msg=str(kw))


def test_decoder_weights_for_another_config_are_named():
    p10, p11 = tv.t5.init(V10, jax.random.key(0)), tv.t5.init(V11, jax.random.key(0))
    h = jnp.zeros((2, 3, V10.d_model))
    with pytest.raises(ValueError, match=r"DecoderWeights do not match the config: .*lm_head: \(16, 7\) "
                                         r"\(config wants \(16, 11\)\)"):
        generate(decoder_weights(p10, V10), V11, h, None, 4)
    with pytest.raises(ValueError, match=r"layers: 3 \(config wants 2\)"):
        generate(decoder_weights(p11, V11), V11.replace(num_decoder_layers=2), h, None, 4)
    with pytest.raises(ValueError, match=r"dtype: float32 \(config's compute dtype is bfloat16\)"):
        generate(decoder_weights(p10, V10), V10.replace(dtype="bfloat16"), h, None, 4)
    with pytest.raises(ValueError, match=r"needs a T5 params tree .* got \['t5'\] \(a T5-VAE's tree\? pass its "
                                         r"params\['t5'\]\)"):
        generate({"t5": p10}, V10, h, None, 4)


def test_top_p_keeps_the_smallest_nucleus():
    from t5vae.generate import _filter_logits

    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
    kept = np.isfinite(np.asarray(_filter_logits(logits, 1.0, 0, 0.75)))
    np.testing.assert_array_equal(kept, [[True, True, False, False]])
    kept = np.isfinite(np.asarray(_filter_logits(logits, 1.0, 0, 0.1)))
    np.testing.assert_array_equal(kept, [[True, False, False, False]])
    kept = np.isfinite(np.asarray(_filter_logits(logits, 1.0, 3, 1.0)))
    np.testing.assert_array_equal(kept, [[True, True, True, False]])


@pytest.mark.parametrize("length_penalty", [0.0, 1.0])
def test_exhaustive_beam_finds_the_best_sequence(length_penalty):
    cfg = V10.replace(vocab_size=5, eos_token_id=1)
    params = tv.t5.init(cfg, jax.random.key(7))
    ids, mask = batch(cfg, B=2)
    T = 3
    h = _encode(params, cfg, ids, mask)
    seqs = np.array(list(itertools.product(range(cfg.vocab_size), repeat=T)))  # every sequence
    n = np.where((seqs == 1).any(1), (seqs == 1).argmax(1) + 1, T)  # length up to and including EOS
    dec = np.concatenate([np.zeros((len(seqs), 1), int), seqs[:, :-1]], 1)
    best = []
    for b in range(2):  # brute force, one batched teacher-forced pass per input row
        rep = lambda x: jnp.repeat(x[b:b + 1], len(seqs), 0)  # noqa: E731
        lp = np.asarray(jax.nn.log_softmax(_decode(params, cfg, jnp.asarray(dec), rep(h), rep(mask)), -1))
        tok_lp = np.take_along_axis(lp, seqs[..., None], -1)[..., 0]
        total = np.where(np.arange(T)[None] < n[:, None], tok_lp, 0).sum(1) / n ** length_penalty
        i = int(np.argmax(total))
        best.append(np.where(np.arange(T) < n[i], seqs[i], 0))
    got = generate(params, cfg, h, mask, T, method="beam", num_beams=cfg.vocab_size ** (T - 1),
                   length_penalty=length_penalty)
    np.testing.assert_array_equal(got, np.asarray(best))


def test_generate_rejects_bad_arguments(model):
    cfg, params = model
    ids, mask = batch(cfg)
    with pytest.raises(ValueError, match="max_new_tokens"):
        tv.t5.generate(params, cfg, ids, mask, max_new_tokens=0)
    with pytest.raises(ValueError, match="d_model"):
        generate(params, cfg, jnp.zeros((2, 3, cfg.d_model + 1)), None, 4)
    with pytest.raises(ValueError, match="method"):
        generate(params, cfg, jnp.zeros((2, 3, cfg.d_model)), None, 4, method="nucleus")
    with pytest.raises(ValueError, match="key"):
        generate(params, cfg, jnp.zeros((2, 3, cfg.d_model)), None, 4, method="sample")


def test_config_round_trips_through_hf_json(tmp_path):
    V11.replace(remat="full").save_json(tmp_path / "config.json")
    assert "remat" not in (tmp_path / "config.json").read_text()  # a run-time choice, like dtype
    assert tv.T5Config.load_json(tmp_path / "config.json") == V11
    assert V11.activation == "gelu_new" and V10.activation == "relu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        tv.T5Config(feed_forward_proj="gated-swish")
    with pytest.raises(ValueError, match="num_heads"):
        tv.T5Config(num_heads=0)
    with pytest.raises(ValueError, match="model_type"):
        tv.T5Config.from_hf_dict({"model_type": "bart"})
    assert tv.preset("t5-small").d_ff == 2048
    with pytest.raises(ValueError, match="unknown T5 preset"):
        tv.preset("t5-gigantic")


def test_save_load_round_trip_and_shape_errors(tmp_path, model):
    cfg, params = model
    out = tmp_path / "t5"
    tv.save_t5(out, cfg, params)
    cfg2, params2 = tv.load_t5(out)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    with pytest.raises(FileExistsError, match="already exists"):
        tv.save_t5(out, cfg, params)
    bad = jax.tree.map(lambda x: x, params)
    bad["encoder"]["final_norm"] = jnp.ones((cfg.d_model + 1,))
    with pytest.raises(ValueError, match=r"\['encoder'\]\['final_norm'\]: shape"):
        tv.save_t5(tmp_path / "bad", cfg, bad)
    assert not (tmp_path / "bad").exists()
    # a config that disagrees with the stored params is caught on load, naming the leaf
    cfg.replace(d_ff=cfg.d_ff + 2).save_json(out / "config.json")
    with pytest.raises(ValueError, match="mlp"):
        tv.load_t5(out)
    with pytest.raises(FileNotFoundError, match="config.json"):
        tv.load_t5(tmp_path / "nowhere")
