"""The demo's logic without a web library or a model: input checks with the bounds the page states,
shareable links ``?a=<line>&b=<line>&steps=<n>`` (with ``&run=<name>`` on a page of several runs), parse marks
and the map's colours (statement kinds for code, lengths in words for prose), the map's 2-D PCA and nearest
neighbours in code space (numpy on flattened codes [n, N * Z])."""

from __future__ import annotations

import dataclasses
import math
import unicodedata
from collections.abc import Mapping
from urllib.parse import quote, urlencode

import numpy as np

from t5vae.names import (  # noqa: F401  (the page's names)
    DECODERS,
    INTERPOLATIONS,
    LENGTH_BUCKETS,
    decoders_for,
    length_bucket,
    parses,
    statement_kind,
)

STEPS_RANGE = (2, 32)  # points on a path, both endpoints included: decoded in one batch of at most 32
SAMPLES_RANGE = (1, 32)  # samples per request
EDIT_SET_RANGE = (1, 64)  # lines in each set of an edit direction
EDIT_AMOUNTS = tuple(k / 4 for k in range(-4, 9))  # -1 to 2 in quarters: 13 points, decoded in one batch
DEFAULT_STEPS, DEFAULT_SAMPLES = 9, 8
NEAREST_K = 5
CHARS_PER_TOKEN = 16  # a line's bound in characters per token of max_length: far above any tokenizer's pieces


def _bucket_label(lo: int, hi: int | None) -> str:
    return f"{lo}+ words" if hi is None else f"up to {hi} words" if lo == 0 else f"{lo}-{hi} words"


def map_kind(line: str, language: str) -> str:
    """What colours a line on the map: its statement kind for code; for prose its length bucket in words
    ("up to 8 words", "9-12 words", "17+ words")."""
    return statement_kind(line) if language == "code" else _bucket_label(*length_bucket(line, language))


def map_kind_order(language: str) -> list[str] | None:
    """The order of the map's legend: the length buckets, shortest first, for prose; None (most frequent
    first) for statement kinds."""
    return None if language == "code" else [_bucket_label(*b) for b in LENGTH_BUCKETS[language]]


class InputError(ValueError):
    """Bad input from the page or a link; the message is shown on the page as it is."""


class TooLong(InputError):
    """A line longer than the model's max_length: the page offers to cut it."""


def check_int(value, name: str, bounds: tuple[int, int]) -> int:
    """``value`` (an int, an integral float from a number box, or a link's string) as an int within ``bounds``."""
    lo, hi = bounds
    what = f"{name} must be a whole number from {lo} to {hi}"
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(f"{what}, got nothing")
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what}, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise InputError(f"{what}, got {value!r}")
    if not lo <= int(number) <= hi:
        raise InputError(f"{what}, got {int(number)}")
    return int(number)


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def max_chars(max_length: int) -> int:
    """The longest line the page takes, in characters: CHARS_PER_TOKEN per token of the model's max length,
    checked before a line is tokenized, so one huge request cannot hold the server."""
    return CHARS_PER_TOKEN * max_length


def check_line(value, label: str, max_length: int) -> str:
    """A line from the page or a link (None: a cleared box, empty), refused in one line naming it when longer
    than :func:`max_chars`, or holding a control character (tab aside) or U+FFFD (what invalid UTF-8 in a
    link decodes to)."""
    line = "" if value is None else str(value)
    if len(line) > max_chars(max_length):
        raise InputError(
            f"{label} is {len(line):,} characters; the page takes at most {max_chars(max_length):,} "
            f"({CHARS_PER_TOKEN} per token of the model's max length of {max_length} tokens)"
        )
    for i, c in enumerate(line):
        if c == "\ufffd":
            raise InputError(
                f"{label} holds U+FFFD, the replacement character, at position {i + 1}: was the link's "
                f"text not UTF-8?"
            )
        if c != "\t" and unicodedata.category(c) == "Cc":
            raise InputError(
                f"{label} holds the control character U+{ord(c):04X} at position {i + 1}: type a line of text"
            )
    return line


def check_set(value, label: str, max_length: int) -> list[str]:
    """The lines of a box (one per line, blank lines skipped, each stripped), each checked as
    :func:`check_line` and named by its number; between EDIT_SET_RANGE of them."""
    lines = [s.strip() for s in ("" if value is None else str(value)).splitlines() if s.strip()]
    lo, hi = EDIT_SET_RANGE
    if not lo <= len(lines) <= hi:
        raise InputError(f"{label}: type {lo} to {hi} lines, one per line; got {len(lines)}")
    return [check_line(s, f"{label}, line {k}", max_length) for k, s in enumerate(lines, 1)]


def empty_line(label: str) -> InputError:
    """The page's error for an empty line (the Model refuses it: t5vae.text.EmptyLine)."""
    return InputError(f"{label} is empty: there is nothing to encode")


def too_long(label: str, n_tokens: int, max_length: int) -> TooLong:
    """The page's error for a line of ``n_tokens`` tokens (EOS included) past ``max_length`` (the Model refuses
    it unless asked to cut it: t5vae.text.TooLong); the page then offers to cut it."""
    return TooLong(
        f"{label} is {n_tokens} tokens, longer than the model's max length of {max_length} tokens (end "
        f"of line included): shorten it, or cut it to {max_length} tokens"
    )


# -- shareable links ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Link:
    """One interpolation as a link's query: two lines, the number of points and how they were made."""

    a: str
    b: str
    steps: int = DEFAULT_STEPS
    kind: str = "slerp"
    decoder: str = "greedy"
    run: str | None = None  # which run's tab, on a page of several


def parse_link(query: Mapping[str, str]) -> Link | None:
    """The interpolation a page's query asks for (``a``, ``b``, ``steps``, optional ``kind``, ``decoder`` and
    ``run``); None when it names no lines. Raises InputError for a half link or a bad value."""
    a, b = query.get("a"), query.get("b")
    if a is None and b is None:
        return None
    if a is None or b is None:
        raise InputError(
            f"the link names only line {'a' if a is not None else 'b'}: a link needs both a= and b="
        )
    steps = check_int(query.get("steps", DEFAULT_STEPS), "steps", STEPS_RANGE)
    kind = check_choice(query.get("kind", "slerp"), "kind", INTERPOLATIONS)
    decoder = check_choice(query.get("decoder", "greedy"), "decoder", DECODERS)
    return Link(a, b, steps, kind, decoder, query.get("run"))


def link_query(link: Link) -> str:
    """``?a=...&b=...&steps=n`` (then kind / decoder where not the default, and run where set), every character
    of the lines kept."""
    fields = {"a": link.a, "b": link.b, "steps": str(link.steps)}
    if link.kind != "slerp":
        fields["kind"] = link.kind
    if link.decoder != "greedy":
        fields["decoder"] = link.decoder
    if link.run is not None:
        fields["run"] = link.run
    return "?" + urlencode(fields, quote_via=quote, safe="")


# -- the map and neighbours in code space ------------------------------------------------------------


def flat(codes) -> np.ndarray:
    """Codes [n, N, Z] (or one [N, Z]) -> float32 [n, N * Z]."""
    codes = np.asarray(codes, np.float32)
    if codes.ndim == 2:
        codes = codes[None]
    return codes.reshape(len(codes), -1)


@dataclasses.dataclass(frozen=True)
class PCA:
    """The two leading principal axes of a set of vectors [n, D]: ``mean`` [D], ``axes`` [2, D] (unit rows,
    each signed so that its largest entry is positive; zero rows where the data has fewer directions)."""

    mean: np.ndarray
    axes: np.ndarray

    @classmethod
    def fit(cls, x) -> PCA:
        x = np.asarray(x, np.float64)
        if x.ndim != 2 or len(x) < 1:
            raise ValueError(f"PCA needs vectors [n >= 1, D], got shape {x.shape}")
        mean = x.mean(0)
        _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
        axes = np.zeros((2, x.shape[1]))
        for i in range(min(2, len(vt))):
            if s[i] > 1e-9 * max(s[0], 1e-30):
                v = vt[i]
                axes[i] = v * np.sign(v[np.argmax(np.abs(v))])
        return cls(mean, axes)

    def project(self, x) -> np.ndarray:
        """[n, D] -> [n, 2] coordinates along the two axes."""
        return (np.asarray(x, np.float64) - self.mean) @ self.axes.T


def nearest(pool, queries, k: int = NEAREST_K) -> tuple[np.ndarray, np.ndarray]:
    """Indices [q, k] into ``pool`` [m, D] of each query's [q, D] k nearest rows (Euclidean, closest first,
    ties by index) and their distances [q, k]; k is capped at m."""
    pool = np.asarray(pool, np.float32)
    queries = np.asarray(queries, np.float32).reshape(-1, pool.shape[1])
    d2 = (np.sum(queries**2, 1)[:, None] - 2.0 * queries @ pool.T + np.sum(pool**2, 1)[None]).clip(0)
    idx = np.argsort(d2, axis=1, kind="stable")[:, : min(k, len(pool))]
    return idx, np.linalg.norm(pool[idx] - queries[:, None], axis=-1)  # exact, not the expansion's rounding
