"""One reader per source format -> :class:`Tensors`, a lazy flat ``{name: np.ndarray}`` with shapes known up front.

Formats: Hugging Face ``model.safetensors`` (sharded too), ``pytorch_model.bin`` (needs torch),
``flax_model.msgpack`` (no flax needed); T5X ``checkpoint`` msgpack + tensorstore/zarr arrays, and T5X's
Orbax ``checkpoint_N/state``; Mesh-TensorFlow ``model.ckpt-N.index`` + ``.data-*`` tensor bundles (pure Python,
no TensorFlow needed; snappy-compressed index blocks need cramjam).
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Callable

from weights_convert.readers.flax_msgpack import flatten, read_flax, read_msgpack_tree
from weights_convert.readers.hf import read_safetensors, read_torch, sharded
from weights_convert.readers.t5x import read_t5x, read_t5x_orbax
from weights_convert.readers.tensors import Tensors
from weights_convert.readers.tf_bundle import read_tf_bundle
from weights_convert.rules import ConversionError

__all__ = [
    "Tensors",
    "detect",
    "flatten",
    "read_flax",
    "read_msgpack_tree",
    "read_safetensors",
    "read_t5x",
    "read_t5x_orbax",
    "read_tf_bundle",
    "read_torch",
]

log = logging.getLogger("weights_convert")

# Hugging Face weight files, in the order of preference when a directory holds several
HF_FILES = (
    ("model.safetensors", "safetensors", lambda p: read_safetensors([p])),
    ("model.safetensors.index.json", "safetensors", lambda p: read_safetensors(sharded(p))),
    ("pytorch_model.bin", "torch", lambda p: read_torch([p])),
    ("pytorch_model.bin.index.json", "torch", lambda p: read_torch(sharded(p))),
    ("flax_model.msgpack", "flax", read_flax),
)


def _t5x_reader(ckpt: Path) -> Callable[[], Tensors] | None:
    """A T5X step directory: legacy (``checkpoint`` msgpack), or Orbax (``state/_METADATA``; or ``state`` itself)."""
    legacy = ckpt / "checkpoint"
    if legacy.is_file() and not legacy.read_bytes()[:64].startswith(b"model_checkpoint_path"):  # TF's is text
        return lambda: read_t5x(ckpt)
    if (ckpt / "state" / "_METADATA").is_file() or (ckpt.name == "state" and (ckpt / "_METADATA").is_file()):
        return lambda: read_t5x_orbax(ckpt)
    return None


def detect(src: Path) -> tuple[str, Callable[[], Tensors]]:
    """-> (format name, reader thunk) for a directory or file; raises naming what was looked for."""
    src = Path(src)
    if not src.exists():
        raise ConversionError(f"{src} does not exist")
    if src.is_file():
        if src.name == "checkpoint":
            return "t5x", lambda: read_t5x(src.parent)
        if src.name == "_METADATA":
            return "t5x", lambda: read_t5x_orbax(src.parent)
        if src.name.endswith(".index"):
            return "tf", lambda: read_tf_bundle(Path(str(src)[: -len(".index")]))
        for name, fmt, read in HF_FILES:
            if src.name == name:  # the file named is the one converted, whatever else its directory holds
                return fmt, lambda: read(src)
    present = [(name, fmt, read) for name, fmt, read in HF_FILES if (src / name).is_file()]
    if present:
        name, fmt, read = present[0]
        if len(present) > 1:
            others = ", ".join(n for n, _, _ in present[1:])
            log.warning(
                "%s holds %s: converting %s, ignoring %s (name a file as SRC, e.g. %s, to convert that one "
                "instead)",
                src,
                ", ".join(n for n, _, _ in present),
                name,
                others,
                src / present[1][0],
            )
        return fmt, lambda: read(src / name)
    if (read := _t5x_reader(src)) is not None:
        return "t5x", read
    steps = sorted(
        (int(m.group(1)), read)
        for p in src.glob("checkpoint_*")
        if (m := re.fullmatch(r"checkpoint_(\d+)", p.name)) and (read := _t5x_reader(p)) is not None
    )
    if steps:  # a T5X model directory: the newest step
        return "t5x", steps[-1][1]
    indexes = sorted(
        (int(m.group(1)) if m.group(1) else -1, p)
        for p in src.glob("*.index")
        if (m := re.fullmatch(r".*?(?:-(\d+))?\.index", p.name))
    )
    if indexes:
        return "tf", lambda: read_tf_bundle(Path(str(indexes[-1][1])[: -len(".index")]))
    raise ConversionError(
        f"{src}: no recognised checkpoint; looked for model.safetensors(.index.json), pytorch_model.bin(.index.json), "
        "flax_model.msgpack, a T5X 'checkpoint' or Orbax 'state/_METADATA' (or checkpoint_N/ holding one) and a "
        "TensorFlow '*.index' bundle; "
        f"found {sorted(p.name for p in src.iterdir())[:20] if src.is_dir() else src.name}"
    )
