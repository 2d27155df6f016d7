"""The VAE bottleneck: latent encoder (pooling variants), latent decoder, MMD, and the MMD weight schedule.

Shape letters as in :mod:`t5vae.layers`, plus N latent tokens and Z latent size. Params tree::

    latent_encoder/queries          [N, D]      ("latent_tokens", "embed")   only pooling="attention"
    latent_encoder/attn/{q,k,v}     [D, H, K]   only pooling="attention"
    latent_encoder/attn/o           [H, K, D]   only pooling="attention"
    latent_encoder/kernel           [D, Z]      ("embed", "latent")
    latent_encoder/bias             [Z]
    latent_decoder/kernel           [Z, D]      ("latent", "embed")
    latent_decoder/bias             [D]
    latent_decoder/norm             [D]         T5 RMS norm scale
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5vae import layers
from t5vae.config import Config
from t5vae.specs import ParamSpec, normal, ones, zeros


def param_specs(cfg: Config) -> dict:
    """Spec tree of the bottleneck (module docstring)."""
    D, Z, N, H, K = cfg.t5.d_model, cfg.latent_size, cfg.n_latent_tokens, cfg.t5.num_heads, cfg.t5.d_kv
    enc = {
        "kernel": ParamSpec((D, Z), ("embed", "latent"), normal(D**-0.5)),
        "bias": ParamSpec((Z,), ("latent",), zeros),
    }
    if cfg.pooling == "attention":
        w = ("embed", "heads", "kv")
        enc["queries"] = ParamSpec((N, D), ("latent_tokens", "embed"), normal(1.0))
        enc["attn"] = {
            "q": ParamSpec((D, H, K), w, normal((D * K) ** -0.5)),
            "k": ParamSpec((D, H, K), w, normal(D**-0.5)),
            "v": ParamSpec((D, H, K), w, normal(D**-0.5)),
            "o": ParamSpec((H, K, D), ("heads", "kv", "embed"), normal((H * K) ** -0.5)),
        }
    dec = {
        "kernel": ParamSpec((Z, D), ("latent", "embed"), normal(Z**-0.5)),
        "bias": ParamSpec((D,), ("embed",), zeros),
        "norm": ParamSpec((D,), ("embed",), ones),
    }
    return {"latent_encoder": enc, "latent_decoder": dec}


def segment_weights(mask_BL: jax.Array, n: int) -> jax.Array:
    """Averaging weights [B, N, L]: segment j of a length-m row covers positions [floor(j m/N), ceil((j+1) m/N)).

    Only unmasked positions get weight; every segment of a non-empty row is non-empty (segments overlap
    when m < N or N does not divide m). Rows must be left-aligned (padding at the end).
    """
    mask = mask_BL.astype(jnp.float32)
    m_B11 = jnp.sum(mask, axis=-1)[:, None, None]
    pos_11L = jnp.arange(mask_BL.shape[1], dtype=jnp.float32)[None, None, :]
    j_1N1 = jnp.arange(n, dtype=jnp.float32)[None, :, None]
    lo, hi = jnp.floor(j_1N1 * m_B11 / n), jnp.ceil((j_1N1 + 1) * m_B11 / n)
    w = ((pos_11L >= lo) & (pos_11L < hi)).astype(jnp.float32) * mask[:, None, :]
    return w / jnp.maximum(jnp.sum(w, axis=-1, keepdims=True), 1.0)


def pool(p: dict, cfg: Config, h_BLD: jax.Array, mask_BL: jax.Array | None) -> jax.Array:
    """Encoder states [B, L, D] -> N pooled tokens [B, N, D] according to ``cfg.pooling``."""
    B, L, _ = h_BLD.shape
    N = cfg.n_latent_tokens
    if mask_BL is None:
        mask_BL = jnp.ones((B, L), bool)
    if cfg.pooling == "first":
        if L < N:
            raise ValueError(
                f"pooling='first' needs sequences of at least n_latent_tokens={N} positions, got {L}"
            )
        return h_BLD[:, :N]
    if cfg.pooling == "mean":
        w_BNL = segment_weights(mask_BL, N).astype(h_BLD.dtype)
        return jnp.einsum("BNL,BLD->BND", w_BNL, h_BLD)
    q_BND = jnp.broadcast_to(p["queries"].astype(h_BLD.dtype)[None], (B, N, h_BLD.shape[-1]))
    return layers.attention(p["attn"], q_BND, h_BLD, None, layers.Mask(mask_BL))


def latent_encode(p: dict, cfg: Config, h_BLD: jax.Array, mask_BL: jax.Array | None) -> jax.Array:
    """Latent codes [B, N, Z] in (-1, 1): pool, dense to ``latent_size``, tanh. Computed in float32."""
    pooled = pool(p, cfg, h_BLD, mask_BL).astype(jnp.float32)
    return jnp.tanh(pooled @ p["kernel"].astype(jnp.float32) + p["bias"].astype(jnp.float32))


def latent_decode(p: dict, cfg: Config, z_BNZ: jax.Array) -> jax.Array:
    """Latent codes [B, N, Z] -> N states [B, N, D] for the T5 decoder's cross-attention (dense + RMS norm)."""
    x = z_BNZ.astype(jnp.float32) @ p["kernel"].astype(jnp.float32) + p["bias"].astype(jnp.float32)
    return layers.rms_norm(x, p["norm"], cfg.t5.layer_norm_epsilon).astype(cfg.t5.dtype)


def rbf_kernel(x_AZ: jax.Array, y_BZ: jax.Array, bandwidth: float) -> jax.Array:
    """``exp(-||x - y||^2 / bandwidth)`` for every pair -> [A, B]."""
    d2 = jnp.sum(x_AZ**2, -1)[:, None] + jnp.sum(y_BZ**2, -1)[None, :] - 2.0 * x_AZ @ y_BZ.T
    return jnp.exp(-jnp.maximum(d2, 0.0) / bandwidth)


def mmd(x_AZ: jax.Array, y_BZ: jax.Array, bandwidth: float, unbiased: bool = False) -> jax.Array:
    """Squared maximum mean discrepancy between samples x [A, Z] and y [B, Z] under the RBF kernel.

    Biased (V-statistic, as the original): means over all pairs. Unbiased (U-statistic): the diagonals of
    k(x, x) and k(y, y) are excluded; it can be slightly negative.
    """
    x, y = x_AZ.astype(jnp.float32), y_BZ.astype(jnp.float32)
    kxx, kyy, kxy = rbf_kernel(x, x, bandwidth), rbf_kernel(y, y, bandwidth), rbf_kernel(x, y, bandwidth)
    if not unbiased:
        return jnp.mean(kxx) + jnp.mean(kyy) - 2.0 * jnp.mean(kxy)
    a, b = x.shape[0], y.shape[0]
    if a < 2 or b < 2:
        raise ValueError("the unbiased MMD needs at least 2 samples on each side")
    off = lambda k, n: (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))  # noqa: E731
    return off(kxx, a) + off(kyy, b) - 2.0 * jnp.mean(kxy)


def latent_mmd(cfg: Config, z_BNZ: jax.Array, key: jax.Array) -> jax.Array:
    """MMD between the batch's latent codes (each latent token one sample) and as many N(0, I) samples."""
    z = z_BNZ.reshape(-1, z_BNZ.shape[-1])
    prior = jax.random.normal(key, z.shape, jnp.float32)
    return mmd(z, prior, cfg.bandwidth, cfg.mmd_unbiased)


def mmd_weight(cfg: Config, step) -> jax.Array:
    """The schedule ``w(step) = sigmoid(mmd_k * step - mmd_b)``."""
    return jax.nn.sigmoid(cfg.mmd_k * jnp.asarray(step, jnp.float32) - cfg.mmd_b)
