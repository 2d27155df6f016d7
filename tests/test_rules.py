"""weights_convert.rules on fake flat dicts (no files, no torch): every key matched once, every leaf filled once."""

import jax
import numpy as np
import pytest

from t5vae import specs, t5
from t5vae.config import T5Config
from weights_convert import mapping, rules
from weights_convert.mapping import MappingError

V10 = T5Config(
    vocab_size=11,
    d_model=6,
    d_kv=4,
    num_heads=2,
    d_ff=10,
    num_layers=2,
    num_decoder_layers=3,
    relative_attention_num_buckets=5,
)
V11 = V10.replace(feed_forward_proj="gated-gelu", tie_word_embeddings=False)


def fake_hf_state(cfg: T5Config, seed: int = 0) -> dict:
    """A Hugging Face torch T5 state dict (names and [out, in] shapes), written out independently of rules.py."""
    rng = np.random.default_rng(seed)
    D, H, K, F, V, R = (
        cfg.d_model,
        cfg.num_heads,
        cfg.d_kv,
        cfg.d_ff,
        cfg.vocab_size,
        cfg.relative_attention_num_buckets,
    )
    r = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    sd = {"shared.weight": r(V, D)}
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        attns = [(0, "SelfAttention")] + ([(1, "EncDecAttention")] if stack == "decoder" else [])
        for i in range(n):
            for j, kind in attns:
                for p in "qkv":
                    sd[f"{stack}.block.{i}.layer.{j}.{kind}.{p}.weight"] = r(H * K, D)
                sd[f"{stack}.block.{i}.layer.{j}.{kind}.o.weight"] = r(D, H * K)
                sd[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"] = r(D)
            m = len(attns)
            for w in ("wi_0", "wi_1") if cfg.is_gated else ("wi",):
                sd[f"{stack}.block.{i}.layer.{m}.DenseReluDense.{w}.weight"] = r(F, D)
            sd[f"{stack}.block.{i}.layer.{m}.DenseReluDense.wo.weight"] = r(D, F)
            sd[f"{stack}.block.{i}.layer.{m}.layer_norm.weight"] = r(D)
        sd[f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"] = r(R, H)
        sd[f"{stack}.final_layer_norm.weight"] = r(D)
    if not cfg.tie_word_embeddings:
        sd["lm_head.weight"] = r(V, D)
    return sd


@pytest.mark.parametrize("cfg", [V10, V11], ids=["v1_0", "v1_1"])
def test_good_dict_converts(cfg):
    sd = fake_hf_state(cfg)
    params = mapping.convert_flat(sd, rules.hf_torch(cfg), cfg)
    specs.check_tree(params, t5.abstract_params(cfg), "converted")
    H, K, D = cfg.num_heads, cfg.d_kv, cfg.d_model
    q = sd["decoder.block.2.layer.1.EncDecAttention.q.weight"]  # [H*K, D]
    np.testing.assert_array_equal(params["decoder"]["layers"]["cross_attn"]["q"][2], q.T.reshape(D, H, K))
    o = sd["encoder.block.1.layer.0.SelfAttention.o.weight"]  # [D, H*K]
    np.testing.assert_array_equal(params["encoder"]["layers"]["attn"]["o"][1], o.T.reshape(H, K, D))
    # head h, dim k of q is row h*K + k of the torch weight
    np.testing.assert_array_equal(params["decoder"]["layers"]["cross_attn"]["q"][2][:, 1, 3], q[1 * K + 3])
    np.testing.assert_array_equal(
        params["decoder"]["relpos_bias"],
        sd["decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"],
    )
    np.testing.assert_array_equal(
        params["decoder"]["layers"]["mlp_norm"][1], sd["decoder.block.1.layer.2.layer_norm.weight"]
    )
    if cfg.is_gated:
        np.testing.assert_array_equal(params["lm_head"], sd["lm_head.weight"].T)
        np.testing.assert_array_equal(
            params["encoder"]["layers"]["mlp"]["wi_1"][0],
            sd["encoder.block.0.layer.1.DenseReluDense.wi_1.weight"].T,
        )


def test_tied_aliases_are_accepted_when_equal_and_may_be_the_only_copy():
    sd = fake_hf_state(V10)
    emb = sd.pop("shared.weight")
    sd["encoder.embed_tokens.weight"] = emb  # safetensors may keep any one of the tied names
    sd["lm_head.weight"] = emb.copy()  # pytorch_model.bin of a tied model stores all of them
    params = mapping.convert_flat(sd, rules.hf_torch(V10), V10)
    np.testing.assert_array_equal(params["shared"]["embedding"], emb)
    sd["decoder.embed_tokens.weight"] = emb + 1
    with pytest.raises(
        MappingError,
        match=r"(en|de)coder\.embed_tokens\.weight is declared a tied copy of shared/embedding.*differ",
    ):
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)


def test_extra_key_raises_naming_it():
    sd = fake_hf_state(V10)
    sd["encoder.block.0.layer.0.SelfAttention.q.bias"] = np.zeros(8, np.float32)
    with pytest.raises(MappingError, match=r"encoder\.block\.0\.layer\.0\.SelfAttention\.q\.bias.*no rule"):
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)


def test_lm_head_in_v11_table_but_untied_key_in_tied_config_raises():
    sd = fake_hf_state(V11)
    cfg = V11.replace(feed_forward_proj="relu")  # config says relu, checkpoint has wi_0/wi_1
    with pytest.raises(
        MappingError, match=r"DenseReluDense\.wi_0\.weight: target encoder/layers/mlp/wi_0 is not"
    ):
        mapping.convert_flat(sd, rules.hf_torch(cfg), cfg)


def test_missing_key_raises_naming_the_leaf_and_layer():
    sd = fake_hf_state(V10)
    del sd["decoder.block.1.layer.2.layer_norm.weight"]
    del sd["encoder.final_layer_norm.weight"]
    with pytest.raises(MappingError) as e:
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)
    assert "missing decoder/layers/mlp_norm (3, 6): layers [1]" in str(e.value)
    assert "missing encoder/final_norm" in str(e.value)


def test_duplicate_filled_leaf_raises():
    sd = fake_hf_state(V10)
    sd["encoder.block.01.layer.0.SelfAttention.q.weight"] = sd[
        "encoder.block.1.layer.0.SelfAttention.q.weight"
    ]
    with pytest.raises(MappingError, match=r"encoder/layers/attn/q\[1\], already filled"):
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)


def test_wrong_shape_raises_naming_key_and_expected_shape():
    sd = fake_hf_state(V10)
    k = "decoder.block.0.layer.1.EncDecAttention.k.weight"
    sd[k] = sd[k].T  # [D, H*K] instead of [H*K, D]
    with pytest.raises(MappingError, match=rf"{k.replace('.', '[.]')}: shape \(6, 8\), expected \(8, 6\)"):
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)


def test_layer_index_out_of_range_raises():
    sd = fake_hf_state(V10)
    sd["encoder.block.2.layer.0.layer_norm.weight"] = np.ones(6, np.float32)
    with pytest.raises(
        MappingError, match=r"block\.2\.layer\.0\.layer_norm\.weight: layer 2 but encoder/layers/attn_norm"
    ):
        mapping.convert_flat(sd, rules.hf_torch(V10), V10)


def _t5x_state(cfg, sd, scanned: bool) -> dict:
    """T5X names from the HF torch dict (kernels [in, out], relpos [H, R]); scanned stacks layers on axis 1."""
    out = {"target/token_embedder/embedding": sd["shared.weight"]}
    attn = {
        "encoder": [(0, "SelfAttention", "attention")],
        "decoder": [
            (0, "SelfAttention", "self_attention"),
            (1, "EncDecAttention", "encoder_decoder_attention"),
        ],
    }
    norms = {
        "encoder": ["pre_attention_layer_norm", "pre_mlp_layer_norm"],
        "decoder": ["pre_self_attention_layer_norm", "pre_cross_attention_layer_norm", "pre_mlp_layer_norm"],
    }
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        per_layer = {}
        for i in range(n):
            lay = {}
            for j, kind, name in attn[stack]:
                for p, m in zip("qkvo", ("query", "key", "value", "out")):
                    lay[f"{name}/{m}/kernel"] = sd[f"{stack}.block.{i}.layer.{j}.{kind}.{p}.weight"].T
            for j, name in enumerate(norms[stack]):
                lay[f"{name}/scale"] = sd[f"{stack}.block.{i}.layer.{j}.layer_norm.weight"]
            m = len(attn[stack])
            for w in ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo"):
                lay[f"mlp/{w}/kernel"] = sd[f"{stack}.block.{i}.layer.{m}.DenseReluDense.{w}.weight"].T
            per_layer[i] = lay
        if scanned:
            for key in per_layer[0]:
                out[f"target/{stack}/layers/{key}"] = np.stack([per_layer[i][key] for i in range(n)], axis=1)
        else:
            out.update(
                {f"target/{stack}/layers_{i}/{k}": v for i in range(n) for k, v in per_layer[i].items()}
            )
        out[f"target/{stack}/relpos_bias/rel_embedding"] = sd[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ].T
        out[f"target/{stack}/{stack}_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    if not cfg.tie_word_embeddings:
        out["target/decoder/logits_dense/kernel"] = sd["lm_head.weight"].T
    return out


@pytest.mark.parametrize("scanned", [False, True], ids=["layers_i", "scanned"])
def test_t5x_names_give_the_same_params(scanned):
    sd = fake_hf_state(V11)
    want = mapping.convert_flat(sd, rules.hf_torch(V11), V11)
    flat = _t5x_state(V11, sd, scanned)
    flat["state/param_states/encoder/encoder_norm/scale/v"] = np.zeros(6, np.float32)
    flat["state/step"] = np.array(7)
    steps, skipped = mapping.plan({k: v.shape for k, v in flat.items()}, rules.t5x(V11), V11)
    assert sorted(skipped) == ["state/param_states/encoder/encoder_norm/scale/v", "state/step"]
    got = mapping.convert_flat(
        {k: v for k, v in flat.items() if not k.startswith("state/")}, rules.t5x(V11), V11
    )
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for a, b in zip(*(jax.tree.leaves(x) for x in (got, want))):
        np.testing.assert_array_equal(a, b)


def test_t5x_scanned_and_per_layer_copies_of_one_leaf_raise():
    sd = fake_hf_state(V11)
    flat = _t5x_state(V11, sd, scanned=True)
    flat["target/encoder/layers_0/attention/query/kernel"] = flat[
        "target/encoder/layers/attention/query/kernel"
    ][:, 0]
    with pytest.raises(MappingError, match=r"already filled"):
        mapping.convert_flat(flat, rules.t5x(V11), V11)


def test_mesh_tf_slots_are_skipped_knowingly_and_unknown_slots_are_not():
    shapes = {
        "encoder/block_000/layer_000/SelfAttention/q_slot_vc": (6,),
        "shared/embedding_slot_vr": (11,),
        "global_step": (),
    }
    with pytest.raises(MappingError) as e:
        mapping.plan(shapes, rules.mesh_tf(V10), V10)
    assert "_slot_" not in str(e.value) and "global_step" not in str(e.value)  # only missing leaves reported
    shapes["encoder/block_000/layer_000/SelfAttention/q_slot_xx"] = (6,)
    with pytest.raises(MappingError, match=r"q_slot_xx \(6,\): matches no rule"):
        mapping.plan(shapes, rules.mesh_tf(V10), V10)


def test_every_rule_of_the_hf_table_is_used():
    for cfg in (V10, V11):
        sd = fake_hf_state(cfg)
        sd["lm_head.weight"] = sd.get("lm_head.weight", sd["shared.weight"])
        sd["encoder.embed_tokens.weight"] = sd["shared.weight"]
        steps, _ = mapping.plan({k: v.shape for k, v in sd.items()}, rules.hf_torch(cfg), cfg)
        used = {s.rule for s in steps}
        assert [r.pattern for r in rules.hf_torch(cfg).rules if r not in used] == []


def _with_per_layer_tables(cfg, flat: dict, scanned: bool, seed: int = 1) -> dict:
    """``flat`` (T5X names) with a relative-position table per layer in place of each stack's one: scanned
    ``{stack}/layers/relpos_bias`` [H, L, R], or flaxformer's ``{stack}/layers_i/relpos_bias`` [H, R]."""
    rng = np.random.default_rng(seed)
    tables = {}
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        del flat[f"target/{stack}/relpos_bias/rel_embedding"]
        x = tables[stack] = rng.standard_normal(
            (cfg.num_heads, n, cfg.relative_attention_num_buckets), np.float32
        )
        if scanned:
            flat[f"target/{stack}/layers/relpos_bias/rel_embedding"] = x
        else:
            flat.update({f"target/{stack}/layers_{i}/relpos_bias/rel_embedding": x[:, i] for i in range(n)})
    return tables


@pytest.mark.parametrize("scanned", [False, True], ids=["layers_i", "scanned"])
def test_t5x_per_layer_tables_fill_each_layers_table(scanned):
    flat = _t5x_state(V11, fake_hf_state(V11), scanned)
    tables = _with_per_layer_tables(V11, flat, scanned)
    with pytest.raises(MappingError, match="relpos_bias"):  # the shared-table config cannot hold them
        mapping.convert_flat(flat, rules.t5x(V11), V11)
    cfg = rules.t5x_config(V11, {k: v.shape for k, v in flat.items()}, flat.__getitem__)
    assert cfg == V11.replace(relative_attention_per_layer=True)
    got = mapping.convert_flat(flat, rules.t5x(cfg), cfg)
    specs.check_tree(got, t5.abstract_params(cfg), "converted")
    for stack, x_HLR in tables.items():
        np.testing.assert_array_equal(got[stack]["layers"]["relpos_bias"], np.transpose(x_HLR, (1, 2, 0)))
    if not scanned:
        del flat["target/decoder/layers_1/relpos_bias/rel_embedding"]
        with pytest.raises(
            MappingError, match=r"missing decoder/layers/relpos_bias \(3, 5, 2\): layers \[1\]"
        ):
            mapping.convert_flat(flat, rules.t5x(cfg), cfg)


def test_t5x_config_keeps_the_shared_table_when_every_layers_table_is_equal():
    flat = _t5x_state(V11, fake_hf_state(V11), scanned=True)
    tables = _with_per_layer_tables(V11, flat, scanned=True)
    for stack, x in tables.items():
        flat[f"target/{stack}/layers/relpos_bias/rel_embedding"] = np.broadcast_to(x[:, :1], x.shape)
    shapes = {k: v.shape for k, v in flat.items()}
    assert rules.t5x_config(V11, shapes, flat.__getitem__) == V11
    got = mapping.convert_flat(flat, rules.t5x(V11), V11)
    np.testing.assert_array_equal(got["decoder"]["relpos_bias"], tables["decoder"][:, 0].T)
    flat["target/decoder/layers/relpos_bias/rel_embedding"] = tables[
        "decoder"
    ]  # one stack differs: per layer
    assert rules.t5x_config(V11, shapes, flat.__getitem__).relative_attention_per_layer
