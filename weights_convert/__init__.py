"""Convert T5 checkpoints (Hugging Face, T5X, Mesh-TensorFlow) into t5vae's params layout.

Command line: ``python -m weights_convert SRC OUT``; in Python: ``from weights_convert import convert``
(``weights_convert.convert.convert``: the package attribute ``convert`` is the function, not the module).
"""

from weights_convert.convert import convert
from weights_convert.mapping import MappingError
from weights_convert.rules import ConversionError

__all__ = ["ConversionError", "MappingError", "convert"]
