"""One reader per source format -> :class:`Tensors`, a lazy flat ``{name: np.ndarray}`` with shapes known up front.

Formats: Hugging Face ``model.safetensors`` (sharded too), ``pytorch_model.bin`` (needs torch),
``flax_model.msgpack`` (no flax needed); T5X ``checkpoint`` msgpack + tensorstore/zarr arrays; Mesh-TensorFlow
``model.ckpt-N.index`` + ``.data-*`` tensor bundles (pure Python, no TensorFlow needed).
"""
from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path
from typing import Callable, Iterator

import ml_dtypes
import msgpack
import numpy as np

from weights_convert.rules import ConversionError

log = logging.getLogger("weights_convert")


class Tensors:
    """A lazy flat checkpoint: ``shapes[name]`` up front, ``load(name)`` reads one array, ``release`` frees it."""

    def __init__(self, what: str, shapes: dict[str, tuple], load: Callable[[str], np.ndarray],
                 skipped: dict[str, str] | None = None, close: Callable[[], None] | None = None):
        self.what, self.shapes, self._load, self._close = what, dict(shapes), load, close
        self.skipped = dict(skipped or {})  # name -> why it is knowingly not converted

    def load(self, name: str) -> np.ndarray:
        arr = np.asarray(self._load(name))
        if tuple(arr.shape) != tuple(self.shapes[name]):
            raise ConversionError(f"{self.what}: {name} has shape {arr.shape} on disk, header says {self.shapes[name]}")
        return arr

    def close(self) -> None:
        if self._close is not None:
            self._close()


_NP_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _safetensors_file(path: Path):
    """Parse one .safetensors header -> ({name: (dtype, shape, start, end)}, data offset); validates bounds."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ConversionError(f"{path}: truncated safetensors file ({size} bytes, no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise ConversionError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes, file {size})")
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
            raise ConversionError(f"{path}: truncated safetensors file: {name} needs bytes up to {8 + n + end}, "
                                  f"file has {size}")
        entries[name] = (_NP_DTYPES[e["dtype"]], tuple(e["shape"]), start, end)
    return entries, 8 + n


def _sharded(index_file: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_file.read_bytes())["weight_map"]
        files = sorted({index_file.parent / f for f in weight_map.values()})
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # bad JSON or UTF-8, not {"weight_map": {..}}
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
        raise ConversionError(f"{files[0]} is a PyTorch checkpoint; reading it needs torch "
                              "(pip install 't5vae[torch]'), or convert from model.safetensors instead") from None
    state = {}
    for path in files:
        try:
            sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
        except Exception as e:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
            raise ConversionError(f"{path}: cannot read PyTorch checkpoint ({type(e).__name__}: {e})") from None
        state.update(sd.get("state_dict", sd) if isinstance(sd, dict) else {})

    def load(name):
        t = state[name].detach()
        if t.dtype == torch.bfloat16:
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()

    return Tensors(", ".join(map(str, files)), {k: tuple(v.shape) for k, v in state.items()}, load, close=state.clear)


# -- flax msgpack (flax.serialization format, read without flax) --------------------------------------------

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
            unpacker = msgpack.Unpacker(f, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                                        max_buffer_size=2 ** 31 - 1)
            tree = unpacker.unpack()
    except (msgpack.OutOfData, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError) as e:
        raise ConversionError(f"{path}: truncated or corrupt msgpack file ({type(e).__name__}: {e})") from None
    if not isinstance(tree, dict):
        raise ConversionError(f"{path}: expected a msgpack map at the top level, got {type(tree).__name__}")
    return tree


def flatten(tree: dict, sep: str, is_leaf: Callable[[dict], bool] = lambda d: False, prefix: str = "") -> Iterator:
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


# -- T5X: msgpack tree whose leaves are arrays or tensorstore specs ------------------------------------------

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


# -- TensorFlow tensor bundles (Mesh-TensorFlow T5 checkpoints), read without TensorFlow -----------------

_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 9: np.int64,
              10: np.bool_, 14: ml_dtypes.bfloat16, 19: np.float16, 17: np.uint16, 22: np.uint32, 23: np.uint64}


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterator[tuple[int, object]]:
    """Minimal protobuf wire-format decoder: yields (field number, int or bytes)."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def _block_entries(data: bytes, handle: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Entries of one LevelDB-format table block (prefix-compressed keys, restart array at the end)."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(data):
        raise ValueError("block extends past the end of the file")
    if data[offset + size] != 0:
        raise ValueError(f"compressed table block (type {data[offset + size]}) is not supported")
    block = data[offset:offset + size]
    (n_restarts,) = struct.unpack("<I", block[-4:])
    end, pos, key = len(block) - 4 - 4 * n_restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + vlen]
        pos += vlen


def read_tf_bundle(prefix: Path) -> Tensors:
    """``PREFIX.index`` (an SSTable of BundleEntryProto) + ``PREFIX.data-XXXXX-of-NNNNN`` (raw little-endian bytes)."""
    index = Path(f"{prefix}.index")
    data = index.read_bytes()
    try:
        if len(data) < 48 or struct.unpack("<Q", data[-8:])[0] != 0xDB4775248B80FB57:
            raise ValueError("no SSTable footer magic")
        _, pos = _varint(data, len(data) - 48)  # metaindex handle: offset, size
        _, pos = _varint(data, pos)
        entries = {}
        for _, handle in _block_entries(data, data[pos:len(data) - 8]):
            for key, value in _block_entries(data, handle):
                entries[key.decode()] = value
    except (ValueError, IndexError, struct.error) as e:
        raise ConversionError(f"{index}: not a readable TensorFlow checkpoint index ({e})") from None
    header = dict(_proto_fields(entries.pop("", b"")))
    num_shards = header.get(1, 1)
    if header.get(2, 0) != 0:
        raise ConversionError(f"{index}: big-endian tensor bundles are not supported")
    shapes, where = {}, {}
    for name, value in entries.items():
        f = {}
        for field, v in _proto_fields(value):
            f.setdefault(field, []).append(v)
        if 7 in f:
            raise ConversionError(f"{index}: {name} is stored as partitioned slices, which is not supported")
        dtype = f.get(1, [0])[0]
        if dtype not in _TF_DTYPES:
            raise ConversionError(f"{index}: {name} has unsupported TensorFlow dtype enum {dtype}")
        dims = [dict(_proto_fields(d)).get(1, 0) for fid, d in _proto_fields(f.get(2, [b""])[0]) if fid == 2]
        shapes[name] = tuple(dims)
        where[name] = (_TF_DTYPES[dtype], f.get(3, [0])[0], f.get(4, [0])[0], f.get(5, [0])[0])
    shard_files = [Path(f"{prefix}.data-{i:05d}-of-{num_shards:05d}") for i in range(num_shards)]
    missing = [str(p) for p in shard_files if not p.is_file()]
    if missing:
        raise ConversionError(f"{index}: data shards are missing: {missing}")
    sizes = [p.stat().st_size for p in shard_files]

    def load(name):
        dtype, shard, offset, size = where[name]
        count = int(np.prod(shapes[name]))
        if offset + size > sizes[shard] or size != count * np.dtype(dtype).itemsize:
            raise ConversionError(f"{shard_files[shard]}: {name} needs bytes {offset}..{offset + size}, "
                                  f"file has {sizes[shard]} (truncated?)")
        return np.fromfile(shard_files[shard], dtype, count=count, offset=offset).reshape(shapes[name])

    return Tensors(str(prefix), shapes, load)


# -- detection ----------------------------------------------------------------------------------------------

# Hugging Face weight files, in the order of preference when a directory holds several
HF_FILES = (("model.safetensors", "safetensors", lambda p: read_safetensors([p])),
            ("model.safetensors.index.json", "safetensors", lambda p: read_safetensors(_sharded(p))),
            ("pytorch_model.bin", "torch", lambda p: read_torch([p])),
            ("pytorch_model.bin.index.json", "torch", lambda p: read_torch(_sharded(p))),
            ("flax_model.msgpack", "flax", read_flax))


def detect(src: Path) -> tuple[str, Callable[[], Tensors]]:
    """-> (format name, reader thunk) for a directory or file; raises naming what was looked for."""
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{src} does not exist")
    if src.is_file():
        if src.name == "checkpoint":
            return "t5x", lambda: read_t5x(src.parent)
        if src.name.endswith(".index"):
            return "tf", lambda: read_tf_bundle(Path(str(src)[:-len(".index")]))
        for name, fmt, read in HF_FILES:
            if src.name == name:  # the file named is the one converted, whatever else its directory holds
                return fmt, lambda: read(src)
    present = [(name, fmt, read) for name, fmt, read in HF_FILES if (src / name).is_file()]
    if present:
        name, fmt, read = present[0]
        if len(present) > 1:
            others = ", ".join(n for n, _, _ in present[1:])
            log.warning("%s holds %s: converting %s, ignoring %s (name a file as SRC, e.g. %s, to convert that one "
                        "instead)", src, ", ".join(n for n, _, _ in present), name, others, src / present[1][0])
        return fmt, lambda: read(src / name)
    if (src / "checkpoint").is_file() and not (src / "checkpoint").read_bytes()[:64].startswith(b"model_checkpoint_path"):
        return "t5x", lambda: read_t5x(src)
    steps = sorted((int(m.group(1)), p) for p in src.glob("checkpoint_*")
                   if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and (p / "checkpoint").is_file())
    if steps:
        return "t5x", lambda: read_t5x(steps[-1][1])
    indexes = sorted((int(m.group(1)) if m.group(1) else -1, p) for p in src.glob("*.index")
                     if (m := re.fullmatch(r".*?(?:-(\d+))?\.index", p.name)))
    if indexes:
        return "tf", lambda: read_tf_bundle(Path(str(indexes[-1][1])[:-len(".index")]))
    raise ConversionError(
        f"{src}: no recognised checkpoint; looked for model.safetensors(.index.json), pytorch_model.bin(.index.json), "
        "flax_model.msgpack, a T5X 'checkpoint' (or checkpoint_N/checkpoint) and a TensorFlow '*.index' bundle; "
        f"found {sorted(p.name for p in src.iterdir())[:20] if src.is_dir() else src.name}")
