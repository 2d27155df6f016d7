"""The T5-VAE: a T5 whose decoder cross-attends to N latent tokens decoded from a tanh-bounded code.

Params tree: ``{"t5": <t5vae.t5 tree>, "latent_encoder": ..., "latent_decoder": ...}`` (see t5vae.vae).
A batch is ``{"input_ids" [B, L] int32 ending in EOS, "attention_mask" [B, L]}``; the target is the input
itself (``labels`` may be given explicitly; pad and -100 labels are ignored).
"""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from t5vae import layers, t5, vae
from t5vae.config import Config
from t5vae.t5 import init_from_specs, is_spec


def param_specs(cfg: Config) -> dict:
    return {"t5": t5.param_specs(cfg.t5), **vae.param_specs(cfg)}


def abstract_params(cfg: Config) -> dict:
    dt = jnp.dtype(cfg.t5.param_dtype)
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, dt), param_specs(cfg), is_leaf=is_spec)


def init(cfg: Config, key: jax.Array) -> dict:
    """Random T5-VAE parameters."""
    k_t5, k_vae = jax.random.split(key)
    return {"t5": t5.init(cfg.t5, k_t5), **init_from_specs(vae.param_specs(cfg), k_vae, cfg.t5.param_dtype)}


def from_t5(cfg: Config, t5_params: dict, key: jax.Array) -> dict:
    """Wrap pretrained T5 params (e.g. from :func:`t5vae.load_t5`) with a freshly initialised bottleneck."""
    from t5vae.checkpoint import check_tree

    check_tree(t5_params, t5.abstract_params(cfg.t5), "the T5 params given to from_t5 (does cfg.t5 match them?)")
    return {"t5": t5_params, **init_from_specs(vae.param_specs(cfg), key, cfg.t5.param_dtype)}


def encode(params: dict, cfg: Config, input_ids: jax.Array, attention_mask: jax.Array | None = None, *,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """Latent codes [B, N, Z] for token ids [B, L] (padding given by ``attention_mask`` [B, L])."""
    if attention_mask is None:
        attention_mask = input_ids != cfg.t5.pad_token_id
    h = t5.encode(params["t5"], cfg.t5, input_ids, attention_mask, dropout_key=dropout_key)
    return vae.latent_encode(params["latent_encoder"], cfg, h, attention_mask)


def latent_states(params: dict, cfg: Config, z_BNZ: jax.Array) -> jax.Array:
    """The N states [B, N, D] the T5 decoder cross-attends to."""
    return vae.latent_decode(params["latent_decoder"], cfg, z_BNZ)


def decode(params: dict, cfg: Config, z_BNZ: jax.Array, decoder_input_ids: jax.Array, *,
           dropout_key: jax.Array | None = None) -> jax.Array:
    """Teacher-forced logits [B, T, V] (float32) from latent codes [B, N, Z]."""
    return t5.decode(params["t5"], cfg.t5, decoder_input_ids, latent_states(params, cfg, z_BNZ),
                     dropout_key=dropout_key)


def loss(params: dict, cfg: Config, batch: dict, key: jax.Array | None, step, *,
         deterministic: bool = False) -> tuple[jax.Array, dict]:
    """``CE + w(step) * MMD`` and metrics {loss, ce, mmd, w, token_acc, seq_acc} (all scalars).

    ``key`` drives dropout, the latent noise and latent-token dropout (``cfg.latent_noise``,
    ``cfg.latent_dropout``) and the prior samples; ``deterministic=True`` (or key None) turns all three off.
    """
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if mask is None:
        mask = ids != cfg.t5.pad_token_id
    labels = batch.get("labels", jnp.where(mask.astype(bool), ids, -100))
    valid = (labels != -100) & (labels != cfg.t5.pad_token_id) if "labels" in batch else labels != -100
    if key is None:
        key, deterministic = jax.random.key(0), True
    k_enc, k_dec, k_mmd = jax.random.split(key, 3)  # as before latent_noise existed: same runs, same streams
    k_noise = jax.random.fold_in(key, 1)
    if deterministic:
        k_enc = k_dec = None
    z = encode(params, cfg, ids, mask, dropout_key=k_enc)
    z_dec = z
    if cfg.latent_noise > 0 and not deterministic:
        z_dec = z + cfg.latent_noise * jax.random.normal(k_noise, z.shape, z.dtype)
    keep_BN = None
    if cfg.latent_dropout > 0 and not deterministic:
        keep_BN = jax.random.bernoulli(jax.random.fold_in(key, 2), 1.0 - cfg.latent_dropout, z.shape[:2])
        keep_BN = keep_BN.at[:, 0].set(keep_BN[:, 0] | ~jnp.any(keep_BN, axis=1))  # never all dropped
    x = t5.decoder_hidden(params["t5"], cfg.t5, t5.shift_right(labels, cfg.t5), latent_states(params, cfg, z_dec),
                          keep_BN, dropout_key=k_dec)
    safe = jnp.where(valid, labels, 0)
    nll, pred = t5.token_nll(params["t5"], cfg.t5, x, safe)
    n_tok = jnp.maximum(jnp.sum(valid), 1)
    ce = jnp.sum(jnp.where(valid, nll, 0.0)) / n_tok
    m = vae.latent_mmd(cfg, z, k_mmd)
    w = vae.mmd_weight(cfg, step)
    total = ce + w * m
    correct = (pred == safe) | ~valid
    metrics = {"loss": total, "ce": ce, "mmd": m, "w": w,
               "token_acc": jnp.sum(correct & valid) / n_tok,
               "seq_acc": jnp.mean(jnp.all(correct, axis=-1).astype(jnp.float32))}
    return total, metrics


def generate(params: dict, cfg: Config, z_BNZ: jax.Array, max_new_tokens: int, method: str = "greedy", *,
             decoder_weights=None, **kwargs) -> jax.Array:
    """Decode latent codes [B, N, Z] to token ids [B, max_new_tokens] (pad after EOS).

    ``method`` is "greedy", "sample" or "beam"; ``kwargs`` (key, temperature, top_k, top_p, num_beams,
    length_penalty) go to :func:`t5vae.generate.generate`. ``decoder_weights``: the backbone's
    ``t5vae.generate.decoder_weights(params["t5"], cfg.t5)``, built once for repeated decoding.
    """
    states = latent_states(params, cfg, z_BNZ)
    try:
        from t5vae.generate import generate as t5_generate
    except ImportError:  # the backbone's KV-cached generator is not available: plain greedy loop
        if method != "greedy":
            raise NotImplementedError(f"method={method!r} needs t5vae.generate") from None
        return greedy_uncached(params["t5"], cfg.t5, states, max_new_tokens)
    return t5_generate(params["t5"] if decoder_weights is None else decoder_weights, cfg.t5, states, None,
                       max_new_tokens, method=method, **kwargs)


def greedy_uncached(t5_params: dict, cfg, states_BSD: jax.Array, max_new_tokens: int) -> jax.Array:
    """Greedy decoding without a KV cache (reference / fallback): re-runs the decoder each step."""
    B = states_BSD.shape[0]
    T = max_new_tokens

    def step(carry, t):
        out, done = carry
        dec_in = jnp.concatenate([jnp.full((B, 1), cfg.decoder_start_token_id, jnp.int32), out[:, :-1]], axis=1)
        logits = t5.decode(t5_params, cfg, dec_in, states_BSD)
        tok = layers.argmax(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False))
        tok = jnp.where(done, cfg.pad_token_id, tok)
        out = out.at[:, t].set(tok)
        return (out, done | (tok == cfg.eos_token_id)), None

    init = (jnp.zeros((B, T), jnp.int32), jnp.zeros((B,), bool))
    (out, _), _ = jax.lax.scan(step, init, jnp.arange(T))
    return out


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


INTERPOLATIONS = ("slerp", "slerp_flat", "lerp")


def interpolate(z_a: jax.Array, z_b: jax.Array, steps: int = 9, kind: str = "slerp") -> jax.Array:
    """``steps`` points from z_a to z_b, both endpoints included -> [steps, *shape] (ratios linspace(0, 1, steps)).

    Codes are [..., N, Z] (one code [N, Z] or a batch [B, N, Z]; leading axes are batch axes). "slerp" acts
    on each latent token's Z-vector separately; "slerp_flat" on the whole flattened [N * Z] code of each
    item; "lerp" is the straight line.
    """
    if kind not in INTERPOLATIONS:
        raise ValueError(f"kind must be one of {INTERPOLATIONS}, got {kind!r}")
    if isinstance(steps, bool) or not isinstance(steps, (int, jnp.integer)) or steps < 2:
        raise ValueError(f"steps is the number of points including both endpoints and must be an integer >= 2, "
                         f"got {steps!r}")
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
