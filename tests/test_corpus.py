"""Corpora (t5vae.corpus): the embedded stdlib corpus, text files and bad input, the hash-fixed split, and
the quiet parse check."""

import ast

import pytest

from t5vae import corpus, data


def test_stdlib_corpus_is_parseable_deduplicated_bounded_and_split(stdlib_corpus):
    c = stdlib_corpus
    assert len(c.train) > 10_000 and len(c.validation) > 200
    both = c.train + c.validation
    assert len(set(both)) == len(both)
    assert not set(c.train) & set(c.validation)
    assert all(10 <= len(s) <= corpus.MAX_CHARS for s in both) and max(map(len, both)) > 60
    for s in c.validation[:200]:
        ast.parse(s)
    assert all(corpus.split_of(s, 2.0) == "validation" for s in c.validation)


def test_stdlib_lines_deterministic_on_a_fake_root(tmp_path):
    (tmp_path / "b.py").write_text("x = 1\nimport os\n# just a comment\nif x:\n  yield_ = f(x)\n'doc line'\n")
    (tmp_path / "a.py").write_text("import os\nreturn_value = g(2)\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("skipped = True\n")
    got = corpus.stdlib_lines(5, 40, root=str(tmp_path))
    assert got == sorted(["import os", "x = 1", "yield_ = f(x)", "return_value = g(2)"])
    assert corpus.stdlib_lines(5, 40, root=str(tmp_path)) == got


def test_text_files_and_bad_input(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("first line\n\n\tsecond\twith tabs\r\n   \nthird @ é\n", encoding="utf-8")
    assert corpus.read_text_lines([f]) == ["first line", "\tsecond\twith tabs", "third @ é"]
    c = data.load_corpus(str(f))
    assert sorted(c.train + c.validation) == sorted(["first line", "\tsecond\twith tabs", "third @ é"])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.dat").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(ValueError, match="not a text file"):
        corpus.read_text_lines([tmp_path / "bin.dat"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        corpus.read_text_lines([tmp_path / "latin1.txt"])
    with pytest.raises(FileNotFoundError):
        corpus.read_text_lines([tmp_path / "missing.txt"])


def test_tiny_corpora_still_hold_out_two_lines():
    lines = [f"line {i}" for i in range(10)]
    c = corpus.Corpus.from_lines(lines + lines[:3], "mem", 2.0)  # duplicates dropped, order kept
    assert len(c.validation) >= 2 and c.train and sorted(c.train + c.validation) == sorted(lines)
    assert c.train == [s for s in lines if s not in c.validation] and c.source == "mem"
    assert corpus.Corpus.from_lines(lines, "mem", 2.0).validation == c.validation  # fixed by the lines' hash
    with pytest.raises(ValueError, match="the corpus mem is empty"):
        corpus.Corpus.from_lines([], "mem")


def test_parse_check_is_quiet_about_odd_but_valid_source(recwarn):
    from t5vae.evaluate import parses

    assert parses("x = 0in y") and parses('x = "\\d"')  # valid, but Python warns about both
    assert not parses("x = (") and not parses("x = 1\x00")  # a syntax error; a null byte (ValueError)
    assert corpus.parse_quietly("y = 1if x else 2") is not None
    assert not [w for w in recwarn if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]


def test_prose_spec_is_the_embedded_sentences_with_a_stable_split():
    from t5vae import data

    assert corpus.parse_spec("prose").kind == "prose"
    c = data.load_corpus("prose", 2.0, 20, 200)
    both = c.train + c.validation
    assert len(both) > 5000 and all(20 <= len(s) <= 200 for s in both)
    assert all(corpus.split_of(s, 2.0) == "validation" for s in c.validation)
    assert data.load_corpus("prose", 2.0, 20, 200).validation == c.validation
