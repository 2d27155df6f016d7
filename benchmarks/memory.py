"""Peak training memory of a few training steps, one implementation per process.

``python -m benchmarks.memory {ours,reference} --steps 3`` prints one JSON line. On the CPU it is host
memory: the resident set size after imports (``baseline_mb``), the peak over the whole process
(``peak_mb``) and their difference (``training_mb``: params, optimizer state, activations, compiled code).
On an accelerator it is the device's allocator: bytes in use after imports and the allocator's peak
(``memory_stats()["peak_bytes_in_use"]``), so host-side buffers do not count there.
"""

from __future__ import annotations

import argparse
import json


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status, in MB (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def device_mb(device, field: str) -> float:
    """A figure of the device allocator's ``memory_stats()``, in MB."""
    stats = device.memory_stats()
    if not stats or field not in stats:
        raise RuntimeError(f"{device} reports no {field!r} in memory_stats(): {sorted(stats or {})}")
    return stats[field] / 2**20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("impl", choices=["ours", "reference"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=64)
    args = ap.parse_args()

    import jax
    import optax

    import t5vae as tv
    from benchmarks import harness

    if args.impl == "reference":
        from benchmarks import reference

        reference.load_flax_t5()
    cfg = tv.preset("t5-small")
    device = jax.devices()[0]
    on_host = device.platform == "cpu"
    baseline = status_mb("VmRSS") if on_host else device_mb(device, "bytes_in_use")
    if args.impl == "ours":
        params = tv.t5.init(cfg, jax.random.key(0))
        step = harness.make_train_step(harness.t5vae_loss(cfg), optax.adamw(1e-4))
    else:
        model = reference.load_flax_t5()(reference.hf_config(cfg), seed=0)
        params = model.params
        step = harness.make_train_step(harness.logits_loss(reference.train_loss_fn(model)), optax.adamw(1e-4))
    opt_state = optax.adamw(1e-4).init(params)
    batch = harness.random_batch(cfg.vocab_size, args.batch, args.length)
    for i in range(args.steps):
        params, opt_state, loss = step(params, opt_state, batch, jax.random.key(i))
    jax.block_until_ready(loss)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec from the parent process, so a child
    # started by a large benchmark process would report the parent's peak
    peak = status_mb("VmHWM") if on_host else device_mb(device, "peak_bytes_in_use")
    print(
        json.dumps(
            {
                "impl": args.impl,
                "memory": "host" if on_host else device.platform,
                "baseline_mb": baseline,
                "peak_mb": peak,
                "training_mb": peak - baseline,
            }
        )
    )


if __name__ == "__main__":
    main()
