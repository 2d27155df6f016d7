"""Latent-space operations on T5-VAE codes [n, N, Z]: interpolation, shape checks, priors to sample codes
from, a Gaussian fitted to the aggregate posterior (the training set's codes), latent arithmetic a + (b - c),
and edit directions (as in Bottleneck T5's latent edits): the difference of two sets of lines' mean codes,
along which one line's code is moved.

Codes are tanh outputs, so every code the encoder produces lies in the open cube (-1, 1)^(N*Z). The MMD
loss pulls the codes toward N(0, I), but a tanh-squashed code can never be Gaussian: the codes the decoder
was trained on are described better by a Gaussian fitted to them ("aggregate"). Samples from every prior
are put into (-CLIP, CLIP).

The default prior is "aggregate": on the default model its samples parse most often (benchmarks/NOTES.md).
Interpolation paths between codes: slerp per latent token, slerp of the whole code, or lerp.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
import zlib
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from t5vae.config import Config
from t5vae.files import atomic_file
from t5vae.names import DEFAULT_PRIOR, INTERPOLATIONS, PRIORS  # noqa: F401  (DEFAULT_PRIOR: latent's name too)

CLIP = 0.999  # tanh(3.8): sampled codes are clipped into (-CLIP, CLIP), inside the tanh range


def slerp(a: jax.Array, b: jax.Array, t: jax.Array) -> jax.Array:
    """Spherical interpolation along the last axis (a, b, t broadcast); lerp where a and b are (anti)parallel.
    The weights multiply the unnormalised vectors, so the path runs from a to b exactly."""
    na = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    nb = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    omega = jnp.arccos(jnp.clip(jnp.sum(na * nb, -1, keepdims=True), -1.0, 1.0))
    so = jnp.sin(omega)
    safe = so > 1e-6
    so = jnp.where(safe, so, 1.0)
    s = jnp.where(safe, jnp.sin((1.0 - t) * omega) / so, 1.0 - t)
    e = jnp.where(safe, jnp.sin(t * omega) / so, t)
    return s * a + e * b


def interpolate(z_a: jax.Array, z_b: jax.Array, steps: int = 9, kind: str = "slerp") -> jax.Array:
    """``steps`` points from z_a to z_b, both endpoints included -> [steps, *shape] (ratios linspace(0, 1, steps)).

    Codes are [..., N, Z] (one code [N, Z] or a batch [B, N, Z]; leading axes are batch axes). "slerp" acts
    on each latent token's Z-vector separately; "slerp_flat" on the whole flattened [N * Z] code of each
    item; "lerp" is the straight line.
    """
    if kind not in INTERPOLATIONS:
        raise ValueError(f"kind must be one of {INTERPOLATIONS}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, jnp.integer)) or steps < 2:
        raise ValueError(
            f"steps is the number of points including both endpoints and must be an integer >= 2, "
            f"got {steps!r}"
        )
    z_a, z_b = jnp.asarray(z_a, jnp.float32), jnp.asarray(z_b, jnp.float32)
    if z_a.shape != z_b.shape:
        raise ValueError(f"interpolate needs codes of equal shape, got z_a {z_a.shape} and z_b {z_b.shape}")
    if z_a.ndim == 0:
        raise ValueError("interpolate needs codes with at least one axis, got scalars")
    return _path(z_a, z_b, int(steps), kind)


@partial(jax.jit, static_argnums=(2, 3))
def _path(z_a: jax.Array, z_b: jax.Array, steps: int, kind: str) -> jax.Array:
    """interpolate's path [steps, *shape], compiled once per shape (eagerly, each op compiles on its own)."""
    t = jnp.linspace(0.0, 1.0, steps).reshape((-1,) + (1,) * z_a.ndim)
    if kind == "lerp":
        return (1.0 - t) * z_a[None] + t * z_b[None]
    if kind == "slerp_flat" and z_a.ndim >= 2:
        flat = z_a.shape[:-2] + (-1,)
        path = slerp(z_a.reshape(flat)[None], z_b.reshape(flat)[None], t[..., 0])
        return path.reshape((steps,) + z_a.shape)
    return slerp(z_a[None], z_b[None], t)


def check_codes(z, cfg: Config, name: str = "z") -> np.ndarray:
    """``z`` as float32 [n, N, Z] (one code [N, Z] becomes [1, N, Z]); a ValueError names ``name`` and both
    shapes when the codes do not fit this model's config, or when they are not finite."""
    z = np.asarray(z, np.float32)
    want, got = (cfg.n_latent_tokens, cfg.latent_size), z.shape
    if z.ndim == 2:
        z = z[None]
    if z.ndim != 3 or z.shape[1:] != want:
        raise ValueError(
            f"{name} has shape {got} but this model's codes "
            f"are [n, N, Z] = [n, {want[0]}, {want[1]}] (or one code [{want[0]}, {want[1]}]): "
            f"codes from another model or config?"
        )
    if not np.all(np.isfinite(z)):
        raise ValueError(f"{name} holds non-finite values (NaN or inf)")
    return z


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n (the number of samples) must be a positive integer, got {n!r}")
    return int(n)


def _rng(seed) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0 (or a numpy Generator), got {seed!r}")
    return np.random.default_rng(seed)


def sample_prior(
    kind: str, n: int, cfg: Config, seed=0, aggregate: FittedGaussian | None = None
) -> np.ndarray:
    """``n`` codes [n, N, Z] from a prior, clipped into (-CLIP, CLIP).

    "gaussian": N(0, I), the distribution the MMD loss pulls the codes toward (about 32 % of its
    coordinates fall outside the tanh range and are clipped); "tanh": tanh of N(0, I); "aggregate": the
    Gaussian ``aggregate`` fitted to training codes (see :class:`FittedGaussian`). ``seed``: int or
    ``np.random.Generator``.
    """
    if kind not in PRIORS:
        raise ValueError(f"prior must be one of {PRIORS}, got {kind!r}")
    n, rng = _check_n(n), _rng(seed)
    shape = (n, cfg.n_latent_tokens, cfg.latent_size)
    if kind == "aggregate":
        if aggregate is None:
            raise ValueError(
                "prior='aggregate' needs the fitted Gaussian (aggregate=FittedGaussian.fit(codes))"
            )
        if aggregate.shape != shape[1:]:
            raise ValueError(
                f"the aggregate posterior was fitted to codes of shape [N, Z] = {list(aggregate.shape)} "
                f"but this model's codes are {list(shape[1:])}"
            )
        return aggregate.sample(n, rng)
    z = rng.standard_normal(shape).astype(np.float32)
    return np.clip(np.tanh(z) if kind == "tanh" else z, -CLIP, CLIP)


def analogy(a, b, c, scale: float = 1.0, clip: bool = True) -> np.ndarray:
    """Latent arithmetic ``a + scale * (b - c)`` ("a is to ? as c is to b") on codes [..., N, Z] that
    broadcast; clipped into (-CLIP, CLIP) unless ``clip=False``."""
    a, b, c = (np.asarray(x, np.float32) for x in (a, b, c))
    if not (a.shape[-2:] == b.shape[-2:] == c.shape[-2:]) or min(a.ndim, b.ndim, c.ndim) < 2:
        raise ValueError(
            f"analogy needs codes [..., N, Z] of one [N, Z], got a {a.shape}, b {b.shape}, c {c.shape}"
        )
    try:
        out = a + np.float32(scale) * (b - c)
    except ValueError:
        raise ValueError(
            f"analogy: the batch axes of a {a.shape}, b {b.shape}, c {c.shape} do not broadcast"
        ) from None
    return np.clip(out, -CLIP, CLIP) if clip else out


def direction(codes_from, codes_to) -> np.ndarray:
    """An edit direction [N, Z]: the mean of ``codes_to`` [m, N, Z] minus the mean of ``codes_from`` [n, N, Z]
    (e.g. the codes of questions minus those of statements). What the two sets share cancels; what tells them
    apart remains."""
    a, b = (np.asarray(x, np.float32) for x in (codes_from, codes_to))
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:] or not len(a) or not len(b):
        raise ValueError(
            f"direction needs two non-empty sets of codes [n, N, Z] of one [N, Z], got {a.shape} and {b.shape}"
        )
    return b.mean(0) - a.mean(0)


def shift(code, along, amounts, clip: bool = True) -> np.ndarray:
    """``code`` [N, Z] moved ``amount`` times ``along`` [N, Z] for each of ``amounts`` -> [len(amounts), N, Z],
    clipped into (-CLIP, CLIP) unless ``clip=False``. Amount 0 is the code itself; 1 adds the whole direction,
    negative amounts move the other way."""
    code, along = np.asarray(code, np.float32), np.asarray(along, np.float32)
    t = np.asarray(amounts, np.float32)
    if code.ndim != 2 or code.shape != along.shape or t.ndim != 1:
        raise ValueError(
            f"shift needs a code and a direction of one shape [N, Z] and a 1-D list of amounts, got "
            f"{code.shape}, {along.shape} and {t.shape}"
        )
    out = code + t[:, None, None] * along
    return np.clip(out, -CLIP, CLIP) if clip else out


def params_fingerprint(params) -> str:
    """A CRC32 of every parameter's bytes (tree order): tells which params a stored fit was computed with."""
    crc = 0
    for leaf in jax.tree.leaves(params):
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).tobytes(), crc)
    return f"{crc:08x}"


@dataclasses.dataclass(frozen=True)
class FittedGaussian:
    """A Gaussian over flattened codes [N * Z]: mean, full covariance (with a ridge), the code shape (N, Z),
    how many codes it was fitted to and the fingerprint of the params that encoded them."""

    mean: np.ndarray
    cov: np.ndarray
    shape: tuple
    n_codes: int
    fingerprint: str = ""

    @classmethod
    def fit(cls, codes, ridge: float = 1e-3, fingerprint: str = "") -> FittedGaussian:
        """Fit to codes [n, N, Z] (n >= 2); ``ridge`` times the mean variance is added to the diagonal."""
        codes = np.asarray(codes, np.float64)
        if codes.ndim != 3 or len(codes) < 2:
            raise ValueError(f"fit needs at least two codes [n, N, Z], got shape {codes.shape}")
        flat = codes.reshape(len(codes), -1)
        mean = flat.mean(0)
        cov = np.cov(flat, rowvar=False).reshape(flat.shape[1], flat.shape[1])
        cov += ridge * max(float(np.mean(np.diag(cov))), 1e-12) * np.eye(len(cov))
        return cls(mean, cov, tuple(codes.shape[1:]), len(codes), fingerprint)

    def sample(self, n: int, seed=0) -> np.ndarray:
        """``n`` codes [n, N, Z] drawn from the Gaussian and clipped into (-CLIP, CLIP) (codes are tanh outputs)."""
        n, rng = _check_n(n), _rng(seed)
        chol = np.linalg.cholesky(self.cov)
        flat = self.mean + rng.standard_normal((n, len(self.mean))) @ chol.T
        return np.clip(flat.reshape((n,) + tuple(self.shape)), -CLIP, CLIP).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write an .npz atomically: a temporary file in the same directory, then ``os.replace``."""
        with atomic_file(path, "wb") as f:
            np.savez(
                f,
                mean=self.mean,
                cov=self.cov,
                shape=np.asarray(self.shape),
                n_codes=self.n_codes,
                fingerprint=np.asarray(self.fingerprint),
            )

    @classmethod
    def load(cls, path: str | os.PathLike) -> FittedGaussian:
        try:
            with np.load(path, allow_pickle=False) as f:
                g = cls(
                    f["mean"],
                    f["cov"],
                    tuple(int(s) for s in f["shape"]),
                    int(f["n_codes"]),
                    str(f["fingerprint"]),
                )
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not an aggregate-posterior file: {e}") from None
        d = int(np.prod(g.shape))
        if g.mean.shape != (d,) or g.cov.shape != (d, d):
            raise ValueError(
                f"{path}: mean {g.mean.shape} / cov {g.cov.shape} do not match codes of shape {g.shape}"
            )
        return g
