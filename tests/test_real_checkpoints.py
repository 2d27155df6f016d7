"""Checkpoints written by the real T5X, flaxformer and Mesh-TensorFlow libraries (tests/fixtures/real, made by
tests/fixtures/make_real_checkpoints.py) convert to logits within 1e-5 of the writer's own, with none of those
libraries installed."""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require
from references import greedy_uncached

import t5vae as tv
from t5vae.config import T5Config
from weights_convert import mapping, readers, rules
from weights_convert.convert import convert
from weights_convert.rules import ConversionError

REAL = Path(__file__).parent / "fixtures" / "real"
FIXTURES = sorted(p.name for p in REAL.iterdir() if (p / "expected.npz").is_file())
WRITERS = {
    "mesh_tf_v1_1": "mesh-tensorflow 0.1.21",
    "mesh_tf_v1_0": "mesh-tensorflow 0.1.21",
    "mesh_tf_snappy": "mesh-tensorflow 0.1.21",
    "t5x_legacy_f32": "t5x cc342d4 (legacy Checkpointer, float32)",
    "t5x_legacy_bf16": "t5x cc342d4 (legacy Checkpointer, bfloat16)",
    "t5x_orbax": "t5x cc342d4 (OrbaxCheckpointManagerInterface)",
    "t5x_scanned": "t5x cc342d4 (scalable_t5",
    "t5x_scanned_per_layer": "t5x cc342d4 (scalable_t5 scan_layers=True, OrbaxCheckpointManagerInterface; "
    "per-layer relative-position tables as trained)",
    "flaxformer_t5_1_1": "module flaxformer 399ea3a t5_1_1_flaxformer.gin",
}


def test_every_format_has_a_fixture():
    assert set(WRITERS) <= set(FIXTURES), f"missing fixtures: {set(WRITERS) - set(FIXTURES)}"


def test_fixtures_are_tiny():
    for name in FIXTURES:
        size = sum(f.stat().st_size for f in (REAL / name).rglob("*") if f.is_file())
        assert size < 600_000, f"{name}: {size} bytes"


@pytest.mark.parametrize("name", FIXTURES)
def test_converts_to_the_writers_logits(name, tmp_path):
    if name == "mesh_tf_snappy":
        require("cramjam")
    src = REAL / name
    assert WRITERS.get(name, "") in (src / "WRITER").read_text()
    out = convert(src, tmp_path / "out")
    cfg, params = tv.load_t5(out)
    want = np.load(src / "expected.npz")
    ids, dec = want["input_ids"], want["decoder_input_ids"]
    logits = tv.t5.apply(params, cfg, ids, np.ones_like(ids), dec)
    assert logits.shape == want["logits"].shape
    np.testing.assert_allclose(np.asarray(logits), want["logits"], rtol=0, atol=1e-5)


def test_a_snappy_index_without_cramjam_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_cramjam(name, *a, **k):
        if name == "cramjam":
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_cramjam)
    with pytest.raises(ConversionError, match=r"model\.ckpt-3\.index.*snappy.*t5vae\[snappy\]"):
        convert(REAL / "mesh_tf_snappy", tmp_path / "out")


def test_a_corrupt_snappy_block_is_a_named_error(tmp_path):
    require("cramjam")
    src = tmp_path / "src"
    shutil.copytree(REAL / "mesh_tf_snappy", src)
    index = src / "model.ckpt-3.index"
    data = bytearray(index.read_bytes())
    data[3:40] = b"\xff" * 37  # inside the first (compressed) data block
    index.write_bytes(bytes(data))
    with pytest.raises(
        ConversionError, match=r"model\.ckpt-3\.index: not a readable TensorFlow checkpoint index"
    ):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_model_directory_converts_its_newest_step_of_either_format(tmp_path):
    models = tmp_path / "model_dir"
    shutil.copytree(REAL / "t5x_legacy_f32" / "checkpoint_1", models / "checkpoint_1")
    shutil.copytree(REAL / "t5x_orbax" / "checkpoint_1", models / "checkpoint_12")
    fmt, read = readers.detect(models)
    assert fmt == "t5x" and read().what == str(models / "checkpoint_12")
    for src in (
        models / "checkpoint_12",
        models / "checkpoint_12" / "state",
        models / "checkpoint_12" / "state" / "_METADATA",
    ):
        assert readers.detect(src)[1]().what in (
            str(models / "checkpoint_12"),
            str(models / "checkpoint_12/state"),
        )


def test_orbax_skips_the_optimizer_state_and_reads_every_target_leaf():
    tensors = readers.detect(REAL / "t5x_orbax")[1]()
    assert tensors.skipped and all(k.startswith("state/") for k in tensors.skipped)
    assert all(k.startswith("target/") for k in tensors.shapes)
    assert tensors.load("target/encoder/layers_0/attention/query/kernel").shape == (16, 16)


def test_a_scanned_config_is_inferred_from_the_shapes(tmp_path):
    src = tmp_path / "scanned"
    shutil.copytree(REAL / "t5x_scanned", src)
    (src / "config.json").unlink()
    cfg = tv.load_t5(convert(src, tmp_path / "out"))[0]
    want = json.loads((REAL / "t5x_scanned" / "config.json").read_text())
    assert {
        k: getattr(cfg, k)
        for k in (
            "d_model",
            "d_kv",
            "d_ff",
            "num_heads",
            "num_layers",
            "vocab_size",
            "relative_attention_num_buckets",
        )
    } == {
        k: want[k]
        for k in (
            "d_model",
            "d_kv",
            "d_ff",
            "num_heads",
            "num_layers",
            "vocab_size",
            "relative_attention_num_buckets",
        )
    }


def _scanned_arrays(name):
    tensors = readers.detect(REAL / name)[1]()
    return {k: tensors.load(k) for k in list(tensors.shapes)}


def test_per_layer_tables_that_differ_convert_to_the_per_layer_model(tmp_path):
    """scalable_t5's trained tables differ per layer: the converter picks the per-layer model (the writer's
    logits: test_converts_to_the_writers_logits); the shared model with layer 0's table is far from them, and a
    config that insists on one table per stack is refused naming the key. The fixture with equal tables keeps
    the shared table."""
    key = "target/decoder/decoder/relpos_bias/rel_embedding"
    cfg, params = tv.load_t5(convert(REAL / "t5x_scanned_per_layer", tmp_path / "out"))
    assert cfg.relative_attention_per_layer and params["encoder"]["layers"]["relpos_bias"].shape == (2, 32, 2)
    assert not tv.load_t5(convert(REAL / "t5x_scanned", tmp_path / "shared"))[0].relative_attention_per_layer
    shared = T5Config.from_dict(
        json.loads((REAL / "t5x_scanned_per_layer" / "config.json").read_text()), hf=True
    )
    arrays = _scanned_arrays("t5x_scanned_per_layer")
    assert arrays[key].shape == (2, 2, 32)  # [H, L, R]
    with pytest.raises(mapping.MappingError, match=re.escape(key) + r".*layers \[1\] differ from layer 0"):
        mapping.convert_flat(arrays, rules.t5x(shared), shared)
    for k in [k for k in arrays if k.endswith("relpos_bias/rel_embedding")]:
        arrays[k] = np.broadcast_to(arrays[k][:, :1], arrays[k].shape)
    want = np.load(REAL / "t5x_scanned_per_layer" / "expected.npz")
    ids = want["input_ids"]
    logits = tv.t5.apply(
        mapping.convert_flat(arrays, rules.t5x(shared), shared),
        shared,
        ids,
        np.ones_like(ids),
        want["decoder_input_ids"],
    )
    assert np.abs(np.asarray(logits) - want["logits"]).max() > 1e-2


def test_per_layer_cached_greedy_decoding_equals_the_full_forward(tmp_path):
    """On the writer's per-layer tables, greedy decoding with the KV cache (plain scan and DecoderWeights)
    picks the tokens of re-running the teacher-forced model on every prefix."""
    cfg, params = tv.load_t5(convert(REAL / "t5x_scanned_per_layer", tmp_path / "out"))
    cfg = cfg.replace(eos_token_id=cfg.vocab_size + 5)  # never emitted: compare every step
    ids = np.load(REAL / "t5x_scanned_per_layer" / "expected.npz")["input_ids"]
    mask = np.ones_like(ids)
    want = greedy_uncached(params, cfg, tv.t5.encode(params, cfg, ids, mask), mask, 8)
    assert len(np.unique(want)) > 2
    for kernels in ("plain", "cpu"):
        np.testing.assert_array_equal(
            tv.t5.generate(params, cfg.replace(kernels=kernels), ids, mask, 8), want
        )


def test_a_corrupt_orbax_metadata_file_is_named(tmp_path):
    src = tmp_path / "checkpoint_1"
    shutil.copytree(REAL / "t5x_orbax" / "checkpoint_1", src)
    (src / "state" / "_METADATA").write_text('{"tree_metadata": ')
    with pytest.raises(ConversionError, match=r"state/_METADATA: not a readable Orbax PyTree metadata file"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_orbax_array_data_is_named(tmp_path):
    src = tmp_path / "checkpoint_1"
    shutil.copytree(REAL / "t5x_orbax" / "checkpoint_1", src)
    for d in (src / "state").rglob("d"):
        shutil.rmtree(d)
    with pytest.raises(ConversionError, match=r"state: cannot (open|read) the array of target/"):
        convert(src, tmp_path / "out", config=str(REAL / "t5x_orbax" / "config.json"))
    assert not (tmp_path / "out").exists()
