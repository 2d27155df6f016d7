"""Text in, text out, the one inference layer: ``tv.load(dir)`` -> :class:`Model` with encode / decode /
path / interpolate / sample / analogy. The command line, evaluation and the demo all stand on it.

Every method takes any number of strings or codes and runs them in padded power-of-two batches, so only a
few shapes are ever compiled. Bad input is a ValueError naming the argument: an empty (or whitespace-only)
string; a string longer than the model's ``max_length`` tokens (EOS included) unless ``truncate=True``, which
cuts it and warns; codes whose [N, Z] are not this model's; ``steps < 2``; ``max_new_tokens <= 0``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from t5vae import batched, checkpoint, data, decoding, files, kernels, latent, rundir, vae
from t5vae.config import Config
from t5vae.names import DEFAULT_INTERPOLATION, DEFAULT_PRIOR, INTERPOLATIONS, PARSING_BEAM, parses


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
    if (
        isinstance(max_new_tokens, bool)
        or not isinstance(max_new_tokens, (int, np.integer))
        or max_new_tokens <= 0
    ):
        raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    return int(max_new_tokens)


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 2:
        raise ValueError(
            f"steps is the number of points including both endpoints and must be an integer >= 2, "
            f"got {steps!r}"
        )
    return int(steps)


class TooLong(ValueError):
    """Lines longer than the model's ``max_length`` tokens: ``too_long`` holds (argument name, tokens) each."""

    def __init__(self, message: str, too_long: list[tuple[str, int]]):
        super().__init__(message)
        self.too_long = too_long


class EmptyLine(ValueError):
    """An empty or whitespace-only line: ``name`` is its argument's name."""

    def __init__(self, message: str, name: str):
        super().__init__(message)
        self.name = name


@dataclasses.dataclass(frozen=True)
class LinePath:
    """A decoded path between two lines: ratios [steps] from 0 to 1, codes [steps, N, Z], lines [steps]."""

    ratios: np.ndarray
    codes: np.ndarray
    lines: list[str]


class Model:
    """A trained T5-VAE with its tokenizer. Codes are numpy arrays [n, n_latent_tokens, latent_size]."""

    def __init__(self, cfg: Config, params: dict, tokenizer: data.Tokenizer, run_dir: str | None = None):
        data.check_vocab(tokenizer, cfg.t5.vocab_size)
        self.cfg, self.params, self.tokenizer, self.run_dir = cfg, params, tokenizer, run_dir
        self._decoder_weights = (
            None,
            None,
        )  # (the params they were built from, the decoder laid out for decoding)
        self._aggregate: latent.FittedGaussian | None = None

    def __repr__(self):
        return (
            f"Model({self.run_dir or 'in memory'}: {self.cfg.n_latent_tokens} latent tokens x {self.cfg.latent_size}, "
            f"max_length {self.cfg.max_length})"
        )

    # -- strings <-> codes -------------------------------------------------------------------------

    def _tokenize(self, lines: list[str], names: list[str], truncate: bool) -> data.Encoded:
        for s, name in zip(lines, names):
            if not s.strip():
                raise EmptyLine(
                    f"{name} is empty{' (only whitespace)' if s else ''}: there is nothing to encode", name
                )
        enc = data.encode_lines(self.tokenizer, lines, self.cfg.max_length)
        if enc.n_truncated:
            lengths = [len(self.tokenizer.encode(s)) for s in lines]
            long = [(name, n, s) for s, name, n in zip(lines, names, lengths) if n > self.cfg.max_length]
            what = "; ".join(
                f"{name} is {n} tokens ({s[:40]!r}{'...' if len(s) > 40 else ''})" for name, n, s in long[:3]
            )
            what += f" and {len(long) - 3} more" if len(long) > 3 else ""
            if not truncate:
                raise TooLong(
                    f"{what}: longer than the model's max_length={self.cfg.max_length} tokens (EOS "
                    f"included); shorten it or pass truncate=True to cut it to max_length",
                    [(name, n) for name, n, _ in long],
                )
            warnings.warn(
                f"{len(long)} input(s) truncated to max_length={self.cfg.max_length} tokens: {what}",
                stacklevel=3,
            )
        return enc

    def encode(self, lines: Sequence[str] | str, truncate: bool = False) -> np.ndarray:
        """Codes [n, N, Z] of strings (one string -> [1, N, Z]). Longer than ``max_length`` tokens: ValueError,
        or with ``truncate=True`` cut to ``max_length`` (EOS kept) with a warning."""
        lines, names = _as_lines(lines, "lines")
        if not lines:
            return np.zeros((0, self.cfg.n_latent_tokens, self.cfg.latent_size), np.float32)
        return self.codes(self._tokenize(lines, names, truncate))

    def codes(self, enc: data.Encoded, batch_size: int | None = None) -> np.ndarray:
        """Codes [n, N, Z] of lines already tokenized (:func:`t5vae.data.encode_lines`)."""
        return batched.encode(self.params, self.cfg, enc, batch_size or batched.batch_size(len(enc)))

    def decode(
        self, z, max_new_tokens: int | None = None, method: str = "greedy", seed: int = 0, **kwargs
    ) -> list[str]:
        """Strings for codes [n, N, Z] (or one code [N, Z]); at most ``max_new_tokens`` tokens each (default
        ``max_length``). ``method`` "greedy", "sample" (seeded; temperature/top_k/top_p in kwargs), "beam"
        (``num_beams``, default 4) or "beam-parse": of the beams, the best-scored one whose line parses as
        Python, and the best one where none does (a decoding choice for code; greedy measures the latent)."""
        return [self.tokenizer.decode(t) for t in self.decode_ids(z, max_new_tokens, method, seed, **kwargs)]

    def decode_ids(
        self,
        z,
        max_new_tokens: int | None = None,
        method: str = "greedy",
        seed: int = 0,
        batch_size: int | None = None,
        **kwargs,
    ) -> np.ndarray:
        """Token ids [n, max_new_tokens] for codes, as :meth:`decode` (pad after EOS); ids the tokenizer does
        not have (T5's extra embedding rows) are never produced."""
        z = latent.check_codes(z, self.cfg, "z")
        T = _check_max_new_tokens(max_new_tokens, self.cfg.max_length)
        parsing = method == PARSING_BEAM
        ids = batched.decode(
            self.params,
            self.cfg,
            z,
            T,
            batch_size or batched.batch_size(len(z)),
            "beam" if parsing else method,
            seed,
            decoder_weights=self.decoder_weights(),
            vocab_limit=self.tokenizer.vocab_size,
            **({"all_beams": True} if parsing else {}),
            **kwargs,
        )
        if not parsing:
            return ids
        return np.array([self._first_that_parses(beams) for beams in ids], np.int32).reshape(len(ids), T)

    def _first_that_parses(self, beams: np.ndarray) -> np.ndarray:
        """The first of ``beams`` [W, T] (best first) whose line parses, else the first."""
        for b in beams:
            if parses(self.tokenizer.decode(b)):
                return b
        return beams[0]

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

    def path(
        self,
        a: str,
        b: str,
        steps: int = 9,
        kind: str = DEFAULT_INTERPOLATION,
        truncate: bool = False,
        **decode_kwargs,
    ) -> LinePath:
        """The path from a's code to b's: ``steps`` ratios from 0 to 1 (both endpoints included), the codes
        there and the lines they decode to (``decode_kwargs`` as in :meth:`decode`)."""
        if not isinstance(a, str) or not isinstance(b, str):
            raise TypeError(f"a and b must be strings, got {type(a).__name__} and {type(b).__name__}")
        codes = self._path_codes([a], [b], ["a"], ["b"], steps, kind, truncate, decode_kwargs)[:, 0]
        return LinePath(np.linspace(0, 1, len(codes)), codes, self.decode(codes, **decode_kwargs))

    def interpolate(
        self,
        a: str | Sequence[str],
        b: str | Sequence[str],
        steps: int = 9,
        kind: str = DEFAULT_INTERPOLATION,
        truncate: bool = False,
        **decode_kwargs,
    ) -> list[str] | list[list[str]]:
        """The lines of :meth:`path` from a to b. Lists of a and b (equal lengths) -> one path per pair, decoded
        in one go. ``kind``: "slerp" (per latent token), "slerp_flat" (the whole code) or "lerp"."""
        la, na = _as_lines(a, "a")
        lb, nb = _as_lines(b, "b")
        if len(la) != len(lb):
            raise ValueError(f"a and b must hold equally many lines, got {len(la)} and {len(lb)}")
        paths = self._path_codes(la, lb, na, nb, steps, kind, truncate, decode_kwargs)  # [steps, pairs, N, Z]
        if not la:
            return []
        steps = len(paths)
        texts = self.decode(paths.transpose(1, 0, 2, 3).reshape((-1,) + paths.shape[2:]), **decode_kwargs)
        rows = [texts[i * steps : (i + 1) * steps] for i in range(len(la))]
        return rows[0] if isinstance(a, str) else rows

    def _path_codes(self, la, lb, na, nb, steps, kind, truncate, decode_kwargs) -> np.ndarray:
        """Codes [steps, pairs, N, Z] on the paths between the lines, every argument checked before encoding."""
        if kind not in INTERPOLATIONS:
            raise ValueError(f"kind must be one of {INTERPOLATIONS}, got {kind!r}")
        steps = _check_steps(steps)
        _check_max_new_tokens(decode_kwargs.get("max_new_tokens"), 1)
        if not la:
            return np.zeros((steps, 0, self.cfg.n_latent_tokens, self.cfg.latent_size), np.float32)
        z = self.codes(self._tokenize(la + lb, na + nb, truncate))
        return np.asarray(latent.interpolate(z[: len(la)], z[len(la) :], steps, kind))

    def analogy(
        self,
        a: str | Sequence[str],
        b: str,
        c: str,
        scale: float = 1.0,
        truncate: bool = False,
        **decode_kwargs,
    ) -> str | list[str]:
        """Decode ``code(a) + scale * (code(b) - code(c))`` (clipped into the tanh range), e.g.
        ``analogy("x = 1", "def g(y):", "y = 1")``; a list of a -> a list of strings."""
        la, na = _as_lines(a, "a")
        for name, s in (("b", b), ("c", c)):
            if not isinstance(s, str):
                raise TypeError(
                    f"{name} must be one string (the difference code(b) - code(c) is added to every a), "
                    f"got {type(s).__name__}"
                )
        if not la:
            return []
        z = self.codes(self._tokenize(la + [b, c], na + ["b", "c"], truncate))
        texts = self.decode(latent.analogy(z[:-2], z[-2], z[-1], scale), **decode_kwargs)
        return texts[0] if isinstance(a, str) else texts

    def sample_codes(self, n: int, prior: str = DEFAULT_PRIOR, seed: int = 0) -> np.ndarray:
        """``n`` codes [n, N, Z] from a prior (see :func:`t5vae.latent.sample_prior`; "aggregate" is fitted on
        first use, see :meth:`aggregate_posterior`)."""
        agg = self.aggregate_posterior() if prior == "aggregate" else None
        return latent.sample_prior(prior, n, self.cfg, seed, agg)

    def sample(self, n: int, prior: str = DEFAULT_PRIOR, seed: int = 0, **decode_kwargs) -> list[str]:
        """Decode ``n`` codes drawn from ``prior``: "aggregate" (default: a Gaussian fitted to the training
        codes, the prior whose samples parse most often, see t5vae.latent), "gaussian" or "tanh"."""
        _check_max_new_tokens(
            decode_kwargs.get("max_new_tokens"), 1
        )  # before fitting the aggregate posterior
        return self.decode(self.sample_codes(n, prior, seed), **decode_kwargs)

    # -- the aggregate posterior -------------------------------------------------------------------

    def fit_aggregate(self, lines: Sequence[str], batch_size: int = 128) -> latent.FittedGaussian:
        """Fit the aggregate-posterior Gaussian to the codes of ``lines`` (kept in memory, not written)."""
        lines, _ = _as_lines(lines, "lines")
        if len(lines) < 2:
            raise ValueError(f"fit_aggregate needs at least two lines, got {len(lines)}")
        enc = data.encode_lines(self.tokenizer, lines, self.cfg.max_length)  # as in training: long lines cut
        codes = self.codes(enc, batch_size)
        self._aggregate = latent.FittedGaussian.fit(codes, fingerprint=latent.params_fingerprint(self.params))
        return self._aggregate

    def aggregate_posterior(self) -> latent.FittedGaussian:
        """The Gaussian fitted to the codes of the run's training lines, computed with these params: from the
        run's ``aggregate_posterior.npz`` or the user's cache (:func:`aggregate_cache`), else computed now (the
        corpus rebuilt from train_config.json, :func:`t5vae.rundir.corpus`) and written to the cache, never into
        the run directory, which a reader may share or only be allowed to read (no cache: a warning)."""
        fp = latent.params_fingerprint(self.params)
        if self._aggregate is not None and self._aggregate.fingerprint == fp:
            return self._aggregate
        if self.run_dir is None:
            raise ValueError(
                "this model has no run directory to find its training lines in: call "
                "model.fit_aggregate(lines) first, or sample with prior='tanh' or 'gaussian'"
            )
        cache = aggregate_cache(self.run_dir, fp)
        for file in (Path(self.run_dir) / rundir.AGGREGATE_FILE, cache):
            if file.is_file():
                g = latent.FittedGaussian.load(file)
                if g.fingerprint == fp and g.shape == (self.cfg.n_latent_tokens, self.cfg.latent_size):
                    self._aggregate = g
                    return g
        try:
            corpus = rundir.corpus(self.run_dir)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"{e}: the aggregate prior is fitted to the lines of the run's training corpus; call "
                f"model.fit_aggregate(lines) first, or sample with prior='tanh' or "
                f"'gaussian'"
            ) from None
        g = self.fit_aggregate(corpus.train)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            g.save(cache)
        except OSError as e:
            warnings.warn(
                f"could not write {cache} ({e}); the aggregate posterior is kept in memory only", stacklevel=2
            )
        return g


def aggregate_cache(run_dir: str | os.PathLike, fingerprint: str) -> Path:
    """The user-cache file of a run's aggregate posterior: named by the run's absolute path and its params."""
    run = hashlib.sha256(os.fsencode(Path(run_dir).absolute())).hexdigest()[:16]
    return files.cache_dir() / "aggregate" / f"{run}-{fingerprint}.npz"


def load(path: str | os.PathLike) -> Model:
    """Load a training run directory (its final ``params/`` or else the params of its newest checkpoint that
    can be read) or an export. Only params are read: no optimizer state is built or restored. Final params
    that cannot be read fall back to the newest readable checkpoint with a warning; with none, a ValueError
    in one line names the run, the damaged part and what to do."""
    path = Path(path)
    if not (path / rundir.CONFIG_FILE).is_file():
        raise FileNotFoundError(
            f"{path} is not a t5vae run directory: {path / rundir.CONFIG_FILE} is missing"
        )
    cfg = Config.load_json(path / rundir.CONFIG_FILE)
    tok = data.Tokenizer.load(path / rundir.TOKENIZER_FILE)
    rundir.check_tokenizer(path, tok)
    damaged = None
    if (path / rundir.PARAMS_DIR).is_dir():
        try:
            return Model(
                cfg,
                checkpoint.restore_params(path / rundir.PARAMS_DIR, vae.abstract_params(cfg)),
                tok,
                str(path),
            )
        except checkpoint.Unreadable as e:
            damaged = e

    def warn(message: str) -> None:
        warnings.warn(message, stacklevel=3)

    step, params = checkpoint.restore_checkpoint_params(path, vae.abstract_params(cfg), log=warn)
    if params is None and damaged is not None:
        raise ValueError(
            f"{damaged}, and {path} has no readable checkpoint to fall back on: restore the run from "
            f"a backup, or train it again (t5vae train --out {path} --overwrite)"
        )
    if params is None:
        raise FileNotFoundError(f"{path} has neither final params nor a checkpoint yet")
    if damaged is not None:
        warn(f"{damaged}; using checkpoint {step} instead")
    return Model(cfg, params, tok, str(path))
