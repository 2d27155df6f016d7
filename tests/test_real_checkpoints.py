"""Checkpoints written by the real T5X, flaxformer and Mesh-TensorFlow libraries (tests/fixtures/real, made by
tests/fixtures/make_real_checkpoints.py) convert to logits within 1e-5 of the writer's own, with none of those
libraries installed."""
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import require

import t5vae as tv
from weights_convert.convert import convert
from weights_convert.rules import ConversionError

REAL = Path(__file__).parent / "fixtures" / "real"
FIXTURES = sorted(p.name for p in REAL.iterdir() if (p / "expected.npz").is_file())
WRITERS = {"mesh_tf_v1_1": "mesh-tensorflow 0.1.21", "mesh_tf_v1_0": "mesh-tensorflow 0.1.21",
           "mesh_tf_snappy": "mesh-tensorflow 0.1.21", "t5x_legacy_f32": "t5x cc342d4 (legacy Checkpointer, float32)",
           "t5x_legacy_bf16": "t5x cc342d4 (legacy Checkpointer, bfloat16)",
           "t5x_orbax": "t5x cc342d4 (OrbaxCheckpointManagerInterface)", "t5x_scanned": "t5x cc342d4 (scalable_t5"}


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
    with pytest.raises(ConversionError, match=r"model\.ckpt-3\.index: not a readable TensorFlow checkpoint index"):
        convert(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
