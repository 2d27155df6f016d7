"""The accelerator suite's tiny mode (a test of the mode and its JSON, not a timing), and mixed precision as
users train with it: bfloat16 compute, float32 params and optimizer state."""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from conftest import require

import t5vae as tv
from t5vae import train


@pytest.fixture(scope="module")
def tiny_results(tmp_path_factory):
    require("flax")
    require("transformers")
    from benchmarks.__main__ import main

    path = tmp_path_factory.mktemp("accelerator") / "results.json"
    traces = tmp_path_factory.mktemp("traces")
    assert main(["--suite", "accelerator", "--tiny", "--json", str(path), "--profile", str(traces)]) == 0
    return json.loads(path.read_text()), path


def test_tiny_mode_writes_every_key_finite_and_positive(tiny_results):
    from benchmarks import accelerator

    r, path = tiny_results
    assert r["suite"] == "accelerator" and r["model"] == "tiny" and r["complete"] is True
    assert r["skipped"] == [] and r["errors"] == {} and r["tiny"] is True
    assert isinstance(r["device_kind"], str) and r["device_kind"]
    assert isinstance(r["cpu_model"], str) and r["cpu_model"]  # lscpu's "Model name"
    assert set(accelerator.WORKLOADS) == {
        f"{k}_{d}" for k in ("vae_train", "seq2seq_train", "generate") for d in ("f32", "bf16")
    }
    keys = ["matmul_flops_f32", "matmul_flops_bf16", "read_bandwidth_bytes_s"]
    for name in accelerator.WORKLOADS:
        keys += [f"{name}_speedup", f"{name}_mfu"] + (
            [f"{name}_peak_memory_ratio"] if "train" in name else []
        )
        assert name in r["timings"] and set(r[f"{name}_compile_s"]) == {"ours", "reference_jit"}
    for k in keys:
        assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r.get(k))
    assert not any(k.startswith("generate") and k.endswith("peak_memory_ratio") for k in r)
    # the f32 workloads check the numbers while they time them
    assert r["seq2seq_train_f32_loss_abs_diff_no_dropout"] < 1e-4
    assert r["generate_f32_same_tokens_fraction"] == 1.0
    for name in accelerator.WORKLOADS:  # --profile: one traced step or generation of each side, summarised
        assert set(r[f"{name}_profile"]) == {"ours", "reference_jit"}, name
        assert all(p["busy_ms"] > 0 and p["ops"] for p in r[f"{name}_profile"].values()), name
    assert not list(path.parent.glob(".*"))  # written through a temporary file, none left behind


def test_atomic_write_leaves_the_old_file_when_serialising_fails(tmp_path):
    from benchmarks import harness

    p = tmp_path / "r.json"
    harness.write_atomic(p, {"a": 1})
    with pytest.raises(TypeError):
        harness.write_atomic(p, {"a": object()})
    assert json.loads(p.read_text()) == {"a": 1} and [f.name for f in tmp_path.iterdir()] == ["r.json"]


def test_suite_rejects_an_unknown_workload_and_bad_repeats(capsys):
    from benchmarks.__main__ import main

    for argv, msg in (
        (["--only", "generate_f32,train_f16"], "unknown workload(s) ['train_f16']"),
        (["--repeats", "0"], "--repeats must be at least 1"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--kernels", "gpu"], "T5Config.kernels"),
    ):
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
    assert r["errors"] == {
        "generate_bf16": "MemoryError: fake: no memory for bfloat16",
        "generate_f32": "MemoryError: fake: no memory for float32",
    }
    assert r["complete"] is False and "generate_f32_speedup" not in r
    assert (
        accelerator.main(["--tiny", "--only", "generate_f32", "--deadline-minutes", "0", "--json", str(p)])
        == 0
    )
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
    ce_f32 = float(
        jax.jit(lambda p: tv.loss(p, f32, batch, jax.random.fold_in(jax.random.key(0), 0), 0)[1]["ce"])(
            params
        )
    )
    state = train.init_state(cfg, tc, jax.tree.map(jnp.copy, params))
    step = train.make_train_step(cfg, tc.optimizer, tc.clip_norm, tc.weight_decay)
    ces = []
    for i in range(3):
        state, m = step(state, batch, jax.random.key(0), 1e-3)
        m = {k: float(v) for k, v in m.items()}
        assert math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0, m
        ces.append(m["ce"])
    dtypes = {
        str(x.dtype)
        for x in jax.tree.leaves(state["params"]) + jax.tree.leaves(state["opt_state"])
        if jnp.issubdtype(x.dtype, jnp.floating)
    }
    assert dtypes == {"float32"}
    assert abs(ces[0] - ce_f32) < 0.02 * ce_f32, (ces[0], ce_f32)
    assert ces[0] != ce_f32  # the step did compute in bf16
    assert ces[-1] < ces[0]  # and it learns


def test_train_dtype_flag_is_the_t5_dtype():
    from t5vae import cli, flags

    for argv in (["--dtype", "bfloat16"], ["--t5-dtype", "bfloat16"]):
        cfg, _ = flags.build_configs(cli.parser().parse_args(["train"] + argv))
        assert cfg.t5.dtype == "bfloat16" and cfg.t5.param_dtype == "float32"
    cfg, _ = flags.build_configs(cli.parser().parse_args(["train", "--param-dtype", "bfloat16"]))
    assert cfg.t5.param_dtype == "bfloat16"
    with pytest.raises(SystemExit, match="--t5-dtype"):
        flags.build_configs(cli.parser().parse_args(["train", "--dtype", "float8"]))


# -- the GPU run's other parts (benchmarks/gpu_run.sh): resume, profile summary, dpa verdict, train speed ---


def test_resume_keeps_finished_workloads_and_refuses_other_settings(tiny_results, tmp_path, capsys):
    """A run cut short is completed by another: the finished workloads are kept as measured, the missing one is
    run, 'runs' says which run measured what, and a results file of other settings is refused by name."""
    from benchmarks import accelerator

    r, _ = tiny_results
    partial = {k: v for k, v in r.items() if not k.startswith("generate_f32")}
    partial["timings"] = {k: v for k, v in r["timings"].items() if k != "generate_f32"}
    partial["workloads"] = [w for w in r["workloads"] if w != "generate_f32"]
    partial["complete"] = False
    p = tmp_path / "partial.json"
    p.write_text(json.dumps(partial))
    assert accelerator.main(["--tiny", "--resume", str(p), "--json", str(p)]) == 0
    done = json.loads(p.read_text())
    assert done["complete"] is True and done["generate_f32_speedup"] > 0
    assert done["vae_train_bf16_ms"] == r["vae_train_bf16_ms"]  # kept, not re-measured
    assert [run["workloads"] for run in done["runs"]] == [partial["workloads"], ["generate_f32"]]
    other = dict(partial, dropout=0.0)
    p.write_text(json.dumps(other))
    with pytest.raises(SystemExit):
        accelerator.main(["--tiny", "--resume", str(p), "--json", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert "measured with other settings" in err and "'dropout': (0.0, 0.1)" in err


def test_profile_summary_counts_the_traced_step(tmp_path):
    from benchmarks import profile

    f = jax.jit(lambda a: jnp.tanh(a @ a).sum())
    a = jnp.ones((64, 64))
    f(a).block_until_ready()
    s = profile.summarize(profile.trace_step(lambda: f(a), tmp_path / "trace"))
    assert s["busy_ms"] > 0 and s["op_runs"] > 0 and s["ops"]
    assert all(row["ms"] >= 0 and row["count"] >= 1 for row in s["ops"])


def test_dpa_verdict_passes_equal_gradients_and_fails_a_lost_bias_gradient():
    from benchmarks import dpa

    g = {"encoder": {"relpos_bias": jnp.arange(1.0, 7.0).reshape(2, 3), "q": jnp.ones((2, 2))}}
    same = dpa.compare_grads(g, jax.tree.map(lambda x: x * 1.001, g))
    assert dpa.verdict(dict(same, loss_rel_diff=0.001)) == []
    lost = dpa.compare_grads(g, {"encoder": {"relpos_bias": jnp.zeros((2, 3)), "q": jnp.ones((2, 2))}})
    failures = dpa.verdict(dict(lost, loss_rel_diff=0.02))
    assert any("loss differs" in f for f in failures) and any("bias gradient" in f for f in failures)
    nan = dpa.compare_grads(g, {"encoder": {"relpos_bias": jnp.full((2, 3), jnp.nan), "q": jnp.ones((2, 2))}})
    assert any("non-finite" in f for f in dpa.verdict(dict(nan, loss_rel_diff=0.0)))


def test_train_speed_steady_rate_and_its_error():
    from benchmarks import train_speed

    rows = [{"step": 1, "time": 20.0}] + [{"step": n, "time": 20.0 + 0.5 * (n - 1)} for n in range(2, 42)]
    r = train_speed.steady_rate(rows)
    assert r["first_step_s"] == 20.0 and r["steps"] == 41 and abs(r["steady_steps_per_s"] - 2.0) < 1e-9
    with pytest.raises(ValueError, match="more --seconds"):
        train_speed.steady_rate(rows[:3])


def test_variants_parse_set():
    from benchmarks import variants

    assert variants.parse_set("remat=none,kernels=dpa") == {"remat": "none", "kernels": "dpa"}
    for bad in ("remat", "dtype=bfloat16"):
        with pytest.raises(ValueError, match="--set"):
            variants.parse_set(bad)
