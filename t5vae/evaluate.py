"""Evaluation on held-out lines, through :class:`t5vae.text.Model`: greedy reconstruction from the latent
(token accuracy, exact match by length, corpus BLEU-4), held-out MMD, active units, mutual information, and
interpolation quality on paths between random pairs: how many interior points differ from both decoded ends
and how many paths are smooth (t5vae.scores: edit distance in Python tokens for code, in words for prose),
overall and by the length of a path's longer end. For code also how many interior points parse, and a linear
probe of the statement kind; for prose how many points ran to max_length, and lengths in words."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import jax.numpy as jnp
import numpy as np

from t5vae import bottleneck, data, files, latent, rundir, scores
from t5vae.names import (
    DEFAULT_BEAMS,
    DEFAULT_INTERPOLATION,
    LANGUAGES,
    LENGTH_BUCKETS,
    decoders_for,
    line_length,
    parses,
    statement_kind,
)
from t5vae.text import Model


def evaluate(
    model: Model,
    lines: Sequence[str],
    *,
    pairs: int = 100,
    batch_size: int = 128,
    seed: int = 0,
    steps: int = 9,
    kind: str = DEFAULT_INTERPOLATION,
    method: str = "greedy",
    num_beams: int = DEFAULT_BEAMS,
    language: str = "code",
) -> dict:
    """All held-out metrics as a flat dict (see the module docstring); ``examples`` holds one interpolation.
    Reconstruction is always greedy; ``method`` decodes the interpolation paths ("greedy", or "beam" or
    "beam-parse" with ``num_beams``); ``language`` ("code" or "prose") chooses the path measures and the
    length buckets."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
    if method not in decoders_for(language):
        raise ValueError(f"method must be one of {decoders_for(language)} for {language}, got {method!r}")
    cfg = model.cfg
    enc = data.encode_lines(model.tokenizer, lines, cfg.max_length)
    z = model.codes(enc, batch_size)
    toks = model.decode_ids(z, batch_size=batch_size)
    n_tok = n_ok = 0
    exact = np.zeros(len(lines), bool)
    for i, (target, got) in enumerate(zip(enc.ids, toks)):
        got = got[: len(target)]
        n_tok += len(target)
        n_ok += int(np.sum(got == target[: len(got)]))
        exact[i] = len(got) == len(target) and np.array_equal(got, target)
    exact &= ~enc.truncated  # a line cut to max_length tokens is never reconstructed exactly
    rng = np.random.default_rng(seed)
    decoded = [model.tokenizer.decode(t) for t in toks]
    results = {
        "n_lines": len(lines),
        "n_truncated": enc.n_truncated,
        "language": language,
        "recon_token_acc": n_ok / max(n_tok, 1),
        "recon_exact_match": int(exact.sum()) / max(len(lines), 1),
        "recon_bleu4": scores.corpus_bleu(lines, decoded),
        **latent_spread(z, cfg.bandwidth, rng),
    }
    results.update(exact_by_length(lines, exact, language))
    results.update(mutual_information(z, cfg.latent_noise or MI_SIGMA, seed))
    how = {"steps": steps, "kind": kind, "method": method, "num_beams": num_beams, "batch_size": batch_size}
    if language == "code":
        results.update(linear_probe(lines, z, seed))
        results.update(interpolation_quality(model, lines, z, pairs, rng, **how))
    else:
        results.update(prose_paths(model, lines, z, pairs, rng, **how))
    return results


def latent_spread(z: np.ndarray, bandwidth: float, rng: np.random.Generator) -> dict:
    """Held-out MMD between (up to 2,048 of) the codes' latent vectors and Gaussian samples, and how many of
    the code's units vary across lines (variance > 0.01)."""
    flat = z.reshape(-1, z.shape[-1])
    sub = flat[rng.permutation(len(flat))[:2048]]
    prior = rng.standard_normal(sub.shape).astype(np.float32)
    held_mmd = float(bottleneck.mmd(jnp.asarray(sub), jnp.asarray(prior), bandwidth, unbiased=True))
    unit_var = z.reshape(len(z), -1).var(axis=0)
    return {
        "heldout_mmd": held_mmd,
        "active_units": int(np.sum(unit_var > 0.01)),
        "latent_units": unit_var.size,
    }


def decoded_paths(model: Model, lines, z, pairs, rng, steps, kind, method, num_beams, batch_size, ends: bool):
    """``pairs`` random pairs of distinct lines and their codes' paths decoded (``method``): ``(idx [pairs, 2],
    token ids [pairs, points, max_length], texts [pairs, points])``, the points being the ``steps`` interior
    ones, and both ends too with ``ends``."""
    idx = np.stack([rng.choice(len(lines), 2, replace=False) for _ in range(pairs)])
    keep = slice(None) if ends else slice(1, -1)
    paths = np.stack([np.asarray(latent.interpolate(z[a], z[b], steps + 2, kind))[keep] for a, b in idx])
    beams = {"num_beams": num_beams} if method != "greedy" else {}
    ids = np.asarray(
        model.decode_ids(paths.reshape((-1,) + z.shape[1:]), method=method, batch_size=batch_size, **beams)
    )
    texts = np.array([model.tokenizer.decode(t) for t in ids], dtype=object).reshape(pairs, -1)
    return idx, ids.reshape(pairs, texts.shape[1], -1), texts


def interpolation_quality(
    model: Model,
    lines,
    z,
    pairs,
    rng,
    steps=9,
    kind=DEFAULT_INTERPOLATION,
    method="greedy",
    num_beams=DEFAULT_BEAMS,
    batch_size=128,
) -> dict:
    """For ``pairs`` random pairs of distinct lines: decode (``method``) their codes' whole path (``kind`` as
    in :func:`t5vae.interpolate`; ``steps`` interior points and both ends). An interior point is valid when
    it parses and distinct when it differs from both decoded ends; a path is smooth by
    :func:`t5vae.scores.is_smooth` in Python tokens."""
    if len(lines) < 2 or pairs <= 0:
        return {"interp_pairs": 0}
    idx, _, texts = decoded_paths(
        model, lines, z, pairs, rng, steps, kind, method, num_beams, batch_size, True
    )
    valid = np.vectorize(parses, otypes=[bool])(texts[:, 1:-1])
    distinct = _distinct(texts)
    smooth = np.array([scores.is_smooth(r, scores.code_tokens) for r in texts])
    a, b = idx[0]
    return {
        "interp_pairs": int(pairs),
        "interp_kind": kind,
        "interp_method": method,
        "interp_valid": float(valid.mean()),
        "interp_distinct": float(distinct.mean()),
        "interp_valid_and_distinct": float((valid & distinct).mean()),
        "interp_smooth": float(smooth.mean()),
        **paths_by_length(
            lines,
            idx,
            {"interp_valid_and_distinct": (valid & distinct).mean(1), "interp_smooth": smooth},
            "code",
        ),
        "example": [lines[a]] + list(texts[0][1:-1]) + [lines[b]],
    }


def _distinct(texts: np.ndarray) -> np.ndarray:
    """[pairs, steps]: whether each interior point of each decoded path (ends included) differs from both
    decoded ends."""
    return np.array([[t != row[0] and t != row[-1] for t in row[1:-1]] for row in texts], bool)


def paths_by_length(lines: Sequence[str], idx: np.ndarray, per_path: dict, language: str) -> dict:
    """Per-path figures ``per_path`` (name -> [pairs]) averaged within each length bucket of a path's longer
    end (characters for code, words for prose): ``interp_smooth_len_0_40``, with ``n_pairs_len_0_40``."""
    longer = np.array([max(line_length(lines[a], language), line_length(lines[b], language)) for a, b in idx])
    out = {}
    for lo, hi in LENGTH_BUCKETS[language]:
        sel = (longer >= lo) & (longer <= (hi if hi is not None else longer.max(initial=0)))
        if sel.any():
            tail = f"_len_{lo}_{hi}" if hi is not None else f"_len_{lo}_up"
            out["n_pairs" + tail] = int(sel.sum())
            out.update({name + tail: float(np.mean(v[sel])) for name, v in per_path.items()})
    return out


def prose_paths(
    model: Model,
    lines,
    z,
    pairs,
    rng,
    steps=9,
    kind=DEFAULT_INTERPOLATION,
    method="greedy",
    num_beams=DEFAULT_BEAMS,
    batch_size=128,
) -> dict:
    """For ``pairs`` random pairs of distinct sentences: decode their codes' whole path (``steps`` interior
    points and both ends). An interior point is distinct when it differs from both decoded ends; a path is
    smooth by :func:`t5vae.scores.is_smooth`; a point whose decoding never ended (a phrase repeated until
    max_length, say) counts as degenerate."""
    if len(lines) < 2 or pairs <= 0:
        return {"interp_pairs": 0}
    idx, ids, texts = decoded_paths(
        model, lines, z, pairs, rng, steps, kind, method, num_beams, batch_size, True
    )
    ran_out = ~np.any(ids == model.cfg.t5.eos_token_id, axis=2)  # no end
    distinct = _distinct(texts)
    smooth = np.array([scores.is_smooth(r) for r in texts])
    a, b = idx[0]
    return {
        "interp_pairs": int(pairs),
        "interp_kind": kind,
        "interp_method": method,
        "interp_distinct": float(distinct.mean()),
        "interp_smooth": float(smooth.mean()),
        "interp_degenerate": float(ran_out[:, 1:-1].mean()),
        **paths_by_length(
            lines, idx, {"interp_distinct": distinct.mean(1), "interp_smooth": smooth}, "prose"
        ),
        "example": [lines[a]] + list(texts[0][1:-1]) + [lines[b]],
    }


# -- latent diagnostics ------------------------------------------------------------------------------

MI_SIGMA = 0.1  # the posterior's std for the MI estimate when the model adds no latent noise


def exact_by_length(lines: Sequence[str], exact: np.ndarray, language: str = "code") -> dict:
    """Exact-match reconstruction per length bucket (characters for code, words for prose):
    ``recon_exact_len_41_60`` etc."""
    n = np.array([line_length(s, language) for s in lines])
    out = {}
    for lo, hi in LENGTH_BUCKETS[language]:
        sel = (n >= lo) & (n <= (hi if hi is not None else n.max(initial=0)))
        if sel.any():
            name = f"recon_exact_len_{lo}_{hi}" if hi is not None else f"recon_exact_len_{lo}_up"
            out[name], out[name.replace("recon_exact", "n")] = float(exact[sel].mean()), int(sel.sum())
    return out


def mutual_information(z: np.ndarray, sigma: float, seed: int = 0, max_lines: int = 2048) -> dict:
    """I(x; z) as Optimus estimates it, E[log q(z|x)] - E[log q(z)], with q(z|x) = N(code(x), sigma^2 I) and
    q(z) the mixture of the lines' posteriors; one noisy draw per line. The encoder itself is deterministic,
    so ``sigma`` (the model's latent_noise, else MI_SIGMA) sets the scale; the estimate is at most log(n):
    near it, the lines' codes stay apart at that noise; near 0, the codes have collapsed together."""
    x = z.reshape(len(z), -1)[:max_lines].astype(np.float64)
    if len(x) < 2:
        return {}
    noisy = x + sigma * np.random.default_rng(seed).standard_normal(x.shape)
    d2 = (noisy**2).sum(1)[:, None] + (x**2).sum(1)[None, :] - 2 * noisy @ x.T  # [n, n] squared distances
    log_q = -0.5 * np.maximum(d2, 0) / sigma**2  # log N(noisy_i; x_j, sigma^2) up to a shared constant
    log_marginal = np.logaddexp.reduce(log_q, axis=1) - np.log(len(x))
    return {
        "mutual_info": float(np.mean(np.diag(log_q) - log_marginal)),
        "mutual_info_max": float(np.log(len(x))),
        "mutual_info_sigma": float(sigma),
    }


def linear_probe(
    lines: Sequence[str], z: np.ndarray, seed: int = 0, steps: int = 300, l2: float = 1e-3
) -> dict:
    """Accuracy of a logistic-regression classifier (softmax, numpy, full-batch gradient descent) that
    predicts a line's statement kind from its code, trained on half the lines and tested on the other half,
    against the majority baseline (the most common kind of the training half)."""
    kinds = np.array([statement_kind(s) for s in lines])
    if len(lines) < 20 or len(set(kinds)) < 2:
        return {}
    test = np.random.default_rng(seed).permutation(len(lines))[: len(lines) // 2]
    is_test = np.zeros(len(lines), bool)
    is_test[test] = True
    classes, y = np.unique(kinds, return_inverse=True)
    x = z.reshape(len(z), -1).astype(np.float64)
    x = (x - x[~is_test].mean(0)) / (x[~is_test].std(0) + 1e-6)
    x = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    w = np.zeros((x.shape[1], len(classes)))
    onehot = np.eye(len(classes))[y[~is_test]]
    xt = x[~is_test]
    for _ in range(steps):
        logits = xt @ w
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        w -= 0.5 * (xt.T @ (p - onehot) / len(xt) + l2 * w)
    majority = np.bincount(y[~is_test], minlength=len(classes)).argmax()
    return {
        "probe_accuracy": float(np.mean((x[is_test] @ w).argmax(1) == y[is_test])),
        "probe_majority": float(np.mean(y[is_test] == majority)),
        "probe_classes": int(len(classes)),
    }


# What the learning curve records (t5vae.train.fit's ``curve``), per language.
CURVE_KEYS = {
    "code": (
        "recon_token_acc",
        "recon_exact_match",
        "recon_bleu4",
        "interp_valid",
        "interp_distinct",
        "interp_smooth",
        "heldout_mmd",
    ),
    "prose": (
        "recon_token_acc",
        "recon_exact_match",
        "recon_bleu4",
        "interp_distinct",
        "interp_smooth",
        "heldout_mmd",
    ),
}

ROWS = [
    ("recon_token_acc", "greedy reconstruction token accuracy", "{:.3f}"),
    ("recon_exact_match", "greedy reconstruction exact match", "{:.3f}"),
    ("recon_bleu4", "greedy reconstruction corpus BLEU-4 (words)", "{:.3f}"),
    ("heldout_mmd", "held-out MMD (unbiased)", "{:.4f}"),
    ("active_units", "active latent units (var > 0.01)", "{}"),
    ("mutual_info", "mutual information I(x; z), nats (Optimus's estimate)", "{:.2f}"),
    ("probe_accuracy", "linear probe: statement kind from the code, accuracy", "{:.3f}"),
    ("interp_valid", "interpolation: interior points that parse", "{:.3f}"),
    ("interp_distinct", "interpolation: interior points distinct from both ends", "{:.3f}"),
    ("interp_valid_and_distinct", "interpolation: valid and distinct", "{:.3f}"),
    ("interp_smooth", "interpolation: smooth paths (edit distance to each end monotone)", "{:.3f}"),
    ("interp_degenerate", "interpolation: points that ran to max_length", "{:.3f}"),
]


def table(results: dict) -> str:
    """A Markdown table of the results."""
    how = f" ({results['interp_kind']}, {results['interp_method']})" if "interp_kind" in results else ""
    lines = [
        f"{results.get('source', 'Validation')}: {results['n_lines']} lines ({results['n_truncated']} truncated), "
        f"{results.get('interp_pairs', 0)} interpolation pairs x 9 interior points{how}",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for key, name, fmt in ROWS:
        if key in results:
            val = fmt.format(results[key])
            if key == "active_units":
                val += f" / {results['latent_units']}"
            if key == "mutual_info":
                val += f" (at most {results['mutual_info_max']:.2f}; posterior std {results['mutual_info_sigma']:g})"
            if key == "probe_accuracy":
                val += (
                    f" (majority baseline {results['probe_majority']:.3f}, {results['probe_classes']} kinds)"
                )
            lines.append(f"| {name} | {val} |")
    buckets = [
        (k, k.replace("recon_exact_len_", "").replace("_up", "+").replace("_", "-"))
        for k in results
        if k.startswith("recon_exact_len_")
    ]
    if buckets:
        unit = "words" if results.get("language") == "prose" else "characters"
        lines += [
            "",
            f"Exact match by line length ({unit}):",
            "",
            "| length | lines | exact match |",
            "|---|---|---|",
        ]
        lines += [
            f"| {name} | {results[k.replace('recon_exact', 'n')]} | {results[k]:.3f} |" for k, name in buckets
        ]
    lines += _paths_by_length_table(results)
    if "example" in results:
        lines += ["", "Example interpolation:", ""] + [f"    {s}" for s in results["example"]]
    return "\n".join(lines) + "\n"


def _paths_by_length_table(results: dict) -> list[str]:
    tails = [k[len("n_pairs") :] for k in results if k.startswith("n_pairs_len_")]
    if not tails:
        return []
    prose = results.get("language") == "prose"
    first, unit = ("interp_distinct", "words") if prose else ("interp_valid_and_distinct", "characters")
    name = "distinct" if prose else "valid and distinct"
    rows = [
        f"| {t[5:].replace('_up', '+').replace('_', '-')} | {results['n_pairs' + t]} | "
        f"{results[first + t]:.3f} | {results['interp_smooth' + t]:.3f} |"
        for t in tails
    ]
    return [
        "",
        f"Interpolation paths by the length of their longer end ({unit}):",
        "",
        f"| length | pairs | {name} | smooth |",
        "|---|---|---|---|",
        *rows,
    ]


def save(results: dict, run_dir, name: str = rundir.EVAL_NAME) -> str:
    """Write NAME.json and NAME.md into the run directory (atomically); returns the table."""
    text = table(results)
    with files.atomic_file(Path(run_dir) / f"{name}.md", "w") as f:
        f.write(text)
    with files.atomic_file(Path(run_dir) / f"{name}.json", "w") as f:
        f.write(json.dumps(results, indent=2) + "\n")
    return text
