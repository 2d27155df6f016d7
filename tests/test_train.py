"""Training (t5vae.train): the batch stream, resume (same stream, same clock, a changed config refused), the
NaN guard, the optimizer defaults, kill -9 mid-run, and starting from a converted T5."""

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_FLAGS

import t5vae as tv
from t5vae import checkpoint, cli, data, runlog, train


def test_resume_continues_and_a_changed_config_is_refused(run, tmp_path, capsys):
    out = tmp_path / "run"  # a copy: the shared run stays as train left it
    shutil.copytree(run["out"], out)
    argv = [{"6": "8", str(run["out"]): str(out)}.get(a, a) for a in run["argv"]]  # --steps 8
    with open(
        out / runlog.CURVE_FILE, "a"
    ) as f:  # as if a crash came after step 7's (never saved) evaluation
        f.write(json.dumps({"step": 7, "recon_token_acc": 0.5}) + "\n")
    assert cli.main(argv) == 0
    assert "resumed from" in capsys.readouterr().out
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))
    times = [r["time"] for r in rows]
    assert times == sorted(times)  # the time budget continues across the resume instead of restarting
    curve = [json.loads(l) for l in (out / runlog.CURVE_FILE).read_text().splitlines()]
    assert [r["step"] for r in curve] == [3, 6]  # step 7 ran again from the step-6 checkpoint
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    bad = argv + ["--pooling", "first"]
    assert cli.main(bad) == 1
    err = capsys.readouterr().err
    assert "different config" in err and "pooling" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_nan_loss_stops_with_last_good_checkpoint_intact(run, tmp_path, capsys):
    argv = [
        "train",
        "--out",
        str(tmp_path / "nan"),
        "--corpus",
        str(run["corpus"]),
        "--steps",
        "20",
        "--checkpoint-every",
        "1",
        "--learning-rate",
        "1e30",
        "--warmup-steps",
        "1",
        *TINY_FLAGS,
    ]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "last good state" in err
    cfg = tv.Config.load_json(tmp_path / "nan" / "config.json")
    tc = tv.TrainConfig.from_dict(json.loads((tmp_path / "nan" / "train_config.json").read_text()))
    mngr = checkpoint.checkpoint_manager(tmp_path / "nan")
    abstract = jax.eval_shape(lambda: train.init_state(cfg, tc, tv.init(cfg, jax.random.key(0))))
    step, state = checkpoint.restore_train_state(mngr, abstract)
    mngr.close()
    assert step is not None and step < 20
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))
    # the message names the step whose metrics were bad: the one after the last row of metrics.jsonl
    rows = (tmp_path / "nan" / "metrics.jsonl").read_text().splitlines()
    last_good = json.loads(rows[-1])["step"] if rows else 0
    assert f"non-finite training metrics at step {last_good + 1}:" in err


def test_batch_stream_is_a_pure_function_of_the_step():
    enc = data.Encoded([np.arange(1, 2 + i % 12, dtype=np.int32) for i in range(50)], np.zeros(50, bool))
    s1, s2 = data.BatchStream(enc, 8, (8, 16), 3), data.BatchStream(enc, 8, (8, 16), 3)
    n = s1.per_epoch
    seq = [s1(i)["input_ids"] for i in range(2 * n + 1)]
    assert all(np.array_equal(s2(i)["input_ids"], seq[i]) for i in (2 * n, n + 1, 0, n))
    assert not all(np.array_equal(a, b) for a, b in zip(seq[:n], seq[n : 2 * n]) if a.shape == b.shape)


def test_optimizer_defaults_agree_with_train_config():
    default = tv.TrainConfig().optimizer
    assert default == "adamw"
    for fn in (train.make_optimizer, train.make_train_step):
        assert inspect.signature(fn).parameters["optimizer"].default == default, fn.__name__
    params = {"w": np.ones((256, 128), np.float32)}
    adam = train.make_optimizer().init(params)  # AdamW keeps full-size first and second moments
    factored = train.make_optimizer("adafactor").init(params)
    shapes = lambda s: sorted(x.shape for x in jax.tree.leaves(s))  # noqa: E731
    assert (
        shapes(adam).count((256, 128)) == 2 and shapes(factored).count((256, 128)) == 0
    )  # factored: rows, cols
    assert train.schedule(tv.TrainConfig(steps=100, warmup_steps=10, learning_rate=1.0))(10) == pytest.approx(
        1.0
    )


@pytest.mark.slow
def test_kill_9_mid_run_loses_at_most_one_interval(run, tmp_path):
    out = tmp_path / "killed"
    argv = [
        "train",
        "--out",
        str(out),
        "--corpus",
        str(run["corpus"]),
        "--steps",
        "100000",
        "--checkpoint-every",
        "5",
        *TINY_FLAGS,
    ]
    code = f"import sys; from t5vae import cli; sys.exit(cli.main({argv!r}))"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    ck = out / "checkpoints"
    while time.time() < deadline and not (
        ck.is_dir() and len([p for p in ck.iterdir() if p.name.isdigit()]) >= 2
    ):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    done = json.loads(rows[-1])["step"] if rows else 0
    cfg = tv.Config.load_json(out / "config.json")
    tc = tv.TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
    mngr = checkpoint.checkpoint_manager(out)
    step, _ = checkpoint.restore_train_state(
        mngr, jax.eval_shape(lambda: train.init_state(cfg, tc, tv.init(cfg, jax.random.key(0))))
    )
    mngr.close()
    assert step is not None and done - step <= 5 + 10  # one interval (+ unflushed metric lines)
    # resuming drops the metric rows of the lost steps (they run again) and continues the clock
    assert cli.main([a if a != "100000" else str(step + 2) for a in argv]) == 0
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, step + 3))
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)


@pytest.mark.slow
def test_init_from_a_converted_t5(run, tmp_path, capsys):
    tok = data.Tokenizer.load(run["out"] / "spiece.model")
    t5cfg = tv.preset("tiny", vocab_size=tok.vocab_size + 20, num_layers=1)
    t5p = tv.t5.init(t5cfg, jax.random.key(3))
    tv.save_t5(tmp_path / "t5", t5cfg, t5p, tokenizer=run["out"] / "spiece.model")
    out = tmp_path / "from-t5"
    argv = [
        "train",
        "--out",
        str(out),
        "--corpus",
        str(run["corpus"]),
        "--init-from",
        str(tmp_path / "t5"),
        "--steps",
        "2",
        "--max-length",
        "8",
        "--batch-size",
        "4",
        "--eval-pairs",
        "1",
        "--progress",
        "false",
    ]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = tv.load(out)
    assert m.cfg.t5.d_model == t5cfg.d_model and m.cfg.t5.vocab_size == t5cfg.vocab_size
    assert m.tokenizer.proto == tok.proto
    # a T5 whose embedding is smaller than the tokenizer's vocabulary is refused
    small = tv.preset("tiny", vocab_size=tok.vocab_size - 10, num_layers=1)
    tv.save_t5(
        tmp_path / "t5small",
        small,
        tv.t5.init(small, jax.random.key(3)),
        tokenizer=run["out"] / "spiece.model",
    )
    argv[argv.index(str(tmp_path / "t5"))] = str(tmp_path / "t5small")
    argv[argv.index(str(out))] = str(tmp_path / "from-small")
    assert cli.main(argv) == 1
    assert "do not match" in capsys.readouterr().err


def test_resuming_with_other_run_time_fields_is_a_notice_and_other_changes_a_diff(run, tmp_path, capsys):
    """dtype, param_dtype and remat may change when a run is resumed (the checkpoint's arrays restore, cast);
    any other change is refused listing only the fields that differ."""
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    argv = run["argv"][:]
    argv[argv.index(str(run["out"]))] = str(out)
    assert cli.main(argv + ["--t5-d-model", "64", "--pooling", "first", "--seed", "5"]) == 1
    err = capsys.readouterr().err
    assert "model.t5.d_model: 32 -> 64" in err and "model.pooling: " in err and "train.seed: 0 -> 5" in err
    assert err.count("\n") == 4 and "'num_heads'" not in err  # the three fields, no whole dicts
    argv[argv.index("--steps") + 1] = "7"
    assert cli.main(argv + ["--dtype", "bfloat16", "--param-dtype", "bfloat16", "--t5-remat", "full"]) == 0
    printed = capsys.readouterr().out
    assert (
        "note: resuming with other run-time settings (dtype float32 -> bfloat16, param_dtype float32 -> "
        "bfloat16, remat dots -> full)"
        in printed
        and "resumed from" in printed
    )
    m = tv.load(out)
    assert m.cfg.t5.param_dtype == "bfloat16" and m.params["latent_encoder"]["kernel"].dtype == jnp.bfloat16
