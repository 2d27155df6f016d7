"""flax-serialized msgpack (``flax_model.msgpack``, T5X's ``checkpoint``), read without flax."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

import ml_dtypes
import msgpack
import numpy as np

from weights_convert.readers.tensors import Tensors
from weights_convert.rules import ConversionError


def _ext_hook(code, data):
    """flax ext types: 1 = ndarray, 3 = numpy scalar, each msgpack (shape, dtype name, raw bytes); 2 = complex."""
    if code in (1, 3):
        shape, dtype, buf = msgpack.unpackb(data, raw=True)
        dtype = ml_dtypes.bfloat16 if dtype == b"bfloat16" else np.dtype(dtype.decode())
        arr = np.frombuffer(buf, dtype).reshape(shape)
        return arr if code == 1 else arr[()]
    if code == 2:
        re_, im = msgpack.unpackb(data)
        return complex(re_, im)
    return msgpack.ExtType(code, data)


def _unchunk(d: dict) -> np.ndarray:
    """flax splits arrays > 1 GiB into ``{'__msgpack_chunked_array__', 'shape', 'chunks': {'0': flat, ...}}``."""
    shape = tuple(d["shape"][str(i)] for i in range(len(d["shape"])))
    return np.concatenate([d["chunks"][str(i)] for i in range(len(d["chunks"]))]).reshape(shape)


def read_msgpack_tree(path: Path) -> dict:
    """A flax-serialized msgpack file -> nested dict (streamed: only the decoded tree is held)."""
    try:
        with open(path, "rb") as f:
            unpacker = msgpack.Unpacker(
                f, ext_hook=_ext_hook, raw=False, strict_map_key=False, max_buffer_size=2**31 - 1
            )
            tree = unpacker.unpack()
    except (msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
        raise ConversionError(
            f"{path}: truncated or corrupt msgpack file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: expected a msgpack map at the top level, got {type(tree).__name__}")
    return tree


def flatten(
    tree: dict, sep: str, is_leaf: Callable[[dict], bool] = lambda d: False, prefix: str = ""
) -> Iterator:
    for k, v in tree.items():
        name = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict) and "__msgpack_chunked_array__" in v:
            yield name, _unchunk(v)
        elif isinstance(v, dict) and v and not is_leaf(v):
            yield from flatten(v, sep, is_leaf, name)
        else:
            yield name, v


def read_flax(path: Path) -> Tensors:
    """``flax_model.msgpack`` (HF Flax) -> names joined with '.', e.g. ``encoder.block.0.layer.0.SelfAttention.q.kernel``."""
    flat = dict(flatten(read_msgpack_tree(path), "."))
    bad = [k for k, v in flat.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise ConversionError(f"{path}: entries that are not arrays: {bad}")
    return Tensors(str(path), {k: v.shape for k, v in flat.items()}, flat.pop, close=flat.clear)
