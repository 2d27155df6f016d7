"""Text in, text out: ``tv.load(dir)`` -> :class:`Model` with encode / decode / interpolate / sample."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from t5vae import checkpoint, data, evaluate, model
from t5vae.config import Config


def _batch_size(n: int) -> int:
    """Pad to a power of two (at most 128) so only a few batch shapes are ever compiled."""
    return min(128, 1 << max(0, (n - 1).bit_length()))


class Model:
    """A trained T5-VAE with its tokenizer. Codes are numpy arrays [n, n_latent_tokens, latent_size]."""

    def __init__(self, cfg: Config, params: dict, tokenizer: data.Tokenizer, path: str | None = None):
        from t5vae.train import check_vocab

        check_vocab(cfg, tokenizer)
        self.cfg, self.params, self.tokenizer, self.path = cfg, params, tokenizer, path

    def encode(self, lines: Sequence[str] | str) -> np.ndarray:
        lines = [lines] if isinstance(lines, str) else list(lines)
        enc = data.encode_lines(self.tokenizer, lines, self.cfg.max_length)
        return evaluate.encode_lines(self.params, self.cfg, enc, _batch_size(len(lines)))

    def decode(self, z) -> list[str]:
        """Greedy decoding of codes [n, N, Z] (or one code [N, Z]) to strings."""
        z = np.asarray(z, np.float32)
        z = z[None] if z.ndim == 2 else z
        toks = evaluate.decode_codes(self.params, self.cfg, z, _batch_size(len(z)))
        return [self.tokenizer.decode(t) for t in toks]

    def interpolate(self, a: str, b: str, steps: int = 9, kind: str = "slerp") -> list[str]:
        """``steps + 2`` strings: decoded endpoints and ``steps`` interior points between the codes of a and b."""
        za, zb = self.encode([a, b])
        return self.decode(np.asarray(model.interpolate(za, zb, steps, kind)))

    def sample(self, n: int, seed: int = 0) -> list[str]:
        """Decode ``n`` codes drawn from the prior N(0, I), clipped to the tanh range (-1, 1)."""
        z = np.asarray(jax.random.normal(jax.random.key(seed), (n, self.cfg.n_latent_tokens, self.cfg.latent_size)))
        return self.decode(np.clip(z, -0.999, 0.999))


def load(path: str | os.PathLike) -> Model:
    """Load a training run directory (its final ``params/`` or else its newest checkpoint) or an export."""
    path = Path(path)
    if not (path / checkpoint.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a t5vae run directory: {path / checkpoint.CONFIG_FILE} is missing")
    cfg = Config.load_json(path / checkpoint.CONFIG_FILE)
    tok = data.Tokenizer.load(path / checkpoint.TOKENIZER_FILE)
    if (path / checkpoint.PARAMS_DIR).is_dir():
        params = checkpoint.restore_params(path / checkpoint.PARAMS_DIR, model.abstract_params(cfg))
    else:
        from t5vae import train

        tc = train.TrainConfig.from_dict(json.loads((path / checkpoint.TRAIN_CONFIG_FILE).read_text()))
        abstract = jax.eval_shape(lambda: train.init_state(cfg, tc, model.init(cfg, jax.random.key(0))))
        mngr = checkpoint.checkpoint_manager(path, tc.keep_checkpoints)
        try:
            step, state = checkpoint.restore_train_state(mngr, abstract)
        finally:
            mngr.close()
        if state is None:
            raise FileNotFoundError(f"{path} has neither final params nor a checkpoint yet")
        params = state["params"]
    return Model(cfg, params, tok, str(path))
