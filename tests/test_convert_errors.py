"""Converter failures: a clear message naming the file or key, no OUT (nor partial dir) left, an existing OUT untouched."""
import sys

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_convert_rules import V10, fake_hf_state

import t5vae as tv
from weights_convert import ConversionError
from weights_convert.__main__ import convert, main


def hf_dir(path, sd=None, cfg=V10):
    path.mkdir()
    save_file(fake_hf_state(cfg) if sd is None else sd, str(path / "model.safetensors"))
    cfg.save_json(path / "config.json")
    return path


def assert_nothing_written(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial directory was left behind"


def test_good_source_converts(tmp_path):
    cfg, params = tv.load_t5(convert(hf_dir(tmp_path / "src"), tmp_path / "out"))
    assert cfg.num_decoder_layers == 3 and params["decoder"]["layers"]["mlp"]["wi"].shape == (3, 6, 10)


@pytest.mark.parametrize("damage, message", [
    (lambda sd: sd.update({"encoder.extra.weight": np.zeros(3, np.float32)}), r"encoder\.extra\.weight \(3,\): matches no rule"),
    (lambda sd: sd.pop("decoder.block.2.layer.1.EncDecAttention.v.weight"), r"missing decoder/layers/cross_attn/v .*layers \[2\]"),
    (lambda sd: sd.update({"encoder.final_layer_norm.weight": np.zeros(7, np.float32)}),
     r"encoder\.final_layer_norm\.weight: shape \(7,\), expected \(6,\)"),
], ids=["extra", "missing", "shape"])
def test_mapping_errors_name_the_key_and_leave_nothing(tmp_path, damage, message):
    sd = fake_hf_state(V10)
    damage(sd)
    src = hf_dir(tmp_path / "src", sd)
    with pytest.raises(ConversionError, match=message):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_unknown_directory(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "README.md").write_text("hi")
    with pytest.raises(ConversionError, match=r"src: no recognised checkpoint.*README\.md"):
        convert(tmp_path / "src", tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
    with pytest.raises(ConversionError, match="does not exist"):
        convert(tmp_path / "nowhere", tmp_path / "out")


@pytest.mark.parametrize("cut", [4, 100, -50], ids=["no-header", "mid-header", "mid-data"])
def test_truncated_safetensors(tmp_path, cut):
    src = hf_dir(tmp_path / "src")
    f = src / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[:cut])
    with pytest.raises(ConversionError, match=r"model\.safetensors.*(truncated|corrupt)"):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_truncated_flax_msgpack(tmp_path):
    serialization = pytest.importorskip("flax.serialization")  # only to write the file; the reader is flax-free
    src = tmp_path / "src"
    src.mkdir()
    V10.save_json(src / "config.json")
    tree = {"shared": {"embedding": np.zeros((11, 6), np.float32)}}
    data = serialization.to_bytes(tree)
    (src / "flax_model.msgpack").write_bytes(data[:-20])
    with pytest.raises(ConversionError, match=r"flax_model\.msgpack: truncated or corrupt msgpack"):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_existing_out_refused_and_untouched_on_failure(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    good = hf_dir(tmp_path / "good")
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(good, out)
    sd = fake_hf_state(V10)
    del sd["shared.weight"]
    with pytest.raises(ConversionError, match="missing shared/embedding"):
        convert(hf_dir(tmp_path / "bad", sd), out, overwrite=True)
    assert (out / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert not list(tmp_path.glob(".out*"))
    convert(good, out, overwrite=True)  # replaced as a whole when asked
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()


def test_cli_main_reports_errors_on_stderr(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    V10.save_json(src / "config.json")
    (src / "pytorch_model.bin").write_bytes(b"\0" * 10)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ConversionError, match=r"pytorch_model\.bin is a PyTorch checkpoint; reading it needs torch"):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")
