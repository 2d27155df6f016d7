"""Training end to end on a tiny model: CLI run directory, resume, config mismatch, NaN guard, tv.load."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

import t5vae as tv
from conftest import require
from t5vae import checkpoint, cli, data, evaluate, runlog, train

TINY_FLAGS = ["--t5-d-model", "32", "--t5-d-kv", "8", "--t5-d-ff", "64", "--t5-num-layers", "1",
              "--t5-num-heads", "2", "--t5-relative-attention-num-buckets", "8", "--n-latent-tokens", "2",
              "--latent-size", "8", "--max-length", "8", "--batch-size", "4", "--vocab-size", "340",
              "--eval-pairs", "2", "--eval-batch-size", "8", "--progress", "false", "--log-every", "2"]
LONG = "very_long_name = " + " + ".join(f"term_{i}" for i in range(30))


def _corpus(path):
    lines = [f"x{i} = f({i}, y{i % 7})" for i in range(40)] + [f"import mod{i}" for i in range(20)]
    lines += ["return self.value", "\tz = 'tab\there'", "é = ['@', 1]", LONG]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    corpus = _corpus(base / "corpus.txt")
    out = base / "run"
    argv = ["train", "--out", str(out), "--corpus", str(corpus), "--steps", "6", "--checkpoint-every", "3",
            "--eval-every", "3", *TINY_FLAGS]
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(argv)
    return {"out": out, "corpus": corpus, "argv": argv, "rc": rc, "stdout": buf.getvalue()}


def test_cli_train_writes_a_complete_run_directory(run):
    out = run["out"]
    assert run["rc"] == 0, run["stdout"]
    for name in ("config.json", "train_config.json", "spiece.model", "metrics.jsonl", "eval.md", "eval.json"):
        assert (out / name).is_file(), name
    assert (out / "params").is_dir()
    assert sorted(int(p.name) for p in (out / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert {"loss", "ce", "mmd", "w", "token_acc", "seq_acc"} <= set(rows[0])
    curve = [json.loads(l) for l in (out / runlog.CURVE_FILE).read_text().splitlines()]
    assert [r["step"] for r in curve] == [3, 6]  # --eval-every 3: the learning curve
    assert set(evaluate.CURVE_KEYS) <= set(curve[0]) and 0.0 <= curve[1]["recon_token_acc"] <= 1.0
    assert "step 6: recon_token_acc" in run["stdout"]
    cfg = tv.Config.load_json(out / "config.json")
    assert cfg.t5.d_model == 32 and cfg.latent_size == 8
    assert cfg.t5.vocab_size == data.Tokenizer.load(out / "spiece.model").vocab_size
    assert "Interpolation between two held-out lines" in run["stdout"]
    assert "truncated" in run["stdout"]  # lines longer than max_length=8 tokens
    results = json.loads((out / "eval.json").read_text())
    assert results["n_truncated"] + 0 >= 0 and 0.0 <= results["recon_token_acc"] <= 1.0
    assert len(results["example"]) == 11
    assert "| greedy reconstruction token accuracy |" in (out / "eval.md").read_text()


def test_metrics_also_go_to_tensorboard(run):
    require("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run["out"] / "tensorboard"))
    acc.Reload()
    rows = [json.loads(l) for l in (run["out"] / "metrics.jsonl").read_text().splitlines()]
    events = acc.Scalars("train/loss")
    assert [e.step for e in events] == [r["step"] for r in rows]
    np.testing.assert_allclose([e.value for e in events], [r["loss"] for r in rows], rtol=1e-6)
    assert {"train/ce", "train/mmd", "train/w", "train/token_acc", "train/seq_acc"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("eval/interp_valid")] == [3, 6]


def test_load_gives_a_text_level_model(run):
    m = tv.load(run["out"])
    with pytest.warns(UserWarning, match="truncated to max_length=8"):  # both are longer than 8 tokens
        z = m.encode(["x1 = f(1, y1)", "import mod3"], truncate=True)
    assert z.shape == (2, 2, 8) and np.all(np.abs(z) < 1)
    texts = m.decode(z)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.warns(UserWarning, match="truncated"):
        path = m.interpolate("x1 = f(1, y1)", "import mod3", steps=3, truncate=True)
    assert len(path) == 3  # endpoints included
    assert len(m.sample(3)) == 3
    # the loaded params are the trained ones, not a fresh init
    fresh = tv.init(m.cfg, jax.random.key(0))
    assert not np.allclose(m.params["latent_encoder"]["kernel"], fresh["latent_encoder"]["kernel"])


def test_resume_continues_and_a_changed_config_is_refused(run, capsys):
    out = run["out"]
    argv = [a if a != "6" else "8" for a in run["argv"]]  # --steps 8
    with open(out / runlog.CURVE_FILE, "a") as f:  # as if a crash came after step 7's (never saved) evaluation
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
    argv = ["train", "--out", str(tmp_path / "nan"), "--corpus", str(run["corpus"]), "--steps", "20",
            "--checkpoint-every", "1", "--learning-rate", "1e30", "--warmup-steps", "1",
            *TINY_FLAGS]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "non-finite" in err and "last good state" in err
    cfg = tv.Config.load_json(tmp_path / "nan" / "config.json")
    tc = train.TrainConfig.from_dict(json.loads((tmp_path / "nan" / "train_config.json").read_text()))
    mngr = checkpoint.checkpoint_manager(tmp_path / "nan")
    abstract = jax.eval_shape(lambda: train.init_state(cfg, tc, tv.init(cfg, jax.random.key(0))))
    step, state = checkpoint.restore_train_state(mngr, abstract)
    mngr.close()
    assert step is not None and step < 20
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(state["params"]))


def test_eval_and_info_commands(run, capsys):
    assert cli.main(["eval", str(run["out"]), "--pairs", "3"]) == 0
    out = capsys.readouterr().out
    assert "| greedy reconstruction exact match |" in out and "3 interpolation pairs" in out
    assert json.loads((run["out"] / "eval.json").read_text())["interp_pairs"] == 3
    assert cli.main(["eval", str(run["out"]), "--pairs", "2", "--method", "beam", "--kind", "lerp"]) == 0
    assert "2 interpolation pairs x 9 interior points (lerp, beam)" in capsys.readouterr().out
    results = json.loads((run["out"] / "eval.json").read_text())
    assert (results["interp_method"], results["interp_kind"]) == ("beam", "lerp")
    assert (cli.KINDS, cli.METHODS) == (tv.model.INTERPOLATIONS, evaluate.DECODERS)  # the parser's copies
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate.decode_codes(None, None, np.zeros((1, 2, 8), np.float32), 1, method="sampled")
    assert cli.main(["info", str(run["out"])]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "final params: True" in out


def test_bad_corpora_are_clear_errors_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    for corpus, msg in (("empty.txt", "empty"), ("blob.bin", "not a text file"), ("nope.txt", "no such file")):
        out = tmp_path / f"run-{corpus}"
        assert cli.main(["train", "--out", str(out), "--corpus", str(tmp_path / corpus)]) == 1
        assert msg in capsys.readouterr().err
        assert not out.exists()


def test_tokenizer_vocab_larger_than_the_embedding_is_refused(run):
    m = tv.load(run["out"])
    small = m.cfg.replace(t5=m.cfg.t5.replace(vocab_size=m.tokenizer.vocab_size - 1))
    with pytest.raises(ValueError, match="do not match"):
        tv.pipeline.Model(small, m.params, m.tokenizer)


def test_train_restarts_with_hugepage_malloc_only_where_it_applies():
    thp, linux = "always [madvise] never\n", ("Linux", ("glibc", "2.36"))
    env = {"PATH": "/bin"}
    got = cli.hugepage_env(env, *linux, thp)
    assert got == {"PATH": "/bin", "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    other = cli.hugepage_env({"GLIBC_TUNABLES": "glibc.cpu.x86_shstk=off"}, *linux, thp)
    assert other["GLIBC_TUNABLES"] == "glibc.cpu.x86_shstk=off:glibc.malloc.hugetlb=1"  # kept, appended to
    for args in [(got, *linux, thp),  # already restarted: never twice
                 ({"T5VAE_HUGEPAGES": "0"}, *linux, thp),  # opted out
                 (env, "Darwin", ("", ""), thp), (env, "Linux", ("", ""), thp),  # no glibc (musl)
                 (env, "Linux", ("glibc", "2.31"), thp),  # no glibc.malloc.hugetlb before 2.35
                 (env, *linux, "always madvise [never]\n"), (env, *linux, None)]:  # THP off, or no setting
        assert cli.hugepage_env(*args) is None, args


def test_only_the_train_command_restarts_itself(monkeypatch, tmp_path):
    calls = []

    def execve(path, args, env):
        calls.append((path, args, env))
        raise SystemExit(0)

    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    monkeypatch.setattr(os, "execve", execve)
    monkeypatch.setattr(cli, "THP_SETTING", setting)
    monkeypatch.setattr(cli.platform, "system", lambda: "Linux")
    monkeypatch.setattr(cli.platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("T5VAE_HUGEPAGES", raising=False)
    monkeypatch.setattr(sys, "argv", ["t5vae", "train", "--steps", "3"])
    with pytest.raises(SystemExit):
        cli.main()
    assert calls == [(sys.executable, [sys.executable, "-m", "t5vae.cli", "train", "--steps", "3"],
                      {**os.environ, "GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"})]
    assert cli.main(["info", str(tmp_path / "missing")]) == 1  # an explicit argv never restarts
    monkeypatch.setattr(sys, "argv", ["t5vae", "info", str(tmp_path / "missing")])
    assert cli.main() == 1 and len(calls) == 1  # nor does any other command

    def failing_execve(path, args, env):
        raise PermissionError("exec refused")

    monkeypatch.setattr(os, "execve", failing_execve)  # a failed restart trains on, only slower
    monkeypatch.setattr(sys, "argv", ["t5vae", "train", "--corpus", str(tmp_path / "missing.txt")])
    assert cli.main() == 1  # reached the command itself: the corpus error


def test_batch_stream_is_a_pure_function_of_the_step():
    enc = data.Encoded([np.arange(1, 2 + i % 12, dtype=np.int32) for i in range(50)], 0)
    s1, s2 = train.BatchStream(enc, 8, (8, 16), 3), train.BatchStream(enc, 8, (8, 16), 3)
    n = s1.per_epoch
    seq = [s1(i)["input_ids"] for i in range(2 * n + 1)]
    assert all(np.array_equal(s2(i)["input_ids"], seq[i]) for i in (2 * n, n + 1, 0, n))
    assert not all(np.array_equal(a, b) for a, b in zip(seq[:n], seq[n:2 * n]) if a.shape == b.shape)


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"steps": 11, "pooling": "attention", "t5": {"d_model": 48}}))
    args = cli.parser().parse_args(["train", "--config", str(f), "--steps", "12", "--latent-size", "5"])
    cfg, tc = cli.build_configs(args)
    assert (tc.steps, cfg.pooling, cfg.t5.d_model, cfg.latent_size) == (12, "attention", 48, 5)
    f.write_text(json.dumps({"stepz": 1}))
    with pytest.raises(SystemExit, match="unknown setting"):
        cli.build_configs(cli.parser().parse_args(["train", "--config", str(f)]))


@pytest.mark.slow
def test_kill_9_mid_run_loses_at_most_one_interval(run, tmp_path):
    out = tmp_path / "killed"
    argv = ["train", "--out", str(out), "--corpus", str(run["corpus"]), "--steps", "100000",
            "--checkpoint-every", "5", *TINY_FLAGS]
    code = f"import sys; from t5vae import cli; sys.exit(cli.main({argv!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    ck = out / "checkpoints"
    while time.time() < deadline and not (ck.is_dir() and len([p for p in ck.iterdir() if p.name.isdigit()]) >= 2):
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rows = (out / "metrics.jsonl").read_text().splitlines()
    done = json.loads(rows[-1])["step"] if rows else 0
    cfg = tv.Config.load_json(out / "config.json")
    tc = train.TrainConfig.from_dict(json.loads((out / "train_config.json").read_text()))
    mngr = checkpoint.checkpoint_manager(out)
    step, _ = checkpoint.restore_train_state(
        mngr, jax.eval_shape(lambda: train.init_state(cfg, tc, tv.init(cfg, jax.random.key(0)))))
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
    argv = ["train", "--out", str(out), "--corpus", str(run["corpus"]), "--init-from", str(tmp_path / "t5"),
            "--steps", "2", "--max-length", "8", "--batch-size", "4", "--eval-pairs", "1", "--progress", "false"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    m = tv.load(out)
    assert m.cfg.t5.d_model == t5cfg.d_model and m.cfg.t5.vocab_size == t5cfg.vocab_size
    assert m.tokenizer.proto == tok.proto
    # a T5 whose embedding is smaller than the tokenizer's vocabulary is refused
    small = tv.preset("tiny", vocab_size=tok.vocab_size - 10, num_layers=1)
    tv.save_t5(tmp_path / "t5small", small, tv.t5.init(small, jax.random.key(3)), tokenizer=run["out"] / "spiece.model")
    argv[argv.index(str(tmp_path / "t5"))] = str(tmp_path / "t5small")
    argv[argv.index(str(out))] = str(tmp_path / "from-small")
    assert cli.main(argv) == 1
    assert "do not match" in capsys.readouterr().err
