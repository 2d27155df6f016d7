"""Hugging Face weight files: ``model.safetensors`` (sharded too) and ``pytorch_model.bin`` (needs torch)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from weights_convert.readers.tensors import Tensors
from weights_convert.rules import ConversionError

_NP_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "BF16": ml_dtypes.bfloat16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _safetensors_file(path: Path):
    """Parse one .safetensors header -> ({name: (dtype, shape, start, end)}, data offset); validates bounds."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ConversionError(
                f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})"
            )
        try:
            header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConversionError(f"{path}: corrupt safetensors header: {e}") from None
    header.pop("__metadata__", None)
    entries = {}
    for name, e in header.items():
        start, end = e["data_offsets"]
        if e["dtype"] not in _NP_DTYPES:
            raise ConversionError(f"{path}: {name} has unsupported dtype {e['dtype']}")
        if 8 + n + end > size:
            raise ConversionError(
                f"{path}: truncated safetensors file: {name} needs bytes up to {8 + n + end}, file has {size}"
            )
        entries[name] = (_NP_DTYPES[e["dtype"]], tuple(e["shape"]), start, end)
    return entries, 8 + n


def sharded(index_file: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_file.read_bytes())["weight_map"]
        files = sorted({index_file.parent / f for f in weight_map.values()})
    except (
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
    ) as e:  # bad JSON or UTF-8, not {"weight_map": {..}}
        raise ConversionError(f"{index_file}: not a valid shard index ({type(e).__name__}: {e})") from None
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ConversionError(f"{index_file} names shards that do not exist: {missing}")
    return files


def read_safetensors(files: list[Path]) -> Tensors:
    """Memory-mapped safetensors (one or several shards)."""
    where, shapes = {}, {}
    for path in files:
        entries, offset = _safetensors_file(path)
        for name, (dtype, shape, start, end) in entries.items():
            if name in where:
                raise ConversionError(f"{name} appears in both {where[name][0]} and {path}")
            where[name], shapes[name] = (path, dtype, shape, offset + start, end - start), shape

    def load(name):  # a plain read, not a memmap: mapped pages would stay resident after the copy
        path, dtype, shape, start, nbytes = where[name]
        return np.fromfile(path, dtype, count=int(np.prod(shape)), offset=start).reshape(shape)

    return Tensors(", ".join(map(str, files)), shapes, load)


def read_torch(files: list[Path]) -> Tensors:
    """``pytorch_model.bin`` (or shards) via ``torch.load(mmap=True, weights_only=True)``; torch is imported here only."""
    try:
        import torch
    except ImportError:
        raise ConversionError(
            f"{files[0]} is a PyTorch checkpoint; reading it needs torch "
            "(pip install 't5vae[torch]'), or convert from model.safetensors instead"
        ) from None
    state = {}
    for path in files:
        try:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
            raise ConversionError(
                f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e})"
            ) from None
        state.update(sd.get("state_dict", sd) if isinstance(sd, dict) else {})

    def load(name):
        t = state[name].detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    return Tensors(
        ", ".join(map(str, files)), {k: tuple(v.shape) for k, v in state.items()}, load, close=state.clear
    )
