"""Scores of decoded text against its source: corpus BLEU-4 over whitespace-separated words (Papineni et
al., 2002), edit distance over words (prose) or Python tokens (code), and whether a decoded path moves
monotonically from one end to the other. Pure Python, no jax: evaluation and the demo share them."""

from __future__ import annotations

import collections
import itertools
import math
import re
from typing import Callable, Sequence

_CODE_TOKEN = re.compile(r"\w+|[^\w\s]")


def _ngrams(words: Sequence[str], n: int) -> collections.Counter:
    return collections.Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(references: Sequence[str], hypotheses: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-``max_n`` with one reference per hypothesis: the geometric mean of the clipped n-gram
    precisions, each summed over the whole corpus, times the brevity penalty exp(1 - r/c) when the
    hypotheses' total length c is below the references' r. 0 when some order has no match (no smoothing)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references for {len(hypotheses)} hypotheses")
    matched, total = [0] * max_n, [0] * max_n
    ref_len = hyp_len = 0
    for ref, hyp in zip(references, hypotheses):
        r, h = ref.split(), hyp.split()
        ref_len, hyp_len = ref_len + len(r), hyp_len + len(h)
        for n in range(1, max_n + 1):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matched[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_p = sum(math.log(m / t) for m, t in zip(matched, total)) / max_n
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


def edit_distance(x: Sequence, y: Sequence) -> int:
    """Levenshtein distance between two sequences (insert, delete, substitute an item: 1 each)."""
    prev = list(range(len(y) + 1))
    for i, wx in enumerate(x, 1):
        cur = [i]
        for j, wy in enumerate(y, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (wx != wy)))
        prev = cur
    return prev[-1]


def word_edit_distance(a: str, b: str) -> int:
    """Levenshtein distance between two texts' word sequences (insert, delete, substitute a word: 1 each)."""
    return edit_distance(a.split(), b.split())


def code_tokens(line: str) -> list[str]:
    """A line of code as the units its edit distance counts: names, numbers and keywords (runs of word
    characters) and each other non-space character (``x = f(a)`` -> x, =, f, (, a, ))."""
    return _CODE_TOKEN.findall(line)


def is_smooth(path: Sequence[str], units: Callable[[str], Sequence] = str.split, slack: int = 0) -> bool:
    """A decoded path from a to b is smooth when its edit distance to the decoded a never falls and its
    distance to the decoded b never rises, point by point; ``units`` cuts a text into what the distance
    counts (words by default; :func:`code_tokens` for code). With ``slack`` a distance may fall back (to a)
    or rise again (to b) by up to that many units from its furthest point so far."""
    cut = [units(p) for p in path]
    to_a = [edit_distance(cut[0], p) for p in cut]
    to_b = [edit_distance(cut[-1], p) for p in cut]
    return all(v >= m - slack for v, m in zip(to_a, itertools.accumulate(to_a, max))) and all(
        v <= m + slack for v, m in zip(to_b, itertools.accumulate(to_b, min))
    )
