"""``python -m benchmarks.kernels``: what each fast path of t5vae.kernels buys on this machine.

For every workload a fast path touches, the same step is compiled with ``T5Config.kernels`` = "cpu" (all
fast paths), "cpu" minus one fast path, and "plain", then timed alternating in one process (medians). A
fast path's gain is time(without it) / time(all): above 1 it pays here. Only what pays on a backend belongs
in ``kernels.AUTO`` for it. Workloads: t5-small train step (8 x 64, dropout 0.1), t5-small greedy
generation (8 rows, 32 tokens), and the default T5-VAE train step of ``t5vae train`` (64 x 24 tokens).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import t5vae as tv
from benchmarks import harness
from benchmarks.harness import RESULTS, log
from t5vae import kernels, train
from t5vae.config import CPU_PATHS

# which fast paths each workload runs (the others cannot change its time)
TOUCHES = {
    "t5_train": ("dropout", "mlp", "xent"),
    "t5_generate": ("decoder_layout",),
    "vae_train": ("dropout", "mlp", "xent"),
}


def variants(paths) -> dict[str, str]:
    """{label: T5Config.kernels value}: all, all but each of ``paths``, and plain."""
    out = {"cpu": "cpu"}
    for p in paths:
        out[f"cpu-{p}"] = "+".join(f for f in CPU_PATHS if f != p)
    out["plain"] = "plain"
    return out


def t5_train(kernels_value: str, repeats: int):
    cfg = tv.preset("t5-small", dropout_rate=0.1, kernels=kernels_value)
    batch = harness.random_batch(cfg.vocab_size, 8, 64)
    opt = optax.adamw(1e-4)
    step = harness.make_train_step(harness.t5vae_loss(cfg), opt)
    params = tv.t5.init(cfg, jax.random.key(0))
    state = [params, opt.init(params)]

    def run():
        state[0], state[1], loss = step(state[0], state[1], batch, jax.random.key(1))
        return loss

    return run


def t5_generate(kernels_value: str, repeats: int):
    cfg = tv.preset(
        "t5-small", dropout_rate=0.0, kernels=kernels_value, eos_token_id=32128
    )  # never stops early
    batch = harness.random_batch(cfg.vocab_size, 8, 64)
    params = tv.t5.init(cfg, jax.random.key(0))
    w = tv.decoding.decoder_weights(params, cfg) if kernels.ops(cfg).decoder_layout else None
    return lambda: tv.t5.generate(
        params, cfg, batch["input_ids"], batch["attention_mask"], 32, decoder_weights=w
    )


def vae_train(kernels_value: str, repeats: int):
    cfg = tv.Config(t5=tv.config.DEFAULT_T5.replace(kernels=kernels_value))
    tc = tv.TrainConfig()
    rng = np.random.default_rng(0)
    ids = rng.integers(3, cfg.t5.vocab_size, size=(tc.batch_size, 24)).astype(np.int32)
    ids[:, -1] = 1
    batch = {"input_ids": jnp.asarray(ids), "attention_mask": jnp.ones(ids.shape, bool)}
    step = train.make_train_step(cfg, tc.optimizer, tc.clip_norm, tc.weight_decay)
    state = [train.init_state(cfg, tc, tv.init(cfg, jax.random.key(0)))]
    key = jax.random.key(0, impl="unsafe_rbg")

    def run():
        state[0], metrics = step(state[0], batch, key, 1e-3)
        return metrics["loss"]

    return run


WORKLOADS = {"t5_train": t5_train, "t5_generate": t5_generate, "vae_train": vae_train}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds per variant (default 10)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    only = list(WORKLOADS) if not args.only else [w.strip() for w in args.only.split(",")]
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        ap.error(f"--only: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    on_host = jax.default_backend() == "cpu"
    res = {
        **harness.machine(2048 if on_host else 8192, 1 << 28 if on_host else 1 << 32, 3),
        "backend": jax.default_backend(),
        "date": datetime.date.today().isoformat(),
        "repeats": args.repeats,
        "auto": sorted(kernels.AUTO.get(jax.default_backend(), ())),
        "workloads": {},
    }
    paths = [RESULTS / f"kernels-{res['device']}-{res['date']}.json"] + (
        [Path(args.json)] if args.json else []
    )
    for name in only:
        vs = variants(TOUCHES[name])
        log(f"{name}: compiling {len(vs)} variants ...")
        t = harness.alternate(
            {label: WORKLOADS[name](k, args.repeats) for label, k in vs.items()}, args.repeats, warmup=3
        )
        med = {label: v["median_s"] for label, v in t.items()}
        res["workloads"][name] = {
            "median_ms": {k: 1e3 * v for k, v in med.items()},
            "gain": {p: med[f"cpu-{p}"] / med["cpu"] for p in TOUCHES[name]},
            "cpu_over_plain": med["plain"] / med["cpu"],
            "timings": t,
        }
        RESULTS.mkdir(exist_ok=True)
        for p in paths:
            p.write_text(json.dumps(res, indent=2) + "\n")
        w = res["workloads"][name]
        log(
            f"{name}: all fast paths {w['median_ms']['cpu']:.1f} ms, plain {w['median_ms']['plain']:.1f} ms "
            f"({w['cpu_over_plain']:.2f}x); gain of each: "
            + ", ".join(f"{p} {g:.2f}x" for p, g in w["gain"].items())
        )
    log(f"wrote {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
