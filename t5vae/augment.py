"""Identifier renaming: training lines whose names, strings and numbers are replaced by fresh ones.

A model trained on the standard library's lines memorises the standard library's names; on other code it
rewrites names it has not seen (``np.less_equal`` comes back as ``nples.s_equal``). Renaming a line's
identifiers consistently (every occurrence of one name gets the same new name) and in the original's style
(snake_case stays snake_case, CamelCase stays CamelCase) keeps the line valid Python with the same syntax,
so the model learns to carry whatever names it is given through the latent code instead of recalling them.

The new names are made of the corpus's own identifier words, recombined, and of random letter strings.
Keywords, builtins, ``self`` and ``cls`` are kept: they are the same in every project. Everything here is
a pure function of ``(line, rng)``; :class:`Renamer` tokenizes each line once (``tokenize``), so renaming
an epoch of lines costs only string splicing.
"""

from __future__ import annotations

import builtins
import io
import keyword
import re
import string
import tokenize
from typing import Sequence

import numpy as np

KEEP = frozenset(keyword.kwlist) | frozenset(keyword.softkwlist) | frozenset(dir(builtins)) | {"self", "cls"}
_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_SIMPLE_STRING = re.compile(r"([rRbBuUfF]{0,2})(['\"])([A-Za-z0-9_ .\-]{1,30})\2")


def _spans(line: str) -> list[tuple[str, int, int, str]] | None:
    """``(kind, start, end, text)`` of the renamable tokens ("name", "string" body, "number"), or None when
    the line does not tokenize as one line."""
    out = []
    try:
        for t in tokenize.generate_tokens(io.StringIO(line).readline):
            if t.start[0] != 1 and t.type not in (
                tokenize.NEWLINE,
                tokenize.NL,
                tokenize.ENDMARKER,
                tokenize.DEDENT,
            ):
                return None
            if t.type == tokenize.ERRORTOKEN and not t.string.isspace():
                return None  # not Python (an unterminated string, a stray "$"): left alone
            if t.type == tokenize.NAME and t.string not in KEEP:
                out.append(("name", t.start[1], t.end[1], t.string))
            elif t.type == tokenize.STRING:
                m = _SIMPLE_STRING.fullmatch(t.string)
                if m and "f" not in m.group(1).lower():
                    body0 = t.start[1] + len(m.group(1)) + 1
                    out.append(("string", body0, body0 + len(m.group(3)), m.group(3)))
            elif t.type == tokenize.NUMBER and t.string.isdigit() and len(t.string) <= 6:
                out.append(("number", t.start[1], t.end[1], t.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        return None
    return out


def words_of(name: str) -> list[str]:
    """The lower-case words of an identifier: ``"HTTPServer_max_len2"`` -> ``["http", "server", "max",
    "len", "2"]``."""
    return [w.lower() for w in _WORD.findall(name)]


def _style(name: str) -> str:
    core = name.strip("_")
    if core.isupper():
        return "upper"
    if "_" in core or core.islower():
        return "snake"
    return "pascal" if core[:1].isupper() else "camel"


def _join(words: Sequence[str], style: str) -> str:
    if style == "upper":
        return "_".join(w.upper() for w in words)
    if style == "snake":
        return "_".join(words)
    head = words[0] if style == "camel" else words[0].capitalize()
    return head + "".join(w.capitalize() for w in words[1:])


class Renamer:
    """Renames the identifiers, simple string literals and small integers of a fixed list of lines.

    ``p_line``: the probability that an epoch renames a line; ``p_name``: in a renamed line, the
    probability that each distinct name (string, number) is replaced. ``vocabulary``: the words new names
    are made of (default: the words of the lines' own identifiers); a fraction ``p_random`` of words are
    random letter strings instead, so no name is out of reach.
    """

    def __init__(
        self,
        lines: Sequence[str],
        p_line: float = 0.5,
        p_name: float = 0.7,
        p_random: float = 0.25,
        vocabulary: Sequence[str] | None = None,
    ):
        for label, p in (("p_line", p_line), ("p_name", p_name), ("p_random", p_random)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"Renamer.{label} must be a probability in [0, 1], got {p!r}")
        self.lines = list(lines)
        self.p_line, self.p_name, self.p_random = p_line, p_name, p_random
        self.spans = [_spans(s) or [] for s in self.lines]
        if vocabulary is None:
            vocabulary = {w for sp in self.spans for k, _, _, t in sp if k == "name" for w in words_of(t)}
            vocabulary = [w for w in vocabulary if len(w) >= 2 and w.isalpha()]
        self.vocabulary = sorted(set(vocabulary))
        if not self.vocabulary:
            self.vocabulary = list(string.ascii_lowercase)

    def _word(self, rng: np.random.Generator) -> str:
        if rng.random() < self.p_random:
            return "".join(rng.choice(list(string.ascii_lowercase), int(rng.integers(1, 7))))
        return self.vocabulary[int(rng.integers(len(self.vocabulary)))]

    def new_name(self, old: str, rng: np.random.Generator) -> str:
        """A fresh identifier in ``old``'s style with about as many words, never a keyword or builtin."""
        n_old = max(1, len(words_of(old)))
        n = max(1, n_old + int(rng.integers(-1, 2))) if n_old > 1 else int(rng.choice([1, 1, 1, 2]))
        lead = len(old) - len(old.lstrip("_"))
        trail = len(old) - len(old.rstrip("_"))
        for _ in range(10):
            name = "_" * lead + _join([self._word(rng) for _ in range(n)], _style(old)) + "_" * trail
            if name.isidentifier() and name not in KEEP and not keyword.iskeyword(name):
                return name
        return old

    def _replacement(self, kind: str, old: str, rng: np.random.Generator) -> str:
        if kind == "name":
            return self.new_name(old, rng)
        if kind == "number":
            return str(int(rng.integers(0, 10 ** len(old)))) if old != "0" else str(int(rng.integers(0, 10)))
        return " ".join(self._word(rng) for _ in range(max(1, len(old.split()))))

    def rename(self, i: int, rng: np.random.Generator) -> str:
        """Line ``i`` with each distinct name, string and number replaced with probability ``p_name`` (the
        line itself when it has none)."""
        line, spans = self.lines[i], self.spans[i]
        mapping: dict[tuple[str, str], str] = {}
        pieces, at = [], 0
        for kind, start, end, old in spans:
            key = (kind, old)
            if key not in mapping:
                mapping[key] = self._replacement(kind, old, rng) if rng.random() < self.p_name else old
            pieces += [line[at:start], mapping[key]]
            at = end
        return "".join(pieces) + line[at:]

    def chosen(self, seed: int, epoch: int) -> np.ndarray:
        """The indices of the lines epoch ``epoch`` renames (each with probability ``p_line``)."""
        rng = np.random.default_rng([seed, epoch, 0x7E4A])
        has_spans = np.array([bool(sp) for sp in self.spans], bool)
        return np.flatnonzero((rng.random(len(self.lines)) < self.p_line) & has_spans)

    def epoch(self, seed: int, epoch: int, indices=None, attempt: int = 0) -> dict[int, str]:
        """``{i: renamed line}`` for ``indices`` (default: :meth:`chosen`), with a generator fixed by ``(seed,
        epoch, attempt)``, so a resumed run renames alike; a retry (``attempt`` > 0) draws other names."""
        indices = self.chosen(seed, epoch) if indices is None else indices
        rng = np.random.default_rng([seed, epoch, attempt, 0x7E4B])
        out = {int(i): self.rename(int(i), rng) for i in indices}
        return {i: s for i, s in out.items() if s != self.lines[i]}
