"""Test-only references: slow, obviously correct versions of what the library does fast (never in t5vae/)."""

import jax
import jax.numpy as jnp
import numpy as np

import t5vae as tv

_decode = jax.jit(tv.t5.decode, static_argnums=1)


def greedy_uncached(t5_params, cfg, states_BSD, mask_BS, max_new_tokens: int) -> np.ndarray:
    """Greedy decoding without a KV cache: the whole teacher-forced decoder re-run on the prefix at every step
    (one fixed [B, T] shape, so one compile), pad after EOS -> int32 [B, max_new_tokens]."""
    B, T = states_BSD.shape[0], max_new_tokens
    dec = np.full((B, T), cfg.decoder_start_token_id, np.int32)
    out = np.zeros((B, T), np.int32)
    for t in range(T):
        logits = _decode(t5_params, cfg, jnp.asarray(dec), states_BSD, mask_BS)
        out[:, t] = np.asarray(jnp.argmax(logits[:, t], -1))
        if t + 1 < T:
            dec[:, t + 1] = out[:, t]
    after_eos = np.cumsum(out == cfg.eos_token_id, 1) - (out == cfg.eos_token_id) > 0
    return np.where(after_eos, cfg.pad_token_id, out)
