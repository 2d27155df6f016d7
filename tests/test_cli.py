"""The ``t5vae`` command (t5vae.cli): train writes a complete run directory, eval / info / interpolate /
sample print their tables, bad corpora fail before anything is written, --config files and flags."""

import ast
import json
import re
import shutil

import pytest
from conftest import run_cli

import t5vae as tv
from t5vae import cli, data, evaluate, flags, runlog


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
    assert set(evaluate.CURVE_KEYS["code"]) <= set(curve[0]) and 0.0 <= curve[1]["recon_token_acc"] <= 1.0
    assert "step 6: recon_token_acc" in run["stdout"]
    # every line is cut at max_length 8, and a cut line is never renamed (tests/test_data.py renames real ones)
    assert re.search(r"identifier renaming: 0 of [0-9]+ training lines renamed", run["stdout"])
    cfg = tv.Config.load_json(out / "config.json")
    assert cfg.t5.d_model == 32 and cfg.latent_size == 8
    assert cfg.t5.vocab_size == data.Tokenizer.load(out / "spiece.model").vocab_size
    assert "Interpolation between two held-out lines" in run["stdout"]
    assert "truncated" in run["stdout"]  # lines longer than max_length=8 tokens
    results = json.loads((out / "eval.json").read_text())
    assert results["n_truncated"] + 0 >= 0 and 0.0 <= results["recon_token_acc"] <= 1.0
    assert len(results["example"]) == 11
    assert "| greedy reconstruction token accuracy |" in (out / "eval.md").read_text()


def test_eval_and_info_commands(run, tmp_path, capsys):
    d = tmp_path / "run"  # eval rewrites eval.json and eval.md: on a copy, so the run stays as train left it
    shutil.copytree(run["out"], d)
    assert cli.main(["eval", str(d), "--pairs", "3"]) == 0
    out = capsys.readouterr().out
    assert "| greedy reconstruction exact match |" in out and "3 interpolation pairs" in out
    assert json.loads((d / "eval.json").read_text())["interp_pairs"] == 3
    assert cli.main(["eval", str(d), "--pairs", "2", "--method", "beam", "--kind", "lerp"]) == 0
    assert "2 interpolation pairs x 9 interior points (lerp, beam)" in capsys.readouterr().out
    results = json.loads((d / "eval.json").read_text())
    assert (results["interp_method"], results["interp_kind"]) == ("beam", "lerp")
    assert cli.main(["info", str(d)]) == 0
    out = capsys.readouterr().out
    assert "parameters:" in out and "final params: True" in out


def test_bad_corpora_are_clear_errors_before_anything_is_written(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("\n\n")
    (tmp_path / "blob.bin").write_bytes(bytes(range(256)))
    for corpus, msg in (
        ("empty.txt", "empty"),
        ("blob.bin", "not a text file"),
        ("nope.txt", "no such file"),
    ):
        out = tmp_path / f"run-{corpus}"
        assert cli.main(["train", "--out", str(out), "--corpus", str(tmp_path / corpus)]) == 1
        assert msg in capsys.readouterr().err
        assert not out.exists()


def test_config_file_and_flags(tmp_path):
    f = tmp_path / "c.json"
    f.write_text(json.dumps({"steps": 11, "pooling": "attention", "t5": {"d_model": 48}}))
    args = cli.parser().parse_args(["train", "--config", str(f), "--steps", "12", "--latent-size", "5"])
    cfg, tc = flags.build_configs(args)
    assert (tc.steps, cfg.pooling, cfg.t5.d_model, cfg.latent_size) == (12, "attention", 48, 5)
    f.write_text(json.dumps({"stepz": 1}))
    with pytest.raises(SystemExit, match="unknown setting"):
        flags.build_configs(cli.parser().parse_args(["train", "--config", str(f)]))
    f.write_text(json.dumps({"t5": {"d_modle": 48}}))  # a typo in the backbone's settings is named too
    with pytest.raises(SystemExit, match=r"unknown T5Config field\(s\) \['d_modle'\]"):
        flags.build_configs(cli.parser().parse_args(["train", "--config", str(f)]))
    assert (
        flags.build_configs(cli.parser().parse_args(["train", "--t5-kernels", "plain"]))[0].t5.kernels
        == "plain"
    )
    with pytest.raises(SystemExit, match="--t5-kernels must be one of"):  # named as the flag
        flags.build_configs(cli.parser().parse_args(["train", "--t5-kernels", "gpu"]))


# -- the tables of interpolate and sample, on the text-level model's run directory (conftest) ------------


@pytest.fixture(scope="module")
def run_dir(text_run_dir):
    return text_run_dir


def test_cli_interpolate_prints_ratio_text_valid(run_dir):
    rc, out, _ = run_cli(["interpolate", str(run_dir), "x1 = f(1, y1)", "import mod3", "--steps", "4"])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ratio", "text", "valid"] and len(lines) == 6
    rows = lines[1:5]
    assert [r.split()[0] for r in rows] == ["0.000", "0.333", "0.667", "1.000"]
    texts = tv.load(run_dir).interpolate("x1 = f(1, y1)", "import mod3", 4)
    for row, text in zip(rows, texts):
        valid = "yes" if _parses(text) else "no"
        assert row.rstrip().endswith(valid) and cli._show(text).strip() in row
    assert lines[5] == f"{sum(_parses(t) for t in texts)} of 4 parse with ast.parse"
    rc, out, _ = run_cli(
        ["interpolate", str(run_dir), "x1 = f(1, y1)", "import mod3", "--steps", "3", "--method", "beam"]
    )
    beam = tv.load(run_dir).interpolate("x1 = f(1, y1)", "import mod3", 3, method="beam", num_beams=4)
    assert (
        rc == 0 and [cli._show(t).strip() in row for t, row in zip(beam, out.splitlines()[1:4])] == [True] * 3
    )
    rc, _, err = run_cli(["interpolate", str(run_dir), "x = 1", "y = 2", "--steps", "1"])
    assert rc == 2 and "argument --steps: must be at least 2, got 1" in err
    rc, _, err = run_cli(["interpolate", str(run_dir), "", "y = 2"])
    assert rc == 1 and "a is empty" in err


def test_a_prose_runs_tables_have_no_parse_marks(run_dir, tmp_path):
    import json
    import shutil

    prose = tmp_path / "prose-run"
    shutil.copytree(run_dir, prose)
    config = json.loads((prose / "train_config.json").read_text())
    (prose / "train_config.json").write_text(json.dumps({**config, "language": "prose"}))
    rc, out, _ = run_cli(["interpolate", str(prose), "x1 = f(1, y1)", "import mod3", "--steps", "3"])
    lines = out.splitlines()
    assert rc == 0 and lines[0].split() == ["ratio", "text"] and len(lines) == 4 and "parse" not in out
    texts = tv.load(run_dir).interpolate("x1 = f(1, y1)", "import mod3", 3)
    assert [row.split(None, 1)[1] for row in lines[1:]] == [cli._show(t).strip() for t in texts]
    rc, out, _ = run_cli(["sample", str(prose), "-n", "2", "--prior", "tanh"])
    assert rc == 0 and out.splitlines()[0].split() == ["#", "text"] and "parse" not in out
    rc, _, err = run_cli(["interpolate", str(prose), "a", "b", "--method", "beam-parse"])
    assert rc != 0 and "--method beam-parse" in err and "learned prose" in err


def test_cli_sample_prints_a_table(run_dir):
    rc, out, _ = run_cli(["sample", str(run_dir), "-n", "4", "--prior", "tanh", "--seed", "2"])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "text", "valid"] and len(lines) == 6
    assert [r.split()[0] for r in lines[1:5]] == ["0", "1", "2", "3"]
    texts = tv.load(run_dir).sample(4, prior="tanh", seed=2)
    assert lines[5] == f"{sum(_parses(t) for t in texts)} of 4 parse with ast.parse"
    rc, _, err = run_cli(["sample", str(run_dir), "-n", "2", "--max-new-tokens", "0"])
    assert rc == 2 and "argument --max-new-tokens: must be at least 1, got 0" in err
    for flag, value in (
        ("--seed", "-1"),
        ("-n", "0"),
    ):  # each refused before the model is loaded, naming the flag
        rc, _, err = run_cli(["sample", str(run_dir), flag, value])
        assert rc == 2 and f"argument {flag}: must be at least" in err


def _parses(s):
    try:
        ast.parse(s)
        return True
    except (SyntaxError, ValueError):
        return False


def test_eval_on_held_out_lines_leaves_the_training_lines_out(run, tmp_path):
    held = tmp_path / "held.txt"
    train_line = run["corpus"].read_text().splitlines()[0]
    held.write_text("\n".join([train_line] + [f"value_{i} = compute({i})" for i in range(12)]) + "\n")
    rc, out, err = run_cli(["eval", str(run["out"]), "--lines", str(held), "--pairs", "2"])
    assert rc == 0, err
    assert "12 lines of 10-80 characters not in the run's training corpus" in out
    saved = json.loads(next(run["out"].glob("eval-*held.txt.json")).read_text())
    assert (
        saved["n_lines"] == 12 and saved["n_len_0_40"] == 12 and "probe_accuracy" not in saved
    )  # < 20 lines
    assert "Exact match by line length" in out and (run["out"] / "eval.md").read_text() != out


def test_demo_without_its_extra_names_the_install(monkeypatch):
    import sys

    import t5vae

    monkeypatch.setitem(sys.modules, "t5vae.demo", None)  # as if gradio (the demo extra) were missing
    monkeypatch.delattr(t5vae, "demo", raising=False)
    args = cli.parser().parse_args(["demo", "RUN"])
    with pytest.raises(ValueError, match=r"needs the demo extra \(pip install -e '\.\[demo\]'\)"):
        args.fn(args)


def test_train_on_the_prose_corpus_takes_the_prose_settings_and_flags_win():
    from t5vae import cli

    _, tc = flags.build_configs(cli.parser().parse_args(["train", "--corpus", "prose"]))
    assert (tc.language, tc.rename_prob, tc.min_chars, tc.max_chars) == ("prose", 0.0, 20, 200)
    _, tc = flags.build_configs(
        cli.parser().parse_args(["train", "--corpus", "prose", "--rename-prob", "0.3"])
    )
    assert tc.rename_prob == 0.3
    _, tc = flags.build_configs(
        cli.parser().parse_args(["train", "--corpus", "x.txt", "--language", "prose"])
    )
    assert tc.language == "prose" and tc.rename_prob == 0.0


def test_the_backbones_dropout_follows_the_language_unless_a_flag_or_config_sets_it(tmp_path):
    from t5vae import cli

    def dropout(*argv):
        return flags.build_configs(cli.parser().parse_args(["train", *argv]))[0].t5.dropout_rate

    assert dropout() == 0.0 and dropout("--corpus", "prose") == 0.1
    assert dropout("--corpus", "x.txt", "--language", "prose") == 0.1
    assert dropout("--corpus", "prose", "--t5-dropout-rate", "0") == 0.0
    (tmp_path / "c.json").write_text('{"t5": {"dropout_rate": 0.2}}')
    assert dropout("--corpus", "prose", "--config", str(tmp_path / "c.json")) == 0.2


def test_the_bottleneck_follows_the_language_unless_a_flag_or_config_sets_it(tmp_path):
    from t5vae import cli

    def bottleneck(*argv):
        cfg = flags.build_configs(cli.parser().parse_args(["train", *argv]))[0]
        return cfg.latent_size, cfg.latent_mix

    assert bottleneck() == (64, 0.2) == (tv.Config().latent_size, tv.Config().latent_mix)
    assert bottleneck("--corpus", "prose") == (32, 0.0)
    assert bottleneck("--corpus", "prose", "--latent-size", "48") == (48, 0.0)
    (tmp_path / "c.json").write_text('{"latent_mix": 0.1}')
    assert bottleneck("--corpus", "prose", "--config", str(tmp_path / "c.json")) == (32, 0.1)
    assert bottleneck("--latent-mix", "0") == (64, 0.0)


@pytest.mark.parametrize(
    "argv, says",
    [
        (["train", "--steps", "1e3"], "argument --steps: expected a whole number, got '1e3' (write 1000)"),
        (
            ["train", "--steps", "9" * 5000],
            "argument --steps: expected a whole number, got '" + "9" * 40 + "'... (5,000 characters)",
        ),
        (["train", "--steps", "9" * 30], "argument --steps: '" + "9" * 30 + "' is too large"),
        (["train", "--learning-rate", "fast"], "argument --learning-rate: expected a number, got 'fast'"),
        (["sample", "RUN", "-n", "2.5"], "argument -n: expected a whole number, got '2.5'"),
    ],
)
def test_bad_numbers_are_named_and_cut(argv, says):
    rc, _, err = run_cli(argv)
    last = err.strip().splitlines()[-1]
    assert rc == 2 and says in last and "<lambda>" not in err and "9" * 100 not in err, last


@pytest.mark.parametrize(
    "lines, says",
    [
        ("DIR", "is a directory, not a text file: for the Python statements in it write py:"),
        ("py:", "names no package or directory: expected py:PACKAGE_OR_DIR"),
    ],
)
def test_eval_lines_that_name_a_directory_or_nothing(run, tmp_path, lines, says):
    rc, _, err = run_cli(["eval", str(run["out"]), "--lines", str(tmp_path) if lines == "DIR" else lines])
    assert rc == 1 and says in err and err.count("\n") == 1, err
