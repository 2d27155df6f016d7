"""Train a T5-VAE briefly, walk between two held-out lines, sample, and plot the validation latents.

    pip install -e ".[examples]"                        # matplotlib
    python examples/latent_space.py                     # trains the default model for 2.5 min into ./latent-example/run
    python examples/latent_space.py --max-minutes 15    # longer (an existing run in --out is resumed)
    python examples/latent_space.py --run t5vae-run     # no training: use a run directory from `t5vae train`

Writes OUT/latents_pca.png: the validation lines' codes [n, N * Z] projected onto their first two principal
components (numpy SVD), coloured by statement kind (the ast node of the line), with the interpolation path
drawn on top. Sampling from the default (aggregate) prior caches its fit in ~/.cache/t5vae, not in the run.
"""

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

import t5vae as tv
from t5vae import cli, names, rundir, train


def statement_kind(line: str) -> str:
    """The plot's groups of the library's statement kinds: imports together, expressions (calls) as "call"."""
    kind = names.statement_kind(line)
    return {"Import": "import", "ImportFrom": "import", "Expr": "call"}.get(kind, kind.lower())


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, the two leading principal axes [2, D], explained variance ratio of each) of rows x [n, D]."""
    mean = x.mean(0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean, vt[:2], (s[:2] ** 2) / np.sum(s**2)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="latent-example", help="output directory (the run goes to OUT/run)")
    p.add_argument("--run", help="an existing run directory to use instead of training")
    p.add_argument("--max-minutes", type=float, default=2.5, help="training time budget (default 2.5)")
    p.add_argument(
        "--steps", type=int, default=9, help="points on the interpolation path, endpoints included"
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    run_dir = Path(args.run) if args.run else out / "run"
    if not args.run:
        tc = tv.TrainConfig(
            max_minutes=args.max_minutes, eval_pairs=20, progress=False, log_every=100, seed=args.seed
        )
        train.run(tv.Config(), tc, run_dir)
    m = tv.load(run_dir)
    val = rundir.corpus(run_dir).validation

    rng = np.random.default_rng(args.seed)
    a, b = (val[i] for i in rng.choice(len(val), 2, replace=False))
    print(f"\ninterpolation (slerp per latent token) from {a!r} to {b!r}:")
    path = m.interpolate(a, b, args.steps)
    cli.print_table(zip((f"{r:.3f}" for r in np.linspace(0, 1, args.steps)), path), "ratio")
    print(f"\nsamples from the {tv.latent.DEFAULT_PRIOR} prior:")
    cli.print_table(enumerate(m.sample(8, seed=args.seed)), "#")

    codes = m.encode(val, truncate=True).reshape(len(val), -1)
    mean, axes, explained = pca_2d(codes)
    xy = (codes - mean) @ axes.T
    za, zb = m.encode([a, b])
    path_xy = (np.asarray(tv.interpolate(za, zb, args.steps)).reshape(args.steps, -1) - mean) @ axes.T
    kinds = [statement_kind(s) for s in val]
    top = [k for k, _ in Counter(kinds).most_common(6)]
    kinds = np.array([k if k in top else "other" for k in kinds])

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6.5))
    for k in top + ["other"]:
        sel = kinds == k
        if sel.any():
            ax.scatter(xy[sel, 0], xy[sel, 1], s=9, alpha=0.6, label=f"{k} ({sel.sum()})")
    ax.plot(path_xy[:, 0], path_xy[:, 1], "k.-", lw=1, ms=5, label="interpolation path")
    for (x, y), text in ((path_xy[0], a), (path_xy[-1], b)):
        ax.annotate(text, (x, y), fontsize=8, family="monospace", xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel(f"PC 1 ({explained[0]:.1%} of the variance)")
    ax.set_ylabel(f"PC 2 ({explained[1]:.1%} of the variance)")
    ax.set_title(
        f"{len(val)} validation lines' latent codes (N={m.cfg.n_latent_tokens} x Z={m.cfg.latent_size}), PCA",
        fontsize=10,
    )
    ax.legend(fontsize=8, markerscale=2)
    fig.tight_layout()
    png = out / "latents_pca.png"
    fig.savefig(png, dpi=120)
    print(f"\nwrote {png}")


if __name__ == "__main__":
    main()
