"""The configs as command-line flags: every field of Config, of its T5 backbone (``--t5-...``) and of
TrainConfig is a flag of ``t5vae train``, typed by its default; ``--config FILE`` sets any of them first.

Kept apart from the commands (t5vae.cli) because it is one idea with its own rules: how a flag's text becomes
a value, which default a help line shows, and how a config's error names the flag that set it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
from pathlib import Path

from t5vae.config import DEFAULT_T5, Config, T5Config
from t5vae.names import PROSE
from t5vae.train_config import LANGUAGE_DEFAULTS, LANGUAGE_MODEL_DEFAULTS, LANGUAGE_T5_DEFAULTS, TrainConfig


def _fields():
    model = [f for f in dataclasses.fields(Config) if f.name != "t5"]
    return model, list(dataclasses.fields(T5Config)), list(dataclasses.fields(TrainConfig))


def _parse_value(text: str, default, type_name: str = ""):
    if isinstance(default, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if isinstance(default, str):  # a string setting: "none" is a value (remat="none"), not None
        return text
    if text.lower() in ("none", "null"):
        return None
    if isinstance(default, (int, float)):
        return _number(text, int if isinstance(default, int) else float)
    if "str" in type_name:
        return text
    try:  # fields defaulting to None: numbers if they look like numbers
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _setting_help(name: str, default, training: bool, t5: bool = False) -> str:
    """A flag's help: its default, or, for a setting that follows the corpus's language, each language's."""
    by_language = LANGUAGE_T5_DEFAULTS if t5 else LANGUAGE_DEFAULTS if training else LANGUAGE_MODEL_DEFAULTS
    if name in by_language["code"]:
        return "default by language: " + ", ".join(f"{lang} {d[name]!r}" for lang, d in by_language.items())
    if training and name == "language":
        return f"code or prose (default: the corpus's: {PROSE!r} is prose, every other corpus code)"
    return f"default {default!r}"


def shown(text: str, n: int = 40) -> str:
    """``text`` quoted as an error message shows it: at most ``n`` characters, then how long it was."""
    return repr(text) if len(text) <= n else f"{text[:n]!r}... ({len(text):,} characters)"


def _number(text: str, kind: type):
    """An int or float flag's value; a bad one is an ArgumentTypeError that shows it cut to a readable length."""
    what = "a whole number" if kind is int else "a number"
    try:
        value = kind(text)
    except ValueError:
        hint = ""
        if kind is int:
            try:
                f = float(text)
                hint = f" (write {int(f)})" if math.isfinite(f) and f == int(f) and len(text) < 40 else ""
            except ValueError:
                pass
        raise argparse.ArgumentTypeError(f"expected {what}, got {shown(text)}{hint}") from None
    if kind is int and abs(value) >= 2**63:
        raise argparse.ArgumentTypeError(f"{shown(text)} is too large")
    return value


def add_setting_flags(p: argparse.ArgumentParser):
    model, t5, train = _fields()
    for group, fields, prefix, defaults in (
        ("model", model, "", Config()),
        ("T5 backbone", t5, "t5-", DEFAULT_T5),
        ("training", train, "", TrainConfig()),
    ):
        g = p.add_argument_group(group)
        for f in fields:
            default = getattr(defaults, f.name)
            # mixed precision is a setting users reach for by its short name: --dtype bfloat16 is --t5-dtype
            alias = [f"--{f.name.replace('_', '-')}"] if prefix and f.name in ("dtype", "param_dtype") else []
            g.add_argument(
                f"--{prefix}{f.name.replace('_', '-')}",
                *alias,
                dest=f"{prefix.replace('-', '.')}{f.name}",
                type=lambda s, d=default, t=str(f.type): _parse_value(s, d, t),
                default=argparse.SUPPRESS,
                metavar=type(default).__name__.upper() if default is not None else "VALUE",
                help=_setting_help(f.name, default, isinstance(defaults, TrainConfig), prefix == "t5-"),
            )


def _read_config_file(path: str) -> dict:
    text = Path(path).read_text()
    if path.endswith(".toml"):
        import tomllib

        return tomllib.loads(text)
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"error: {path} is not valid JSON: {e}")
    if not isinstance(d, dict):
        raise SystemExit(f"error: {path} must hold a JSON object")
    return d


def build_configs(args: argparse.Namespace):
    """(Config, TrainConfig) from defaults (by the corpus's language where LANGUAGE_T5_DEFAULTS or
    LANGUAGE_MODEL_DEFAULTS has one), then ``--config``, then flags."""
    model_names = {f.name for f in _fields()[0]}
    train_names = {f.name for f in _fields()[2]}
    settings = _read_config_file(args.config) if getattr(args, "config", None) else {}
    t5 = dict(settings.pop("t5", {}) or {})
    unknown = sorted(set(settings) - model_names - train_names)
    if unknown:
        raise SystemExit(f"error: unknown setting(s) {unknown} in {args.config}")
    for k, v in vars(args).items():
        if k.startswith("t5."):
            t5[k[3:]] = v
        elif k in model_names or k in train_names:
            settings[k] = v
    try:
        tc = TrainConfig(**{k: v for k, v in settings.items() if k in train_names})
        t5 = {**DEFAULT_T5.to_dict(), **LANGUAGE_T5_DEFAULTS[tc.language], **t5}
        model = {
            **LANGUAGE_MODEL_DEFAULTS[tc.language],
            **{k: v for k, v in settings.items() if k in model_names},
        }
        cfg = Config(t5=T5Config.from_dict(t5), **model)
    except (TypeError, ValueError) as e:
        raise SystemExit(f"error: {flag_names(str(e))}")
    return cfg, tc


def flag_names(message: str) -> str:
    """A config error as the command line's user reads it: ``TrainConfig.learning_rate`` -> ``--learning-rate``,
    ``T5Config.d_model`` -> ``--t5-d-model`` (the flags that set them)."""
    prefixes = {"TrainConfig": "", "Config": "", "T5Config": "t5-"}
    return re.sub(
        r"\b(TrainConfig|T5Config|Config)\.(\w+)",
        lambda m: f"--{prefixes[m.group(1)]}{m.group(2).replace('_', '-')}",
        message,
    )


def int_at_least(lo: int):
    def parse(text: str) -> int:
        value = _number(text, int)
        if value < lo:
            raise argparse.ArgumentTypeError(f"must be at least {lo}, got {value}")
        return value

    return parse
