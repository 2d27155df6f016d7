"""``python -m weights_convert SRC OUT`` never destroys its input (weights_convert.output): an OUT that is, holds or
sits in SRC is refused; --overwrite replaces only a previous conversion or an empty directory; a killed run's
leftovers are removed by the next run when their process is gone; OUT follows the umask; a bad config.json is
one line naming the file; two weight formats in SRC say which is converted; orbax's INFO logs stay quiet.
The source is a tiny random transformers T5 written by ``save_pretrained``, shared by the module."""

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from test_convert import tree_hashes
from test_hf_equivalence import flat_params, make_hf_model

import t5vae as tv
from weights_convert.__main__ import main
from weights_convert.convert import convert
from weights_convert.output import HOST


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    """An HF T5 directory (model.safetensors + config.json + a tokenizer file), a pytorch_model.bin of a second
    random model, and the params each converts to."""
    root = tmp_path_factory.mktemp("faults")
    make_hf_model("v1_0", seed=11).save_pretrained(root / "hf", safe_serialization=True)
    make_hf_model("v1_0", seed=12).save_pretrained(root / "pt", safe_serialization=False)
    (root / "hf" / "spiece.model").write_bytes(b"copied as it is")  # not read by the converter, only copied
    converted, converted_bin = convert(root / "hf", root / "converted"), convert(root / "pt", root / "pt_out")
    return dict(
        src=root / "hf",
        converted=converted,
        want=flat_params(tv.load_t5(converted)[1]),
        bin=root / "pt" / "pytorch_model.bin",
        want_bin=flat_params(tv.load_t5(converted_bin)[1]),
    )


def same_params(out, want) -> bool:
    got = flat_params(tv.load_t5(out)[1])
    return got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)


def leftovers(out):
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*"))


def run_cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()  # reaped: no zombie answers os.kill(pid, 0)
    return p.pid


# -- OUT is, holds, or sits in SRC ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "src_arg, out_arg, flags, message",
    [
        ("models/hf", "models/hf", ["--overwrite"], "it is the source checkpoint's directory"),
        (
            "models/hf/model.safetensors",
            "models/hf",
            ["--overwrite"],
            "it is the source checkpoint's directory",
        ),
        ("models/hf", "link", ["--overwrite"], "it is the source checkpoint's directory"),
        ("models/hf", "models", ["--overwrite"], "it contains the source checkpoint"),
        ("link/model.safetensors", "models", ["--overwrite"], "it contains the source checkpoint"),
        ("models/hf", "models/hf/converted", [], "it is inside the source checkpoint's directory"),
    ],
    ids=["same", "src-file", "out-symlink", "parent", "src-via-symlink", "inside"],
)
def test_out_that_is_holds_or_sits_in_src_is_refused(hf, tmp_path, capsys, src_arg, out_arg, flags, message):
    shutil.copytree(hf["src"], tmp_path / "models" / "hf")
    (tmp_path / "models" / "notes.txt").write_text("a sibling of the source")
    (tmp_path / "link").symlink_to(tmp_path / "models" / "hf")
    before = tree_hashes(tmp_path / "models")
    src, out = tmp_path / src_arg, tmp_path / out_arg
    rc, err = run_cli(capsys, src, out, *flags, "--quiet")
    assert rc == 1
    assert err.startswith(f"error: refusing OUT {out}") and message in err, err
    assert f"SRC {src}" in err and str(tmp_path / "models" / "hf") in err  # both paths named
    assert tree_hashes(tmp_path / "models") == before
    assert not leftovers(out) and not leftovers(tmp_path / "models" / "hf")


# -- --overwrite -------------------------------------------------------------------------------------------


def _run_dir(d, hf):  # a training run directory: config + params + more
    shutil.copytree(hf["converted"], d)
    (d / "metrics.jsonl").write_text("{}\n")


def _not_t5_config(d, hf):
    shutil.copytree(hf["converted"], d)
    (d / "config.json").write_text(json.dumps({"t5": {"d_model": 16}, "latent_size": 8}))


def _many(d, hf):
    d.mkdir()
    for i in range(7):
        (d / f"f{i}.txt").write_text(str(i))


@pytest.mark.parametrize(
    "make, listed",
    [
        (
            lambda d, hf: (
                d.mkdir(),
                (d / "notes.txt").write_text("precious"),
                (d / "data").mkdir(),
                (d / "data" / "x.bin").write_bytes(b"\1"),
            ),
            "it holds data/, notes.txt;",
        ),
        (_run_dir, "it holds config.json, metrics.jsonl, params/, spiece.model;"),
        (_not_t5_config, "config.json is not a T5 config.json (model_type None)"),
        (_many, "it holds f0.txt, f1.txt, f2.txt, f3.txt, f4.txt (+ 2 more);"),
    ],
    ids=["files", "run-dir", "not-t5-config", "many"],
)
def test_overwrite_refuses_what_is_not_a_conversion(hf, tmp_path, capsys, make, listed):
    out = tmp_path / "out"
    make(out, hf)
    before = tree_hashes(out)
    rc, err = run_cli(capsys, hf["src"], out, "--overwrite", "--quiet")
    assert rc == 1 and err.startswith(f"error: refusing to overwrite {out}: ") and listed in err, err
    assert "remove it yourself or choose another output" in err
    assert tree_hashes(out) == before and not leftovers(out)


def test_overwrite_replaces_a_previous_conversion_or_an_empty_dir(hf, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    assert run_cli(capsys, hf["src"], out, "--overwrite", "--quiet") == (0, "")
    assert same_params(out, hf["want"]) and sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "params",
        "spiece.model",
    ]
    assert run_cli(capsys, hf["src"], out, "--overwrite", "--dtype", "bfloat16", "--quiet") == (0, "")
    assert tv.load_t5(out)[0].param_dtype == "bfloat16" and not leftovers(out)


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_overwrite_onto_a_file_or_link_is_refused_leaving_nothing(hf, tmp_path, capsys, kind):
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("not a directory")
    else:
        out.symlink_to(hf["converted"])
    before = tree_hashes(hf["converted"])
    rc, err = run_cli(capsys, hf["src"], out, "--overwrite", "--quiet")
    assert rc == 1
    assert err.startswith(
        f"error: refusing to overwrite {out}: "
        + (
            "it is a file, not a directory"
            if kind == "file"
            else f"it is a symbolic link (to {hf['converted']})"
        )
    ), err
    assert (out.read_text() == "not a directory") if kind == "file" else (out.readlink() == hf["converted"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no .out.old-* nor .out.partial-*
    assert tree_hashes(hf["converted"]) == before


# -- leftovers of killed runs ---------------------------------------------------------------------------------

# The converter as `python -m weights_convert` runs it, except that once the params are in the staging directory
# it hangs before renaming it into place: the test kills it there with SIGKILL.
HANG_AFTER_SAVE = textwrap.dedent("""
    import sys, time
    from t5vae import checkpoint
    from weights_convert.__main__ import main
    save = checkpoint.save_params

    def save_then_hang(*args, **kwargs):
        save(*args, **kwargs)
        time.sleep(600)

    checkpoint.save_params = save_then_hang
    sys.exit(main(sys.argv[1:]))
""")
OUR_LINES = r"(reading |skipping \d+ tensors: |writing |done in |removed )"


def test_killed_conversion_is_cleaned_up_by_the_next_run(hf, tmp_path):
    out = tmp_path / "out"
    p = subprocess.Popen(
        [sys.executable, "-c", HANG_AFTER_SAVE, str(hf["src"]), str(out), "--quiet"],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 300
        while not list(tmp_path.glob(".out.partial-*/params/_METADATA")) and p.poll() is None:
            assert time.time() < deadline, "the converter never wrote its staging directory"
            time.sleep(0.05)
    finally:
        p.kill()  # SIGKILL: no finally, no atexit
        err = p.communicate()[1]
    assert p.returncode == -signal.SIGKILL, err
    partial = [x.name for x in tmp_path.glob(".out.partial-*")]
    assert len(partial) == 1 and partial[0].startswith(f".out.partial-{p.pid}-") and not out.exists()

    r = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(hf["src"]), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert re.search(
        rf"^removed {re.escape(str(tmp_path / partial[0]))} \(\d+\.\d MB\), left by process {p.pid}, "
        "which is no longer running$",
        r.stderr,
        re.M,
    ), r.stderr
    assert all(re.match(OUR_LINES, line) for line in r.stderr.splitlines()), r.stderr  # orbax stays quiet
    assert not leftovers(out) and same_params(out, hf["want"])


def test_leftovers_of_running_or_unknown_processes_are_kept(hf, tmp_path, caplog):
    """Only a leftover whose process is known to be gone is removed; an old OUT moved aside by a run killed
    mid-swap (OUT missing) is kept until a new OUT is in place."""
    out = tmp_path / "out"
    gone = dead_pid()
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    names = {
        "dead": f".out.partial-{gone}-0a1b2c3d-{HOST}",
        "t5vae-old": f".out.old-{gone}",
        "running": f".out.partial-{running.pid}-0a1b2c3d-{HOST}",
        "other-host": f".out.partial-{gone}-0a1b2c3d-elsewhere",
        "unknown": ".out.partial-k2j_x9qa",
    }
    try:
        for name in names.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "data").write_bytes(b"\0" * 3000)
        shutil.copytree(
            hf["converted"], tmp_path / (aside := f".out.old-{gone}-5e6f7a8b-{HOST}")
        )  # OUT is gone
        (tmp_path / "bare").mkdir()  # a source that fails after the leftovers are swept: no config.json
        shutil.copy(hf["src"] / "model.safetensors", tmp_path / "bare")
        with (
            caplog.at_level(logging.INFO, logger="weights_convert"),
            pytest.raises(ValueError, match="missing"),
        ):
            convert(tmp_path / "bare", out)
        assert leftovers(out) == sorted(set(names.values()) - {names["dead"]} | {aside})
        assert (
            f"removed {tmp_path / names['dead']} (0.0 MB), left by process {gone}, which is no longer running"
            in caplog.text
        )
        assert f"leaving {tmp_path / names['running']} alone: process {running.pid}" in caplog.text
        assert (
            f"{tmp_path / names['other-host']} (0.0 MB) left by an earlier run, but cannot tell"
            in caplog.text
        )
        assert (
            f"{tmp_path / names['unknown']} (0.0 MB) left by an earlier run, but cannot tell" in caplog.text
        )
        for old in (aside, names["t5vae-old"]):
            assert (
                f"keeping {tmp_path / old}, the previous out (a run was killed while replacing it)"
                in caplog.text
            )
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="weights_convert"):
            convert(hf["src"], out)
        for old in (aside, names["t5vae-old"]):
            assert f"removed {tmp_path / old}, the out that a killed run had moved aside" in caplog.text
        assert leftovers(out) == sorted([names["running"], names["other-host"], names["unknown"]])
        assert same_params(out, hf["want"])
    finally:
        running.kill()
        running.wait()


# -- permissions, config.json, formats, logs ------------------------------------------------------------------


def test_out_permissions_follow_the_umask(hf, tmp_path):
    old = os.umask(0o027)
    try:
        out = convert(hf["src"], tmp_path / "out")
        modes = {p: (out / p).stat().st_mode & 0o777 for p in ("", "config.json", "params", "spiece.model")}
        convert(hf["src"], out, dtype="bfloat16", overwrite=True)
        again = (out / "").stat().st_mode & 0o777
    finally:
        os.umask(old)
    assert modes == {"": 0o750, "config.json": 0o640, "params": 0o750, "spiece.model": 0o640}
    assert again == 0o750


BAD_CONFIGS = {
    "not-json": (b'{"d_model": 16,', r"not valid JSON \(Expecting property name enclosed in double quotes"),
    "binary": (bytes(range(128, 256)), r"not a text file \(byte 0 is not UTF-8\)"),
    "array": (b"[1, 2]", "must hold a JSON object (a T5 config), got a JSON list"),
    "bert": (json.dumps({"model_type": "bert", "hidden_size": 16}).encode(), "model_type is 'bert'; only T5"),
    "no-t5-keys": (b'{"hello": 1}', "not a T5 config: it has no model_type and none of d_model"),
    "bad-value": (
        json.dumps({"model_type": "t5", "num_heads": -1}).encode(),
        "T5Config.num_heads must be a positive int",
    ),
}


@pytest.mark.parametrize("name", sorted(BAD_CONFIGS))
def test_bad_config_json_is_one_line_naming_the_file(hf, tmp_path, capsys, name):
    data, problem = BAD_CONFIGS[name]
    src = shutil.copytree(hf["src"], tmp_path / "src")
    (src / "config.json").write_bytes(data)
    rc, err = run_cli(capsys, src, tmp_path / "out", "--quiet")
    assert rc == 1 and err.startswith(f"error: {src / 'config.json'}: ") and err.count("\n") == 1, err
    assert re.search(problem if "\\" in problem else re.escape(problem), err), err
    assert not (tmp_path / "out").exists() and not leftovers(tmp_path / "out")
    # the same file given with --config (a source without config.json)
    (src / "config.json").rename(tmp_path / "given.json")
    rc, err = run_cli(capsys, src, tmp_path / "out", "--config", tmp_path / "given.json", "--quiet")
    assert rc == 1 and err.startswith(f"error: {tmp_path / 'given.json'}: "), err


def test_config_flag_neither_file_nor_preset(hf, tmp_path, capsys):
    rc, err = run_cli(capsys, hf["src"], tmp_path / "out", "--config", "t5-smal", "--quiet")
    assert rc == 1 and err.startswith(
        "error: --config t5-smal: no such file, and not a preset (flan-t5-base"
    ), err


def test_both_formats_say_which_is_converted(hf, tmp_path, caplog):
    both = shutil.copytree(hf["src"], tmp_path / "both")
    shutil.copy(hf["bin"], both)
    assert not same_params(
        hf["converted"], hf["want_bin"]
    )  # two different models: the output tells which was read
    with caplog.at_level(logging.WARNING, logger="weights_convert"):
        out = convert(both, tmp_path / "out")
    assert (
        f"{both} holds model.safetensors, pytorch_model.bin: converting model.safetensors, ignoring "
        f"pytorch_model.bin (name a file as SRC, e.g. {both / 'pytorch_model.bin'}" in caplog.text
    )
    assert same_params(out, hf["want"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="weights_convert"):
        out = convert(both / "pytorch_model.bin", tmp_path / "out_bin")  # the file named is the one converted
    assert same_params(out, hf["want_bin"]) and "ignoring" not in caplog.text


@pytest.mark.slow
def test_cli_logs_only_its_own_lines(hf, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(hf["src"]), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert [line.split()[0] for line in lines] == ["reading", "writing", "done"], r.stderr
    assert "orbax" not in r.stderr.lower()
    r = subprocess.run(
        [sys.executable, "-m", "weights_convert", str(hf["src"]), str(tmp_path / "out2"), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert (r.returncode, r.stderr) == (0, "")
