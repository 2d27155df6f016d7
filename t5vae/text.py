"""Text in, text out: ``tv.load(dir)`` -> :class:`Model` with encode / decode / interpolate / sample / analogy.

Every method takes any number of strings or codes and runs them in padded power-of-two batches, so only a
few shapes are ever compiled. Bad input is a ValueError naming the argument: an empty (or whitespace-only)
string; a string longer than the model's ``max_length`` tokens (EOS included) unless ``truncate=True``, which
cuts it and warns; codes whose [N, Z] are not this model's; ``steps < 2``; ``max_new_tokens <= 0``.
"""
from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from t5vae import checkpoint, data, decoding, evaluate, kernels, latent, train, vae
from t5vae.config import Config, TrainConfig


def _batch_size(n: int) -> int:
    """Pad to a power of two from 8 to 128, so only five batch shapes are ever compiled (a compile takes
    seconds; padding a few rows costs milliseconds)."""
    return min(128, max(8, 1 << max(0, (n - 1).bit_length())))


def _as_lines(lines, name: str) -> tuple[list[str], list[str]]:
    """(lines, their argument names): one string -> [it] named ``name``; a sequence -> ``name[i]``."""
    if isinstance(lines, str):
        return [lines], [name]
    if isinstance(lines, (bytes, np.ndarray)) or not isinstance(lines, Sequence):
        raise TypeError(f"{name} must be a string or a sequence of strings, got {type(lines).__name__}")
    lines = list(lines)
    for i, s in enumerate(lines):
        if not isinstance(s, str):
            raise TypeError(f"{name}[{i}] must be a string, got {type(s).__name__}")
    return lines, [f"{name}[{i}]" for i in range(len(lines))]


def _check_max_new_tokens(max_new_tokens, default: int) -> int:
    if max_new_tokens is None:
        return default
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens <= 0:
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return int(max_new_tokens)


class Model:
    """A trained T5-VAE with its tokenizer. Codes are numpy arrays [n, n_latent_tokens, latent_size]."""

    def __init__(self, cfg: Config, params: dict, tokenizer: data.Tokenizer, path: str | None = None):
        train.check_vocab(cfg, tokenizer)
        self.cfg, self.params, self.tokenizer, self.path = cfg, params, tokenizer, path
        self._decoder_weights = (None, None)  # (the params they were built from, the decoder laid out for decoding)
        self._aggregate: latent.FittedGaussian | None = None

    def __repr__(self):
        return (f"Model({self.path or 'in memory'}: {self.cfg.n_latent_tokens} latent tokens x {self.cfg.latent_size}, "
                f"max_length {self.cfg.max_length})")

    # -- strings <-> codes -------------------------------------------------------------------------

    def _tokenize(self, lines: list[str], names: list[str], truncate: bool) -> data.Encoded:
        for s, name in zip(lines, names):
            if not s.strip():
                raise ValueError(f"{name} is empty{' (only whitespace)' if s else ''}: there is nothing to encode")
        enc = data.encode_lines(self.tokenizer, lines, self.cfg.max_length)
        if enc.n_truncated:
            lengths = [len(self.tokenizer.encode(s)) for s in lines]
            long = [(name, n, s) for s, name, n in zip(lines, names, lengths) if n > self.cfg.max_length]
            what = "; ".join(f"{name} is {n} tokens ({s[:40]!r}{'...' if len(s) > 40 else ''})" for name, n, s in long[:3])
            what += f" and {len(long) - 3} more" if len(long) > 3 else ""
            if not truncate:
                raise ValueError(f"{what}: longer than the model's max_length={self.cfg.max_length} tokens (EOS "
                                 f"included); shorten it or pass truncate=True to cut it to max_length")
            warnings.warn(f"{len(long)} input(s) truncated to max_length={self.cfg.max_length} tokens: {what}",
                          stacklevel=3)
        return enc

    def encode(self, lines: Sequence[str] | str, truncate: bool = False) -> np.ndarray:
        """Codes [n, N, Z] of strings (one string -> [1, N, Z]). Longer than ``max_length`` tokens: ValueError,
        or with ``truncate=True`` cut to ``max_length`` (EOS kept) with a warning."""
        lines, names = _as_lines(lines, "lines")
        if not lines:
            return np.zeros((0, self.cfg.n_latent_tokens, self.cfg.latent_size), np.float32)
        enc = self._tokenize(lines, names, truncate)
        return evaluate.encode_lines(self.params, self.cfg, enc, _batch_size(len(lines)))

    def decode(self, z, max_new_tokens: int | None = None, method: str = "greedy", seed: int = 0,
               **kwargs) -> list[str]:
        """Strings for codes [n, N, Z] (or one code [N, Z]); at most ``max_new_tokens`` tokens each (default
        ``max_length``). ``method`` "greedy", "sample" (seeded; temperature/top_k/top_p in kwargs) or "beam"."""
        z = latent.check_codes(z, self.cfg, "z")
        T = _check_max_new_tokens(max_new_tokens, self.cfg.max_length)
        out, key = [], jax.random.key(seed)
        for s, padded, n in evaluate.padded_batches(z, _batch_size(len(z))):
            if method == "sample":
                kwargs["key"] = jax.random.fold_in(key, s)
            toks = np.asarray(vae.generate(self.params, self.cfg, jnp.asarray(padded), T, method=method,
                                           decoder_weights=self.decoder_weights(),
                                           vocab_limit=self.tokenizer.vocab_size, **kwargs))
            out += [self.tokenizer.decode(t) for t in toks[:n]]
        return out

    def decoder_weights(self) -> decoding.DecoderWeights | None:
        """With the "decoder_layout" fast path on: the backbone's decoder laid out for decoding, built on first
        use and kept while ``self.params`` stays the same object (a second copy of the decoder's weights);
        otherwise None (decoding runs on the params)."""
        if not kernels.ops(self.cfg.t5).decoder_layout:
            return None
        built_from, w = self._decoder_weights
        if built_from is not self.params:
            w = decoding.decoder_weights(self.params["t5"], self.cfg.t5)
            self._decoder_weights = (self.params, w)
        return w

    # -- latent-space operations -------------------------------------------------------------------

    def interpolate(self, a: str | Sequence[str], b: str | Sequence[str], steps: int = 9, kind: str = "slerp",
                    truncate: bool = False, **decode_kwargs) -> list[str] | list[list[str]]:
        """``steps`` strings decoded along the path from a's code to b's, both endpoints included (ratios
        ``np.linspace(0, 1, steps)``). Lists of a and b (equal lengths) -> one path per pair, decoded in one go.
        ``kind``: "slerp" (per latent token), "slerp_flat" (the whole code) or "lerp"."""
        la, na = _as_lines(a, "a")
        lb, nb = _as_lines(b, "b")
        if len(la) != len(lb):
            raise ValueError(f"a and b must hold equally many lines, got {len(la)} and {len(lb)}")
        if kind not in latent.INTERPOLATIONS:
            raise ValueError(f"kind must be one of {latent.INTERPOLATIONS}, got {kind!r}")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
            raise ValueError(f"steps is the number of points including both endpoints and must be an integer >= 2, "
                             f"got {steps!r}")
        _check_max_new_tokens(decode_kwargs.get("max_new_tokens"), 1)  # before any encoding
        if not la:
            return []
        z = evaluate.encode_lines(self.params, self.cfg, self._tokenize(la + lb, na + nb, truncate),
                                  _batch_size(2 * len(la)))
        paths = np.asarray(latent.interpolate(z[: len(la)], z[len(la):], steps, kind))  # [steps, pairs, N, Z]
        texts = self.decode(paths.transpose(1, 0, 2, 3).reshape((-1,) + z.shape[1:]), **decode_kwargs)
        rows = [texts[i * steps: (i + 1) * steps] for i in range(len(la))]
        return rows[0] if isinstance(a, str) else rows

    def analogy(self, a: str | Sequence[str], b: str, c: str, scale: float = 1.0, truncate: bool = False,
                **decode_kwargs) -> str | list[str]:
        """Decode ``code(a) + scale * (code(b) - code(c))`` (clipped into the tanh range), e.g.
        ``analogy("x = 1", "def g(y):", "y = 1")``; a list of a -> a list of strings."""
        la, na = _as_lines(a, "a")
        for name, s in (("b", b), ("c", c)):
            if not isinstance(s, str):
                raise TypeError(f"{name} must be one string (the difference code(b) - code(c) is added to every a), "
                                f"got {type(s).__name__}")
        if not la:
            return []
        z = evaluate.encode_lines(self.params, self.cfg, self._tokenize(la + [b, c], na + ["b", "c"], truncate),
                                  _batch_size(len(la) + 2))
        texts = self.decode(latent.analogy(z[:-2], z[-2], z[-1], scale), **decode_kwargs)
        return texts[0] if isinstance(a, str) else texts

    def sample_codes(self, n: int, prior: str = latent.DEFAULT_PRIOR, seed: int = 0) -> np.ndarray:
        """``n`` codes [n, N, Z] from a prior (see :func:`t5vae.latent.sample_prior`; "aggregate" is fitted on
        first use, see :meth:`aggregate_posterior`)."""
        agg = self.aggregate_posterior() if prior == "aggregate" else None
        return latent.sample_prior(prior, n, self.cfg, seed, agg)

    def sample(self, n: int, prior: str = latent.DEFAULT_PRIOR, seed: int = 0, **decode_kwargs) -> list[str]:
        """Decode ``n`` codes drawn from ``prior``: "aggregate" (default: a Gaussian fitted to the training
        codes, the prior whose samples parse most often, see t5vae.latent), "gaussian" or "tanh"."""
        _check_max_new_tokens(decode_kwargs.get("max_new_tokens"), 1)  # before fitting the aggregate posterior
        return self.decode(self.sample_codes(n, prior, seed), **decode_kwargs)

    # -- the aggregate posterior -------------------------------------------------------------------

    def fit_aggregate(self, lines: Sequence[str], batch_size: int = 128) -> latent.FittedGaussian:
        """Fit the aggregate-posterior Gaussian to the codes of ``lines`` (kept in memory, not written)."""
        lines, _ = _as_lines(lines, "lines")
        if len(lines) < 2:
            raise ValueError(f"fit_aggregate needs at least two lines, got {len(lines)}")
        enc = data.encode_lines(self.tokenizer, lines, self.cfg.max_length)  # as in training: long lines cut
        codes = evaluate.encode_lines(self.params, self.cfg, enc, batch_size)
        self._aggregate = latent.FittedGaussian.fit(codes, fingerprint=latent.params_fingerprint(self.params))
        return self._aggregate

    def aggregate_posterior(self) -> latent.FittedGaussian:
        """The Gaussian fitted to the codes of the run's training lines: from ``aggregate_posterior.npz`` in the
        run directory when it was computed with these params, else computed now (the corpus rebuilt from
        train_config.json) and written there atomically (a read-only directory: kept in memory, with a warning)."""
        fp = latent.params_fingerprint(self.params)
        if self._aggregate is not None and self._aggregate.fingerprint == fp:
            return self._aggregate
        if self.path is None:
            raise ValueError("this model has no run directory to find its training lines in: call "
                             "model.fit_aggregate(lines) first, or sample with prior='tanh' or 'gaussian'")
        file = Path(self.path) / latent.AGGREGATE_FILE
        if file.is_file():
            g = latent.FittedGaussian.load(file)
            if g.fingerprint == fp and g.shape == (self.cfg.n_latent_tokens, self.cfg.latent_size):
                self._aggregate = g
                return g
        tc_file = Path(self.path) / checkpoint.TRAIN_CONFIG_FILE
        if not tc_file.is_file():
            raise FileNotFoundError(f"the aggregate prior is fitted to the run's training lines, but {tc_file} (which "
                                    f"names the corpus) is missing: call model.fit_aggregate(lines) first, or sample "
                                    f"with prior='tanh' or 'gaussian'")
        tc = TrainConfig.load_json(tc_file)
        try:
            corpus = data.load_corpus(tc.corpus, tc.validation_percent, tc.min_chars, tc.max_chars)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{e}: the training corpus named in {tc_file} is needed to fit the aggregate "
                                    f"prior; call model.fit_aggregate(lines) first, or sample with prior='tanh'") from None
        g = self.fit_aggregate(corpus.train)
        try:
            g.save(file)
        except OSError as e:
            warnings.warn(f"could not write {file} ({e}); the aggregate posterior is kept in memory only", stacklevel=2)
        return g


def load(path: str | os.PathLike) -> Model:
    """Load a training run directory (its final ``params/`` or else its newest checkpoint) or an export."""
    path = Path(path)
    if not (path / checkpoint.CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a t5vae run directory: {path / checkpoint.CONFIG_FILE} is missing")
    cfg = Config.load_json(path / checkpoint.CONFIG_FILE)
    tok = data.Tokenizer.load(path / checkpoint.TOKENIZER_FILE)
    if (path / checkpoint.PARAMS_DIR).is_dir():
        params = checkpoint.restore_params(path / checkpoint.PARAMS_DIR, vae.abstract_params(cfg))
    else:
        tc = TrainConfig.load_json(path / checkpoint.TRAIN_CONFIG_FILE)
        abstract = jax.eval_shape(lambda: train.init_state(cfg, tc, vae.init(cfg, jax.random.key(0))))
        mngr = checkpoint.checkpoint_manager(path, tc.keep_checkpoints)
        try:
            _, state = checkpoint.restore_train_state(mngr, abstract, set_aside=False,  # a reader moves nothing
                                                      log=lambda m: warnings.warn(m, stacklevel=3))
        finally:
            mngr.close()
        if state is None:
            raise FileNotFoundError(f"{path} has neither final params nor a checkpoint yet")
        params = state["params"]
    return Model(cfg, params, tok, str(path))
