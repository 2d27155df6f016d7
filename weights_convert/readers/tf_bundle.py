"""TensorFlow tensor bundles (Mesh-TensorFlow T5 checkpoints), read without TensorFlow."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

import ml_dtypes
import numpy as np

from weights_convert.readers.tensors import Tensors
from weights_convert.rules import ConversionError

_TF_DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    14: ml_dtypes.bfloat16,
    19: np.float16,
    17: np.uint16,
    22: np.uint32,
    23: np.uint64,
}


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
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos : pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, value


def _decompress(block: bytes, kind: int) -> bytes:
    """A table block's bytes by its trailer's type: 0 raw, 1 snappy (some TF builds wrote them, e.g. 2.5.0)."""
    if kind == 0:
        return block
    if kind != 1:
        raise ValueError(f"table block of unknown compression type {kind}")
    try:
        import cramjam
    except ImportError:
        raise _NeedsSnappy() from None
    try:
        return bytes(cramjam.snappy.decompress_raw(block))
    except cramjam.DecompressionError as e:
        raise ValueError(f"corrupt snappy-compressed table block ({e})") from None


class _NeedsSnappy(Exception):
    pass


def _block_entries(data: bytes, handle: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Entries of one LevelDB-format table block (prefix-compressed keys, restart array at the end)."""
    offset, pos = _varint(handle, 0)
    size, _ = _varint(handle, pos)
    if offset + size + 5 > len(data):
        raise ValueError("block extends past the end of the file")
    block = _decompress(data[offset : offset + size], data[offset + size])
    (n_restarts,) = struct.unpack("<I", block[-4:])
    end, pos, key = len(block) - 4 - 4 * n_restarts, 0, b""
    while pos < end:
        shared, pos = _varint(block, pos)
        unshared, pos = _varint(block, pos)
        vlen, pos = _varint(block, pos)
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        yield key, block[pos : pos + vlen]
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
        for _, handle in _block_entries(data, data[pos : len(data) - 8]):
            for key, value in _block_entries(data, handle):
                entries[key.decode()] = value
    except (ValueError, IndexError, struct.error) as e:
        raise ConversionError(f"{index}: not a readable TensorFlow checkpoint index ({e})") from None
    except _NeedsSnappy:
        raise ConversionError(
            f"{index}: its table blocks are snappy-compressed; "
            "reading them needs cramjam (pip install 't5vae[snappy]')"
        ) from None
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
            raise ConversionError(
                f"{shard_files[shard]}: {name} needs bytes {offset}..{offset + size}, "
                f"file has {sizes[shard]} (truncated?)"
            )
        return np.fromfile(shard_files[shard], dtype, count=count, offset=offset).reshape(shapes[name])

    return Tensors(str(prefix), shapes, load)
