"""The accelerator suite's workloads (:mod:`benchmarks.accelerator` runs them and keeps their results): each
takes the suite's context (the config, both sides' models and identical weights, repeats, warm-up, compiler
options, dropout, the profile folder), a compute dtype and a shape, and returns its measurements: compile
seconds (the two sides side by side), alternating timings, FLOPs, planned memory for training, and the f32
checks of the numbers (the dropout-free loss difference, generation's token agreement).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax

import t5vae as tv
from benchmarks import harness, profile, reference
from t5vae import kernels


def with_dtype(model, dtype):
    """The Flax reference in another compute dtype (its params stay float32: pass them explicitly)."""
    return type(model)(model.config, dtype=jnp.dtype(dtype), _do_init=False)


def traced(fns: dict, ctx: dict) -> dict:
    """With ``ctx["profile"]`` (a folder): one more call of each side under the profiler there, summarised
    (``{"profile": {side: summary}}``); else nothing."""
    if not ctx.get("profile"):
        return {}
    return {
        "profile": {
            side: profile.summarize(profile.trace_step(fn, ctx["profile"] / f"{ctx['name']}-{side}"))
            for side, fn in fns.items()
        }
    }


def time_train(steps: dict, params: dict, batch: dict, ctx: dict, also: dict | None = None) -> dict:
    """Compile each side's train step on its params (timed, side by side, memory planned), then alternate
    the steps; with ``ctx["profile"]`` (a folder), trace one more step of each side there (:func:`traced`).
    ``also``: more zero-arg functions to run beside the compiles (their results under ``out["also"]``)."""
    opt, key = optax.adamw(1e-4), jax.random.key(0)
    state = {}
    for side in steps:
        p = jax.tree.map(jnp.copy, params[side])  # the steps donate their state
        state[side] = (p, opt.init(p))
    built = harness.concurrently(
        {
            side: functools.partial(
                harness.compile_seconds, step, *state[side], batch, key, compiler_options=ctx["compile"]
            )
            for side, step in steps.items()
        }
        | {f"also:{k}": fn for k, fn in (also or {}).items()}
    )
    extra = {k.split(":", 1)[1]: built.pop(k) for k in list(built) if k.startswith("also:")}
    compiled = {side: c for side, (_, c) in built.items()}
    out = {
        "compile_s": {side: s for side, (s, _) in built.items()},
        "planned_bytes": {side: harness.planned_bytes(c) for side, c in compiled.items()},
        "also": extra,
    }

    run = {side: harness.stepping(compiled[side], state, side, batch, key) for side in steps}
    out["timings"] = harness.alternate(run, ctx["repeats"], ctx["warmup"])
    out.update(traced(run, ctx))
    losses = {side: float(run[side]()) for side in steps}
    if not all(math.isfinite(v) for v in losses.values()):
        raise FloatingPointError(f"non-finite train loss after the timed steps: {losses}")
    return out


def vae_train(ctx, dtype: str, shape) -> dict:
    B, L, _ = shape
    t5cfg = ctx["cfg"].replace(dtype=dtype, dropout_rate=ctx["dropout"])
    vcfg = tv.Config(t5=t5cfg, max_length=L)
    batch = harness.random_batch(t5cfg.vocab_size, B, L, seed=1)

    def ours(p, b, k):  # the VAE reconstructs its input; step 1000 is past the MMD weight's warm-up
        return tv.loss(
            p, vcfg, {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"]}, k, 1000
        )[0]

    ref = reference.with_dropout(with_dtype(ctx["model"], dtype), ctx["dropout"])
    steps = {
        "ours": harness.make_train_step(ours, optax.adamw(1e-4)),
        "reference_jit": harness.make_train_step(
            harness.logits_loss(reference.train_loss_fn(ref)), optax.adamw(1e-4)
        ),
    }
    params = {"ours": tv.from_t5(vcfg, ctx["params"], jax.random.key(2)), "reference_jit": ctx["ref_params"]}
    out = time_train(steps, params, batch, ctx)
    out["flops"] = 3 * harness.t5_forward_flops(t5cfg, B, L, L, cross_len=vcfg.n_latent_tokens)
    out["reference_flops"] = 3 * harness.t5_forward_flops(t5cfg, B, L, L)  # it cross-attends to all L states
    return out


def seq2seq_train(ctx, dtype: str, shape) -> dict:
    B, S, T = shape
    cfg = ctx["cfg"].replace(dtype=dtype)
    batch = harness.random_batch(cfg.vocab_size, B, S, seed=2, target_length=T)
    ref = with_dtype(ctx["model"], dtype)
    rate = ctx["dropout"]
    steps = {
        "ours": harness.make_train_step(
            harness.t5vae_loss(cfg.replace(dropout_rate=rate)), optax.adamw(1e-4)
        ),
        "reference_jit": harness.make_train_step(
            harness.logits_loss(reference.train_loss_fn(reference.with_dropout(ref, rate))), optax.adamw(1e-4)
        ),
    }
    also = {}
    if dtype == "float32":  # the two steps optimise the same function: equal dropout-free losses
        key = jax.random.key(0)
        jit = lambda f: jax.jit(f, compiler_options=ctx["compile"])  # noqa: E731
        also = {
            "ours": lambda: float(jit(harness.t5vae_loss(cfg))(ctx["params"], batch, key)),
            "reference": lambda: float(
                jit(harness.logits_loss(lambda p, b, k: reference.forward_fn(ref)(p, b)))(
                    ctx["ref_params"], batch, key
                )
            ),
        }
    out = time_train(steps, {"ours": ctx["params"], "reference_jit": ctx["ref_params"]}, batch, ctx, also)
    if also:
        out["loss_abs_diff_no_dropout"] = abs(out["also"]["ours"] - out["also"]["reference"])
    out["flops"] = 3 * harness.t5_forward_flops(cfg, B, S, T)
    return out


def generate(ctx, dtype: str, shape) -> dict:
    B, S, NEW = shape
    never = ctx["cfg"].vocab_size  # an id argmax cannot return: both sides generate exactly NEW tokens
    cfg = ctx["cfg"].replace(dtype=dtype, eos_token_id=never)
    ref = with_dtype(ctx["model"], dtype)
    ref.generation_config.eos_token_id = never
    batch = harness.random_batch(cfg.vocab_size, B, S, seed=3)
    ids, mask, params = batch["input_ids"], batch["attention_mask"], ctx["params"]
    w = tv.decoding.decoder_weights(params, cfg) if kernels.ops(cfg).decoder_layout else None
    ref_gen = jax.jit(reference.generate_fn(ref, NEW))
    fns = {
        "ours": lambda: tv.t5.generate(params, cfg, ids, mask, NEW, decoder_weights=w),
        "reference_jit": lambda: ref_gen(ctx["ref_params"], ids, mask),
    }
    out = {
        "compile_s": harness.concurrently(
            {side: functools.partial(harness.run_once, fn) for side, fn in fns.items()}
        )
    }
    tokens = np.asarray(fns["ours"]()), np.asarray(fns["reference_jit"]())[:, 1:]  # the reference adds start
    out["same_tokens_fraction"] = float(np.mean(tokens[0] == tokens[1]))
    out["timings"] = harness.alternate(fns, ctx["repeats"], ctx["warmup"])
    out.update(traced(fns, ctx))
    out["flops"] = harness.t5_forward_flops(cfg, B, S, NEW)
    return out
