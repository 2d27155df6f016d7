"""The T5-VAE: a T5 whose decoder cross-attends to N latent tokens decoded from a tanh-bounded code.

Params tree: ``{"t5": <t5vae.t5 tree>, "latent_encoder": ..., "latent_decoder": ...}`` (see t5vae.bottleneck).
A batch is ``{"input_ids" [B, L] int32 ending in EOS, "attention_mask" [B, L]}``; the target is the input
itself (``labels`` may be given explicitly; pad and -100 labels are ignored).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from t5vae import bottleneck, decoding, specs, t5
from t5vae.config import Config


def param_specs(cfg: Config) -> dict:
    return {"t5": t5.param_specs(cfg.t5), **bottleneck.param_specs(cfg)}


def abstract_params(cfg: Config) -> dict:
    return specs.abstract(param_specs(cfg), cfg.t5.param_dtype)


def init(cfg: Config, key: jax.Array) -> dict:
    """Random T5-VAE parameters."""
    k_t5, k_vae = jax.random.split(key)
    return {"t5": t5.init(cfg.t5, k_t5), **specs.init(bottleneck.param_specs(cfg), k_vae, cfg.t5.param_dtype)}


def from_t5(cfg: Config, t5_params: dict, key: jax.Array) -> dict:
    """Wrap pretrained T5 params (e.g. from :func:`t5vae.load_t5`) with a freshly initialised bottleneck."""
    specs.check_tree(
        t5_params, t5.abstract_params(cfg.t5), "the T5 params given to from_t5 (does cfg.t5 match them?)"
    )
    return {"t5": t5_params, **specs.init(bottleneck.param_specs(cfg), key, cfg.t5.param_dtype)}


def encode(
    params: dict,
    cfg: Config,
    input_ids: jax.Array,
    attention_mask: jax.Array | None = None,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Latent codes [B, N, Z] for token ids [B, L] (padding given by ``attention_mask`` [B, L])."""
    if attention_mask is None:
        attention_mask = input_ids != cfg.t5.pad_token_id
    h = t5.encode(params["t5"], cfg.t5, input_ids, attention_mask, dropout_key=dropout_key)
    return bottleneck.latent_encode(params["latent_encoder"], cfg, h, attention_mask)


def latent_states(params: dict, cfg: Config, z_BNZ: jax.Array) -> jax.Array:
    """The N states [B, N, D] the T5 decoder cross-attends to."""
    return bottleneck.latent_decode(params["latent_decoder"], cfg, z_BNZ)


def decode(
    params: dict,
    cfg: Config,
    z_BNZ: jax.Array,
    decoder_input_ids: jax.Array,
    *,
    dropout_key: jax.Array | None = None,
) -> jax.Array:
    """Teacher-forced logits [B, T, V] (float32) from latent codes [B, N, Z]."""
    return t5.decode(
        params["t5"], cfg.t5, decoder_input_ids, latent_states(params, cfg, z_BNZ), dropout_key=dropout_key
    )


def delete_tokens(
    ids_BL: jax.Array, mask_BL: jax.Array, rate: float, key: jax.Array, eos_id: int
) -> tuple[jax.Array, jax.Array]:
    """Each token but EOS deleted with probability ``rate``, the rest closed up to the left: (ids, mask).

    The denoising of Shen et al. (2020, "Educating text autoencoders"): an encoder that must map a line
    with words missing to the code of the whole line puts lines that differ by a few tokens near each other.
    """
    mask = mask_BL.astype(bool)
    keep = mask & (jax.random.bernoulli(key, 1.0 - rate, ids_BL.shape) | (ids_BL == eos_id))
    order = jnp.argsort(~keep, axis=1, stable=True)  # kept positions first, in their order
    new_mask = jnp.arange(ids_BL.shape[1])[None, :] < jnp.sum(keep, axis=1, keepdims=True)
    new_ids = jnp.where(new_mask, jnp.take_along_axis(ids_BL, order, axis=1), 0)
    return new_ids.astype(ids_BL.dtype), new_mask.astype(mask_BL.dtype)


def loss(
    params: dict, cfg: Config, batch: dict, key: jax.Array | None, step, *, deterministic: bool = False
) -> tuple[jax.Array, dict]:
    """``CE + w(step) * MMD`` and metrics {loss, ce, mmd, w, token_acc, seq_acc} (all scalars).

    ``key`` drives dropout, the encoder's token deletion, the latent noise, mixing and latent-token dropout
    (``cfg.input_deletion``, ``cfg.latent_noise``, ``cfg.latent_mix``, ``cfg.latent_dropout``) and the prior
    samples; ``deterministic=True`` (or key None) turns them all off.
    """
    ids, mask = batch["input_ids"], batch.get("attention_mask")
    if mask is None:
        mask = ids != cfg.t5.pad_token_id
    labels = batch.get("labels", jnp.where(mask.astype(bool), ids, -100))
    valid = (labels != -100) & (labels != cfg.t5.pad_token_id) if "labels" in batch else labels != -100
    if key is None:
        key, deterministic = jax.random.key(0), True
    k_enc, k_dec, k_mmd = jax.random.split(
        key, 3
    )  # encoder dropout, decoder dropout, the MMD's prior samples
    k_noise = jax.random.fold_in(key, 1)  # the latent noise: a stream of its own, so the three above stay put
    if deterministic:
        k_enc = k_dec = None
    enc_ids, enc_mask = ids, mask
    if cfg.input_deletion > 0 and not deterministic:
        enc_ids, enc_mask = delete_tokens(
            ids, mask, cfg.input_deletion, jax.random.fold_in(key, 4), cfg.t5.eos_token_id
        )
    z = encode(params, cfg, enc_ids, enc_mask, dropout_key=k_enc)
    z_dec = z
    if cfg.latent_noise > 0 and not deterministic:
        z_dec = z + cfg.latent_noise * jax.random.normal(k_noise, z.shape, z.dtype)
    if cfg.latent_mix > 0 and not deterministic:
        # toward the next line's code, which gets no gradient from this line's loss
        mix_B11 = cfg.latent_mix * jax.random.uniform(jax.random.fold_in(key, 3), (z.shape[0], 1, 1), z.dtype)
        z_dec = z_dec + mix_B11 * (jax.lax.stop_gradient(jnp.roll(z, 1, axis=0)) - z)
    keep_BN = None
    if cfg.latent_dropout > 0 and not deterministic:
        keep_BN = jax.random.bernoulli(jax.random.fold_in(key, 2), 1.0 - cfg.latent_dropout, z.shape[:2])
        keep_BN = keep_BN.at[:, 0].set(keep_BN[:, 0] | ~jnp.any(keep_BN, axis=1))  # never all dropped
    x = t5.decoder_hidden(
        params["t5"],
        cfg.t5,
        t5.shift_right(labels, cfg.t5),
        latent_states(params, cfg, z_dec),
        keep_BN,
        dropout_key=k_dec,
    )
    safe = jnp.where(valid, labels, 0)
    nll, pred = t5.token_nll(params["t5"], cfg.t5, x, safe)
    n_tok = jnp.maximum(jnp.sum(valid), 1)
    ce = jnp.sum(jnp.where(valid, nll, 0.0)) / n_tok
    m = bottleneck.latent_mmd(cfg, z, k_mmd)
    w = bottleneck.mmd_weight(cfg, step)
    total = ce + w * m
    correct = (pred == safe) | ~valid
    metrics = {
        "loss": total,
        "ce": ce,
        "mmd": m,
        "w": w,
        "token_acc": jnp.sum(correct & valid) / n_tok,
        "seq_acc": jnp.mean(jnp.all(correct, axis=-1).astype(jnp.float32)),
    }
    return total, metrics


def generate(
    params: dict, cfg: Config, z_BNZ: jax.Array, max_new_tokens: int, method: str = "greedy", **kwargs
) -> jax.Array:
    """Decode latent codes [B, N, Z] to token ids [B, max_new_tokens] (pad after EOS).

    ``method`` is "greedy", "sample" or "beam"; ``kwargs`` (key, temperature, top_k, top_p, num_beams,
    length_penalty, decoder_weights of ``params["t5"]``, vocab_limit) go to :func:`t5vae.decoding.generate`.
    """
    return decoding.generate(
        params["t5"], cfg.t5, latent_states(params, cfg, z_BNZ), None, max_new_tokens, method=method, **kwargs
    )
