"""T5X checkpoints: the legacy ``checkpoint`` msgpack (leaves are arrays or tensorstore specs) and Orbax."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np

from weights_convert.readers.flax_msgpack import flatten, read_msgpack_tree
from weights_convert.readers.tensors import Tensors
from weights_convert.rules import ConversionError


def _is_ts_spec(d: dict) -> bool:
    return "driver" in d and "kvstore" in d


def _lists(x):
    """flax serialization stores lists as {'0': a, '1': b}; turn them back into lists (tensorstore specs)."""
    if isinstance(x, dict):
        if (
            x
            and all(isinstance(k, str) and k.isdigit() for k in x)
            and sorted(map(int, x)) == list(range(len(x)))
        ):
            return [_lists(x[str(i)]) for i in range(len(x))]
        return {k: _lists(v) for k, v in x.items()}
    return x.tolist() if isinstance(x, np.ndarray) else x


def read_t5x(ckpt_dir: Path) -> Tensors:
    """T5X ``checkpoint_N/``: ``checkpoint`` msgpack ``{'version', 'optimizer': {'target': ..., 'state': ...}}``;
    partitioned leaves are relative zarr tensorstore specs; ``state/*`` (step, optimizer slots) is skipped."""
    import tensorstore as ts

    path = ckpt_dir / "checkpoint"
    tree = read_msgpack_tree(path)
    tree = tree.get("optimizer", tree)
    flat = dict(flatten(tree, "/", _is_ts_spec))
    shapes, skipped, leaves = {}, {}, {}
    for name, v in flat.items():
        if not name.startswith("target/"):
            skipped[name] = "T5X optimizer state (step, param_states)"
            continue
        if isinstance(v, dict):
            spec = _lists(v)
            kv = spec["kvstore"]
            rel = kv.get("path", spec.get("path"))
            if kv.get("driver") not in ("file", "gfile", "gcs") or rel is None:
                raise ConversionError(f"{path}: {name} has an unsupported tensorstore spec {v}")
            spec["kvstore"] = {"driver": "file", "path": str(ckpt_dir / rel)}
            spec.pop("path", None)
            if not Path(spec["kvstore"]["path"]).exists():
                raise ConversionError(
                    f"{path}: array {name} should be at {spec['kvstore']['path']}, which is missing"
                )
            shapes[name], leaves[name] = tuple(spec["metadata"]["shape"]), spec
        elif isinstance(v, np.ndarray):
            shapes[name], leaves[name] = v.shape, v
        else:
            raise ConversionError(f"{path}: {name} is neither an array nor a tensorstore spec: {v!r}")

    def load(name):
        leaf = leaves.pop(name)
        if isinstance(leaf, np.ndarray):
            return leaf
        try:
            arr = ts.open(leaf, open=True, read=True).result().read().result()
        except Exception as e:
            raise ConversionError(f"{path}: cannot read tensorstore array {name} ({e})") from None
        return (
            arr.view(ml_dtypes.bfloat16) if leaf.get("dtype") == "uint16" else arr
        )  # T5X v2: bf16 as uint16

    return Tensors(str(ckpt_dir), shapes, load, skipped, close=leaves.clear)


# -- T5X Orbax (t5x's default since use_orbax=True): checkpoint_N/state is an Orbax PyTree ------------------


def read_t5x_orbax(ckpt_dir: Path) -> Tensors:
    """T5X ``checkpoint_N/state``: ``_METADATA`` (JSON) names every leaf by its key tuple, ``('target', …)`` for
    parameters; each array is a zarr (or zarr3) array under the leaf's dotted name, in an OCDBT database when
    ``use_ocdbt``. Optimizer state (``state/…``) is skipped, as in the legacy format."""
    import tensorstore as ts

    state = ckpt_dir / "state" if (ckpt_dir / "state").is_dir() else ckpt_dir
    meta_file = state / "_METADATA"
    try:
        meta = json.loads(meta_file.read_bytes())
        keys = [tuple(e["key"] for e in leaf["key_metadata"]) for leaf in meta["tree_metadata"].values()]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConversionError(
            f"{meta_file}: not a readable Orbax PyTree metadata file ({type(e).__name__}: {e})"
        ) from None
    base = (
        {"driver": "ocdbt", "base": state.resolve().as_uri()}
        if meta.get("use_ocdbt")
        else {"driver": "file", "path": str(state.resolve())}
    )
    driver = "zarr3" if meta.get("use_zarr3") else "zarr"
    shapes, skipped, arrays = {}, {}, {}
    for key in keys:
        name = "/".join(map(str, key))
        if key[0] != "target":
            skipped[name] = "T5X optimizer state (step, param_states)"
            continue
        path = ".".join(map(str, key))
        kv = dict(base, path=path) if meta.get("use_ocdbt") else dict(base, path=f"{base['path']}/{path}")
        try:
            arrays[name] = ts.open({"driver": driver, "kvstore": kv}, open=True, read=True).result()
        except Exception as e:  # tensorstore raises ValueError / its own status errors
            raise ConversionError(f"{state}: cannot open the array of {name} ({e})") from None
        shapes[name] = tuple(arrays[name].shape)
    if not shapes:
        raise ConversionError(f"{meta_file}: no ('target', …) parameters in this T5X checkpoint")

    def load(name):
        try:
            return arrays.pop(name).read().result()
        except Exception as e:
            raise ConversionError(f"{state}: cannot read the array of {name} ({e})") from None

    return Tensors(str(ckpt_dir), shapes, load, skipped, close=arrays.clear)
