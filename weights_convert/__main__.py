"""``python -m weights_convert SRC OUT [--dtype bfloat16] [--overwrite] [--config CONFIG] [--allow-nonfinite]``.

The command line only: parse the arguments, run :func:`weights_convert.convert.convert`, print errors. Only the
converter's own lines are logged at INFO (orbax, absl and jax log theirs at WARNING and above only).
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
    p.add_argument(
        "src",
        help="HF directory (model.safetensors / pytorch_model.bin / flax_model.msgpack + config.json), "
        "T5X checkpoint_N directory, or Mesh-TF model.ckpt-N prefix/index/directory",
    )
    p.add_argument("out", help="output directory (written atomically)")
    p.add_argument(
        "--dtype",
        choices=FLOAT_DTYPES,
        help="stored param dtype (default: the source config's torch_dtype, else float32)",
    )
    p.add_argument("--config", help="config.json path or preset name, for sources without config.json")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUT if it is an empty directory or a "
        "previous conversion (config.json + params/ [+ spiece.model]); anything else is refused",
    )
    p.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="convert a source whose tensors hold NaN or "
        "inf (refused by default, naming them), with a warning",
    )
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(_Format())
    logging.basicConfig(level=logging.WARNING, handlers=[handler])  # third-party loggers: warnings only
    ours = logging.getLogger("weights_convert")
    level = ours.level
    ours.setLevel(logging.WARNING if args.quiet else logging.INFO)
    try:
        convert(
            args.src,
            args.out,
            args.dtype,
            args.overwrite,
            args.config,
            progress=None if not args.quiet else False,
            allow_nonfinite=args.allow_nonfinite,
        )
    except (
        ConversionError,
        OSError,
        ValueError,
    ) as e:  # OSError: FileExistsError, PermissionError, a full disk
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        ours.setLevel(level)
    return 0


class _Format(logging.Formatter):
    """Our INFO lines as they are; warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


if __name__ == "__main__":
    sys.exit(main())
