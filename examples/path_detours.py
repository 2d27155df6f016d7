"""Why a prose run's paths are not smooth: for random pairs of sentences from a file (greedy, 11-point slerp
paths, as ``t5vae eval``), the share of smooth paths, of paths smooth within one word of slack, and of paths
with a detour: an interior point p whose word edit distances to the decoded ends a and b add up to more
than d(a, b) + 2, i.e. a point that is not on the way from a to b. Prints three paths with both distances.

    python examples/path_detours.py prose-run heldout_fortunes.txt --max-lines 1000
"""

import argparse

import numpy as np

import t5vae as tv
from t5vae import evaluate, scores


def has_detour(path, slack: int = 2) -> bool:
    ends = scores.word_edit_distance(path[0], path[-1])
    d = scores.word_edit_distance
    return any(d(p, path[0]) + d(p, path[-1]) > ends + slack for p in path[1:-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("lines", help="a text file, one sentence per line")
    p.add_argument("--max-lines", type=int, default=1000, help="the first this many lines")
    p.add_argument("--pairs", type=int, default=200)
    args = p.parse_args()
    model = tv.load(args.run)
    with open(args.lines, encoding="utf-8") as f:
        lines = [s.strip() for s in f if s.strip()][: args.max_lines]
    z = model.encode(lines, truncate=True)
    rng = np.random.default_rng(0)
    _, _, texts = evaluate.decoded_paths(model, lines, z, args.pairs, rng, 9, "slerp", "greedy", 4, 128, True)
    smooth = np.mean([scores.is_smooth(r) for r in texts])
    print(f"{args.run} on {args.lines}: {len(texts)} paths between {len(lines)} sentences")
    print(
        f"smooth {smooth:.3f}, smooth within one word {np.mean([scores.is_smooth(r, slack=1) for r in texts]):.3f}"
    )
    print(
        f"paths with a detour (a point more than 2 words off the way): {np.mean([has_detour(r) for r in texts]):.3f}"
    )
    for r in texts[:3]:
        d = scores.word_edit_distance
        print("\n  d(a) d(b)\n" + "\n".join(f"  {d(r[0], t):4d} {d(r[-1], t):4d}  {t}" for t in r))


if __name__ == "__main__":
    main()
