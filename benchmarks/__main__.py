"""``python -m benchmarks [--quick] [--json PATH]``: t5vae against the Flax reference, side by side.
(``--suite accelerator``: the realistic shapes of :mod:`benchmarks.accelerator` instead.)

One run, on whatever devices JAX sees: the machine's matmul ceiling first, then each workload for both
implementations on identical weights (the reference's random init converted to our tree), alternating
after warm-up, medians over repeats. Ratios are ours / jitted reference (>1 means we are faster or smaller
is better where stated). Results go to benchmarks/results/<device>-<date>.json.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import sys
import time
from pathlib import Path

import jax

import t5vae as tv
from benchmarks import harness, reference
from benchmarks.default_workloads import (
    bench_compile,
    bench_depth_compile,
    bench_forward,
    bench_generate,
    bench_train,
    memory,
)
from benchmarks.harness import RESULTS, log
from t5vae import kernels
from t5vae.config import KERNELS

WORKLOADS = ("forward", "train", "compile", "generate", "memory")
SUITES = ("default", "accelerator")


def default_parser() -> argparse.ArgumentParser:
    """The t5-small suite's command line."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--suite",
        choices=SUITES,
        default="default",
        help="default: t5-small 8 x 64 (this parser); accelerator: t5-base at users' shapes, f32 and "
        "bf16 (python -m benchmarks --suite accelerator --help)",
    )
    ap.add_argument(
        "--quick", action="store_true", help="fewer repeats and no 24-layer compile (< 5 min on 2 cores)"
    )
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--repeats", type=int, help="timed rounds per workload (default 10, 3 with --quick)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    ap.add_argument(
        "--kernels",
        default="auto",
        help=f"T5Config.kernels for our side: {', '.join(KERNELS)} or "
        f"fast paths joined by '+' (default auto)",
    )
    return ap


def _speed(t: dict, k: str = "reference_jit", o: str = "ours") -> float:
    return t[k]["median_s"] / t[o]["median_s"]


def measure(only: tuple, res: dict, phase, c: dict) -> None:
    """Run the workloads in ``only`` into ``res``, each inside ``phase`` (which logs, times and saves);
    ``c`` holds the models, params, batch and the machine's ceilings."""
    model, ref_params, params, cfg, batch = c["model"], c["ref_params"], c["params"], c["cfg"], c["batch"]
    repeats, NEW, (B, L) = c["repeats"], c["new"], batch["input_ids"].shape
    tokens, speed, f32, bw = B * L, _speed, c["f32"], c["bw"]
    if "forward" in only:
        with phase("forward", "forward"):
            fwd, fwd_diff = bench_forward(model, ref_params, params, cfg, batch, repeats)
            res.update(
                forward_speedup=speed(fwd),
                forward_speedup_vs_plain=speed(fwd, "reference_plain"),
                forward_max_abs_diff=fwd_diff,
            )
            res["timings"]["forward"] = fwd
    if "train" in only:
        with phase("train", "train step"):
            train, train_loss_diff = bench_train(model, ref_params, params, cfg, batch, repeats)
            train_flops = 3 * harness.t5_forward_flops(cfg, B, L, L)
            res.update(
                train_step_speedup=speed(train),
                train_loss_abs_diff_no_dropout=train_loss_diff,
                train_step_speedup_vs_reference_without_dropout=speed(train, "reference_jit_no_dropout"),
                train_tokens_per_s={k: tokens / v["median_s"] for k, v in train.items()},
                train_mfu=train_flops / train["ours"]["median_s"] / f32,
                train_mfu_reference=train_flops / train["reference_jit"]["median_s"] / f32,
            )
            res["timings"]["train"] = train
    if "compile" in only:
        with phase("compile", "train-step compile"):
            train_compile = bench_compile(model, cfg, batch, 1 if c["quick"] else 3)
            res.update(
                train_compile_s={k: v["median_s"] for k, v in train_compile.items()},
                train_compile_time_ratio=train_compile["ours"]["median_s"]
                / train_compile["reference_jit"]["median_s"],
                train_compile_s_by_depth=None if c["quick"] else bench_depth_compile(cfg, batch),
            )
            res["timings"]["train_compile"] = train_compile
    if "generate" in only:
        with phase("generate", "generate"):
            gen, gen_same = bench_generate(model, ref_params, params, cfg, batch, NEW, repeats)
            dec_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params["decoder"]["layers"]))
            dec_bytes += (
                params["shared"]["embedding"].size * 4
            )  # the output projection reads the (tied) embedding
            bound_s = dec_bytes / bw
            res.update(
                generate_speedup=speed(gen),
                generate_speedup_params=speed(gen, "reference_jit", "ours_params"),
                generate_speedup_bf16=speed(gen, "reference_jit", "ours_bf16"),
                generate_speedup_vs_plain=speed(gen, "reference_plain"),
                generate_same_tokens=gen_same,
                generate_ms_per_token={k: 1e3 * v["median_s"] / NEW for k, v in gen.items()},
                decode_weight_read_bound_ms_per_token=1e3 * bound_s,
                generate_latency_over_bound=gen["ours"]["median_s"] / NEW / bound_s,
            )
            res["timings"]["generate"] = gen
    if "memory" in only:
        with phase("memory", "peak memory (separate processes)"):
            mem = {impl: memory(impl, 3) for impl in ("ours", "reference")}
            res.update(
                peak_memory=mem,
                train_peak_memory_ratio=mem["ours"]["training_mb"] / mem["reference"]["training_mb"],
            )


def parse(argv):
    """The default suite's command line -> (the arguments, the workloads to run, the timed rounds, our side's
    config); exits on a bad argument."""
    ap = default_parser()
    args = ap.parse_args(argv)
    only = WORKLOADS if not args.only else tuple(w.strip() for w in args.only.split(","))
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        ap.error(f"--only: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    repeats = args.repeats or (3 if args.quick else 10)
    try:
        cfg = tv.preset("t5-small", dropout_rate=0.0, kernels=args.kernels)
    except ValueError as e:
        ap.error(f"--kernels: {e}")
    return args, only, repeats, cfg


def recorder(res: dict, paths: list, t_start: float):
    """-> (save, phase): ``save()`` writes ``res`` to every path; ``with phase(name, what):`` logs a workload,
    times it into ``res["phase_s"]`` and saves, so an interrupted run keeps what it measured."""

    def save():
        res["wall_s"] = time.perf_counter() - t_start
        for p in paths:
            p.write_text(json.dumps(res, indent=2) + "\n")

    @contextlib.contextmanager
    def phase(name, what):
        log(f"{what} ...")
        t0 = time.perf_counter()
        yield
        res["phase_s"][name] = time.perf_counter() - t0
        log(f"{what}: {res['phase_s'][name]:.0f} s")
        save()

    return save, phase


def run(args, only: tuple, repeats: int, cfg) -> int:
    """The machine's ceilings, then the workloads in ``only``, saved after each; then the table."""
    t_start = time.perf_counter()
    B, L, NEW = 8, 64, 32
    log(f"devices: {jax.devices()}  jax {jax.__version__}  repeats={repeats}")

    # an accelerator needs larger problems than the CPU to reach its peak (and to run past launch overhead)
    on_host = jax.devices()[0].platform == "cpu"
    n = (1024 if args.quick else 2048) if on_host else 8192
    mach = harness.machine(n, 1 << 28 if on_host else 1 << 32, repeats)
    f32, bw = mach["matmul_flops_f32"], mach["read_bandwidth_bytes_s"]

    model, ref_params, params = reference.make_reference(cfg)
    batch = harness.random_batch(cfg.vocab_size, B, L)
    res = {
        **mach,
        "date": datetime.date.today().isoformat(),
        "kernels": args.kernels,
        "fast_paths": sorted(kernels.enabled(args.kernels)),
        "repeats": repeats,
        "quick": args.quick,
        "workloads": list(only),
        "complete": False,
        "shapes": {"config": "t5-small", "batch": B, "length": L, "new_tokens": NEW},
        "timings": {},
        "phase_s": {},
    }
    RESULTS.mkdir(exist_ok=True)
    suffix = (
        ("-quick" if args.quick else "")
        + ("" if only == WORKLOADS else "-" + "-".join(only))
        + ("" if args.kernels == "auto" else f"-{args.kernels}")
    )
    paths = [RESULTS / f"{res['device']}-{res['date']}{suffix}.json"] + (
        [Path(args.json)] if args.json else []
    )
    save, phase = recorder(res, paths, t_start)
    measure(
        only,
        res,
        phase,
        dict(
            model=model,
            ref_params=ref_params,
            params=params,
            cfg=cfg,
            batch=batch,
            repeats=repeats,
            quick=args.quick,
            f32=f32,
            bw=bw,
            new=NEW,
        ),
    )
    res["complete"] = True
    save()
    print_table(res)
    log(f"wrote {', '.join(map(str, paths))} in {res['wall_s']:.0f} s")
    return 0


def main(argv=None) -> int:
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--suite", choices=SUITES, default="default")
    suite, rest = pre.parse_known_args(argv)
    if suite.suite == "accelerator":
        from benchmarks import accelerator

        return accelerator.main(rest)
    return run(*parse(argv))


def table_rows(r: dict) -> list[tuple]:
    """(workload, t5vae, Flax (jit), ratio) for whichever workloads the run measured."""
    t, ms = r["timings"], lambda side, k: t[side][k]["median_s"] * 1e3  # noqa: E731
    rows = []
    if "forward" in t:
        rows.append(
            (
                "forward (8x64, ms)",
                ms("forward", "ours"),
                ms("forward", "reference_jit"),
                r["forward_speedup"],
            )
        )
    if "train" in t:
        rows += [
            (
                "train step (8x64, ms)",
                ms("train", "ours"),
                ms("train", "reference_jit"),
                r["train_step_speedup"],
            ),
            (
                "  reference without dropout",
                ms("train", "ours"),
                ms("train", "reference_jit_no_dropout"),
                r["train_step_speedup_vs_reference_without_dropout"],
            ),
        ]
    if "generate" in t:
        g = r["generate_ms_per_token"]
        rows += [
            ("greedy generate (ms/token)", g["ours"], g["reference_jit"], r["generate_speedup"]),
            (
                "  weights laid out per call",
                g["ours_params"],
                g["reference_jit"],
                r["generate_speedup_params"],
            ),
            ("  bf16 weights (ms/token)", g["ours_bf16"], g["reference_jit"], r["generate_speedup_bf16"]),
        ]
    if "train_compile" in t:
        rows.append(
            (
                "train compile (s)",
                r["train_compile_s"]["ours"],
                r["train_compile_s"]["reference_jit"],
                r["train_compile_time_ratio"],
            )
        )
    if "peak_memory" in r:
        m = r["peak_memory"]
        rows.append(
            (
                "train peak memory (MB)",
                m["ours"]["training_mb"],
                m["reference"]["training_mb"],
                r["train_peak_memory_ratio"],
            )
        )
    return rows


def print_table(r: dict) -> None:
    """The table of whichever workloads the run measured, and what it says about MFU, decoding and depth."""
    t = r["timings"]
    print(f"\n{'workload':30s} {'t5vae':>10s} {'Flax (jit)':>11s} {'ratio':>8s}")
    for name, a, b, ratio in table_rows(r):
        print(f"{name:30s} {a:10.2f} {b:11.2f} {ratio:7.2f}x")
    if "train" in t:
        print(
            f"train MFU: {r['train_mfu']:.1%} of the float32 matmul ceiling (reference {r['train_mfu_reference']:.1%})"
        )
    if "generate" in t:
        print(
            f"decode: {r['generate_ms_per_token']['ours']:.2f} ms/token vs weight-read bound "
            f"{r['decode_weight_read_bound_ms_per_token']:.2f} ms ({r['generate_latency_over_bound']:.2f}x); "
            f"same tokens as reference: {r['generate_same_tokens']}"
        )
    if r.get("train_compile_s_by_depth"):
        print(f"train compile by depth: {r['train_compile_s_by_depth']}")


if __name__ == "__main__":
    sys.exit(main())
