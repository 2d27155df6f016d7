"""The lazy flat checkpoint every reader returns."""

from __future__ import annotations

from typing import Callable

import numpy as np

from weights_convert.rules import ConversionError


class Tensors:
    """A lazy flat checkpoint: ``shapes[name]`` up front, ``load(name)`` reads one array, ``release`` frees it."""

    def __init__(
        self,
        what: str,
        shapes: dict[str, tuple],
        load: Callable[[str], np.ndarray],
        skipped: dict[str, str] | None = None,
        close: Callable[[], None] | None = None,
    ):
        self.what, self.shapes, self._load, self._close = what, dict(shapes), load, close
        self.skipped = dict(skipped or {})  # name -> why it is knowingly not converted

    def load(self, name: str) -> np.ndarray:
        arr = np.asarray(self._load(name))
        if tuple(arr.shape) != tuple(self.shapes[name]):
            raise ConversionError(
                f"{self.what}: {name} has shape {arr.shape} on disk, header says {self.shapes[name]}"
            )
        return arr

    def close(self) -> None:
        if self._close is not None:
            self._close()
