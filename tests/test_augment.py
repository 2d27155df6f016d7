"""Identifier renaming (t5vae.augment): renamed lines keep their syntax, names keep their style and are
renamed consistently, keywords and builtins stay, and an epoch's renaming is a pure function of (seed, epoch)."""

import ast
import io
import keyword
import tokenize

import numpy as np
import pytest

from t5vae import augment

LINES = [
    "total_count = total_count + len(items)",
    "class HTTPServer(BaseServer): pass",
    "self._cache[key] = compute_value(key, 'default mode')",
    "MAX_SIZE = 4096",
    "for index, value in enumerate(values): print(value)",
    "return parseHeader(rawBytes, __name__)",
    "x = f'{name}'",
    "pass",
]


def token_kinds(line):
    """Each token's type, and its text where renaming must keep it: operators, keywords, builtins, self."""
    return [
        (t.type, t.string if t.type == tokenize.OP or t.string in augment.KEEP else None)
        for t in tokenize.generate_tokens(io.StringIO(line).readline)
    ]


def test_words_of_splits_snake_camel_and_acronyms():
    assert augment.words_of("HTTPServer_max_len2") == ["http", "server", "max", "len", "2"]
    assert augment.words_of("parseHeader") == ["parse", "header"]
    assert augment.words_of("__init__") == ["init"]


def test_renamed_lines_keep_their_syntax_and_keep_keywords_and_builtins():
    r = augment.Renamer(LINES, p_name=1.0)
    rng = np.random.default_rng(0)
    changed = 0
    for i, line in enumerate(LINES):
        new = r.rename(i, rng)
        changed += new != line
        ast.parse(new)  # still valid Python
        assert token_kinds(new) == token_kinds(line), (line, new)  # same tokens but for the renamed ones
    assert changed >= len(LINES) - 2  # "pass" has no names; the f-string's body is left alone
    assert r.rename(LINES.index("pass"), rng) == "pass"


def test_a_name_is_renamed_the_same_way_everywhere_in_its_line():
    r = augment.Renamer(LINES, p_name=1.0)
    for seed in range(20):
        new = r.rename(0, np.random.default_rng(seed))  # "total_count = total_count + len(items)"
        lhs, rhs = new.split(" = ")
        assert rhs.startswith(lhs + " + len(") and lhs != "total_count"


@pytest.mark.parametrize(
    "old,pattern",
    [
        ("MAX_SIZE", r"[A-Z][A-Z0-9]*(_[A-Z0-9]+)*"),
        ("total_count", r"[a-z][a-z0-9]*(_[a-z0-9]+)*"),
        ("HTTPServer", r"[A-Z][A-Za-z0-9]*"),
        ("parseHeader", r"[a-z][A-Za-z0-9]*"),
        ("_cache", r"_[a-z][a-z0-9_]*"),
        ("__dunder__", r"__[a-z][a-z0-9_]*[a-z0-9]__"),
    ],
)
def test_new_names_keep_the_old_ones_style(old, pattern):
    import re

    r = augment.Renamer(LINES)
    rng = np.random.default_rng(1)
    for _ in range(50):
        new = r.new_name(old, rng)
        assert re.fullmatch(pattern, new), (old, new)
        assert new.isidentifier() and not keyword.iskeyword(new) and new not in augment.KEEP


def test_an_epoch_is_a_pure_function_of_seed_and_epoch():
    lines = LINES * 30
    r = augment.Renamer(lines, p_line=0.5)
    a, b = r.epoch(3, 7), augment.Renamer(lines, p_line=0.5).epoch(3, 7)
    assert a == b and a
    assert r.epoch(3, 8) != a and r.epoch(4, 7) != a
    assert r.epoch(3, 7, attempt=1) != a  # a retry draws other names
    chosen = r.chosen(3, 7)
    assert set(a) <= set(chosen.tolist()) and 0.3 < len(chosen) / len(lines) < 0.7
    assert augment.Renamer(lines, p_line=0.0).epoch(3, 7) == {}


def test_names_come_from_the_corpus_words_or_random_letters():
    r = augment.Renamer(LINES, p_random=0.0)
    assert {"total", "count", "server", "parse", "header"} <= set(r.vocabulary)
    rng = np.random.default_rng(2)
    for _ in range(30):
        assert set(augment.words_of(r.new_name("some_name", rng))) <= set(r.vocabulary)


def test_bad_probabilities_and_untokenizable_lines():
    with pytest.raises(ValueError, match="p_line must be a probability"):
        augment.Renamer(LINES, p_line=1.5)
    r = augment.Renamer(["s = 'unterminated", "x = (1,"])  # neither tokenizes as one line: left alone
    assert r.spans == [[], []] and r.epoch(0, 0) == {}
