"""Declarative name tables and transforms: source name -> target leaf of ``t5vae.t5.param_specs``. Pure, no I/O.

A table is a list of :class:`Rule`. A rule's regex must match a source name in full; named groups fill the
target template (``{stack}`` …) and the group ``i`` is the layer index that the tensor fills on the leading
``layers`` axis. Every source name must match exactly one rule (or one skip pattern), every target leaf must
be filled exactly once (aliases: declared duplicates of one tensor, checked equal), every shape is checked.
Applying a table to a checkpoint's names and arrays (those checks, and the arrays moved) is
weights_convert.mapping.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable

import numpy as np

from t5vae.config import T5Config


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message names the file or keys at fault."""


# -- transforms: expected source shape from the target shape, and the array operation ----------------------
# Shapes are written over trailing dims, so a leading layers axis passes through unchanged.


def _swap(s):
    return s[:-2] + (s[-1], s[-2])


TRANSFORMS: dict[str, tuple[Callable, Callable]] = {
    # name: (target shape -> accepted source shapes, (array, target shape) -> array)
    "id": (lambda s: [s], lambda x, s: x),
    "T": (lambda s: [_swap(s)], lambda x, s: np.swapaxes(x, -1, -2)),
    # torch Linear weight [H*K, D] -> [D, H, K];  [D, H*K] -> [H, K, D]
    "heads_in_T": (
        lambda s: [s[:-3] + (s[-2] * s[-1], s[-3])],
        lambda x, s: np.swapaxes(x, -1, -2).reshape(s),
    ),
    "heads_out_T": (
        lambda s: [s[:-3] + (s[-1], s[-3] * s[-2])],
        lambda x, s: np.swapaxes(x, -1, -2).reshape(s),
    ),
    # kernels [D, H*K] (or DenseGeneral [D, H, K]) -> [D, H, K];  [H*K, D] (or [H, K, D]) -> [H, K, D]
    "heads_in": (lambda s: [s[:-2] + (s[-2] * s[-1],), s], lambda x, s: x.reshape(s)),
    "heads_out": (lambda s: [s[:-3] + (s[-3] * s[-2], s[-1]), s], lambda x, s: x.reshape(s)),
}


@dataclasses.dataclass(frozen=True)
class Rule:
    """``pattern`` (regex, full match) -> ``target`` ('/'-joined leaf path, may use the regex's named groups).

    ``transform`` names an entry of TRANSFORMS. ``scan_axis``: the source holds all layers stacked on that
    axis (T5X scanned layout) instead of one layer per name (group ``i``). ``alias``: a declared duplicate of
    the same tensor (HF tied embeddings): it may be absent, and when present must equal the filled value.
    ``copies``: the source stacks this many per-layer copies of a one-per-stack target on ``scan_axis``
    (scanned T5X's relative-position tables); they must be equal, and one of them fills the target.
    """

    pattern: str
    target: str
    transform: str = "id"
    scan_axis: int | None = None
    alias: bool = False
    copies: int | None = None

    def __post_init__(self):
        if self.transform not in TRANSFORMS:
            raise ValueError(f"rule {self.pattern!r}: unknown transform {self.transform!r}")


@dataclasses.dataclass(frozen=True)
class Table:
    rules: tuple[Rule, ...]
    skips: tuple[tuple[str, str], ...] = ()  # (regex, reason): names knowingly not converted


# -- tables ---------------------------------------------------------------------------------------------------

_HF_STACK = r"(?P<stack>encoder|decoder)"
_ATTN_HF = {("encoder", 0): "attn", ("decoder", 0): "self_attn", ("decoder", 1): "cross_attn"}
_NORM_HF = {
    ("encoder", 0): "attn_norm",
    ("encoder", 1): "mlp_norm",
    ("decoder", 0): "self_attn_norm",
    ("decoder", 1): "cross_attn_norm",
    ("decoder", 2): "mlp_norm",
}


def _hf_rules(kernel: bool, cfg: T5Config) -> list[Rule]:
    """HF torch (``.weight``, [out, in]) when ``kernel`` is False, HF Flax (``.kernel``, [in, out]) when True."""
    w, norm = ("kernel", "weight") if kernel else ("weight", "weight")
    t_in, t_out, t = ("heads_in", "heads_out", "id") if kernel else ("heads_in_T", "heads_out_T", "T")
    emb = "embedding" if kernel else "weight"
    rules = [
        Rule(rf"shared\.{emb}", "shared/embedding"),
        Rule(rf"{_HF_STACK}\.embed_tokens\.{emb}", "shared/embedding", alias=True),
    ]
    for (stack, j), name in _ATTN_HF.items():
        kind = "SelfAttention" if j == 0 else "EncDecAttention"
        prefix = rf"{stack}\.block\.(?P<i>\d+)\.layer\.{j}\.{kind}"
        rules += [
            Rule(rf"{prefix}\.(?P<p>q|k|v)\.{w}", f"{stack}/layers/{name}/{{p}}", t_in),
            Rule(rf"{prefix}\.o\.{w}", f"{stack}/layers/{name}/o", t_out),
        ]
    for (stack, j), name in _NORM_HF.items():
        rules.append(
            Rule(rf"{stack}\.block\.(?P<i>\d+)\.layer\.{j}\.layer_norm\.{norm}", f"{stack}/layers/{name}")
        )
    for stack, j in (("encoder", 1), ("decoder", 2)):
        prefix = rf"{stack}\.block\.(?P<i>\d+)\.layer\.{j}\.DenseReluDense"
        rules.append(Rule(rf"{prefix}\.(?P<w>wi|wi_0|wi_1|wo)\.{w}", f"{stack}/layers/mlp/{{w}}", t))
    rules += [
        Rule(
            rf"{_HF_STACK}\.block\.0\.layer\.0\.SelfAttention\.relative_attention_bias\.{emb}",
            "{stack}/relpos_bias",
        ),
        Rule(rf"{_HF_STACK}\.final_layer_norm\.{norm}", "{stack}/final_norm"),
    ]
    if cfg.tie_word_embeddings:  # tied lm_head (v1.0) is the embedding again, stored [V, D] by torch
        rules.append(Rule(r"lm_head\.weight", "shared/embedding", alias=True))
    else:
        rules.append(Rule(rf"lm_head\.{w}", "lm_head", "id" if kernel else "T"))
    return rules


def hf_torch(cfg: T5Config) -> Table:
    """Hugging Face ``T5ForConditionalGeneration`` state dict (safetensors or pytorch_model.bin)."""
    return Table(tuple(_hf_rules(False, cfg)))


def hf_flax(cfg: T5Config) -> Table:
    """Hugging Face ``FlaxT5ForConditionalGeneration`` params (flax_model.msgpack), flattened with '.'."""
    return Table(tuple(_hf_rules(True, cfg)))


_T5X_ATTN = {
    "encoder": {"attention": "attn"},
    "decoder": {"self_attention": "self_attn", "encoder_decoder_attention": "cross_attn"},
}
_T5X_NORM = {
    "pre_attention_layer_norm": "attn_norm",
    "pre_mlp_layer_norm": "mlp_norm",
    "pre_self_attention_layer_norm": "self_attn_norm",
    "pre_cross_attention_layer_norm": "cross_attn_norm",
}
_QKVO = {"query": "q", "key": "k", "value": "v", "out": "o"}


def t5x(cfg: T5Config) -> Table:
    """T5X ``target/…`` names, per-layer (``layers_3``) or scanned (``layers``, or ``{stack}`` as in
    t5x.examples.scalable_t5; layer axis 1: param_scan_axis=1; a per-layer relative-position table each)."""
    rules = [Rule(r"target/token_embedder/embedding", "shared/embedding")]
    for stack, n_layers in (("encoder", cfg.num_layers), ("decoder", cfg.num_decoder_layers)):
        for layers, scan in ((r"layers_(?P<i>\d+)", None), (f"(?:layers|{stack})", 1)):
            base = rf"target/{stack}/{layers}"
            for src, dst in _T5X_ATTN[stack].items():
                for m, p in _QKVO.items():
                    rules.append(
                        Rule(
                            rf"{base}/{src}/{m}/kernel",
                            f"{stack}/layers/{dst}/{p}",
                            "heads_out" if p == "o" else "heads_in",
                            scan,
                        )
                    )
            for src, dst in _T5X_NORM.items():
                rules.append(Rule(rf"{base}/{src}/scale", f"{stack}/layers/{dst}", "id", scan))
            rules.append(
                Rule(rf"{base}/mlp/(?P<w>wi|wi_0|wi_1|wo)/kernel", f"{stack}/layers/mlp/{{w}}", "id", scan)
            )
        scanned = rf"target/{stack}/(?:layers|{stack})/relpos_bias/rel_embedding"
        if cfg.relative_attention_per_layer:  # scanned [H, L, R], or flaxformer's layers_i/relpos_bias [H, R]
            per_layer = f"{stack}/layers/relpos_bias"
            rules += [
                Rule(scanned, per_layer, "T", scan_axis=1),
                Rule(rf"target/{stack}/layers_(?P<i>\d+)/relpos_bias/rel_embedding", per_layer, "T"),
            ]
        else:
            rules += [
                Rule(rf"target/{stack}/relpos_bias/rel_embedding", f"{stack}/relpos_bias", "T"),
                Rule(scanned, f"{stack}/relpos_bias", "T", scan_axis=1, copies=n_layers),
            ]
        rules.append(Rule(rf"target/{stack}/{stack}_norm/scale", f"{stack}/final_norm"))
    rules.append(Rule(r"target/decoder/logits_dense/kernel", "lm_head"))
    return Table(tuple(rules), ((r"state/.*", "T5X optimizer state (step, param_states)"),))


_PER_LAYER_RELPOS = (
    r"target/(?P<stack>encoder|decoder)/(?P<where>layers|(?P=stack)|layers_\d+)"
    r"/relpos_bias/rel_embedding"
)


def t5x_config(cfg: T5Config, shapes: dict[str, tuple], load: Callable[[str], np.ndarray]) -> T5Config:
    """``cfg`` with ``relative_attention_per_layer`` on when a T5X source holds a relative-position table per
    layer: flaxformer's ``layers_i/relpos_bias``, or scanned ``[H, L, R]`` tables whose layers differ (read
    with ``load``; they are small). Equal scanned tables keep the shared table, which is exact."""
    if cfg.relative_attention_per_layer:
        return cfg
    found = {name: m["where"] for name in shapes if (m := re.fullmatch(_PER_LAYER_RELPOS, name))}
    if any(w.startswith("layers_") for w in found.values()) or any(
        _layers_differ(load(name)) for name, w in found.items() if not w.startswith("layers_")
    ):
        return cfg.replace(relative_attention_per_layer=True)
    return cfg


def _layers_differ(x_HLR: np.ndarray) -> bool:
    return x_HLR.ndim == 3 and any(
        not np.array_equal(x_HLR[:, i], x_HLR[:, 0]) for i in range(1, x_HLR.shape[1])
    )


def mesh_tf(cfg: T5Config) -> Table:
    """Original Mesh-TensorFlow T5 checkpoints (``encoder/block_000/layer_000/SelfAttention/q`` …)."""
    rules = [Rule(r"shared/embedding", "shared/embedding")]
    attn = {
        ("encoder", 0, "SelfAttention"): "attn",
        ("decoder", 0, "SelfAttention"): "self_attn",
        ("decoder", 1, "EncDecAttention"): "cross_attn",
    }
    for (stack, j, kind), name in attn.items():
        prefix = rf"{stack}/block_(?P<i>\d+)/layer_{j:03d}/{kind}"
        rules += [
            Rule(rf"{prefix}/(?P<p>q|k|v)", f"{stack}/layers/{name}/{{p}}", "heads_in"),
            Rule(rf"{prefix}/o", f"{stack}/layers/{name}/o", "heads_out"),
        ]
    for (stack, j), name in _NORM_HF.items():
        rules.append(
            Rule(
                rf"{stack}/block_(?P<i>\d+)/layer_{j:03d}/(?:layer|rms)_norm/scale", f"{stack}/layers/{name}"
            )
        )
    for stack, j in (("encoder", 1), ("decoder", 2)):
        rules.append(
            Rule(
                rf"{stack}/block_(?P<i>\d+)/layer_{j:03d}/DenseReluDense/(?P<w>wi|wi_0|wi_1|wo)/kernel",
                f"{stack}/layers/mlp/{{w}}",
            )
        )
    rules += [
        Rule(
            r"(?P<stack>encoder|decoder)/block_000/layer_000/SelfAttention/relative_attention_bias",
            "{stack}/relpos_bias",
            "T",
        ),
        Rule(r"(?P<stack>encoder|decoder)/(?:final_layer|rms)_norm/scale", "{stack}/final_norm"),
        Rule(r"decoder/logits/kernel", "lm_head"),
    ]
    skips = (
        (r".*_slot_(?:vc|vr|v|m)", "Adafactor optimizer slot"),
        (r"global_step", "training step counter"),
    )
    return Table(tuple(rules), skips)


TABLES = {"safetensors": hf_torch, "torch": hf_torch, "flax": hf_flax, "t5x": t5x, "tf": mesh_tf}


def describe(tables: Iterable[str] = TABLES) -> str:
    """The rule tables as text (for PARAMS.md and ``--list-rules``)."""
    cfg = T5Config(feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return "\n".join(
        f"{fmt}:\n"
        + "\n".join(f"  {r.pattern}  ->  {r.target}  [{r.transform}]" for r in TABLES[fmt](cfg).rules)
        for fmt in tables
    )
