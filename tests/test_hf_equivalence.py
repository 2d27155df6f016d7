"""The whole converted model against transformers' torch T5, on checkpoints transformers writes in the test.

Each HF format (safetensors, sharded safetensors, pytorch_model.bin, flax_model.msgpack) is converted with
``weights_convert`` and loaded with ``tv.load_t5``; encoder states and logits must match torch in float32.
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require

import t5vae as tv
from weights_convert import convert

# v1.0: relu, tied (output scaled by d_model**-0.5); v1.1: gated-gelu, untied lm_head. Both with H*K != D,
# num_decoder_layers != num_layers, odd vocab sizes and non-default relative attention buckets/max_distance.
CONFIGS = {
    "v1_0": dict(
        vocab_size=99,
        d_model=32,
        d_kv=12,
        num_heads=4,
        d_ff=40,
        num_layers=2,
        num_decoder_layers=3,
        feed_forward_proj="relu",
        tie_word_embeddings=True,
        relative_attention_num_buckets=10,
        relative_attention_max_distance=20,
    ),
    "v1_1": dict(
        vocab_size=101,
        d_model=24,
        d_kv=8,
        num_heads=2,
        d_ff=36,
        num_layers=3,
        num_decoder_layers=2,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=12,
        relative_attention_max_distance=33,
    ),
}
RTOL = 1e-4


def make_hf_model(name: str, seed: int = 0):
    """A randomly initialised ``T5ForConditionalGeneration`` (eval mode) with non-trivial norms."""
    torch = require("torch")
    transformers = require("transformers")
    torch.manual_seed(seed)
    cfg = transformers.T5Config(**CONFIGS[name], dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0)
    model = transformers.T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():  # HF inits norms to 1 and some weights tiny: randomise so a swapped leaf shows
        for n, p in model.named_parameters():
            if "layer_norm" in n:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            elif "relative_attention_bias" in n:
                p.copy_(torch.randn_like(p))
    return model


def inputs(cfg_dict: dict, seed: int = 1):
    rng = np.random.default_rng(seed)
    V = cfg_dict["vocab_size"]
    ids = rng.integers(2, V, (2, 9))
    mask = np.ones((2, 9), np.int64)
    mask[1, 6:] = 0
    ids[1, 6:] = 0
    dec = rng.integers(2, V, (2, 7))
    dec[:, 0] = 0
    dec_mask = np.ones((2, 7), np.int64)
    dec_mask[0, 5:] = 0
    return ids, mask, dec, dec_mask


def torch_outputs(model, ids, mask, dec, dec_mask):
    torch = require("torch")
    t = lambda a: torch.tensor(a)  # noqa: E731
    with torch.no_grad():
        out = model(
            input_ids=t(ids),
            attention_mask=t(mask),
            decoder_input_ids=t(dec),
            decoder_attention_mask=t(dec_mask),
        )
    return out.encoder_last_hidden_state.numpy(), out.logits.numpy()


def _forward(cfg):
    @jax.jit
    def fwd(params, ids, mask, dec, dec_mask):
        h = tv.t5.encode(params, cfg, ids, mask)
        return h, tv.t5.decode(params, cfg, dec, h, mask, dec_mask)

    return fwd


_FORWARD = {}


def jax_outputs(cfg, params, ids, mask, dec, dec_mask):
    """One compiled forward per config, shared by every test (params are arguments, not constants)."""
    fwd = _FORWARD.setdefault(cfg, _forward(cfg))
    h, logits = fwd(params, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(dec), jnp.asarray(dec_mask))
    return np.asarray(h), np.asarray(logits)


def rel_err(got, ref) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


def flat_params(params) -> dict:
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(params)}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf(request, tmp_path_factory):
    """name, torch model, its reference outputs and HF directories in every format transformers writes."""
    name = request.param
    model = make_hf_model(name)
    root = tmp_path_factory.mktemp(f"hf_{name}")
    dirs = {
        "safetensors": root / "st",
        "bin": root / "bin",
        "sharded": root / "sharded",
        "flax": root / "flax",
    }
    model.save_pretrained(dirs["safetensors"], safe_serialization=True)
    model.save_pretrained(dirs["bin"], safe_serialization=False)
    model.save_pretrained(dirs["sharded"], safe_serialization=True, max_shard_size="20KB")
    (dirs["safetensors"] / "spiece.model").write_bytes(b"not really a sentencepiece model")
    x = inputs(CONFIGS[name])
    return dict(name=name, model=model, dirs=dirs, root=root, x=x, ref=torch_outputs(model, *x))


@pytest.fixture(scope="module")
def converted(hf):
    out = hf["root"] / "converted_st"
    convert(hf["dirs"]["safetensors"], out)
    return out


def test_safetensors_matches_torch(hf, converted):
    cfg, params = tv.load_t5(converted)
    assert cfg.num_decoder_layers == CONFIGS[hf["name"]]["num_decoder_layers"]
    assert cfg.tie_word_embeddings == CONFIGS[hf["name"]]["tie_word_embeddings"]
    assert ("lm_head" in params) != cfg.tie_word_embeddings
    h, logits = jax_outputs(cfg, params, *hf["x"])
    ref_h, ref_logits = hf["ref"]
    eh, el = rel_err(h, ref_h), rel_err(logits, ref_logits)
    print(f"{hf['name']}: encoder states rel err {eh:.2e}, logits rel err {el:.2e}")
    assert eh < RTOL and el < RTOL, (eh, el)
    assert (converted / "spiece.model").read_bytes() == b"not really a sentencepiece model"


@pytest.mark.parametrize("fmt", ["bin", "sharded", "flax"])
def test_other_hf_formats_match_torch(hf, converted, fmt, tmp_path, monkeypatch):
    src = hf["dirs"][fmt]
    if fmt == "sharded":
        assert (src / "model.safetensors.index.json").is_file() and len(list(src.glob("*.safetensors"))) > 1
    if fmt == "flax":
        require("flax")
        transformers = require("transformers")
        # transformers 4.x Flax T5 calls jnp.clip(a_max=...), which jax >= 0.8 removed: shim it for this test only
        clip = jnp.clip
        monkeypatch.setattr(
            jnp,
            "clip",
            lambda x, a_min=None, a_max=None, **kw: clip(x, kw.pop("min", a_min), kw.pop("max", a_max), **kw),
        )
        flax_model = transformers.FlaxT5ForConditionalGeneration.from_pretrained(
            hf["dirs"]["bin"], from_pt=True
        )
        flax_model.save_pretrained(src)
        assert (src / "flax_model.msgpack").is_file() and not (src / "model.safetensors").exists()
    out = convert(src, tmp_path / "out")
    cfg, params = tv.load_t5(out)
    h, logits = jax_outputs(cfg, params, *hf["x"])
    assert rel_err(h, hf["ref"][0]) < RTOL and rel_err(logits, hf["ref"][1]) < RTOL
    want = flat_params(tv.load_t5(converted)[1])
    got = flat_params(params)
    assert got.keys() == want.keys()
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_bfloat16_conversion_close_to_float32(hf, tmp_path):
    out = convert(hf["dirs"]["safetensors"], tmp_path / "bf16", dtype="bfloat16")
    cfg, params = tv.load_t5(out)
    assert cfg.param_dtype == "bfloat16"
    assert {str(v.dtype) for v in jax.tree.leaves(params)} == {"bfloat16"}
    params32 = jax.tree.map(lambda v: v.astype(jnp.float32), params)
    h, logits = jax_outputs(cfg.replace(param_dtype="float32"), params32, *hf["x"])
    eh, el = rel_err(h, hf["ref"][0]), rel_err(logits, hf["ref"][1])
    assert eh < 5e-2 and el < 5e-2, (eh, el)
    assert max(eh, el) > 1e-6  # really rounded to bfloat16


def test_cli_subprocess(hf, converted, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(hf["dirs"]["safetensors"]), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "writing" in r.stderr and "done" in r.stderr
    got, want = flat_params(tv.load_t5(out)[1]), flat_params(tv.load_t5(converted)[1])
    assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    # an existing OUT is refused without --overwrite and replaced with it
    r = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(hf["dirs"]["safetensors"]), str(out), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 1 and "already exists" in r.stderr and "--overwrite" in r.stderr


def test_greedy_generate_matches_torch_token_for_token(hf, converted):
    """tv.t5.generate (KV cache, compiled loop) against torch ``generate(do_sample=False)``."""
    torch = require("torch")
    cfg, params = tv.load_t5(converted)
    ids, mask, _, _ = hf["x"]
    n = 12
    with torch.no_grad():
        want = (
            hf["model"]
            .generate(
                input_ids=torch.tensor(ids),
                attention_mask=torch.tensor(mask),
                do_sample=False,
                num_beams=1,
                max_new_tokens=n,
                min_new_tokens=0,
                use_cache=False,
            )
            .numpy()[:, 1:]
        )  # 4.57's cache assumes equal depths
    want = np.pad(
        want, ((0, 0), (0, n - want.shape[1])), constant_values=cfg.pad_token_id
    )  # torch stops early
    got = np.asarray(tv.t5.generate(params, cfg, jnp.asarray(ids), jnp.asarray(mask), max_new_tokens=n))
    np.testing.assert_array_equal(got, want)
    assert not (want == want[0, 0]).all(), "degenerate reference output: the test would prove little"
