"""A run directory under faults (t5vae.rundir, the start and resume of t5vae.train, the CLI's validation): one
writer at a time, nothing half-started reused, damaged checkpoints skipped, bad settings refused before
anything is written, Ctrl-C saved and exit 130. Each test uses the real failure: a second live process, a
kill -9, truncated checkpoint files, a SIGINT."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY_FLAGS, run_cli

from t5vae import checkpoint, cli, data, flags, rundir
from t5vae.train_config import TrainConfig

HOLD = """import sys, time
from pathlib import Path
from t5vae import rundir
with rundir.claim(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(600)
"""


def _listing(d: Path) -> dict:
    return {str(p.relative_to(d)): p.stat().st_size for p in sorted(d.rglob("*")) if p.is_file()}


def _holder(out: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_one_does_not_block(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    before = _listing(out)
    holder = _holder(out)
    try:
        argv = [{str(run["out"]): str(out), "6": "8"}.get(a, a) for a in run["argv"]]
        rc, _, err = run_cli(argv)
        assert rc == 1 and f"{out} is in use by another t5vae run (PID {holder.pid})" in err
        assert _listing(out) == {**before, rundir.LOCK_FILE: (out / rundir.LOCK_FILE).stat().st_size}
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with rundir.claim(out):  # the lock died with its process: the stale file blocks nothing
        assert (out / rundir.LOCK_FILE).read_text().strip() == str(os.getpid())
    with rundir.claim(out, chief=False):  # another host's process never takes it from process 0
        with rundir.claim(out):
            pass


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing_reused(run, tmp_path):
    one_line = tmp_path / "one.txt"
    one_line.write_text("x = 1\n")
    out = tmp_path / "run"
    argv = [{str(run["out"]): str(out), str(run["corpus"]): str(one_line)}.get(a, a) for a in run["argv"]]
    rc, _, err = run_cli(argv)
    assert rc == 1 and "does not fill one batch" in err
    assert not out.exists()  # the directory it created is gone again
    # the debris a kill -9 leaves before the first checkpoint: the mark, a tokenizer, the configs
    shutil.copytree(
        run["out"], out, ignore=shutil.ignore_patterns("checkpoints", "params", "eval*", "*.jsonl")
    )
    rundir.mark_incomplete(out)
    small = data.train_tokenizer(["x = 1", "y = 2"] * 20, 270)
    small.save(out / checkpoint.TOKENIZER_FILE)
    argv[argv.index(str(one_line))] = str(run["corpus"])
    argv[argv.index("6")] = "2"
    rc, stdout, err = run_cli(argv)
    assert rc == 0, err
    assert "stopped before its first checkpoint; starting it over" in stdout
    trained = data.Tokenizer.load(run["out"] / checkpoint.TOKENIZER_FILE).vocab_size
    assert (
        small.vocab_size != trained == data.Tokenizer.load(out / checkpoint.TOKENIZER_FILE).vocab_size
    )  # anew
    assert not (out / rundir.INCOMPLETE_FILE).exists() and rundir.committed_steps(out) == [2]


def _truncate_data(step_dir: Path) -> None:
    for f in step_dir.rglob("d/*"):
        with open(f, "r+b") as fh:
            fh.truncate(f.stat().st_size // 2)


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # orbax's coroutine of the failed read
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_older_one_resumed(run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(run["out"], out)
    assert rundir.committed_steps(out) == [3, 6]
    _truncate_data(out / checkpoint.CHECKPOINTS_DIR / "6")
    argv = [{str(run["out"]): str(out), "6": "7"}.get(a, a) for a in run["argv"]]
    rc, stdout, err = run_cli(argv)
    assert rc == 0, err
    assert f"warning: checkpoint {out / 'checkpoints' / '6'} cannot be restored" in stdout
    assert f"moved it to {out / 'checkpoints-damaged' / '6'}" in stdout
    assert f"resumed from {out / 'checkpoints'}/3 (step 3)" in stdout
    assert (out / "checkpoints-damaged" / "6" / "default").is_dir()  # kept, not deleted
    assert [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines()] == list(
        range(1, 8)
    )
    # every checkpoint damaged: an error that lists what was tried
    for s in rundir.committed_steps(out):
        _truncate_data(out / checkpoint.CHECKPOINTS_DIR / str(s))
    argv = [{"7": "9"}.get(a, a) for a in argv]
    rc, _, err = run_cli(argv)
    assert rc == 1 and "no checkpoint in" in err and "could be restored; tried:" in err
    assert err.count(str(out / "checkpoints")) >= 3  # the directory and both checkpoints tried


@pytest.mark.filterwarnings(
    "ignore::pytest.PytestUnraisableExceptionWarning"
)  # orbax coroutine of a damaged read earlier
def test_a_config_mismatch_is_not_taken_for_damage(run, tmp_path):
    import jax

    from t5vae import train, vae
    from t5vae.config import Config
    from t5vae.train_config import TrainConfig

    cfg = Config.load_json(run["out"] / checkpoint.CONFIG_FILE)
    tc = TrainConfig.load_json(run["out"] / rundir.TRAIN_CONFIG_FILE).replace(optimizer="adafactor")
    other = jax.eval_shape(lambda: train.init_state(cfg, tc, vae.init(cfg, jax.random.key(0))))
    mngr = checkpoint.checkpoint_manager(run["out"])
    try:
        with pytest.raises(ValueError, match="does not match this model/optimizer.*another --optimizer"):
            checkpoint.restore_train_state(mngr, other, set_aside=False)
    finally:
        mngr.close()
    assert rundir.committed_steps(run["out"]) == [3, 6]  # nothing set aside


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--learning-rate", "nan", "--learning-rate must be a finite number > 0, got nan"),
        ("--learning-rate", "-1", "--learning-rate must be a finite number > 0, got -1.0"),
        ("--clip-norm", "0", "--clip-norm must be a finite number > 0, got 0.0"),
        ("--validation-percent", "100", "--validation-percent must be above 0 and below 100"),
        ("--seed", "-1", "--seed must be an int >= 0, got -1"),
        ("--t5-d-model", "0", "--t5-d-model must be a positive int, got 0"),
    ],
)
def test_bad_settings_are_refused_naming_the_flag_before_anything_is_written(tmp_path, flag, value, message):
    rc, _, err = run_cli(["train", "--out", str(tmp_path / "run"), flag, value])
    assert rc == 1 and message in err, err
    assert not (tmp_path / "run").exists()


def test_out_naming_a_file_is_refused_and_the_file_kept(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("mine")
    for extra in ([], ["--overwrite"]):
        rc, _, err = run_cli(["train", "--out", str(f), "--steps", "2", *extra])
        assert rc == 1 and f"--out {f} is a file, not a directory" in err
    assert f.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_replaces_a_run_but_never_a_foreign_directory(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    (d / "thesis.tex").write_text("years of work")
    rc, _, err = run_cli(["train", "--out", str(d), "--overwrite", "--steps", "2"])
    assert rc == 1 and "is not a t5vae run directory (it holds thesis.tex)" in err
    assert (d / "thesis.tex").read_text() == "years of work"


def test_eval_pairs_must_not_be_negative(run):
    rc, _, err = run_cli(["eval", str(run["out"]), "--pairs", "-1"])
    assert rc == 2 and "argument --pairs: must be at least 0, got -1" in err


def test_remat_none_is_a_value_and_one_step_has_a_schedule():
    from t5vae import train
    from t5vae.train_config import TrainConfig

    args = cli.parser().parse_args(["train", "--t5-remat", "none", "--steps", "1"])
    cfg, tc = flags.build_configs(args)
    assert cfg.t5.remat == "none" and tc.steps == 1
    assert float(train.schedule(TrainConfig(steps=1))(0)) == 0.0  # warmup from 0, then one step


def _long_run_argv(run, out: Path, checkpoint_every: int) -> list[str]:
    """A tiny training of 100000 steps (it is stopped, never finished) on the shared run's corpus."""
    return [
        "train",
        "--out",
        str(out),
        "--corpus",
        str(run["corpus"]),
        "--steps",
        "100000",
        "--checkpoint-every",
        str(checkpoint_every),
        "--eval-every",
        "0",
        *TINY_FLAGS,
    ]


def _spawn_train(argv, **kw) -> subprocess.Popen:
    code = f"import sys; from t5vae import cli; sys.exit(cli.main({argv!r}))"
    return subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw
    )


def _wait_for(pred, proc, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and not pred():
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    assert pred(), "timed out"


@pytest.mark.slow
def test_ctrl_c_saves_the_current_step_and_exits_130(run, tmp_path):
    out = tmp_path / "run"
    argv = _long_run_argv(run, out, checkpoint_every=100000)
    proc = _spawn_train(argv)
    metrics = out / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 4, proc)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    step = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert f"interrupted: saved a checkpoint at step {step}" in stdout
    assert rundir.committed_steps(out) == [step] and not (out / rundir.INCOMPLETE_FILE).exists()


@pytest.mark.slow
def test_two_real_trainings_on_one_out(run, tmp_path):
    out = tmp_path / "run"
    argv = _long_run_argv(run, out, checkpoint_every=5)
    first = _spawn_train(argv)
    try:
        metrics = out / "metrics.jsonl"
        _wait_for(lambda: metrics.is_file() and len(metrics.read_text().splitlines()) >= 2, first)
        second = _spawn_train(argv)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 1 and f"is in use by another t5vae run (PID {first.pid})" in err
        n = len(metrics.read_text().splitlines())
        _wait_for(lambda: len(metrics.read_text().splitlines()) > n + 2, first)  # the first one trains on
    finally:
        first.send_signal(signal.SIGKILL)
        first.communicate()
    rows = [json.loads(r)["step"] for r in (out / "metrics.jsonl").read_text().splitlines() if r.strip()]
    assert rows == sorted(set(rows))  # one writer: every step once, in order


@pytest.mark.slow
def test_killed_before_the_first_checkpoint_then_a_different_corpus(run, tmp_path):
    out = tmp_path / "run"
    argv = _long_run_argv(run, out, checkpoint_every=100000)
    proc = _spawn_train(argv)
    _wait_for(lambda: (out / checkpoint.CONFIG_FILE).is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert (out / rundir.INCOMPLETE_FILE).exists() and not rundir.committed_steps(out)
    other = tmp_path / "other.txt"
    other.write_text("".join(f"value_{i} = compute({i}, {i * 3})\n" for i in range(80)))
    argv = [{str(run["corpus"]): str(other), "100000": "2", "340": "300"}.get(a, a) for a in argv]
    rc, stdout, err = run_cli(argv)
    assert rc == 0, err
    assert "starting it over" in stdout
    killed = data.Tokenizer.load(run["out"] / checkpoint.TOKENIZER_FILE)  # what the killed run had trained
    new = data.Tokenizer.load(out / checkpoint.TOKENIZER_FILE)
    assert (
        new.vocab_size
        == data.train_tokenizer(other.read_text().splitlines(), 300).vocab_size
        != killed.vocab_size
    )


def test_the_runs_corpus_is_read_with_the_runs_settings(tmp_path):
    """Every reader of a run's corpus (eval, the aggregate prior, the demo) gets the run's spec and settings,
    or another spec read with them."""
    with pytest.raises(FileNotFoundError, match="train_config.json is missing"):
        rundir.corpus(tmp_path)
    lines = [f"name_{i} = value_{i}" + "x" * (i % 30) for i in range(200)]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    (tmp_path / "b.txt").write_text("\n".join(lines[:50]) + "\n")
    TrainConfig(corpus=str(tmp_path / "a.txt"), validation_percent=20.0).save_json(
        tmp_path / "train_config.json"
    )
    got = rundir.corpus(tmp_path)
    assert sorted(got.train + got.validation) == sorted(lines) and 20 <= len(got.validation) <= 60
    other = rundir.corpus(tmp_path, str(tmp_path / "b.txt"))
    assert sorted(other.train + other.validation) == sorted(lines[:50]) and other.source == str(
        tmp_path / "b.txt"
    )


def test_a_runs_language_is_its_train_configs_else_its_corpus_specs(tmp_path):
    TrainConfig(corpus="notes.txt", language="prose").save_json(tmp_path / rundir.TRAIN_CONFIG_FILE)
    assert rundir.language(tmp_path) == "prose" and rundir.language(tmp_path, "lines.txt") == "prose"
    export = tmp_path / "export"
    export.mkdir()
    assert rundir.language(export) == "code" and rundir.language(export, "prose") == "prose"
