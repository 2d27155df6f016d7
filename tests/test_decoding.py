"""Decoding (t5vae.decoding): the KV cache against a full recompute, EOS and padding, sampling, top-k/top-p,
beam search against brute force, DecoderWeights, argument errors, and the plain step against the CPU one."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from references import greedy_uncached
from tiny import V10, V11, batch, per_layer

import t5vae as tv
from t5vae import decoding, kernels
from t5vae.decoding import _filter_logits, decoder_weights, generate

_encode = jax.jit(tv.t5.encode, static_argnums=1)
_decode = jax.jit(tv.t5.decode, static_argnums=1)


@pytest.fixture(scope="module", params=[V10, V11], ids=["v1.0", "v1.1"])
def model(request):
    cfg = request.param
    return cfg, tv.t5.init(cfg, jax.random.key(42))


def uncached_greedy(params, cfg, ids, mask, T):
    """Greedy decoding by re-running the full decoder on the whole prefix each step (no cache)."""
    return greedy_uncached(params, cfg, _encode(params, cfg, ids, mask), mask, T)


def test_kv_cache_greedy_equals_full_recompute(model):
    cfg, params = model
    cfg = cfg.replace(eos_token_id=cfg.vocab_size + 5)  # never emitted: run the full length
    ids, mask = batch(cfg)
    got = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=7)
    assert got.shape == (3, 7) and got.dtype == jnp.int32
    np.testing.assert_array_equal(got, uncached_greedy(params, cfg, ids, mask, 7))


def test_generation_stops_at_eos_and_pads():
    cfg = V11.replace(
        eos_token_id=8
    )  # this init emits 8 first in one row, later in another, never in a third
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
    top1 = tv.t5.generate(
        params, cfg, ids, mask, max_new_tokens=6, method="sample", key=jax.random.key(3), top_k=1
    )
    beam1 = tv.t5.generate(params, cfg, ids, mask, max_new_tokens=6, method="beam", num_beams=1)
    np.testing.assert_array_equal(top1, greedy)
    np.testing.assert_array_equal(beam1, greedy)
    hot = tv.t5.generate(
        params, cfg, ids, mask, max_new_tokens=6, method="sample", key=jax.random.key(3), temperature=5.0
    )
    assert not np.array_equal(hot, greedy)


def test_decoder_weights_built_once_give_the_same_tokens(model):
    cfg, params = model
    ids, mask = batch(cfg)
    w = decoder_weights(params, cfg)
    assert decoder_weights(w, cfg) is w
    for kw in ({}, {"method": "beam", "num_beams": 2}, {"method": "sample", "key": jax.random.key(3)}):
        np.testing.assert_array_equal(
            tv.t5.generate(params, cfg, ids, mask, 6, decoder_weights=w, **kw),
            tv.t5.generate(params, cfg, ids, mask, 6, **kw),
            err_msg=str(kw),
        )


def test_decoder_weights_for_another_config_are_named():
    p10, p11 = tv.t5.init(V10, jax.random.key(0)), tv.t5.init(V11, jax.random.key(0))
    h = jnp.zeros((2, 3, V10.d_model))
    with pytest.raises(
        ValueError,
        match=r"DecoderWeights do not match the config: .*lm_head: \(16, 7\) "
        r"\(config wants \(16, 11\)\)",
    ):
        generate(decoder_weights(p10, V10), V11, h, None, 4)
    with pytest.raises(ValueError, match=r"layers: 3 \(config wants 2\)"):
        generate(decoder_weights(p11, V11), V11.replace(num_decoder_layers=2), h, None, 4)
    with pytest.raises(ValueError, match=r"dtype: float32 \(config's compute dtype is bfloat16\)"):
        generate(decoder_weights(p10, V10), V10.replace(dtype="bfloat16"), h, None, 4)
    with pytest.raises(ValueError, match=r"relpos_bias: \(8, 3\) \(config wants \(3, 8, 3\)\)"):
        generate(decoder_weights(p11, V11), V11.replace(relative_attention_per_layer=True), h, None, 4)
    for k in ("cpu", "plain"):  # the DecoderWeights builder's check, and generate's own
        with pytest.raises(
            ValueError,
            match=r"needs a T5 params tree .* got \['t5'\] \(a T5-VAE's tree\? pass "
            r"its params\['t5'\]\)",
        ):
            generate({"t5": p10}, V10.replace(kernels=k), h, None, 4)


def test_top_p_keeps_the_smallest_nucleus():
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
        rep = lambda x: jnp.repeat(x[b : b + 1], len(seqs), 0)  # noqa: E731
        lp = np.asarray(jax.nn.log_softmax(_decode(params, cfg, jnp.asarray(dec), rep(h), rep(mask)), -1))
        tok_lp = np.take_along_axis(lp, seqs[..., None], -1)[..., 0]
        total = np.where(np.arange(T)[None] < n[:, None], tok_lp, 0).sum(1) / n**length_penalty
        i = int(np.argmax(total))
        best.append(np.where(np.arange(T) < n[i], seqs[i], 0))
    got = generate(
        params,
        cfg,
        h,
        mask,
        T,
        method="beam",
        num_beams=cfg.vocab_size ** (T - 1),
        length_penalty=length_penalty,
    )
    np.testing.assert_array_equal(got, np.asarray(best))
    every = generate(
        params, cfg, h, mask, T, method="beam", num_beams=8, length_penalty=length_penalty, all_beams=True
    )
    assert every.shape == (2, 8, T)
    np.testing.assert_array_equal(every[:, 0], got)  # best first
    for b, row in enumerate(np.asarray(every)):  # then the others, by falling score
        rep = lambda x: jnp.repeat(x[b : b + 1], len(row), 0)  # noqa: E731
        dec = np.concatenate([np.zeros((len(row), 1), int), row[:, :-1]], 1)
        lp = np.asarray(jax.nn.log_softmax(_decode(params, cfg, jnp.asarray(dec), rep(h), rep(mask)), -1))
        m = np.where((row == 1).any(1), (row == 1).argmax(1) + 1, T)
        tok_lp = np.take_along_axis(lp, row[..., None], -1)[..., 0]
        scores = np.where(np.arange(T)[None] < m[:, None], tok_lp, 0).sum(1) / m**length_penalty
        assert len({tuple(r) for r in row}) == 8 and (np.diff(scores) <= 1e-5).all(), scores


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
    with pytest.raises(ValueError, match="all_beams"):
        generate(params, cfg, jnp.zeros((2, 3, cfg.d_model)), None, 4, all_beams=True)


def test_plain_and_cpu_kernels_decode_the_same_tokens(model):
    """The plain decode step (a scan over the stacked params) and the CPU fast paths (decoding on
    DecoderWeights) pick the same tokens, greedy over the full length and by beam search."""
    cfg, params = model
    if cfg.tie_word_embeddings:  # a random tied model feeds its own token back forever; a smaller embedding
        params = {
            **params,
            "shared": {"embedding": params["shared"]["embedding"] * 0.1},
        }  # lets the layers decide
    ids, mask = batch(cfg)
    assert not kernels.ops(cfg.replace(kernels="plain")).decoder_layout
    assert kernels.ops(cfg.replace(kernels="cpu")).decoder_layout
    out = {}
    for k in ("plain", "cpu"):
        c = cfg.replace(kernels=k)
        never = c.replace(eos_token_id=c.vocab_size + 5)  # never emitted: every greedy step is compared
        out[k] = (
            np.asarray(tv.t5.generate(params, never, ids, mask, max_new_tokens=7)),
            np.asarray(tv.t5.generate(params, c, ids, mask, max_new_tokens=5, method="beam", num_beams=3)),
        )
    np.testing.assert_array_equal(out["plain"][0], out["cpu"][0])
    np.testing.assert_array_equal(out["plain"][1], out["cpu"][1])
    for tokens in out["plain"]:
        assert len(np.unique(tokens)) > 1  # not one constant token: the comparison can fail


@pytest.mark.parametrize("kernels_", ["plain", "cpu"])
def test_per_layer_tables_cached_steps_equal_the_full_forward(model, kernels_):
    """Per-layer position tables that differ: every cached step (the plain scan, or DecoderWeights) gives the
    teacher-forced logits at its position and greedy decoding the uncached tokens; tables all equal to the
    shared one decode the shared model's tokens."""
    cfg, params = model
    cfg = cfg.replace(kernels=kernels_, eos_token_id=cfg.vocab_size + 5)  # never emitted: the full length
    pl_cfg, pl_params = per_layer(cfg, params, jitter=0.5)
    ids, mask = batch(cfg)
    h = _encode(pl_params, pl_cfg, ids, mask)
    dec = jnp.asarray(np.random.default_rng(2).integers(0, cfg.vocab_size, (3, 6)))
    want = np.asarray(_decode(pl_params, pl_cfg, dec, h, mask))
    w = decoder_weights(pl_params, pl_cfg) if kernels.ops(pl_cfg).decoder_layout else pl_params
    cross_kv_of, cache_of, step, _ = decoding._decoder(w, pl_cfg)
    cross_kv, cache = cross_kv_of(w, pl_cfg, h), cache_of(pl_cfg, 3, 6)
    for t in range(6):
        logits, cache = step(w, pl_cfg, cross_kv, dec[:, t], jnp.int32(t), cache, mask[:, None, :])
        np.testing.assert_allclose(logits, want[:, t], rtol=1e-5, atol=1e-5, err_msg=f"step {t}")
    np.testing.assert_array_equal(
        tv.t5.generate(pl_params, pl_cfg, ids, mask, 7), uncached_greedy(pl_params, pl_cfg, ids, mask, 7)
    )
    eq_cfg, eq_params = per_layer(cfg, params)
    np.testing.assert_array_equal(
        tv.t5.generate(eq_params, eq_cfg, ids, mask, 7), tv.t5.generate(params, cfg, ids, mask, 7)
    )


def test_ids_past_the_tokenizer_are_never_generated():
    """T5 checkpoints have more embedding rows than tokenizer pieces (32128 vs 32100): with ``vocab_limit``
    those rows are never produced, even when their logits are the largest."""
    cfg = V11
    params = tv.t5.init(cfg, jax.random.key(42))
    limit = cfg.vocab_size - 6
    params["lm_head"] = params["lm_head"].at[:, limit:].add(5.0)  # the unknown ids now win every step
    ids, mask = batch(cfg)
    kinds = [{}, {"method": "beam", "num_beams": 3}, {"method": "sample", "key": jax.random.key(1)}]
    for kw in kinds:
        free = np.asarray(tv.t5.generate(params, cfg, ids, mask, max_new_tokens=5, **kw))
        assert (free >= limit).any(), kw  # the test can fail: without the limit they are generated
        held = np.asarray(tv.t5.generate(params, cfg, ids, mask, max_new_tokens=5, vocab_limit=limit, **kw))
        assert (held < limit).all(), kw
    with pytest.raises(ValueError, match="vocab_limit must be an int above 2"):
        tv.t5.generate(params, cfg, ids, mask, max_new_tokens=2, vocab_limit=0)
