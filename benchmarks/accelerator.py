"""``python -m benchmarks --suite accelerator [--tiny] [--json PATH]``: t5vae against the jitted Flax reference
at the shapes users train at, in float32 and in bfloat16 compute.

Both sides run identical weights (the reference's random init converted to our tree), take turns after
warm-up, and report medians. bfloat16 means compute only: ``T5Config(dtype="bfloat16", param_dtype="float32")``
with float32 AdamW state for us, ``FlaxT5ForConditionalGeneration(dtype=bfloat16)`` with float32 params for
the reference. Workloads (t5-base unless ``--preset``; batch x tokens as users train):

  vae_train_{bf16,f32}      T5-VAE train step, batch 256 x 64 tokens, dropout 0.1 (``--dropout``), AdamW. The
                            reference has no bottleneck: it is the Flax T5 train step on the same batch as an
                            autoencoder (64 -> 64 tokens; its decoder cross-attends to 64 encoder states, ours to 8).
  seq2seq_train_{bf16,f32}  encoder-decoder train step, batch 64, 512 input / 128 target tokens, dropout 0.1.
  generate_{bf16,f32}       greedy generation, batch 64, 64 input tokens, exactly 64 new tokens (no EOS).

Per workload NAME: ``NAME_speedup`` (reference / ours median seconds: > 1 means ours is faster),
``NAME_mfu`` (model FLOPs / our median / the bfloat16 matmul ceiling the run measured first; matmul FLOPs
only, a train step 3x its forward, remat's recomputation not counted, generation counted as the forward over
its input and its new tokens), ``NAME_compile_s``, and for training ``NAME_peak_memory_ratio`` (ours /
reference of XLA's buffer plan for the compiled step, ``memory_analysis()``: arguments + outputs +
temporaries - donated aliases; the same static measure on every backend, not an allocator's runtime peak).
f32 workloads also check the numbers: the dropout-free loss difference, and generation's token agreement.

The JSON is rewritten atomically after every workload, so a run that is cut off keeps what it measured;
a workload that raises (out of memory, say) is kept under ``errors`` and the others still run; ``complete``
is true only when every workload finished.

Budget: the target is 5 minutes on one H200; it took 6.9 there (docs/accelerator.md), most of it the
reference's train-step compiles, so benchmarks/gpu_run.sh gives it 7.5. Per workload one compile per side,
the two sides compiling at once in two threads (XLA compiles outside the GIL; the compile seconds are
therefore side by side, not alone), then 2 warm-up and 5 timed rounds; f32 seq2seq adds the two forward
compiles of its loss check, also side by side. bf16 runs first (the targets are for bf16).
``--deadline-minutes`` (default 4.5) starts no workload after it: a slow machine ends with ``complete: false``
and the workloads it measured. ``--profile DIR`` traces one more step (or generation) of each side of every
workload (``jax.profiler``) into DIR and puts a summary (device time by op and by kernel, kernel launches)
in the JSON. ``--tiny`` (the tiny preset, tiny shapes, 1 repeat, its train steps compiled at XLA's -O0:
code generation is most of a tiny run) runs every workload on the CPU, for CI.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import jax

import t5vae as tv
from benchmarks import accelerator_workloads, harness, reference
from benchmarks.harness import RESULTS, log
from t5vae import kernels
from t5vae.config import KERNELS, REMAT

TINY_COMPILE = {"xla_backend_optimization_level": 0}
# (batch, input tokens, target or new tokens) per workload kind, full and --tiny
SHAPES = {"vae_train": (256, 64, 64), "seq2seq_train": (64, 512, 128), "generate": (64, 64, 64)}
TINY_SHAPES = {"vae_train": (4, 16, 16), "seq2seq_train": (4, 16, 8), "generate": (4, 8, 4)}
DTYPES = {"bf16": "bfloat16", "f32": "float32"}
WORKLOADS = tuple(f"{kind}_{d}" for d in DTYPES for kind in SHAPES)  # bf16 first


# settings a resumed run must share with the run it completes
SAME_RUN = ("suite", "model", "device", "tiny", "kernels", "remat", "repeats", "dropout")


def resume(prev_path: Path, res: dict) -> list[str]:
    """Take the workloads that an earlier run with the same settings finished (one cut short by its deadline)
    into ``res`` -> their names. Each workload's ratio still comes from one process, both sides alternating;
    ``runs`` says which run measured which workloads, on which ceilings."""
    try:
        prev = json.loads(prev_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--resume {prev_path}: not a readable results file ({e})") from e
    differ = {k: (prev.get(k), res[k]) for k in SAME_RUN if prev.get(k) != res[k]}
    if differ:
        raise ValueError(f"--resume {prev_path}: measured with other settings (theirs, ours): {differ}")
    done = [w for w in prev.get("workloads", []) if f"{w}_speedup" in prev]
    res.update({k: v for k, v in prev.items() if any(k.startswith(f"{w}_") for w in done)})
    for w in done:
        res["timings"][w], res["phase_s"][w], res["shapes"][w] = (
            prev["timings"][w],
            prev["phase_s"][w],
            prev["shapes"][w],
        )
    res["runs"] = prev.get("runs") or [
        {k: prev.get(k) for k in ("date", "commit", "wall_s", "matmul_flops_bf16")} | {"workloads": done}
    ]
    return done


# what runs each kind of workload: (ctx, compute dtype, shape) -> its measurements
KINDS = {
    "vae_train": accelerator_workloads.vae_train,
    "seq2seq_train": accelerator_workloads.seq2seq_train,
    "generate": accelerator_workloads.generate,
}


def record(res: dict, name: str, out: dict, bf16_ceiling: float) -> None:
    """The workload's top-level keys: speedup, mfu, compile seconds, peak memory ratio (training)."""
    med = {side: v["median_s"] for side, v in out["timings"].items()}
    res[f"{name}_speedup"] = med["reference_jit"] / med["ours"]
    res[f"{name}_mfu"] = out["flops"] / med["ours"] / bf16_ceiling
    res[f"{name}_mfu_reference"] = (
        out.get("reference_flops", out["flops"]) / med["reference_jit"] / bf16_ceiling
    )
    res[f"{name}_ms"] = {side: 1e3 * s for side, s in med.items()}
    res[f"{name}_compile_s"] = out["compile_s"]
    if "planned_bytes" in out:
        pb = out["planned_bytes"]
        res[f"{name}_peak_memory_ratio"] = pb["ours"] / pb["reference_jit"]
        res[f"{name}_peak_memory_mb"] = {side: b / 2**20 for side, b in pb.items()}
    for k in ("loss_abs_diff_no_dropout", "same_tokens_fraction", "profile"):
        if k in out:
            res[f"{name}_{k}"] = out[k]
    res["timings"][name] = out["timings"]


def build_parser() -> argparse.ArgumentParser:
    """The accelerator suite's command line."""
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks --suite accelerator", description=__doc__.splitlines()[0]
    )
    ap.add_argument(
        "--json",
        help="write the results here (default benchmarks/results/<device>-<date>-accelerator[-tiny].json)",
    )
    ap.add_argument(
        "--tiny", action="store_true", help="tiny preset and shapes, 1 repeat: the CI check of the suite"
    )
    ap.add_argument("--preset", default=None, help="T5 preset (default t5-base; tiny with --tiny)")
    ap.add_argument("--repeats", type=int, help="timed rounds per workload (default 5; 1 with --tiny)")
    ap.add_argument("--only", help=f"comma-separated subset of {','.join(WORKLOADS)} (default: all)")
    ap.add_argument(
        "--kernels",
        default="auto",
        help=f"T5Config.kernels for our side: {', '.join(KERNELS)} or "
        "fast paths joined by '+' (e.g. dpa; default auto)",
    )
    ap.add_argument(
        "--remat",
        default=None,
        help=f"T5Config.remat for our side: {', '.join(REMAT)} (default the config's)",
    )
    ap.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout rate of both train steps (default 0.1; 0 lets the dpa fast path run in training)",
    )
    ap.add_argument(
        "--deadline-minutes",
        type=float,
        default=4.5,
        help="start no workload after this many minutes (default 4.5)",
    )
    ap.add_argument(
        "--resume",
        metavar="JSON",
        help="an earlier run's results with the same settings: keep the "
        "workloads it finished, run the others",
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="trace one more step or generation of each side of every "
        "workload into DIR (jax.profiler); a summary goes in the JSON",
    )
    return ap


def run_workloads(
    only, res: dict, ctx: dict, shapes: dict, deadline_minutes: float, t_start: float, save
) -> None:
    """Each workload in turn into ``res`` (saved after each); a failure is kept under ``errors``, and past the
    deadline a workload is skipped."""
    for name in only:
        if time.perf_counter() - t_start > 60 * deadline_minutes:
            res["skipped"].append(name)
            log(f"{name}: skipped (past --deadline-minutes {deadline_minutes})")
            continue
        kind, d = name.rsplit("_", 1)
        t0 = time.perf_counter()
        log(f"{name} {shapes[kind]} ...")
        ctx["name"] = name
        try:
            record(res, name, KINDS[kind](ctx, DTYPES[d], shapes[kind]), res["matmul_flops_bf16"])
        except Exception as e:  # e.g. out of memory: keep it in the JSON and measure the other workloads
            harness.record_failure(res, name, e)
        res["phase_s"][name] = time.perf_counter() - t0
        if name not in res["errors"]:
            log(
                f"{name}: {res[f'{name}_speedup']:.2f}x the reference, MFU {res[f'{name}_mfu']:.1%} "
                f"({res['phase_s'][name]:.0f} s)"
            )
        save()


def parse(argv):
    """The command line -> (its parser, the arguments, the workloads to run, the preset's name, our side's
    config); exits on a bad argument."""
    ap = build_parser()
    args = ap.parse_args(argv)
    only = WORKLOADS if not args.only else tuple(w.strip() for w in args.only.split(","))
    unknown = sorted(set(only) - set(WORKLOADS))
    if unknown:
        ap.error(f"--only: unknown workload(s) {unknown}; choose from {list(WORKLOADS)}")
    if args.repeats is not None and args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    if not 0.0 <= args.dropout < 1.0:
        ap.error(f"--dropout must be in [0, 1), got {args.dropout}")
    preset = args.preset or ("tiny" if args.tiny else "t5-base")
    try:
        cfg = tv.preset(
            preset, dropout_rate=0.0, kernels=args.kernels, **({"remat": args.remat} if args.remat else {})
        )
    except ValueError as e:
        ap.error(str(e))
    return ap, args, only, preset, cfg


def new_results(args, preset: str, cfg, only, shapes: dict, repeats: int) -> dict:
    """A run's results before any workload: its settings, and the machine's ceilings measured now."""
    on_host = jax.devices()[0].platform == "cpu"
    log(f"devices: {jax.devices()}  jax {jax.__version__}  preset {preset}  repeats={repeats}")
    n, read = (256, 1 << 22) if args.tiny else ((2048, 1 << 28) if on_host else (8192, 1 << 32))
    mach = harness.machine(n, read, 2 if args.tiny else 5)
    return {
        "suite": "accelerator",
        "model": preset,
        "complete": False,
        **mach,
        "date": datetime.date.today().isoformat(),
        "tiny": args.tiny,
        "kernels": args.kernels,
        "remat": cfg.remat,
        "fast_paths": sorted(kernels.enabled(args.kernels)),
        "repeats": repeats,
        "dropout": args.dropout,
        "workloads": list(only),
        "shapes": {name: shapes[name.rsplit("_", 1)[0]] for name in only},
        "timings": {},
        "phase_s": {},
        "skipped": [],
        "errors": {},
    }


def main(argv=None) -> int:
    ap, args, only, preset, cfg = parse(argv)
    t_start = time.perf_counter()
    shapes = TINY_SHAPES if args.tiny else SHAPES
    repeats = args.repeats or (1 if args.tiny else 5)
    res = new_results(args, preset, cfg, only, shapes, repeats)
    suffix = "-tiny" if args.tiny else ""
    path = (
        Path(args.json) if args.json else RESULTS / f"{res['device']}-{res['date']}-accelerator{suffix}.json"
    )

    def save():
        res["wall_s"] = time.perf_counter() - t_start
        harness.write_atomic(path, res)

    if args.resume:
        try:
            done = resume(Path(args.resume), res)
        except ValueError as e:
            ap.error(str(e))
        only = tuple(w for w in only if w not in done)
        res["workloads"] = done + list(only)
        res["shapes"].update({w: shapes[w.rsplit("_", 1)[0]] for w in only})
        log(f"resuming {args.resume}: {len(done)} workloads kept, running {list(only)}")
    model, ref_params, params = reference.make_reference(cfg)
    ctx = {
        "cfg": cfg,
        "model": model,
        "ref_params": ref_params,
        "params": params,
        "repeats": repeats,
        "warmup": 1 if args.tiny else 2,
        "compile": TINY_COMPILE if args.tiny else None,
        "dropout": args.dropout,
        "profile": Path(args.profile) if args.profile else None,
    }
    res["phase_s"]["setup"] = time.perf_counter() - t_start
    save()
    run_workloads(only, res, ctx, shapes, args.deadline_minutes, t_start, save)
    res["complete"] = (
        not res["skipped"] and not res["errors"] and all(f"{w}_speedup" in res for w in WORKLOADS)
    )
    if "runs" in res:
        res["runs"].append(
            {
                "date": res["date"],
                "commit": res["commit"],
                "wall_s": time.perf_counter() - t_start,
                "matmul_flops_bf16": res["matmul_flops_bf16"],
                "workloads": list(only),
            }
        )
    save()
    log(f"wrote {path} in {res['wall_s']:.0f} s (complete: {res['complete']})")
    return 1 if res["errors"] else 0
