"""One step under ``jax.profiler``, and a summary of its trace that fits in a results file: where the device
time went, by XLA op and by kernel, and how many kernels ran.

The summary reads the trace's XSpace (``jax.profiler.ProfileData``). On a GPU the device plane has a line
"XLA Ops" (one event per HLO op run) and one line per stream (one event per kernel launched); on the CPU the
host plane's events carry an ``hlo_op`` stat instead. Durations are summed per name over the traced step.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Callable

import jax


def trace_step(run: Callable, out_dir: Path) -> Path:
    """Run ``run()`` once (already compiled and warm) under the profiler -> the trace's ``.xplane.pb``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with jax.profiler.trace(str(out_dir)):
        jax.block_until_ready(run())
    found = sorted(out_dir.rglob("*.xplane.pb"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"jax.profiler wrote no .xplane.pb under {out_dir}")
    return found[-1]


def _stat(event, name: str):
    return next((v for k, v in event.stats if k == name), None)


def _top(totals: dict, counts: dict, n: int) -> list[dict]:
    rows = sorted(totals.items(), key=lambda kv: -kv[1])[:n]
    return [{"name": k, "ms": v / 1e6, "count": counts[k]} for k, v in rows]


def summarize(xplane: Path, top: int = 25) -> dict:
    """Device time of one traced step: ``busy_ms`` (summed over kernels, or over ops on the CPU), ``kernels``
    (launches), ``ops`` / ``top_kernels`` (the ``top`` largest, each with ms and count)."""
    from jax.profiler import ProfileData

    data = ProfileData.from_file(str(xplane))
    ops, op_n = collections.Counter(), collections.Counter()
    kern, kern_n = collections.Counter(), collections.Counter()
    device_planes = [p for p in data.planes if p.name.startswith("/device:")]
    on_device = bool(device_planes)
    for plane in device_planes or [p for p in data.planes if p.name.startswith("/host:CPU")]:
        for line in plane.lines:
            for ev in line.events:
                if on_device and line.name == "XLA Ops":
                    ops[ev.name] += ev.duration_ns
                    op_n[ev.name] += 1
                elif on_device and line.name.startswith("Stream"):
                    kern[ev.name] += ev.duration_ns
                    kern_n[ev.name] += 1
                elif not on_device and _stat(ev, "hlo_op") is not None and not ev.name.startswith("end:"):
                    ops[ev.name] += ev.duration_ns
                    op_n[ev.name] += 1
    busy = sum(kern.values()) if kern else sum(ops.values())
    return {
        "busy_ms": busy / 1e6,
        "kernels": sum(kern_n.values()),
        "op_runs": sum(op_n.values()),
        "ops": _top(ops, op_n, top),
        "top_kernels": _top(kern, kern_n, top),
    }
