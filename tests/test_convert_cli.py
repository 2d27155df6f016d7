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
