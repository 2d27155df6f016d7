"""Configs (t5vae.config): T5Config, Config and TrainConfig validation, presets, JSON in and out, and the one
dict -> config policy: the project's own files reject unknown keys, naming them; a Hugging Face config.json's
extra keys are ignored (hf=True)."""

import dataclasses
import json

import pytest
from tiny import V10, V11

import t5vae as tv
from t5vae import config, train_config


def test_config_round_trips_through_hf_json(tmp_path):
    V11.replace(remat="full").save_json(tmp_path / "config.json")
    assert "remat" not in (tmp_path / "config.json").read_text()  # a run-time choice, like dtype
    assert tv.T5Config.load_json(tmp_path / "config.json") == V11
    assert V11.activation == "gelu_new" and V10.activation == "relu"
    with pytest.raises(ValueError, match="feed_forward_proj"):
        tv.T5Config(feed_forward_proj="gated-swish")
    with pytest.raises(ValueError, match="num_heads"):
        tv.T5Config(num_heads=0)
    with pytest.raises(ValueError, match="model_type"):
        tv.T5Config.from_dict({"model_type": "bart"}, hf=True)
    assert tv.preset("t5-small").d_ff == 2048
    with pytest.raises(ValueError, match="unknown T5 preset"):
        tv.preset("t5-gigantic")


def test_per_layer_position_tables_round_trip_and_default_off(tmp_path):
    assert (
        not tv.T5Config().relative_attention_per_layer
    )  # every existing config and checkpoint: shared tables
    cfg = V11.replace(relative_attention_per_layer=True)
    cfg.save_json(tmp_path / "config.json")
    assert json.loads((tmp_path / "config.json").read_text())["relative_attention_per_layer"] is True
    assert tv.T5Config.load_json(tmp_path / "config.json") == cfg
    assert tv.Config.from_dict(tv.Config(t5=cfg).to_dict()).t5 == cfg  # the T5-VAE's own JSON
    with pytest.raises(ValueError, match="relative_attention_per_layer must be true or false"):
        V11.replace(relative_attention_per_layer="yes")


def test_project_dicts_reject_unknown_keys_naming_them(tmp_path):
    with pytest.raises(ValueError, match=r"unknown T5Config field\(s\) \['d_modle'\]"):
        tv.T5Config.from_dict({"d_modle": 64})
    with pytest.raises(
        ValueError, match=r"unknown T5Config field\(s\) \['architectures', 'is_encoder_decoder'"
    ):
        tv.T5Config.from_dict(V11.to_hf_dict())  # an HF file is only read with hf=True
    assert tv.T5Config.from_dict(V11.to_dict()) == V11 and tv.T5Config.from_dict({}, d_model=64).d_model == 64
    with pytest.raises(ValueError, match=r"unknown T5Config field\(s\) \['num_head'\]"):
        tv.Config.from_dict({"t5": {**V10.to_dict(), "num_head": 2}})  # a typo inside "t5" too
    with pytest.raises(ValueError, match=r"unknown TrainConfig field\(s\) \['stepz'\]"):
        tv.TrainConfig.from_dict({"stepz": 3})
    (tmp_path / "train_config.json").write_text(json.dumps({"steps": 5, "learnig_rate": 0.1}))
    with pytest.raises(ValueError, match=r"\['learnig_rate'\]"):
        tv.TrainConfig.load_json(tmp_path / "train_config.json")
    (tmp_path / "broken.json").write_text('{"steps": ')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        tv.TrainConfig.load_json(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"list.json must hold a JSON object, got list"):
        tv.Config.load_json(tmp_path / "list.json")


def test_hf_dicts_ignore_extra_keys_and_never_set_run_time_fields():
    hf = {
        **V11.to_hf_dict(),
        "task_specific_params": {"summarize": {}},
        "transformers_version": "4.57.6",
        "dense_act_fn": "gelu_new",
        "use_cache": True,
        "torch_dtype": "bfloat16",
        "remat": "full",
        "kernels": "plain",
        "dtype": "float16",
    }
    cfg = tv.T5Config.from_dict(hf, hf=True)
    assert cfg == V11.replace(param_dtype="bfloat16")  # torch_dtype is the storage dtype; the rest is ignored
    assert (cfg.remat, cfg.kernels, cfg.dtype) == ("dots", "auto", "float32")
    assert tv.T5Config.from_dict(hf, hf=True, kernels="plain").kernels == "plain"  # overrides win
    assert tv.T5Config.from_dict({**hf, "torch_dtype": "int8"}, hf=True).param_dtype == "float32"
    assert tv.T5Config.from_dict({"model_type": "mt5", "d_model": 8}, hf=True).d_model == 8
    with pytest.raises(ValueError, match="model_type='bart'"):
        tv.T5Config.from_dict({**hf, "model_type": "bart"}, hf=True)


def test_kernels_accepts_the_switch_values_and_fast_path_names_only():
    for value in config.KERNELS + config.FAST_PATHS + ("mlp+xent", "+".join(config.FAST_PATHS)):
        assert tv.T5Config(kernels=value).kernels == value
    for bad in ("gpu", "plain+cpu", "mlp+", "+mlp", "mlp + xent", "Dropout", 1, None):
        with pytest.raises(ValueError, match=r"T5Config.kernels must be one of \['auto', 'plain', 'cpu'\]"):
            tv.T5Config(kernels=bad)


def test_run_time_fields_are_kept_in_the_projects_own_json(tmp_path):
    cfg = tv.Config(t5=V11.replace(kernels="mlp+xent", remat="full", dtype="bfloat16"), latent_size=4)
    cfg.save_json(tmp_path / "config.json")
    back = tv.Config.load_json(tmp_path / "config.json")
    assert back == cfg and back.t5.kernels == "mlp+xent" and back.t5.remat == "full"
    assert tv.Config(t5=V11.to_dict()).t5 == V11  # a dict for "t5" is read as the project's own
    for name, bad in (("dtype", "int8"), ("param_dtype", "float64")):
        with pytest.raises(ValueError, match=f"T5Config.{name} must be float32, bfloat16 or float16"):
            tv.T5Config(**{name: bad})
    for name, bad in (("d_model", 0), ("num_layers", 2.0), ("vocab_size", True)):
        with pytest.raises(ValueError, match=f"T5Config.{name} must be a positive int"):
            tv.T5Config(**{name: bad})
    with pytest.raises(ValueError, match="dropout_rate"):
        tv.T5Config(dropout_rate=1.0)
    assert tv.T5Config(num_layers=3).num_decoder_layers == 3


def test_default_bandwidth_is_latent_size_squared():
    cfg = tv.Config(t5=tv.preset("tiny"), n_latent_tokens=3, latent_size=8, pooling="mean")
    assert cfg.bandwidth == 64.0
    assert cfg.replace(mmd_bandwidth=3.0).bandwidth == 3.0
    with pytest.raises(ValueError):
        cfg.replace(mmd_bandwidth=0.0)


def test_config_validation_and_json_round_trip(tmp_path):
    with pytest.raises(ValueError, match="pooling"):
        tv.Config(pooling="max")
    with pytest.raises(ValueError, match="latent_size"):
        tv.Config(latent_size=0)
    cfg = tv.Config(
        t5=tv.preset("tiny"), n_latent_tokens=3, latent_size=8, pooling="attention", mmd_unbiased=True
    )
    cfg.save_json(tmp_path / "c.json")
    assert tv.Config.load_json(tmp_path / "c.json") == cfg
    with pytest.raises(ValueError, match="unknown Config field"):
        tv.Config.from_dict({"latent_sise": 3})


def test_train_config_validation_and_json_round_trip(tmp_path):
    tc = tv.TrainConfig(steps=7, optimizer="adafactor", corpus="a.txt,b.txt", max_minutes=None, eval_every=0)
    tc.save_json(tmp_path / "train_config.json")
    assert tv.TrainConfig.load_json(tmp_path / "train_config.json") == tc
    assert json.loads((tmp_path / "train_config.json").read_text())["optimizer"] == "adafactor"
    assert tv.TrainConfig.load_json(tmp_path / "train_config.json", steps=9).steps == 9  # overrides win
    assert tv.TrainConfig.from_dict({}) == tv.TrainConfig() and tv.TrainConfig().optimizer == "adamw"
    assert tv.TrainConfig is train_config.TrainConfig and tc.replace(seed=3).seed == 3
    with pytest.raises(ValueError, match="TrainConfig.optimizer must be one of"):
        tv.TrainConfig(optimizer="sgd")
    for name in ("steps", "batch_size", "checkpoint_every", "log_every", "vocab_size", "keep_checkpoints"):
        with pytest.raises(ValueError, match=f"TrainConfig.{name} must be a positive int"):
            tv.TrainConfig(**{name: 0})
    with pytest.raises(ValueError, match="eval_every must be an int >= 0"):
        tv.TrainConfig(eval_every=-1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        tc.steps = 3


def test_train_config_corpus_cap_is_the_embedded_corpus_cap():
    from t5vae import corpus  # config is a leaf module, so the default is written in both places

    assert tv.TrainConfig().max_chars == corpus.MAX_CHARS


def test_train_settings_follow_the_corpus_language_unless_given():
    code, prose = tv.TrainConfig(), tv.TrainConfig(corpus="prose")
    assert (code.language, code.rename_prob, code.max_chars, code.vocab_size) == ("code", 0.8, 80, 1024)
    assert (prose.language, prose.rename_prob, prose.min_chars, prose.max_chars) == ("prose", 0.0, 20, 200)
    assert tv.TrainConfig(corpus="prose", rename_prob=0.5, max_chars=120).rename_prob == 0.5
    assert (
        tv.TrainConfig(corpus="my_sentences.txt", language="prose").rename_prob == 0.0
    )  # a text corpus of prose
    again = tv.TrainConfig.from_dict(prose.to_dict())
    assert again == prose and again.to_dict()["language"] == "prose"  # the run knows its language
    with pytest.raises(ValueError, match="TrainConfig.language must be one of"):
        tv.TrainConfig(language="french")
