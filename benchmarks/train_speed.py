"""``python -m benchmarks.train_speed [--batch-sizes 64,1024] [--seconds 30]``: steps per second of the
default ``t5vae train`` (the embedded corpus, the default model) at each batch size, on whatever device JAX
sees. The time counts from the process's start, and the corpus, the tokenizer and the first compiles take
20-30 s of it on an H200 machine, hence the 60 s default.

Each batch size is one ``t5vae train`` process with ``--max-minutes`` set to the time given, in a fresh run
directory, no evaluation and no checkpoint before the end. The second and later runs reuse the first run's
tokenizer. From the run's ``metrics.jsonl`` (one row per step, with seconds since the start): the time to
the first step (corpus, tokenizer, first compile) and the steady rate, steps over the second half of the
logged time, when every length bucket has compiled. Results go to
benchmarks/results/<device>-<date>-train-speed.json (``--json``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax

from benchmarks import harness
from benchmarks.harness import RESULTS, log


def steady_rate(rows: list[dict]) -> dict:
    """Steps/s over the second half of the time after step 1, time to step 1, steps in all."""
    if len(rows) < 4:
        raise ValueError(
            f"{len(rows)} steps logged, too few to measure a rate: give the run more --seconds (the "
            f"time counts from the start, corpus, tokenizer and first compiles included)"
        )
    t_end = rows[-1]["time"]
    t_half = rows[0]["time"] + (t_end - rows[0]["time"]) / 2
    late = [r for r in rows if r["time"] >= t_half]
    span = late[-1]["time"] - late[0]["time"]
    return {
        "steps": rows[-1]["step"],
        "first_step_s": rows[0]["time"],
        "logged_s": t_end,
        "steady_steps_per_s": (late[-1]["step"] - late[0]["step"]) / span if span > 0 else None,
    }


def run_train(out: Path, batch: int, seconds: float, extra: list[str], timeout: float) -> dict:
    cmd = [
        sys.executable,
        "-c",
        "from t5vae.cli import main; raise SystemExit(main())",
        "train",
        "--out",
        str(out),
        "--batch-size",
        str(batch),
        "--max-minutes",
        f"{seconds / 60:.4f}",
        "--eval-every",
        "0",
        "--checkpoint-every",
        "1000000",
        "--log-every",
        "1000000",
        "--progress",
        "false",
        *extra,
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(
            f"t5vae train --batch-size {batch} exited {proc.returncode}: {proc.stderr[-1500:]}"
        )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    res = steady_rate(rows)
    res.update(
        batch_size=batch,
        wall_s=wall,
        steady_sequences_per_s=None
        if res["steady_steps_per_s"] is None
        else res["steady_steps_per_s"] * batch,
    )
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.train_speed", description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", default="64,1024", help="comma-separated (default 64,1024)")
    ap.add_argument(
        "--seconds",
        type=float,
        default=60.0,
        help="--max-minutes of each run, in seconds, from its start (default 60)",
    )
    ap.add_argument("--json", help="results file")
    ap.add_argument(
        "--train-args", default="", help="more `t5vae train` flags, one string (e.g. '--t5-d-model 64')"
    )
    args = ap.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch_sizes.split(",")]
    except ValueError:
        ap.error(f"--batch-sizes must be integers joined by commas, got {args.batch_sizes!r}")
    if args.seconds <= 0 or min(batches) < 1:
        ap.error("--seconds and every batch size must be positive")
    res = {
        "suite": "train_speed",
        "device": harness.device_name(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "commit": harness.git_commit(),
        "cpu_model": harness.cpu_model(),
        "date": datetime.date.today().isoformat(),
        "seconds": args.seconds,
        "train_args": args.train_args,
        "runs": {},
        "errors": {},
    }
    path = Path(args.json) if args.json else RESULTS / f"{res['device']}-{res['date']}-train-speed.json"
    with tempfile.TemporaryDirectory(prefix="t5vae-train-speed-") as tmp:
        tokenizer: list[str] = []
        for b in batches:
            out = Path(tmp) / f"b{b}"
            try:
                r = res["runs"][str(b)] = run_train(
                    out, b, args.seconds, args.train_args.split() + tokenizer, timeout=args.seconds + 300
                )
                log(
                    f"batch {b}: {r['steady_steps_per_s']:.1f} steps/s steady ({r['steps']} steps, first step at "
                    f"{r['first_step_s']:.1f} s)"
                )
                tokenizer = tokenizer or ["--tokenizer", str(out / "spiece.model")]
            except Exception as e:
                harness.record_failure(res, str(b), e)
            harness.write_atomic(path, res)
    log(f"wrote {path}")
    return 1 if res["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
