"""weights_convert.convert end to end: a good source converts; a bad one fails with a clear message naming the file
or key, leaving no OUT (nor partial dir) and an existing OUT untouched; the host memory a conversion peaks at.
(What OUT may be, --overwrite, leftovers of killed runs, bad config.json: test_convert_faults.py.)"""

import hashlib
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file
from test_rules import V10, fake_hf_state

import t5vae as tv
from t5vae.config import T5Config
from weights_convert import ConversionError
from weights_convert.convert import convert


def hf_dir(path, sd=None, cfg=V10):
    path.mkdir()
    save_file(fake_hf_state(cfg) if sd is None else sd, str(path / "model.safetensors"))
    cfg.save_json(path / "config.json")
    return path


def assert_nothing_written(out):
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}*")), "a partial directory was left behind"


def tree_hashes(root) -> dict:
    """{relative path: sha256 of the file, or "dir"} for everything under ``root``: compare before and after."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
    }


def test_good_source_converts(tmp_path):
    cfg, params = tv.load_t5(convert(hf_dir(tmp_path / "src"), tmp_path / "out"))
    assert cfg.num_decoder_layers == 3 and params["decoder"]["layers"]["mlp"]["wi"].shape == (3, 6, 10)


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda sd: sd.update({"encoder.extra.weight": np.zeros(3, np.float32)}),
            r"encoder\.extra\.weight \(3,\): matches no rule",
        ),
        (
            lambda sd: sd.pop("decoder.block.2.layer.1.EncDecAttention.v.weight"),
            r"missing decoder/layers/cross_attn/v .*layers \[2\]",
        ),
        (
            lambda sd: sd.update({"encoder.final_layer_norm.weight": np.zeros(7, np.float32)}),
            r"encoder\.final_layer_norm\.weight: shape \(7,\), expected \(6,\)",
        ),
    ],
    ids=["extra", "missing", "shape"],
)
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
    serialization = pytest.importorskip(
        "flax.serialization"
    )  # only to write the file; the reader is flax-free
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
    out, good = tmp_path / "out", hf_dir(tmp_path / "good")
    convert(good, out)
    before = tree_hashes(out)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(good, out)
    sd = fake_hf_state(V10)
    del sd["shared.weight"]
    with pytest.raises(ConversionError, match="missing shared/embedding"):
        convert(hf_dir(tmp_path / "bad", sd), out, overwrite=True)
    assert tree_hashes(out) == before
    assert not list(tmp_path.glob(".out*"))
    convert(
        good, out, dtype="bfloat16", overwrite=True
    )  # a previous conversion is replaced as a whole when asked
    assert tv.load_t5(out)[0].param_dtype == "bfloat16" and tree_hashes(out) != before
    assert not list(tmp_path.glob(".out*"))


def test_pytorch_bin_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    src = tmp_path / "src"
    src.mkdir()
    V10.save_json(src / "config.json")
    (src / "pytorch_model.bin").write_bytes(b"\0" * 10)
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(
        ConversionError, match=r"pytorch_model\.bin is a PyTorch checkpoint; reading it needs torch"
    ):
        convert(src, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


# -- peak host memory, above the process's RSS before converting ---------------------------------------------

# ~21M float32 params = ~84 MB
MEMORY_CFG = T5Config(
    vocab_size=8192,
    d_model=512,
    d_kv=64,
    num_heads=8,
    d_ff=1024,
    num_layers=2,
    feed_forward_proj="gated-gelu",
    tie_word_embeddings=False,
)

MEASURE = textwrap.dedent("""
    import json, sys
    import orbax.checkpoint, jax, tqdm  # imported before the baseline: their cost is not the conversion's
    from t5vae import checkpoint
    from weights_convert.convert import convert

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    import numpy as np, tempfile
    jax.devices()  # the XLA runtime and one tiny orbax save: fixed costs, not proportional to the checkpoint
    checkpoint.save_params(tempfile.mkdtemp() + "/warmup", {"x": np.zeros(4, np.float32)})

    save = checkpoint.save_params  # what weights_convert.output.write saves the params with
    mapped = {}

    def measured_save(*args, **kwargs):
        mapped["peak"] = status("VmHWM")
        return save(*args, **kwargs)

    checkpoint.save_params = measured_save
    before = status("VmRSS")
    convert(sys.argv[1], sys.argv[2], progress=False)
    print(json.dumps({"before": before, "mapped": mapped["peak"], "peak": status("VmHWM")}))
""")


@pytest.mark.slow
def test_peak_memory_under_twice_the_checkpoint(tmp_path):
    """Reading + mapping holds the assembled params (1x) plus one source tensor at a time: under 1.5x. The orbax
    save (``t5vae.checkpoint.save_params``) adds write buffers proportional to the tree: under 3x in all (PARAMS.md)."""
    src = tmp_path / "src"
    src.mkdir()
    sd = fake_hf_state(MEMORY_CFG)
    size = sum(v.nbytes for v in sd.values())
    save_file(sd, str(src / "model.safetensors"))
    del sd
    MEMORY_CFG.save_json(src / "config.json")
    r = subprocess.run(
        [sys.executable, "-c", MEASURE, str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads(r.stdout.strip().splitlines()[-1])
    mapped, total = (m["mapped"] - m["before"]) / size, (m["peak"] - m["before"]) / size
    print(
        f"checkpoint {size / 2**20:.0f} MiB; peak above baseline: {mapped:.2f}x until save, {total:.2f}x in all"
    )
    assert size > 50 * 2**20
    assert 0.9 < mapped < 1.5, f"reading + mapping used {mapped:.2f}x the checkpoint size"
    assert total < 3.0, f"conversion + save used {total:.2f}x the checkpoint size"
