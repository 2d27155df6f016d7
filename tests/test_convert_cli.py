"""``python -m weights_convert`` (weights_convert.__main__): flags reach the conversion, errors go to stderr, exit 1."""

import numpy as np
from safetensors.numpy import save_file
from test_convert import assert_nothing_written, hf_dir
from test_rules import V10, fake_hf_state

import t5vae as tv
from weights_convert.__main__ import main


def test_cli_main_reports_errors_on_stderr(tmp_path, capsys):
    (tmp_path / "src").mkdir()
    assert main([str(tmp_path / "src"), str(tmp_path / "out"), "--quiet"]) == 1
    assert "error:" in capsys.readouterr().err
    assert_nothing_written(tmp_path / "out")


def test_cli_flags_dtype_overwrite_and_config(tmp_path, capsys):
    src, out = hf_dir(tmp_path / "src"), tmp_path / "out"
    assert main([str(src), str(out), "--dtype", "bfloat16", "--quiet"]) == 0
    cfg, params = tv.load_t5(out)
    assert cfg.param_dtype == "bfloat16" and params["shared"]["embedding"].dtype == np.dtype("bfloat16")
    assert main([str(src), str(out), "--quiet"]) == 1  # OUT exists: refused without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main([str(src), str(out), "--overwrite", "--quiet"]) == 0
    assert tv.load_t5(out)[0].param_dtype == "float32"
    bare = tmp_path / "bare"  # no config.json next to the weights: --config supplies it
    bare.mkdir()
    save_file(fake_hf_state(V10), str(bare / "model.safetensors"))
    assert main([str(bare), str(tmp_path / "out2"), "--quiet"]) == 1
    assert "config.json is missing" in capsys.readouterr().err
    assert main([str(bare), str(tmp_path / "out2"), "--config", str(src / "config.json"), "--quiet"]) == 0
    assert tv.load_t5(tmp_path / "out2")[0] == tv.load_t5(out)[0]


def test_nan_and_inf_weights_are_refused_by_the_converter_and_by_init_from(tmp_path, capsys, caplog):
    from conftest import run_cli, write_train_corpus

    sd = fake_hf_state(V10)
    sd["shared.weight"][0, :3] = np.nan
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"][1, 1] = np.inf
    src, out = hf_dir(tmp_path / "src", sd), tmp_path / "out"
    assert main([str(src), str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "NaN or inf in 2 tensor(s)" in err and "--allow-nonfinite" in err
    assert f"shared.weight (3 of {sd['shared.weight'].size})" in err and "SelfAttention.q.weight (1 of" in err
    assert_nothing_written(out)
    assert main([str(src), str(out), "--quiet", "--allow-nonfinite"]) == 0
    assert (
        "converting them anyway (--allow-nonfinite)" in caplog.text
        and np.isnan(tv.load_t5(out)[1]["shared"]["embedding"]).any()
    )
    rc, _, err = run_cli(
        [
            "train",
            "--out",
            str(tmp_path / "run"),
            "--corpus",
            str(write_train_corpus(tmp_path / "c.txt")),
            "--init-from",
            str(out),
            "--steps",
            "1",
        ]
    )
    assert (
        rc == 1 and f"--init-from {out} holds NaN or inf in 2 tensor(s)" in err and "learning_rate" not in err
    )
    assert not (tmp_path / "run").exists()
