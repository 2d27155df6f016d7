"""The accelerator suite's tiny mode (a test of the mode and its JSON, not a timing), and mixed precision as
users train with it: bfloat16 compute, float32 params and optimizer state."""
import json
import math

import jax
import jax.numpy as jnp
import pytest

import t5vae as tv
from conftest import require
from t5vae import train


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    require("flax")
    require("transformers")
    from benchmarks.__main__ import main

    path = tmp_path_factory.mktemp("accelerator") / "results.json"
    assert main(["--suite", "accelerator", "--tiny", "--json", str(path)]) == 0
    return json.loads(path.read_text()), path


def test_tiny_mode_writes_every_key_finite_and_positive(tiny_results):
    from benchmarks import accelerator

    r, path = tiny_results
    assert r["suite"] == "accelerator" and r["model"] == "tiny" and r["complete"] is True
    assert r["skipped"] == [] and r["errors"] == {} and r["tiny"] is True
    assert isinstance(r["device_kind"], str) and r["device_kind"]
    assert isinstance(r["cpu_model"], str) and r["cpu_model"]  # lscpu's "Model name"
    assert set(accelerator.WORKLOADS) == {f"{k}_{d}" for k in ("vae_train", "seq2seq_train", "generate")
                                         for d in ("f32", "bf16")}
    keys = ["matmul_flops_f32", "matmul_flops_bf16", "read_bandwidth_bytes_s"]
    for name in accelerator.WORKLOADS:
        keys += [f"{name}_speedup", f"{name}_mfu"] + ([f"{name}_peak_memory_ratio"] if "train" in name else [])
        assert name in r["timings"] and set(r[f"{name}_compile_s"]) == {"ours", "reference_jit"}
    for k in keys:
        assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r.get(k))
    assert not any(k.startswith("generate") and k.endswith("peak_memory_ratio") for k in r)
    # the f32 workloads check the numbers while they time them
    assert r["seq2seq_train_f32_loss_abs_diff_no_dropout"] < 1e-4
    assert r["generate_f32_same_tokens_fraction"] == 1.0
    assert not list(path.parent.glob(".*"))  # written through a temporary file, none left behind


def test_atomic_write_leaves_the_old_file_when_serialising_fails(tmp_path):
    from benchmarks import accelerator

    p = tmp_path / "r.json"
    accelerator.write_atomic(p, {"a": 1})
    with pytest.raises(TypeError):
        accelerator.write_atomic(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1} and [f.name for f in tmp_path.iterdir()] == ["r.json"]


def test_suite_rejects_an_unknown_workload_and_bad_repeats(capsys):
    from benchmarks.__main__ import main

    for argv, msg in ((["--only", "generate_f32,train_f16"], "unknown workload(s) ['train_f16']"),
                      (["--repeats", "0"], "--repeats must be at least 1"),
                      (["--dropout", "1"], "--dropout must be in [0, 1)"),
                      (["--kernels", "gpu"], "T5Config.kernels")):
        with pytest.raises(SystemExit) as e:
            main(["--suite", "accelerator", "--tiny"] + argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err


def test_a_failing_workload_is_kept_and_the_deadline_skips(tmp_path, monkeypatch):
    """A workload that raises is recorded under "errors" and the others still run (exit 1, not complete); past
    --deadline-minutes no workload starts (exit 0, not complete)."""
    require("flax")
    from benchmarks import accelerator

    def out_of_memory(ctx, dtype, shape):
        raise MemoryError(f"fake: no memory for {dtype}")

    monkeypatch.setitem(accelerator.KINDS, "generate", out_of_memory)
    p = tmp_path / "r.json"
    assert accelerator.main(["--tiny", "--only", "generate_bf16,generate_f32", "--json", str(p)]) == 1
    r = json.loads(p.read_text())
    assert r["errors"] == {"generate_bf16": "MemoryError: fake: no memory for bfloat16",
                           "generate_f32": "MemoryError: fake: no memory for float32"}
    assert r["complete"] is False and "generate_f32_speedup" not in r
    assert accelerator.main(["--tiny", "--only", "generate_f32", "--deadline-minutes", "0", "--json", str(p)]) == 0
    r = json.loads(p.read_text())
    assert r["skipped"] == ["generate_f32"] and r["errors"] == {} and r["complete"] is False


# -- mixed precision -----------------------------------------------------------------------------------

def test_bf16_compute_keeps_params_and_optimizer_state_float32_and_finite():
    """Train steps with dtype bfloat16: every param and AdamW moment stays float32, the loss and grad norm are
    finite (bf16 has float32's exponent range: no loss scaling), and the first step's loss is float32's to
    bf16 rounding (the same key draws the same masks in either dtype)."""
    t5 = tv.preset("tiny", dtype="bfloat16", param_dtype="float32")
    cfg = tv.Config(t5=t5, n_latent_tokens=2, latent_size=8, max_length=12)
    tc = tv.TrainConfig()
    params = tv.init(cfg, jax.random.key(0))
    ids = jax.random.randint(jax.random.key(1), (8, 10), 3, t5.vocab_size).at[:, -1].set(1)
    batch = {"input_ids": ids, "attention_mask": jnp.ones((8, 10), bool)}
    f32 = cfg.replace(t5=t5.replace(dtype="float32"))
    ce_f32 = float(jax.jit(lambda p: tv.loss(p, f32, batch, jax.random.fold_in(jax.random.key(0), 0), 0)[1]["ce"])(
        params))
    state = train.init_state(cfg, tc, jax.tree.map(jnp.copy, params))
    step = train.make_train_step(cfg, tc.optimizer, tc.clip_norm, tc.weight_decay)
    ces = []
    for i in range(3):
        state, m = step(state, batch, jax.random.key(0), 1e-3)
        m = {k: float(v) for k, v in m.items()}
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0, m
        ces.append(m["ce"])
    dtypes = {str(x.dtype) for x in jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"])
              if jnp.issubdtype(x.dtype, jnp.floating)}
    assert dtypes == {"float32"}
    assert abs(ces[0] - ce_f32) < 0.02 * ce_f32, (ces[0], ce_f32)
    assert ces[0] != ce_f32  # the step did compute in bf16
    assert ces[-1] < ces[0]  # and it learns


def test_train_dtype_flag_is_the_t5_dtype():
    from t5vae import cli

    for argv in (["--dtype", "bfloat16"], ["--t5-dtype", "bfloat16"]):
        cfg, _ = cli.build_configs(cli.parser().parse_args(["train"] + argv))
        assert cfg.t5.dtype == "bfloat16" and cfg.t5.param_dtype == "float32"
    cfg, _ = cli.build_configs(cli.parser().parse_args(["train", "--param-dtype", "bfloat16"]))
    assert cfg.t5.param_dtype == "bfloat16"
    with pytest.raises(SystemExit, match="--t5-dtype"):
        cli.build_configs(cli.parser().parse_args(["train", "--dtype", "float8"]))
