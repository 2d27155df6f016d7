"""The conversion as a library: detect the source format -> read (lazily) -> plan the name mapping (every key
matched, every leaf filled, every shape checked, before any data is read) -> fill the target leaf by leaf ->
validate against ``t5vae.t5.param_specs`` -> save with :mod:`weights_convert.output` (OUT is checked before
anything is read, never the source, never half-written).
"""

from __future__ import annotations

import collections
import json
import logging
import os
import re
import sys
import time
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from t5vae import checkpoint, specs, t5
from t5vae.config import PRESETS, T5Config, preset
from weights_convert import mapping, output, readers, rules
from weights_convert.rules import ConversionError

log = logging.getLogger("weights_convert")


def infer_config(shapes: dict[str, tuple]) -> T5Config:
    """A T5X / Mesh-TF checkpoint has no config.json: read the shapes off the tensors (max_distance assumed 128)."""

    def find(pattern):
        hits = sorted(k for k in shapes if re.search(pattern, k))
        return shapes[hits[0]] if hits else None

    def n_layers(stack):
        idx = [int(m.group(1)) for k in shapes if (m := re.search(rf"{stack}/(?:layers_|block_)(\d+)/", k))]
        scanned = find(rf"{stack}/(?:layers|{stack})/.*(?:query|SelfAttention/q)")
        return max(idx) + 1 if idx else (scanned[1] if scanned else 0)

    emb, rel = (
        find(r"(?:token_embedder|shared)/embedding$"),
        find(r"encoder/.*rel(?:ative_attention_bias|_embedding)$"),
    )
    q, wi = (
        find(r"encoder/.*(?:attention/query/kernel|SelfAttention/q)$"),
        find(r"encoder/.*(?:mlp|DenseReluDense)/wi(?:_0)?/kernel$"),
    )
    # q: [D, H*K], scanned [D, L, H*K], or scanned DenseGeneral [D, L, H, K]; rel: [H, R], scanned per layer [H, L, R]
    if None in (emb, rel, q, wi) or len(q) not in (2, 3, 4) or len(rel) not in (2, 3):
        raise ConversionError(
            "cannot infer the T5 config from this checkpoint's shapes; pass --config config.json "
            f"(or a preset: {sorted(PRESETS)})"
        )
    gated = any(re.search(r"wi_0", k) for k in shapes)
    cfg = T5Config(
        vocab_size=emb[0],
        d_model=emb[1],
        num_heads=rel[0],
        relative_attention_num_buckets=rel[-1],
        d_kv=q[-1] if len(q) == 4 else q[-1] // rel[0],
        d_ff=wi[-1],
        num_layers=n_layers("encoder"),
        num_decoder_layers=n_layers("decoder"),
        feed_forward_proj="gated-gelu" if gated else "relu",
        tie_word_embeddings=not any(re.search(r"logits", k) for k in shapes),
    )
    log.warning(
        "no config given: inferred %s from the tensor shapes (relative_attention_max_distance=128 and the "
        "activation are assumed; pass --config to be exact)",
        cfg,
    )
    return cfg


T5_KEYS = ("d_model", "d_kv", "d_ff", "num_layers", "num_heads", "vocab_size", "feed_forward_proj")


def load_config_json(path: str | os.PathLike) -> T5Config:
    """A Hugging Face T5 ``config.json`` -> T5Config; every problem is a ConversionError naming the file."""
    path = Path(path)
    try:
        if path.stat().st_size > 1 << 20:
            raise ConversionError(f"{path}: {path.stat().st_size} bytes is far too large for a config.json")
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConversionError(
            f"{path}: not a text file (byte {e.start} is not UTF-8); a config.json is JSON text"
        ) from None
    except OSError as e:
        raise ConversionError(f"{path}: cannot read it ({e.strerror})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConversionError(f"{path}: must hold a JSON object (a T5 config), got a JSON {type(d).__name__}")
    model_type = d.get("model_type")
    if model_type is None and not set(d) & set(T5_KEYS):
        raise ConversionError(
            f"{path}: not a T5 config: it has no model_type and none of {', '.join(T5_KEYS)}"
        )
    if model_type is not None and model_type not in ("t5", "mt5", "umt5"):
        raise ConversionError(
            f"{path}: model_type is {model_type!r}; only T5 checkpoints (t5, mt5, umt5) convert"
        )
    try:
        return T5Config.from_dict(d, hf=True)
    except (TypeError, ValueError) as e:
        raise ConversionError(f"{path}: {e}") from None


def _config(src: Path, config: str | None, fmt: str, shapes: dict) -> T5Config:
    src_dir = src if src.is_dir() else src.parent
    if config is not None:
        if Path(config).exists():
            return load_config_json(config)
        if config in PRESETS:
            return preset(config)
        raise ConversionError(
            f"--config {config}: no such file, and not a preset ({', '.join(sorted(PRESETS))})"
        )
    if (src_dir / checkpoint.CONFIG_FILE).is_file():
        return load_config_json(src_dir / checkpoint.CONFIG_FILE)
    if fmt in ("t5x", "tf"):
        return infer_config(shapes)
    raise ConversionError(
        f"{src_dir / checkpoint.CONFIG_FILE} is missing; pass --config config.json or a preset"
    )


def convert(
    src,
    out,
    dtype: str | None = None,
    overwrite: bool = False,
    config: str | None = None,
    progress: bool | None = None,
    allow_nonfinite: bool = False,
) -> Path:
    """Convert the checkpoint at ``src`` into a t5vae T5 directory ``out``; raise :class:`ConversionError` on any
    mismatch, and on source tensors holding NaN or inf unless ``allow_nonfinite`` (then: a warning)."""
    src, out = Path(src), Path(out)
    t0 = time.time()
    fmt, reader = readers.detect(src)  # only looks at names: nothing is read yet
    output.check(src, out, overwrite)
    kept = output.sweep(out)
    log.info("reading %s (%s)", src, fmt)
    tensors = reader()
    try:
        cfg = _config(src, config, fmt, tensors.shapes)
        if dtype is not None:
            cfg = cfg.replace(param_dtype=dtype)
        peeked: dict[str, np.ndarray] = {}  # tables read to choose the config; a reader reads each name once
        if fmt == "t5x" and not cfg.relative_attention_per_layer:
            cfg = rules.t5x_config(
                cfg, tensors.shapes, lambda name: peeked.setdefault(name, tensors.load(name))
            )
            if cfg.relative_attention_per_layer:
                log.info("a relative-position table per layer: converting with relative_attention_per_layer")
        steps, skipped = mapping.plan(tensors.shapes, rules.TABLES[fmt](cfg), cfg, tensors.what)
        skipped.update(tensors.skipped)
        for why, n in collections.Counter(skipped.values()).items():
            log.info("skipping %d tensors: %s", n, why)
        leaf_specs, np_dtype = mapping.flat_specs(cfg), jnp.dtype(cfg.param_dtype)
        flat: dict[str, np.ndarray] = {}
        bad: list[str] = []
        show = progress if progress is not None else sys.stderr.isatty()
        for step in tqdm(steps, desc="converting", unit="tensor", disable=not show):
            x = peeked.pop(step.source) if step.source in peeked else tensors.load(step.source)
            bad += checkpoint.non_finite([(step.source, x)])
            mapping.apply(step, x, flat, leaf_specs, np_dtype)
            del x
    finally:
        tensors.close()
    if bad and not allow_nonfinite:
        raise ConversionError(
            f"{checkpoint.non_finite_message(str(src), bad)}; a model cannot train or decode "
            f"from these weights (--allow-nonfinite converts them anyway)"
        )
    if bad:
        log.warning(
            "%s; converting them anyway (--allow-nonfinite)", checkpoint.non_finite_message(str(src), bad)
        )
    params = mapping.nest(flat)
    specs.check_tree(params, t5.abstract_params(cfg), f"converted {src}")
    wrong = [k for k, v in flat.items() if v.dtype != np_dtype]
    if wrong:
        raise ConversionError(f"leaves not in {np_dtype}: {wrong}")
    src_dir = src if src.is_dir() else src.parent
    tokenizer = checkpoint.tokenizer_path(src_dir)
    n_params = sum(v.size for v in flat.values())
    log.info(
        "writing %s: %d tensors -> %d leaves, %.1fM params in %s%s",
        out,
        len(steps),
        len(flat),
        n_params / 1e6,
        cfg.param_dtype,
        " + spiece.model" if tokenizer else "",
    )
    output.write(src, out, cfg, params, tokenizer, overwrite, kept)
    log.info("done in %.1fs", time.time() - t0)
    return out
