"""``python -m weights_convert SRC OUT [--dtype bfloat16] [--overwrite] [--config CONFIG]``.

The command line only: parse the arguments, run :func:`weights_convert.convert.convert`, print errors.
"""
from __future__ import annotations

import argparse
import logging
import sys

from t5vae.config import FLOAT_DTYPES
from weights_convert.convert import convert
from weights_convert.rules import ConversionError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m weights_convert", description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="HF directory (model.safetensors / pytorch_model.bin / flax_model.msgpack + config.json), "
                               "T5X checkpoint_N directory, or Mesh-TF model.ckpt-N prefix/index/directory")
    p.add_argument("out", help="output directory (written atomically)")
    p.add_argument("--dtype", choices=FLOAT_DTYPES, help="stored param dtype (default: the "
                   "source config's torch_dtype, else float32)")
    p.add_argument("--config", help="config.json path or preset name, for sources without config.json")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    try:
        convert(args.src, args.out, args.dtype, args.overwrite, args.config, progress=None if not args.quiet else False)
    except (ConversionError, FileExistsError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
