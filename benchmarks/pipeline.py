"""``python -m benchmarks.pipeline --lines 10000000 --json PATH``: the grain input pipeline (t5vae.pipeline) at
corpus scale, against what a train step consumes.

1. Builds (or reuses, in ``--dir``, default /tmp/t5vae-pipeline-bench, never the repository) an array_record
   corpus of ``--lines`` synthetic lines: the embedded corpus (``t5vae.corpus.stdlib_lines``) repeated, each pass
   in its own shuffled order with every identifier that is not a keyword or builtin renamed by a pass suffix
   (``self.x = f(y)`` -> ``self_a1.x_a1 = f_a1(y_a1)``), and, for the 512-token shape, a file of paragraphs of
   20 consecutive synthetic lines joined by newlines (``--lines / 20`` records). A tokenizer (sentencepiece,
   ``--vocab`` pieces, trained on 100,000 sampled lines) is built once and kept there too.
2. For each shape (256 x 64 tokens over the lines, 64 x 512 over the paragraphs) and each worker count, a fresh
   process builds the pipeline over the whole file and reads batches for ``--seconds``: lines/s, seconds to the
   first batch, the mean padded length, and peak host memory (VmHWM of the process and of each grain worker).
3. The in-memory path (the whole corpus as a Python list, ``data.encode_lines``, ``data.BatchStream``) on
   ``--memory-lines`` lines, for its host memory and startup.
4. What a train step consumes, as lines/s = batch / step time, with the step time an ESTIMATE (no accelerator
   here): 3 x the forward FLOPs of t5-base with a T5-VAE's 8 latent tokens (``harness.t5_forward_flops``) at 40 %
   of an H200's 989 TFLOP/s dense bf16 peak.
"""

from __future__ import annotations

import argparse
import builtins
import datetime
import json
import keyword
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import log

H200_BF16_PEAK, MFU_ASSUMED, LATENT_TOKENS = 989e12, 0.40, 8
SHAPES = {"256x64": (256, 64, "lines"), "64x512": (64, 512, "paragraphs")}
PARAGRAPH = 20  # synthetic lines per paragraph record
_NAME = re.compile(r"[A-Za-z_]\w*")
_KEEP = set(keyword.kwlist) | set(dir(builtins)) | {"self", "cls"}


def vm_mb(pid: int | str = "self", field: str = "VmHWM") -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/status")


# -- the corpus ------------------------------------------------------------------------------------


def _templates(lines):
    """Each line split into (the text between names, the names), so a pass renames it with one join."""
    out = []
    for s in lines:
        parts, names, last = [], [], 0
        for m in _NAME.finditer(s):
            if m.group() in _KEEP or (m.start() > 0 and s[m.start() - 1].isdigit()):
                continue
            parts.append(s[last : m.end()])
            names.append(m.group())
            last = m.end()
        parts.append(s[last:])
        out.append(parts)
    return out


def synthetic_lines(n: int, seed: int = 0):
    """``n`` lines: pass p of the embedded corpus in a shuffled order, names suffixed ``_a<p>`` (pass 0: as is)."""
    from t5vae import corpus

    base = corpus.stdlib_lines()
    templates, order, p, made = _templates(base), list(range(len(base))), 0, 0
    while made < n:
        random.Random(seed + p).shuffle(order)
        suffix = "" if p == 0 else f"_a{p}"
        for i in order[: n - made]:
            yield suffix.join(templates[i]) if suffix else base[i]
        made += min(len(order), n - made)
        p += 1


def build(args) -> dict:
    """The corpus files and tokenizer in ``args.dir`` (reused when they hold the asked-for counts)."""
    from t5vae import data, sources

    d = Path(args.dir)
    d.mkdir(parents=True, exist_ok=True)
    lines_path, para_path = (
        d / f"lines-{args.lines}.array_record",
        d / f"paragraphs-{args.lines}.array_record",
    )
    info_path, built = d / f"corpus-{args.lines}.json", {}
    if info_path.is_file() and lines_path.is_file() and para_path.is_file():
        built = json.loads(info_path.read_text())
        log(f"reusing {lines_path} and {para_path}")
    else:
        from array_record.python.array_record_module import ArrayRecordWriter

        t0, paragraphs, group = time.time(), ArrayRecordWriter(str(para_path), "group_size:1"), []

        def lines_and_paragraphs():  # one pass writes both files: every PARAGRAPH lines are also one paragraph
            for s in synthetic_lines(args.lines):
                group.append(s)
                if len(group) == PARAGRAPH:
                    paragraphs.write("\n".join(group).encode("utf-8"))
                    group.clear()
                yield s

        n = sources.write_lines(lines_path, lines_and_paragraphs())
        paragraphs.close()
        built = {
            "lines": n,
            "paragraphs": n // PARAGRAPH,
            "write_s": round(time.time() - t0, 1),
            "lines_bytes": lines_path.stat().st_size,
            "paragraphs_bytes": para_path.stat().st_size,
        }
        info_path.write_text(json.dumps(built))
        log(
            f"wrote {n} lines and {n // PARAGRAPH} paragraphs in {built['write_s']}s "
            f"({(built['lines_bytes'] + built['paragraphs_bytes']) / 2**20:.0f} MiB)"
        )
    tok_path = d / f"spiece-{args.vocab}.model"
    if not tok_path.is_file():
        src, _ = sources.open_source(str(lines_path))
        t0 = time.time()
        data.train_tokenizer(sources.sample_lines(src, 100_000), args.vocab).save(tok_path)
        built["tokenizer_train_s"] = round(time.time() - t0, 1)
    return {
        **built,
        "lines_file": str(lines_path),
        "paragraphs_file": str(para_path),
        "tokenizer": str(tok_path),
    }


# -- one measurement, in its own process -----------------------------------------------------------


def measure(args) -> dict:
    """Read batches for ``args.seconds`` from a fresh pipeline -> lines/s, first-batch latency, peak memory."""
    import grain
    import numpy as np
    import psutil

    from t5vae import data, pipeline, sources

    baseline = vm_mb(field="VmRSS")
    tok = data.Tokenizer.load(args.tokenizer)
    t0 = time.perf_counter()
    src, _ = sources.open_source(args.file)
    stream = pipeline.GrainBatches(
        src,
        tok,
        data.buckets_for(args.length),
        args.batch,
        seed=0,
        worker_count=int(args.workers),
        shard=grain.sharding.ShardOptions(0, 1),
    )
    next(stream)
    first = time.perf_counter() - t0
    for _ in range(2):  # warm-up: the workers' buffers fill
        next(stream)
    n, lengths, real, t1 = 0, [], 0, time.perf_counter()
    while time.perf_counter() - t1 < args.seconds:
        b = next(stream)
        n += 1
        lengths.append(b["input_ids"].shape[1])
        real += int(b["attention_mask"].sum())
    dt = time.perf_counter() - t1
    workers = {
        c.pid: vm_mb(c.pid)
        for c in psutil.Process().children(recursive=True)
        if Path(f"/proc/{c.pid}/status").exists()
    }
    out = {
        "batches": n,
        "seconds": round(dt, 2),
        "lines_per_s": round(n * args.batch / dt, 1),
        "first_batch_s": round(first, 2),
        "mean_padded_length": round(float(np.mean(lengths)), 2),
        "real_token_fraction": round(real / (args.batch * sum(lengths)), 3),
        "rss_baseline_mb": round(baseline, 1),
        "peak_rss_mb": round(vm_mb(), 1),
        "worker_peak_rss_mb": [round(v, 1) for v in workers.values()],
        "peak_rss_total_mb": round(vm_mb() + sum(workers.values()), 1),
    }
    stream.close()
    return out


def measure_memory_path(args) -> dict:
    """The in-memory path on the first ``args.lines`` lines: read them into a list, encode, one BatchStream epoch."""
    from t5vae import data, pipeline, sources  # noqa: F401  (grain imported before the RSS baseline, as before)

    baseline = vm_mb(field="VmRSS")
    tok = data.Tokenizer.load(args.tokenizer)
    t0 = time.perf_counter()
    src, _ = sources.open_source(args.file)
    lines = src.texts(range(min(args.lines, len(src))))
    t_read = time.perf_counter() - t0
    enc = data.encode_lines(tok, lines, args.length)
    t_enc = time.perf_counter() - t0 - t_read
    stream = data.BatchStream(enc, args.batch, data.buckets_for(args.length), seed=0)
    stream(0)  # builds the epoch's batches: after this, a batch is a list lookup
    first = time.perf_counter() - t0
    return {
        "lines": len(lines),
        "read_s": round(t_read, 1),
        "encode_s": round(t_enc, 1),
        "first_batch_s": round(first, 1),
        "batches_per_epoch": stream.per_epoch,
        "rss_baseline_mb": round(baseline, 1),
        "peak_rss_mb": round(vm_mb(), 1),
        "peak_rss_above_baseline_mb": round(vm_mb() - baseline, 1),
    }


def _child(kind: str, **kw) -> dict:
    argv = [sys.executable, "-m", "benchmarks.pipeline", f"--{kind}"] + [
        f"--{k.replace('_', '-')}={v}" for k, v in kw.items()
    ]
    r = subprocess.run(argv, capture_output=True, text=True, cwd=Path(__file__).parent.parent)
    if r.returncode:
        raise RuntimeError(f"{' '.join(argv)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


# -- what the accelerator consumes (an estimate) ---------------------------------------------------


def consumption(batch: int, length: int) -> dict:
    """ESTIMATED train-step time of t5-base at ``batch x length`` (source = target = length, 8 latent tokens)."""
    from benchmarks.harness import t5_forward_flops
    from t5vae.config import preset

    flops = 3 * t5_forward_flops(preset("t5-base"), batch, length, length, cross_len=LATENT_TOKENS)
    step = flops / (MFU_ASSUMED * H200_BF16_PEAK)
    return {"train_step_flops": flops, "estimated_step_s": step, "lines_per_s_needed": batch / step}


def build_parser() -> argparse.ArgumentParser:
    """The command line, with the hidden flags of the child processes that measure (``--measure``,
    ``--measure-memory-path``)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--json", help="results file (default benchmarks/results/pipeline-<cpu>-<date>.json)")
    ap.add_argument("--dir", default="/tmp/t5vae-pipeline-bench", help="where the corpus is built or reused")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--seconds", type=float, default=20.0, help="reading time per measurement")
    ap.add_argument("--workers", default="0,2", help="grain worker counts to measure")
    ap.add_argument(
        "--memory-lines", type=int, default=1_000_000, help="lines for the in-memory path (0: skip)"
    )
    ap.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--measure-memory-path", action="store_true", help=argparse.SUPPRESS)
    for k in ("file", "tokenizer"):
        ap.add_argument(f"--{k}", help=argparse.SUPPRESS)
    for k in ("batch", "length"):
        ap.add_argument(f"--{k}", type=int, help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.measure or args.measure_memory_path:
        if args.measure_memory_path:
            args.lines = args.memory_lines
        print(json.dumps(measure(args) if args.measure else measure_memory_path(args)))
        return 0
    return run(args)


def run(args) -> int:
    """The corpus, each shape and worker count in a child process, the in-memory path, and the estimate of
    what a train step consumes, into one results file."""
    from benchmarks.harness import RESULTS, machine

    t_start = time.time()
    mach = machine(2048, 1 << 28, 3)  # what every results file records: CPU model, matmul ceilings, bandwidth
    res = {
        "suite": "pipeline",
        "date": datetime.date.today().isoformat(),
        "commit": mach["commit"],
        "cpu_model": mach["cpu_model"],
        "cpu_count": mach["cpu_count"],
        "machine": mach,
        "load_average_at_start": os.getloadavg(),
        "corpus": build(args),
        "grain": {},
        "consumption_estimate": {
            "what": f"ESTIMATE, not a measurement: t5-base train step = 3 x forward FLOPs "
            f"(benchmarks.harness.t5_forward_flops, {LATENT_TOKENS} latent tokens) at "
            f"{MFU_ASSUMED:.0%} of an H200's {H200_BF16_PEAK / 1e12:.0f} TFLOP/s dense bf16 peak"
        },
    }
    c = res["corpus"]
    for shape, (batch, length, which) in SHAPES.items():
        est = consumption(batch, length)
        res["consumption_estimate"][shape] = est
        for w in [int(x) for x in args.workers.split(",")]:
            log(f"{shape} ({which}), {w} worker(s): reading for {args.seconds:.0f}s")
            m = _child(
                "measure",
                file=c[f"{which}_file"],
                tokenizer=c["tokenizer"],
                batch=batch,
                length=length,
                workers=w,
                seconds=args.seconds,
            )
            at_mean = consumption(batch, round(m["mean_padded_length"]))
            m["lines_per_s_needed_at_mean_length"] = round(at_mean["lines_per_s_needed"], 1)
            m["keeps_up"] = m["lines_per_s"] >= max(est["lines_per_s_needed"], at_mean["lines_per_s_needed"])
            res["grain"][f"{shape}_workers{w}"] = m
            log(
                f"  {m['lines_per_s']:.0f} lines/s (needed, estimated: {est['lines_per_s_needed']:.0f} at {length} "
                f"tokens, {at_mean['lines_per_s_needed']:.0f} at the mean padded length {m['mean_padded_length']}); "
                f"first batch {m['first_batch_s']}s; peak RSS {m['peak_rss_total_mb']} MB"
            )
    if args.memory_lines:
        log(f"in-memory path on {args.memory_lines} lines")
        res["memory_path"] = _child(
            "measure-memory-path",
            file=c["lines_file"],
            tokenizer=c["tokenizer"],
            batch=256,
            length=64,
            memory_lines=args.memory_lines,
        )
        log(f"  {res['memory_path']}")
    res["wall_s"], res["load_average_at_end"] = round(time.time() - t_start, 1), os.getloadavg()
    out = Path(args.json) if args.json else RESULTS / f"pipeline-cpu-{os.cpu_count()}core-{res['date']}.json"
    out.write_text(json.dumps(res, indent=2) + "\n")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
