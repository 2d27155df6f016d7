"""Which prior gives the best samples? Decode ``-n`` samples from each prior of a trained run and report the
fraction that parse with ``ast.parse``, the fraction distinct from every training line, and how many
different strings came out.

    python examples/compare_priors.py RUN_DIR -n 200 --seed 0

Fitting the aggregate posterior caches it in ``~/.cache/t5vae`` (RUN_DIR is only read).
"""

import argparse
import time

import t5vae as tv
from t5vae import names, rundir


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    (
        p.add_argument("run"),
        p.add_argument("-n", type=int, default=200),
        p.add_argument("--seed", type=int, default=0),
    )
    args = p.parse_args()
    m = tv.load(args.run)
    train = set(rundir.corpus(args.run).train)
    t0 = time.time()
    g = m.aggregate_posterior()
    print(f"aggregate posterior: {g.n_codes} training codes, fitted or loaded in {time.time() - t0:.0f}s")
    print(f"\n{args.n} greedy samples per prior, seed {args.seed}\n")
    print("| prior | parse | distinct from training lines | parse and distinct | different strings |")
    print("|---|---|---|---|---|")
    for prior in tv.PRIORS:
        texts = m.sample(args.n, prior=prior, seed=args.seed)
        ok = [names.parses(t) for t in texts]
        new = [t not in train for t in texts]
        both = sum(a and b for a, b in zip(ok, new))
        print(
            f"| {prior} | {sum(ok) / len(texts):.3f} | {sum(new) / len(texts):.3f} | {both / len(texts):.3f} | "
            f"{len(set(texts))} / {len(texts)} |"
        )


if __name__ == "__main__":
    main()
