"""``python -m benchmarks.dpa [--tiny] [--json PATH]``: is ``kernels="dpa"`` (attention through
``jax.nn.dot_product_attention``, cuDNN's fused kernel on a GPU in bf16) the same function as the plain einsum
attention, and is it faster?

Without dropout (dpa has no attention dropout; with dropout the model runs the einsum path anyway), in
bfloat16 compute with float32 params, at the accelerator suite's shapes (t5-base unless ``--preset``):

- the T5-VAE loss at 256 x 64 and the seq2seq loss at 64 x 512/128: loss and gradients of ``plain`` against
  ``dpa``, one compile each. Pass: loss within 1 % relative, gradient cosine >= 0.99 (all leaves together),
  every relative-position-bias gradient present (non-zero) and finite. Each leaf's cosine is kept too.
- the same compiled loss-and-gradient functions, timed alternately (the optimizer update is the same code on
  both sides, so this is the whole difference dpa makes to a dropout-free train step);
- the encoder pass of generation at 64 x 64 (the only attention in generation that dpa changes: the decode
  loop attends one query at a time through its own cache).

Exit status 1 when a check fails. The JSON (default benchmarks/results/<device>-<date>-dpa.json) is written
after each part.
"""

from __future__ import annotations

import argparse
import datetime
import time
from pathlib import Path

import jax
import numpy as np

import t5vae as tv
from benchmarks import harness
from benchmarks.accelerator import SHAPES, TINY_SHAPES
from benchmarks.harness import RESULTS, log
from t5vae import kernels

SIDES = ("plain", "dpa")


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    den = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / den) if den > 0 else float("nan")


def compare_grads(g_plain: dict, g_dpa: dict) -> dict:
    """Global and per-leaf gradient cosines of two gradient trees, and what the bias gradients look like."""
    flat = {
        side: {
            jax.tree_util.keystr(k): np.asarray(v, np.float32)
            for k, v in jax.tree_util.tree_leaves_with_path(g)
        }
        for side, g in zip(SIDES, (g_plain, g_dpa))
    }
    names = list(flat["plain"])
    leaf_cos = {n: _cos(flat["plain"][n], flat["dpa"][n]) for n in names}
    whole = _cos(
        np.concatenate([flat["plain"][n].ravel() for n in names]),
        np.concatenate([flat["dpa"][n].ravel() for n in names]),
    )
    bias = {
        n: {
            "finite": bool(np.isfinite(flat["dpa"][n]).all()),
            "norm_dpa": float(np.linalg.norm(flat["dpa"][n])),
            "norm_plain": float(np.linalg.norm(flat["plain"][n])),
            "cosine": leaf_cos[n],
        }
        for n in names
        if "relpos_bias" in n
    }
    worst = sorted(leaf_cos.items(), key=lambda kv: kv[1])[:5]
    return {
        "grad_cosine": whole,
        "leaf_cosine_min": worst,
        "relpos_bias": bias,
        "all_finite": bool(all(np.isfinite(v).all() for v in flat["dpa"].values())),
    }


def verdict(out: dict) -> list[str]:
    """The check's failures (empty when dpa passes)."""
    bad = []
    if not out["loss_rel_diff"] <= 0.01:
        bad.append(f"loss differs by {out['loss_rel_diff']:.2%} (> 1 %)")
    if not out["grad_cosine"] >= 0.99:
        bad.append(f"gradient cosine {out['grad_cosine']:.4f} (< 0.99)")
    if not out["all_finite"]:
        bad.append("non-finite gradients")
    if not out["relpos_bias"]:
        bad.append("no relative-position-bias gradient in the tree")
    for n, b in out["relpos_bias"].items():
        if not (b["finite"] and b["norm_dpa"] > 0):
            bad.append(f"bias gradient {n}: finite={b['finite']} norm={b['norm_dpa']:.3g}")
    return bad


def loss_fns(kind: str, cfg: tv.T5Config, shape) -> tuple[dict, dict, dict]:
    """(loss function per side, params per side, batch) for the VAE or the seq2seq workload."""
    B, S, T = shape
    if kind == "vae_train":
        vcfg = {side: tv.Config(t5=cfg.replace(kernels=side), max_length=S) for side in SIDES}
        params = tv.init(vcfg["plain"], jax.random.key(0))
        batch = harness.random_batch(cfg.vocab_size, B, S, seed=1)
        fns = {side: (lambda c: lambda p, b: tv.loss(p, c, b, None, 1000)[0])(vcfg[side]) for side in SIDES}
    else:
        params = tv.t5.init(cfg, jax.random.key(0))
        batch = harness.random_batch(cfg.vocab_size, B, S, seed=2, target_length=T)
        fns = {
            side: (lambda f: lambda p, b: f(p, b, None))(harness.t5vae_loss(cfg.replace(kernels=side)))
            for side in SIDES
        }
    return fns, params, batch


def check_train(kind: str, cfg: tv.T5Config, shape, repeats: int) -> dict:
    fns, params, batch = loss_fns(kind, cfg, shape)
    compiled, res = {}, {"compile_s": {}}
    for side in SIDES:
        res["compile_s"][side], compiled[side] = harness.compile_seconds(
            jax.jit(jax.value_and_grad(fns[side])), params, batch
        )
    (l_p, g_p), (l_d, g_d) = (compiled[side](params, batch) for side in SIDES)
    res["loss"] = {"plain": float(l_p), "dpa": float(l_d)}
    res["loss_rel_diff"] = abs(float(l_d) - float(l_p)) / max(abs(float(l_p)), 1e-30)
    res.update(compare_grads(g_p, g_d))
    del g_p, g_d
    res["timings"] = harness.alternate(
        {side: (lambda f: lambda: f(params, batch))(compiled[side]) for side in SIDES}, repeats, warmup=2
    )
    res["speedup"] = res["timings"]["plain"]["median_s"] / res["timings"]["dpa"]["median_s"]
    res["failures"] = verdict(res)
    return res


def time_encoder(cfg: tv.T5Config, shape, repeats: int) -> dict:
    B, S, _ = shape
    params = tv.t5.init(cfg, jax.random.key(0))
    batch = harness.random_batch(cfg.vocab_size, B, S, seed=3)
    enc = {
        side: jax.jit(lambda p, i, m, c=cfg.replace(kernels=side): tv.t5.encode(p, c, i, m)) for side in SIDES
    }
    run = {
        side: (lambda f: lambda: f(params, batch["input_ids"], batch["attention_mask"]))(enc[side])
        for side in SIDES
    }
    h = {side: np.asarray(run[side](), np.float32) for side in SIDES}
    valid = np.asarray(batch["attention_mask"], bool)[..., None]
    rel = float(
        np.linalg.norm(np.where(valid, h["dpa"] - h["plain"], 0))
        / np.linalg.norm(np.where(valid, h["plain"], 0))
    )
    t = harness.alternate(run, repeats, warmup=2)
    return {"rel_diff": rel, "timings": t, "speedup": t["plain"]["median_s"] / t["dpa"]["median_s"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.dpa", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--json", help="results file (default benchmarks/results/<device>-<date>-dpa[-tiny].json)"
    )
    ap.add_argument("--tiny", action="store_true", help="tiny preset and shapes: the CI check of this script")
    ap.add_argument("--preset", help="T5 preset (default t5-base; tiny with --tiny)")
    ap.add_argument(
        "--dtype", default="bfloat16", help="compute dtype (default bfloat16; params stay float32)"
    )
    ap.add_argument("--repeats", type=int, default=None, help="timed rounds (default 10; 1 with --tiny)")
    args = ap.parse_args(argv)
    preset = args.preset or ("tiny" if args.tiny else "t5-base")
    cfg = tv.preset(preset, dropout_rate=0.0, dtype=args.dtype, param_dtype="float32")
    shapes, repeats = (TINY_SHAPES, 1) if args.tiny else (SHAPES, 10)
    repeats = args.repeats or repeats
    t0 = time.perf_counter()
    res = {
        "suite": "dpa",
        "model": preset,
        "dtype": args.dtype,
        "device": harness.device_name(),
        "device_kind": jax.devices()[0].device_kind,
        "jax": jax.__version__,
        "commit": harness.git_commit(),
        "date": datetime.date.today().isoformat(),
        "dpa_implementation_on_this_backend": kernels.dpa_implementation(args.dtype) or "xla",
        "shapes": shapes,
        "repeats": repeats,
        "errors": {},
    }
    suffix = "-tiny" if args.tiny else ""
    path = Path(args.json) if args.json else RESULTS / f"{res['device']}-{res['date']}-dpa{suffix}.json"
    parts = {
        "vae_train": lambda: check_train("vae_train", cfg, shapes["vae_train"], repeats),
        "seq2seq_train": lambda: check_train("seq2seq_train", cfg, shapes["seq2seq_train"], repeats),
        "generate_encoder": lambda: time_encoder(cfg, shapes["generate"], repeats),
    }
    for name, part in parts.items():
        t = time.perf_counter()
        try:
            res[name] = part()
            extra = (
                ""
                if "failures" not in res[name]
                else (
                    f", loss diff {res[name]['loss_rel_diff']:.2e}, grad cosine {res[name]['grad_cosine']:.5f}, "
                    f"failures {res[name]['failures'] or 'none'}"
                )
            )
            log(f"{name}: dpa {res[name]['speedup']:.2f}x plain{extra} ({time.perf_counter() - t:.0f} s)")
        except Exception as e:  # cuDNN may reject a shape: keep the reason, run the other parts
            harness.record_failure(res, name, e)
        res["wall_s"] = time.perf_counter() - t0
        harness.write_atomic(path, res)
    failed = res["errors"] or any(res[k].get("failures") for k in parts if k in res)
    res["passed"] = not failed
    harness.write_atomic(path, res)
    log(f"wrote {path} (passed: {res['passed']})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
