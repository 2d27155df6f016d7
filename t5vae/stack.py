"""How a T5 stack runs, shared by the encoder and the decoder (t5vae.t5): its layers scanned and
rematerialised per ``T5Config.remat``, T5's pre-norm residual around each sublayer, the dropout keys of
every site, and the relative position bias computed once per stack or per layer.
"""

from __future__ import annotations

import functools

import jax

from t5vae import kernels, layers, specs
from t5vae.config import T5Config


def dropout_keys(key: jax.Array | None, cfg: T5Config, n_layers: int):
    """(key of the embedding and final dropouts, keys [n_layers] of the scanned blocks); Nones if deterministic."""
    if key is None or cfg.dropout_rate == 0.0:
        return None, None
    keys = jax.random.split(key, n_layers + 1)
    return keys[0], keys[1:]


def split(key: jax.Array | None, n: int) -> list:
    """``n`` keys for a block's dropout sites (Nones when deterministic)."""
    return [None] * n if key is None else list(jax.random.split(key, n))


def constrain(x_BLD: jax.Array) -> jax.Array:
    """Keep the residual stream split over the batch under a mesh (``jax.set_mesh``); a no-op without one."""
    return specs.constrain(x_BLD, ("batch", "length", None))


def drop(ops: kernels.Ops, rate: float, key):
    """The dropout of one site as an array -> array function (None when off)."""
    return None if key is None or rate == 0.0 else functools.partial(ops.dropout, rate=rate, key=key)


def residual(ops: kernels.Ops, x_BLD: jax.Array, scale_D: jax.Array, eps: float, rate: float, key, sublayer):
    """T5's pre-norm residual: ``x + dropout(sublayer(rms_norm(x)))``."""
    return x_BLD + ops.dropout(sublayer(layers.rms_norm(x_BLD, scale_D, eps)), rate, key)


REMAT_POLICY = {
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "full": jax.checkpoint_policies.nothing_saveable,
}


def run(
    ops: kernels.Ops,
    stack: dict,
    block,
    x_BLD: jax.Array,
    key_outer,
    key_layers,
    eps: float,
    rate: float,
    remat: str,
) -> jax.Array:
    """Embedding dropout, ``block`` scanned over a stack's layers (rematerialised per ``T5Config.remat``),
    then its final norm and dropout."""
    k_emb, k_out = split(key_outer, 2)
    x_BLD = constrain(ops.dropout(x_BLD, rate, k_emb))
    if remat != "none":  # prevent_cse=False: the scan already keeps XLA from merging the recomputation away
        block = jax.checkpoint(block, policy=REMAT_POLICY[remat], prevent_cse=False)
    x_BLD, _ = jax.lax.scan(block, x_BLD, (stack["layers"], key_layers))
    return ops.dropout(layers.rms_norm(x_BLD, stack["final_norm"], eps), rate, k_out)


def bias_of(stack: dict, cfg: T5Config, length: int, bidirectional: bool):
    """A layer's params -> its relative position bias [1, H, Q, K] (Q = K = ``length``): the stack's table
    computed once, outside the scan, or the layer's own table inside it (``relative_attention_per_layer``)."""
    bias = functools.partial(
        layers.position_bias,
        q_len=length,
        k_len=length,
        bidirectional=bidirectional,
        max_distance=cfg.relative_attention_max_distance,
    )
    if cfg.relative_attention_per_layer:
        return lambda lp: bias(lp["relpos_bias"])
    shared = bias(stack["relpos_bias"])
    return lambda lp: shared
