"""weights_convert.readers, one source format each: T5X (per-layer and scanned) and Mesh-TensorFlow checkpoints
written by the test from the same random HF weights must convert to exactly the params of the HF conversion."""

import importlib.util
import logging
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from conftest import require
from test_hf_equivalence import CONFIGS, flat_params, make_hf_model
from test_rules import _t5x_state

import t5vae as tv
from t5vae.config import T5Config
from weights_convert.convert import convert


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf(request, tmp_path_factory):
    model = make_hf_model(request.param, seed=3)
    root = tmp_path_factory.mktemp(f"fmt_{request.param}")
    model.save_pretrained(root / "hf", safe_serialization=True)
    out = convert(root / "hf", root / "hf_converted")
    sd = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    cfg = T5Config.load_json(root / "hf" / "config.json")
    return dict(root=root, sd=sd, cfg=cfg, want=flat_params(tv.load_t5(out)[1]))


def assert_same_params(out, want):
    got = flat_params(tv.load_t5(out)[1])
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def write_t5x(ckpt_dir, flat: dict):
    """A T5X checkpoint dir as t5x's Checkpointer writes it: ``checkpoint`` = flax msgpack of
    {'version': 3, 'optimizer': {'target': ..., 'state': ...}}; big leaves are zarr tensorstores whose relative
    path is the '.'-joined param name, small ones (norm scales here, as for unpartitioned params) stay inline."""
    serialization = require("flax.serialization")
    ts = require("tensorstore")
    tree = {}
    for name, arr in flat.items():
        leaf = arr
        if arr.ndim >= 2:
            spec = {
                "driver": "zarr",
                "dtype": arr.dtype.name,
                "kvstore": {"driver": "file", "path": name.replace("/", ".")},
                "metadata": {
                    "compressor": {"id": "gzip"},
                    "shape": list(arr.shape),
                    "chunks": list(arr.shape),
                },
            }
            abs_spec = {
                **spec,
                "kvstore": {"driver": "file", "path": str(ckpt_dir / spec["kvstore"]["path"])},
            }
            ts.open(abs_spec, create=True, open=True).result().write(arr).result()
            leaf = spec
        node = tree
        *parents, last = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = leaf
    (ckpt_dir / "checkpoint").write_bytes(serialization.to_bytes({"version": 3, "optimizer": tree}))


@pytest.mark.parametrize("scanned", [False, True], ids=["layers_i", "scanned"])
def test_t5x_checkpoint(hf, scanned, tmp_path, caplog):
    ckpt = tmp_path / "model" / "checkpoint_1000"
    ckpt.mkdir(parents=True)
    flat = _t5x_state(hf["cfg"], hf["sd"], scanned)
    flat["state/step"] = np.array(1000, np.int32)
    flat["state/param_states/decoder/decoder_norm/scale/v"] = np.zeros(hf["cfg"].d_model, np.float32)
    flat["state/param_states/token_embedder/embedding/v_row"] = np.zeros(
        (hf["cfg"].vocab_size, 4), np.float32
    )
    write_t5x(ckpt, flat)
    assert list(ckpt.glob("target.encoder.*")), "arrays must live in tensorstore directories"
    with caplog.at_level(logging.INFO, logger="weights_convert"):
        # the model dir (latest checkpoint_N is picked), a config.json given explicitly
        out = convert(tmp_path / "model", tmp_path / "out", config=str(hf["root"] / "hf" / "config.json"))
    assert "skipping 3 tensors: T5X optimizer state" in caplog.text
    assert_same_params(out, hf["want"])


MTF_WRITER = textwrap.dedent("""
    import sys, numpy as np, tensorflow as tf
    arrays = dict(np.load(sys.argv[1]))
    names = sorted(arrays)
    tf.raw_ops.SaveV2(prefix=sys.argv[2], tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[arrays[n] for n in names])
""")


def mesh_tf_names(cfg, sd) -> dict:
    """The original Mesh-TF T5 variable names from the HF torch dict: kernels [in, out], relpos [H, R]."""
    out = {"shared/embedding": sd["shared.weight"], "global_step": np.array(1000, np.int64)}
    for stack, n in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        kinds = ["SelfAttention"] + (["EncDecAttention"] if stack == "decoder" else [])
        for i in range(n):
            for j, kind in enumerate(kinds):
                for p in "qkvo":
                    out[f"{stack}/block_{i:03d}/layer_{j:03d}/{kind}/{p}"] = sd[
                        f"{stack}.block.{i}.layer.{j}.{kind}.{p}.weight"
                    ].T
                out[f"{stack}/block_{i:03d}/layer_{j:03d}/layer_norm/scale"] = sd[
                    f"{stack}.block.{i}.layer.{j}.layer_norm.weight"
                ]
            m = len(kinds)
            for w in ("wi_0", "wi_1", "wo") if cfg.is_gated else ("wi", "wo"):
                out[f"{stack}/block_{i:03d}/layer_{m:03d}/DenseReluDense/{w}/kernel"] = sd[
                    f"{stack}.block.{i}.layer.{m}.DenseReluDense.{w}.weight"
                ].T
            out[f"{stack}/block_{i:03d}/layer_{m:03d}/layer_norm/scale"] = sd[
                f"{stack}.block.{i}.layer.{m}.layer_norm.weight"
            ]
        out[f"{stack}/block_000/layer_000/SelfAttention/relative_attention_bias"] = sd[
            f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        ].T
        out[f"{stack}/final_layer_norm/scale"] = sd[f"{stack}.final_layer_norm.weight"]
    if not cfg.tie_word_embeddings:
        out["decoder/logits/kernel"] = sd["lm_head.weight"].T
    # Adafactor slots, factored (vr/vc) and not (v): skipped knowingly
    out["shared/embedding_slot_vr"] = np.zeros(cfg.vocab_size, np.float32)
    out["shared/embedding_slot_vc"] = np.zeros(cfg.d_model, np.float32)
    out["encoder/final_layer_norm/scale_slot_v"] = np.zeros(cfg.d_model, np.float32)
    return out


def test_mesh_tf_checkpoint_written_by_tensorflow(hf, tmp_path, caplog):
    if importlib.util.find_spec("tensorflow") is None:
        require("tensorflow")  # skips locally, fails under CI=true
    arrays = mesh_tf_names(hf["cfg"], hf["sd"])
    np.savez(tmp_path / "arrays.npz", **arrays)
    ckpt = tmp_path / "mtf"
    ckpt.mkdir()
    r = subprocess.run(
        [sys.executable, "-c", MTF_WRITER, str(tmp_path / "arrays.npz"), str(ckpt / "model.ckpt-1000")],
        capture_output=True,
        text=True,
        timeout=300,
        env={"CUDA_VISIBLE_DEVICES": "", "PATH": ""},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (ckpt / "model.ckpt-1000.index").is_file()
    with caplog.at_level(logging.INFO, logger="weights_convert"):
        out = convert(ckpt, tmp_path / "out", config=str(hf["root"] / "hf" / "config.json"))
    assert "skipping 3 tensors: Adafactor optimizer slot" in caplog.text
    assert "skipping 1 tensors: training step counter" in caplog.text
    assert_same_params(out, hf["want"])
    # without a config the shapes give everything but max_distance (logged as assumed)
    with caplog.at_level(logging.WARNING, logger="weights_convert"):
        out2 = convert(ckpt / "model.ckpt-1000.index", tmp_path / "out2")
    assert "inferred" in caplog.text
    cfg2 = tv.load_t5(out2)[0]
    want = hf["cfg"].replace(relative_attention_max_distance=128, dropout_rate=cfg2.dropout_rate)
    assert cfg2 == want
    assert_same_params(out2, hf["want"])
