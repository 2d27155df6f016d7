"""T5X checkpoints: the legacy ``checkpoint`` msgpack (leaves are arrays or tensorstore specs) and Orbax."""
from __future__ import annotations

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
        if x and all(isinstance(k, str) and k.isdigit() for k in x) and sorted(map(int, x)) == list(range(len(x))):
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
                raise ConversionError(f"{path}: array {name} should be at {spec['kvstore']['path']}, which is missing")
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
        return arr.view(ml_dtypes.bfloat16) if leaf.get("dtype") == "uint16" else arr  # T5X v2: bf16 as uint16

    return Tensors(str(ckpt_dir), shapes, load, skipped, close=leaves.clear)
