"""The Flax reference: Hugging Face ``FlaxT5ForConditionalGeneration`` (transformers 4.57.6 + flax).

Reference packages are imported here only, never by ``t5vae``. transformers 4.57.6 calls
``jnp.clip(x, a_max=...)``, which current jax removed; we patch that one name in the reference module's
namespace (not in jax, not in our library).
"""

from __future__ import annotations

import copy
import types

import jax
import jax.numpy as jnp
import numpy as np

import t5vae as tv
from weights_convert import mapping, rules
from weights_convert.readers import flatten


def _clip(x, a_min=None, a_max=None, *, min=None, max=None):  # noqa: A002 - numpy's spelling
    return jnp.clip(x, a_min if min is None else min, a_max if max is None else max)


def load_flax_t5():
    """Import FlaxT5ForConditionalGeneration with the ``jnp.clip`` call patched; raises ImportError if missing."""
    from transformers.models.t5 import modeling_flax_t5

    if not isinstance(modeling_flax_t5.jnp, types.SimpleNamespace):
        shim = types.SimpleNamespace(**{k: getattr(jnp, k) for k in dir(jnp) if not k.startswith("__")})
        shim.clip = _clip
        modeling_flax_t5.jnp = shim
    return modeling_flax_t5.FlaxT5ForConditionalGeneration


def hf_config(cfg: tv.T5Config):
    from transformers import T5Config as HFConfig

    d = cfg.to_hf_dict()
    d.pop("architectures", None)
    return HFConfig(**d)


def make_reference(cfg: tv.T5Config, seed: int = 0):
    """A randomly initialised Flax reference model and the same weights converted to our params tree."""
    model = load_flax_t5()(hf_config(cfg), seed=seed, dtype=jnp.dtype(cfg.dtype))
    flat = {k: np.asarray(v) for k, v in flatten(jax.device_get(model.params), ".")}
    table = rules.hf_flax(cfg)
    ours = mapping.convert_flat(flat, table, cfg)
    return model, jax.tree.map(jnp.asarray, model.params), jax.tree.map(jnp.asarray, ours)


def with_dropout(model, rate: float):
    """The same Flax model with another dropout rate, sharing nothing but the config (pass params explicitly).

    The Flax modules read ``config.dropout_rate`` when they are built, so the rate is a property of the model
    object: a model made from a dropout-free config trains without dropout even with ``train=True``.
    """
    config = copy.deepcopy(model.config)
    config.dropout_rate = rate
    return type(model)(config, dtype=model.dtype, _do_init=False)


def forward_fn(model):
    def forward(params, batch):
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            params=params,
        ).logits

    return forward


def train_loss_fn(model):
    def logits(params, batch, key):
        return model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            decoder_input_ids=batch["decoder_input_ids"],
            decoder_attention_mask=batch["decoder_attention_mask"],
            params=params,
            dropout_rng=key,
            train=True,
        ).logits

    return logits


def generate_fn(model, max_new_tokens: int):
    def generate(params, input_ids, attention_mask):
        return model.generate(
            input_ids,
            attention_mask=attention_mask,
            params=params,
            max_new_tokens=max_new_tokens,
            do_sample=False,
        ).sequences

    return generate
