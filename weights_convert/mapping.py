"""Applying a rule table (weights_convert.rules) to a checkpoint: a plan from its names and shapes alone, so
every mismatch is found, and reported at once, before any data is read; then each array transformed into its
leaf of ``t5vae.t5.param_specs``. Pure, no I/O.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from t5vae import t5
from t5vae.config import T5Config
from t5vae.specs import ParamSpec, is_spec
from weights_convert.rules import TRANSFORMS, ConversionError, Rule, Table

# -- planning: names + shapes only, so every error is found before any data is read ------------------------


@dataclasses.dataclass(frozen=True)
class Step:
    source: str
    target: str
    layer: int | None  # index on the leading layers axis, None: the whole leaf
    rule: Rule


def flat_specs(cfg: T5Config) -> dict[str, ParamSpec]:
    leaves = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            name = f"{prefix}/{k}" if prefix else k
            if is_spec(v):
                leaves[name] = v
            else:
                walk(v, name)

    walk(t5.param_specs(cfg), "")
    return leaves


def _source_shape(rule: Rule, tgt: tuple) -> list[tuple]:
    shapes = TRANSFORMS[rule.transform][0](tuple(tgt))
    if rule.copies is not None:  # one target, rule.copies of it stacked on scan_axis
        return [s[: rule.scan_axis] + (rule.copies,) + s[rule.scan_axis :] for s in shapes]
    if rule.scan_axis is not None:  # target (L, ...) <- source with L moved to scan_axis
        shapes = [s[1 : rule.scan_axis + 1] + s[:1] + s[rule.scan_axis + 1 :] for s in shapes]
    return shapes


def plan(
    shapes: dict[str, tuple], table: Table, cfg: T5Config, what: str = "checkpoint"
) -> tuple[list[Step], dict]:
    """Match every source name -> (steps, skipped {name: reason}); raise naming every problem at once."""
    specs = flat_specs(cfg)
    compiled = [(re.compile(r.pattern), r) for r in table.rules]
    skips = [(re.compile(p), why) for p, why in table.skips]
    steps, skipped, problems = [], {}, []
    filled: dict[tuple, str] = {}
    for name in sorted(shapes):
        hits = [(m, r) for p, r in compiled if (m := p.fullmatch(name))]
        skip = [why for p, why in skips if p.fullmatch(name)]
        if len(hits) + len(skip) != 1:
            problems.append(
                f"{name} {tuple(shapes[name])}: "
                + (
                    "matches no rule (unexpected key)"
                    if not hits and not skip
                    else f"matches {len(hits) + len(skip)} rules: {[r.pattern for _, r in hits] + skip}"
                )
            )
            continue
        if skip:
            skipped[name] = skip[0]
            continue
        m, rule = hits[0]
        groups = {k: v for k, v in m.groupdict().items() if k != "i"}
        target = rule.target.format(**groups)
        layer = int(m.group("i")) if "i" in m.groupdict() else None
        if target not in specs:
            problems.append(f"{name}: target {target} is not in the params tree for this config")
            continue
        tgt = specs[target].shape
        if layer is not None:
            if layer >= tgt[0]:
                problems.append(f"{name}: layer {layer} but {target} has {tgt[0]} layers")
                continue
            tgt = tgt[1:]
        want = _source_shape(rule, tgt)
        if tuple(shapes[name]) not in want:
            problems.append(
                f"{name}: shape {tuple(shapes[name])}, expected {' or '.join(map(str, want))} for {target}"
            )
            continue
        clash = [filled[k] for k in filled if k[0] == target and (layer is None or k[1] in (None, layer))]
        clash = [c for c in clash if not _is_alias(c, compiled)]
        if clash and not rule.alias:
            where = target + (f"[{layer}]" if layer is not None else "")
            problems.append(f"{name}: fills {where}, already filled by {clash[0]}")
        filled.setdefault((target, layer), name)
        steps.append(Step(name, target, layer, rule))
    # primaries before aliases, so an alias is compared against an already-filled leaf
    steps.sort(key=lambda s: s.rule.alias)
    for target, spec in specs.items():
        if (target, None) in filled:
            continue
        layered = spec.axes[:1] == ("layers",)
        missing = [i for i in range(spec.shape[0]) if (target, i) not in filled] if layered else [None]
        if missing:
            problems.append(
                f"missing {target} {spec.shape}"
                + (
                    f": layers {missing} not in {what}"
                    if layered and len(missing) < spec.shape[0]
                    else f": not in {what}"
                )
            )
    if problems:
        raise MappingError(
            f"{what} does not match the T5 params tree ({len(problems)} problems):\n  "
            + "\n  ".join(problems)
        )
    return steps, skipped


def _is_alias(name: str, compiled) -> bool:
    return any(r.alias and p.fullmatch(name) for p, r in compiled)


class MappingError(ConversionError):
    """Source names that do not map one-to-one onto the params tree."""


def apply(step: Step, x: np.ndarray, out: dict[str, np.ndarray], specs: dict, dtype) -> None:
    """Transform one source array and write it into its (pre-allocated) target buffer."""
    tgt = specs[step.target].shape
    if step.rule.copies is not None:
        x = _one_of_equal_copies(step, x)
    elif step.rule.scan_axis is not None:
        x = np.moveaxis(x, step.rule.scan_axis, 0)
    y = TRANSFORMS[step.rule.transform][1](x, tgt[1:] if step.layer is not None else tgt)
    if step.rule.alias:
        if step.target in out and not np.array_equal(out[step.target], y.astype(dtype)):
            raise MappingError(
                f"{step.source} is declared a tied copy of {step.target} but its values differ"
            )
        if step.target in out:
            return
    buf = out.get(step.target)
    if buf is None:
        buf = out[step.target] = np.empty(tgt, dtype)
    if step.layer is None:
        buf[...] = y
    else:
        buf[step.layer] = y


def _one_of_equal_copies(step: Step, x: np.ndarray) -> np.ndarray:
    copies = np.moveaxis(x, step.rule.scan_axis, 0)
    differ = [i for i in range(1, len(copies)) if not np.array_equal(copies[i], copies[0])]
    if differ:
        raise MappingError(
            f"{step.source} {x.shape}: a relative-position table per layer, and layers {differ} "
            f"differ from layer 0; this config holds one table per stack ({step.target}): convert "
            "with relative_attention_per_layer=true (weights_convert.convert turns it on itself)"
        )
    return copies[0]


def nest(flat: dict[str, np.ndarray]) -> dict:
    """{'encoder/layers/attn/q': x} -> {'encoder': {'layers': {'attn': {'q': x}}}}."""
    tree: dict = {}
    for name, arr in flat.items():
        *parents, leaf = name.split("/")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = arr
    return tree


def convert_flat(arrays: dict[str, np.ndarray], table: Table, cfg: T5Config, dtype=None) -> dict:
    """In-memory conversion of a flat {name: array} dict -> the nested params tree (for tests and small models)."""
    steps, _ = plan({k: np.shape(v) for k, v in arrays.items()}, table, cfg, "arrays")
    out: dict[str, np.ndarray] = {}
    specs = flat_specs(cfg)
    for step in steps:
        apply(step, np.asarray(arrays[step.source]), out, specs, np.dtype(dtype or np.float32))
    return nest(out)
