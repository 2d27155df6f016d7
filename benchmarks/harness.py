"""Measurement helpers: alternating timed runs with medians, compiles side by side and their planned memory, the
machine's matmul and memory ceilings, what every results file records about the machine and the code, and
writing a results file atomically."""

from __future__ import annotations

import concurrent.futures
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from t5vae import files

RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(msg, flush=True)


def device_name() -> str:
    d = jax.devices()[0]
    if d.platform == "cpu":
        return f"cpu-{os.cpu_count()}core"
    return d.device_kind.lower().replace(" ", "-")


def cpu_model() -> str | None:
    """``lscpu``'s "Model name" (the CPU changes between machines of one kind; every result names it)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or None
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), None)


def git_commit() -> str | None:
    """The checkout's commit (with ``+dirty`` for uncommitted changes outside ``benchmarks/results``, which a
    re-run overwrites), so a result names the code it timed."""
    root = Path(__file__).parent.parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":(exclude)benchmarks/results",
            ],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+dirty" if dirty else "")


def machine(matmul_n: int, read_bytes: int, repeats: int) -> dict:
    """What every results file records about where it ran: the CPU model (``lscpu``), the device, and the
    float32 / bfloat16 matmul ceilings and read bandwidth measured now (an n x n x n matmul, a reduction
    over ``read_bytes``)."""
    f32 = matmul_ceiling(jnp.float32, matmul_n, repeats)
    bf16 = matmul_ceiling(jnp.bfloat16, matmul_n, repeats)
    bw = memory_bandwidth(read_bytes, repeats)
    log(
        f"matmul ceiling: float32 {f32 / 1e9:.1f} GFLOP/s, bfloat16 {bf16 / 1e9:.1f} GFLOP/s; read bandwidth "
        f"{bw / 1e9:.1f} GB/s"
    )
    return {
        "device": device_name(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "commit": git_commit(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "matmul_n": matmul_n,
        "matmul_flops_f32": f32,
        "matmul_flops_bf16": bf16,
        "read_bandwidth_bytes_s": bw,
    }


def record_failure(res: dict, name: str, e: BaseException) -> None:
    """Keep a part's exception under ``res["errors"][name]`` (cut to 2,000 characters) and log it: one part
    that fails (out of memory, a kernel a backend rejects) leaves the others to run and be kept."""
    res["errors"][name] = f"{type(e).__name__}: {e}"[:2000]
    log(f"{name}: failed: {res['errors'][name][:400]}")


def write_atomic(path: Path, obj: dict) -> None:
    """A results file, in its folder (made if missing), through the project's one atomic writer: never half a
    file, and the umask's permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_json(path, obj)


def run_once(fn: Callable) -> float:
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def alternate(fns: dict[str, Callable], repeats: int, warmup: int = 1) -> dict[str, dict]:
    """Run each zero-arg callable ``warmup`` times, then ``repeats`` rounds taking turns; medians in seconds."""
    for fn in fns.values():
        for _ in range(warmup):
            run_once(fn)
    times: dict[str, list] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            times[k].append(run_once(fn))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "times_s": v} for k, v in times.items()}


def compile_seconds(fn: Callable, *args, compiler_options: dict | None = None) -> tuple[float, object]:
    """Time lowering + compiling a jitted function (no persistent cache) -> (seconds, compiled)."""
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile(compiler_options)
    return time.perf_counter() - t0, compiled


def planned_bytes(compiled) -> int:
    """XLA's buffer plan of a compiled program: arguments + outputs + temporaries - donated aliases."""
    m = compiled.memory_analysis()
    peak = getattr(m, "peak_memory_in_bytes", None)
    if peak is None:
        peak = (
            m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes
        )
    return int(peak)


def concurrently(fns: dict[str, Callable]) -> dict:
    """Call each zero-arg function in its own thread -> {name: result}. XLA compiles outside the GIL, so the
    two sides of a workload compile side by side on a many-core host instead of one after the other."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(fns)) as pool:
        futures = {name: pool.submit(fn) for name, fn in fns.items()}
        return {name: f.result() for name, f in futures.items()}


def matmul_ceiling(dtype, n: int, repeats: int) -> float:
    """FLOP/s of an n x n x n matmul through jax (the best of ``repeats`` runs)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32).astype(dtype)
    mm = jax.jit(lambda a, b: a @ b)
    run_once(lambda: mm(a, b))
    best = min(run_once(lambda: mm(a, b)) for _ in range(repeats))
    return 2 * n**3 / best


def memory_bandwidth(n_bytes: int, repeats: int) -> float:
    """Bytes/s of reading a large float32 array once (a reduction, so nothing is written back)."""
    x = jnp.ones((n_bytes // 4,), jnp.float32)
    total = jax.jit(jnp.sum)
    run_once(lambda: total(x))
    best = min(run_once(lambda: total(x)) for _ in range(repeats))
    return n_bytes / best


def masked_cross_entropy(logits_BTV: jax.Array, labels_BT: jax.Array, mask_BT: jax.Array) -> jax.Array:
    """Mean token cross-entropy over non-pad positions — the same loss for both implementations."""
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BTV.astype(jnp.float32), labels_BT)
    return jnp.sum(ce * mask_BT) / jnp.maximum(jnp.sum(mask_BT), 1)


def logits_loss(logits_fn: Callable) -> Callable:
    """``loss(params, batch, key)`` from a ``logits(params, batch, key)`` function (the reference's way)."""
    return lambda params, batch, key: masked_cross_entropy(
        logits_fn(params, batch, key), batch["labels"], batch["decoder_attention_mask"]
    )


def t5vae_loss(cfg) -> Callable:
    """The same masked mean cross-entropy through t5vae's own path: encoder, decoder, then ``token_nll``
    (the LM head fused with the cross-entropy and its hand-written backward)."""
    import t5vae as tv

    def loss(params, batch, key):
        x = tv.t5.apply_hidden(
            params,
            cfg,
            batch["input_ids"],
            batch["attention_mask"],
            batch["decoder_input_ids"],
            batch["decoder_attention_mask"],
            dropout_key=key,
        )
        mask = batch["decoder_attention_mask"]
        nll, _ = tv.t5.token_nll(params, cfg, x, jnp.where(mask > 0, batch["labels"], 0))
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1)

    return loss


def make_train_step(loss_fn: Callable, optimizer) -> Callable:
    """One jitted step: ``loss_fn(params, batch, key)`` (forward with dropout + cross-entropy), backward,
    optimizer update (state donated)."""

    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch, key)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return jax.jit(step, donate_argnums=(0, 1))


def stepping(step: Callable, state: dict, name: str, batch: dict, key) -> Callable:
    """A zero-arg callable for :func:`alternate`: one ``step`` of side ``name`` from ``state[name]`` (params,
    optimizer state; the step donates them), storing the new state there; returns the loss."""

    def run():
        p, o, loss = step(*state[name], batch, key)
        state[name] = (p, o)
        return loss

    return run


def random_batch(
    vocab: int, batch: int, length: int, seed: int = 0, target_length: int | None = None
) -> dict:
    """Token ids in [2, vocab) with some right padding, labels and decoder inputs (shifted right); the labels
    are the inputs unless ``target_length`` asks for targets of their own (a seq2seq batch)."""
    rng = np.random.default_rng(seed)

    def padded(n):
        ids = rng.integers(2, vocab, size=(batch, n)).astype(np.int32)
        mask = np.arange(n)[None] < rng.integers(n // 2, n + 1, size=batch)[:, None]
        return np.where(mask, ids, 0).astype(np.int32), mask.astype(np.int32)

    inputs, mask = padded(length)
    labels, label_mask = (inputs, mask) if target_length is None else padded(target_length)
    dec_in = np.concatenate([np.zeros((batch, 1), np.int32), labels[:, :-1]], 1)
    return {
        k: jnp.asarray(v)
        for k, v in dict(
            input_ids=inputs,
            attention_mask=mask,
            labels=labels,
            decoder_input_ids=dec_in,
            decoder_attention_mask=label_mask,
        ).items()
    }


def t5_forward_flops(cfg, batch: int, src_len: int, tgt_len: int, cross_len: int | None = None) -> float:
    """Model FLOPs of one teacher-forced forward pass (matmuls only: 2 x multiply-adds). The decoder
    cross-attends to ``cross_len`` states (default ``src_len``; a T5-VAE's latent tokens)."""
    S = src_len if cross_len is None else cross_len
    D, F, H, K, V = cfg.d_model, cfg.d_ff, cfg.num_heads, cfg.d_kv, cfg.vocab_size
    n_wi = 2 if cfg.is_gated else 1
    proj = D * H * K  # one of q, k, v, o, per position
    mlp = (n_wi + 1) * D * F
    enc = src_len * (4 * proj + mlp) + 2 * src_len * src_len * H * K  # + QK^T and PV
    dec = (
        tgt_len * (4 * proj + 2 * proj + mlp)  # self-attention, cross q/o, mlp per target position
        + S * 2 * proj  # cross-attention k/v from the states it attends to
        + 2 * tgt_len * tgt_len * H * K
        + 2 * tgt_len * S * H * K
    )
    return 2.0 * batch * (cfg.num_layers * enc + cfg.num_decoder_layers * dec + tgt_len * D * V)
