"""``python -m benchmarks.variants --set remat=dots --set remat=none [--only vae_train_bf16]``: our own train
step at the accelerator suite's workloads under several ``T5Config`` settings, timed against each other.

For choosing a platform's defaults (``remat``, ``kernels``) without paying the Flax reference's compiles
again: the suite's ratios stay the comparison with the reference; this says which of our settings is
faster, and by how much, on the machine it runs on. Each workload: every variant compiled at once (one
thread each), then alternating timed steps (AdamW, the suite's dropout), medians. Planned memory
(``memory_analysis``) is recorded too. Results: benchmarks/results/<device>-<date>-variants.json (``--json``).
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import jax
import optax

import t5vae as tv
from benchmarks import harness
from benchmarks.accelerator import DTYPES, SHAPES, TINY_SHAPES
from benchmarks.harness import RESULTS, log

WORKLOADS = tuple(f"{kind}_{d}" for d in DTYPES for kind in ("vae_train", "seq2seq_train"))


def parse_set(text: str) -> dict:
    """``remat=none,kernels=dpa`` -> {"remat": "none", "kernels": "dpa"} (T5Config fields, string values)."""
    out = {}
    for part in text.split(","):
        k, sep, v = part.partition("=")
        if not sep or k not in ("remat", "kernels"):
            raise ValueError(f"--set {text!r}: expected remat=VALUE and/or kernels=VALUE joined by ','")
        out[k] = v
    return out


def step_and_batch(kind: str, cfg: tv.T5Config, shape):
    """(jitted train step, params, batch) of our side of a suite workload."""
    B, S, T = shape
    if kind == "vae_train":
        vcfg = tv.Config(t5=cfg, max_length=S)
        params = tv.init(vcfg, jax.random.key(2))
        batch = harness.random_batch(cfg.vocab_size, B, S, seed=1)
        loss = lambda p, b, k: tv.loss(p, vcfg, b, k, 1000)[0]  # noqa: E731
    else:
        params = tv.t5.init(cfg, jax.random.key(2))
        batch = harness.random_batch(cfg.vocab_size, B, S, seed=2, target_length=T)
        loss = harness.t5vae_loss(cfg)
    return harness.make_train_step(loss, optax.adamw(1e-4)), params, batch


def run_workload(name: str, base: tv.T5Config, variants: dict, shape, repeats: int) -> dict:
    kind, d = name.rsplit("_", 1)
    opt, key = optax.adamw(1e-4), jax.random.key(0)
    built, state = {}, {}
    for label, over in variants.items():
        step, params, batch = step_and_batch(kind, base.replace(dtype=DTYPES[d], **over), shape)
        state[label] = (params, opt.init(params))
        built[label] = (step, batch)
    compiled = harness.concurrently(
        {
            label: (lambda s=step, lb=label, b=batch: harness.compile_seconds(s, *state[lb], b, key))
            for label, (step, batch) in built.items()
        }
    )
    run = {
        label: harness.stepping(c, state, label, built[label][1], key) for label, (_, c) in compiled.items()
    }
    t = harness.alternate(run, repeats, warmup=2)
    first = next(iter(variants))
    return {
        "timings": t,
        "compile_s": {k: s for k, (s, _) in compiled.items()},
        "planned_mb": {k: harness.planned_bytes(c) / 2**20 for k, (_, c) in compiled.items()},
        "speedup_vs_first": {k: t[first]["median_s"] / v["median_s"] for k, v in t.items()},
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--set",
        action="append",
        required=True,
        metavar="FIELD=VALUE[,...]",
        help="one variant (repeat the flag); the first is the baseline of speedup_vs_first",
    )
    ap.add_argument(
        "--only", default="vae_train_bf16,seq2seq_train_bf16", help=f"subset of {','.join(WORKLOADS)}"
    )
    ap.add_argument("--tiny", action="store_true", help="tiny preset and shapes (the CI check)")
    ap.add_argument("--dropout", type=float, default=0.1, help="dropout rate (default 0.1, as the suite)")
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; 1 with --tiny)")
    ap.add_argument("--json", help="results file")
    args = ap.parse_args(argv)
    try:
        variants = {s: parse_set(s) for s in args.set}
    except ValueError as e:
        ap.error(str(e))
    only = [w.strip() for w in args.only.split(",")]
    if sorted(set(only) - set(WORKLOADS)):
        ap.error(f"--only: choose from {list(WORKLOADS)}")
    base = tv.preset("tiny" if args.tiny else "t5-base", dropout_rate=args.dropout, param_dtype="float32")
    shapes, repeats = (TINY_SHAPES, 1) if args.tiny else (SHAPES, 10)
    repeats = args.repeats or repeats
    res = {
        "suite": "variants",
        "device": harness.device_name(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "commit": harness.git_commit(),
        "date": datetime.date.today().isoformat(),
        "model": "tiny" if args.tiny else "t5-base",
        "dropout": args.dropout,
        "variants": variants,
        "repeats": repeats,
        "errors": {},
    }
    path = Path(args.json) if args.json else RESULTS / f"{res['device']}-{res['date']}-variants.json"
    for name in only:
        t0 = time.perf_counter()
        try:
            res[name] = run_workload(name, base, variants, shapes[name.rsplit("_", 1)[0]], repeats)
            ms = {k: f"{1e3 * v['median_s']:.1f} ms" for k, v in res[name]["timings"].items()}
            log(f"{name}: {ms} ({time.perf_counter() - t0:.0f} s)")
        except Exception as e:
            harness.record_failure(res, name, e)
        harness.write_atomic(path, res)
    log(f"wrote {path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
