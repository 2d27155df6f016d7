"""The default suite's workloads (t5-small, 8 x 64: ``python -m benchmarks`` runs them and keeps their results):
each times t5vae and the Flax reference on identical weights, taking turns after warm-up, and checks that the
two compute the same thing (forward outputs, dropout-free losses, generated tokens). Peak memory is measured
in separate processes (:mod:`benchmarks.memory`).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import t5vae as tv
from benchmarks import harness, reference
from t5vae import kernels


def bench_forward(model, ref_params, params, cfg, batch, repeats):
    ref_fwd = jax.jit(reference.forward_fn(model))
    ours_fwd = jax.jit(
        lambda p, b: tv.t5.apply(
            p, cfg, b["input_ids"], b["attention_mask"], b["decoder_input_ids"], b["decoder_attention_mask"]
        )
    )
    diff = np.abs(np.asarray(ours_fwd(params, batch)) - np.asarray(ref_fwd(ref_params, batch))).max()
    t = harness.alternate(
        {
            "ours": lambda: ours_fwd(params, batch),
            "reference_jit": lambda: ref_fwd(ref_params, batch),
            "reference_plain": lambda: reference.forward_fn(model)(ref_params, batch),
        },
        repeats,
    )
    return t, float(diff)


def bench_train(model, ref_params, params, cfg, batch, repeats):
    """Train steps with dropout 0.1 on both sides, plus the reference without dropout (its threefry dropout is
    most of the gap between the two, so the table reports both)."""
    opt = optax.adamw(1e-4)
    tcfg = cfg.replace(dropout_rate=0.1)
    steps = {
        "ours": harness.make_train_step(harness.t5vae_loss(tcfg), opt),
        "reference_jit": harness.make_train_step(
            harness.logits_loss(reference.train_loss_fn(reference.with_dropout(model, tcfg.dropout_rate))),
            opt,
        ),
        "reference_jit_no_dropout": harness.make_train_step(
            harness.logits_loss(reference.train_loss_fn(reference.with_dropout(model, 0.0))), opt
        ),
    }
    key = jax.random.key(0)
    # the two losses agree without dropout (same weights, same batch): the steps optimise the same function
    loss_ours = jax.jit(harness.t5vae_loss(cfg))(params, batch, key)
    loss_ref = jax.jit(harness.logits_loss(lambda p, b, k: reference.forward_fn(model)(p, b)))(
        ref_params, batch, key
    )
    loss_diff = abs(float(loss_ours) - float(loss_ref))
    start = {name: params if name == "ours" else ref_params for name in steps}
    state = {name: (jax.tree.map(jnp.copy, p), opt.init(p)) for name, p in start.items()}

    # three warm-up steps each: the first few steps of either side run up to 30 % slower (seen in the
    # per-round times of a 10-round run), before the allocator's pages settle
    t = harness.alternate(
        {name: harness.stepping(steps[name], state, name, batch, key) for name in steps}, repeats, warmup=3
    )
    return t, loss_diff


def bench_compile(model, cfg, batch, rounds):
    """Train-step compile seconds of each side (with dropout), alternating over ``rounds`` with jax's caches
    cleared before each: the process's one-time costs (first trace, first compile) fall on neither side."""
    opt = optax.adamw(1e-4)
    tcfg = cfg.replace(dropout_rate=0.1)
    key = jax.random.key(0)
    sides = {
        "ours": (lambda: harness.t5vae_loss(tcfg), lambda: jax.eval_shape(lambda: tv.t5.init(tcfg, key))),
        "reference_jit": (
            lambda: harness.logits_loss(
                reference.train_loss_fn(reference.with_dropout(model, tcfg.dropout_rate))
            ),
            lambda: jax.eval_shape(lambda: model.params),
        ),
    }
    times: dict[str, list] = {k: [] for k in sides}
    for _ in range(rounds + 1):  # the first round is a warm-up of jax itself and is dropped
        for name, (loss_fn, abstract) in sides.items():
            jax.clear_caches()
            p = abstract()
            step = harness.make_train_step(loss_fn(), opt)
            times[name].append(harness.compile_seconds(step, p, jax.eval_shape(opt.init, p), batch, key)[0])
    return {
        k: {"median_s": statistics.median(v[1:]), "times_s": v[1:], "warmup_s": v[0]}
        for k, v in times.items()
    }


def bench_depth_compile(cfg, batch, layers=(6, 24)):
    """Our train-step compile time at two depths: flat if the layers are scanned, not unrolled."""
    out = {}
    for n in layers:
        c = cfg.replace(num_layers=n, num_decoder_layers=n, dropout_rate=0.1)
        p = jax.eval_shape(lambda: tv.t5.init(c, jax.random.key(0)))
        opt = optax.adamw(1e-4)
        step = harness.make_train_step(harness.t5vae_loss(c), opt)
        out[n] = harness.compile_seconds(step, p, jax.eval_shape(opt.init, p), batch, jax.random.key(0))[0]
    return out


def bench_generate(model, ref_params, params, cfg, batch, new_tokens, repeats):
    never = cfg.vocab_size  # an id argmax cannot return: both sides generate exactly new_tokens
    gcfg = cfg.replace(eos_token_id=never)
    model.generation_config.eos_token_id = never
    ref_gen = jax.jit(reference.generate_fn(model, new_tokens))
    ids, mask = batch["input_ids"], batch["attention_mask"]
    # ours: the decoder's weights laid out for decoding once, as for any repeated decoding (the reference's
    # params are already per layer); ours_params: from the training params tree, laid out again every call
    w = tv.decoding.decoder_weights(params, gcfg) if kernels.ops(gcfg).decoder_layout else None
    ours = lambda: tv.t5.generate(params, gcfg, ids, mask, new_tokens, decoder_weights=w)  # noqa: E731
    ours_params = lambda: tv.t5.generate(params, gcfg, ids, mask, new_tokens)  # noqa: E731
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    c16 = gcfg.replace(dtype="bfloat16", param_dtype="bfloat16")
    w16 = tv.decoding.decoder_weights(p16, c16) if kernels.ops(c16).decoder_layout else None
    ours16 = lambda: tv.t5.generate(p16, c16, ids, mask, new_tokens, decoder_weights=w16)  # noqa: E731
    ref_tokens = np.asarray(ref_gen(ref_params, ids, mask))[:, 1:]
    same = all(np.array_equal(np.asarray(f()), ref_tokens) for f in (ours, ours_params))
    fns = {
        "ours": ours,
        "ours_params": ours_params,
        "ours_bf16": ours16,
        "reference_jit": lambda: ref_gen(ref_params, ids, mask),
    }
    t = harness.alternate(fns, repeats)
    t["reference_plain"] = harness.alternate(
        {"p": lambda: reference.generate_fn(model, new_tokens)(ref_params, ids, mask)}, max(1, repeats // 3)
    )["p"]
    return t, same


def memory(impl: str, steps: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", impl, "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).parent.parent,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])
