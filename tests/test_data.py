"""Data: tokenizer round trips, the stdlib corpus, text files and bad input, truncation, bucketed batches."""
import ast

import numpy as np
import pytest

import t5vae as tv
from t5vae import data

TRICKY = ["x = 1", "\tdef  f(a):\t@dec é 中文 ∑", "  two  spaces  ", "@property", "s = '\\x00'  # ok", "🙂 = 3"]


@pytest.fixture(scope="module")
def corpus():
    return data.load_corpus()


@pytest.fixture(scope="module")
def tok(corpus):
    return data.train_tokenizer(corpus.train[:4000], 420)


def test_stdlib_corpus_is_parseable_deduplicated_bounded_and_split(corpus):
    assert len(corpus.train) > 10_000 and len(corpus.validation) > 200
    both = corpus.train + corpus.validation
    assert len(set(both)) == len(both)
    assert not set(corpus.train) & set(corpus.validation)
    assert all(10 <= len(s) <= 40 for s in both)
    for s in corpus.validation[:200]:
        ast.parse(s)
    assert all(data.split_of(s, 2.0) == "validation" for s in corpus.validation)


def test_stdlib_lines_deterministic_on_a_fake_root(tmp_path):
    (tmp_path / "b.py").write_text("x = 1\nimport os\n# just a comment\nif x:\n  yield_ = f(x)\n'doc line'\n")
    (tmp_path / "a.py").write_text("import os\nreturn_value = g(2)\n")
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "t.py").write_text("skipped = True\n")
    got = data.stdlib_lines(5, 40, root=str(tmp_path))
    assert got == sorted(["import os", "x = 1", "yield_ = f(x)", "return_value = g(2)"])
    assert data.stdlib_lines(5, 40, root=str(tmp_path)) == got


def test_tokenizer_round_trips_any_line_exactly(tok, tmp_path):
    for s in TRICKY:
        ids = tok.encode(s)
        assert ids[-1] == data.EOS and data.PAD not in ids
        assert tok.decode(ids) == s
    tok.save(tmp_path / "spiece.model")
    again = data.Tokenizer.load(tmp_path / "spiece.model")
    assert again.encode(TRICKY[1]) == tok.encode(TRICKY[1]) and again.vocab_size == tok.vocab_size
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a sentencepiece model"):
        data.Tokenizer.load(tmp_path / "junk.model")


def test_tokenizer_training_is_deterministic(corpus):
    a = data.train_tokenizer(corpus.train[:2000], 400)
    b = data.train_tokenizer(corpus.train[:2000], 400)
    assert a.proto == b.proto


def test_text_files_and_bad_input(tmp_path):
    f = tmp_path / "lines.txt"
    f.write_text("first line\n\n\tsecond\twith tabs\r\n   \nthird @ é\n", encoding="utf-8")
    assert data.read_text_lines([f]) == ["first line", "\tsecond\twith tabs", "third @ é"]
    c = data.load_corpus(str(f))
    assert sorted(c.train + c.validation) == sorted(["first line", "\tsecond\twith tabs", "third @ é"])
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="empty"):
        data.load_corpus(str(tmp_path / "empty.txt"))
    (tmp_path / "bin.dat").write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0")
    with pytest.raises(ValueError, match="not a text file"):
        data.read_text_lines([tmp_path / "bin.dat"])
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match="not UTF-8"):
        data.read_text_lines([tmp_path / "latin1.txt"])
    with pytest.raises(FileNotFoundError):
        data.read_text_lines([tmp_path / "missing.txt"])
    with pytest.raises(ValueError, match="empty corpus"):
        data.train_tokenizer([], 100)


def test_truncation_is_counted_and_keeps_eos(tok):
    enc = data.encode_lines(tok, ["a = 1", "x" * 50 + " = " + "y" * 50], 12)
    assert enc.n_truncated == 1
    assert len(enc.ids[1]) == 12 and enc.ids[1][-1] == data.EOS
    assert tok.decode(enc.ids[0]) == "a = 1"


def test_batches_use_fixed_bucket_shapes_and_cover_the_epoch(tok, corpus):
    enc = data.encode_lines(tok, corpus.train[:500], 32)
    buckets = data.buckets_for(32)
    assert buckets == (8, 12, 16, 24, 28, 32)
    assert data.buckets_for(48) == (8, 12, 16, 20, 24, 32, 40, 48)
    assert data.buckets_for(48, min_length=12)[0] == 12  # "first" pooling reads n_latent_tokens positions
    assert data.length_buckets(tv.Config(max_length=48, pooling="first", n_latent_tokens=10))[0] == 10
    seen, shapes = 0, set()
    for b in data.batches(enc, 16, buckets, seed=0):
        shapes.add(b["input_ids"].shape)
        lengths = b["attention_mask"].sum(1)
        assert np.all(lengths > 0) and np.all(lengths <= b["input_ids"].shape[1])
        seen += len(b["input_ids"])
    assert shapes <= {(16, L) for L in buckets}
    assert 500 - 16 * len(buckets) <= seen <= 500
    first = [b["input_ids"] for b in data.batches(enc, 16, buckets, seed=0, epoch=1)]
    again = [b["input_ids"] for b in data.batches(enc, 16, buckets, seed=0, epoch=1)]
    other = [b["input_ids"] for b in data.batches(enc, 16, buckets, seed=0, epoch=2)]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    assert not all(a.shape == b.shape and np.array_equal(a, b) for a, b in zip(first, other))
    idx = sorted(i for part, _ in data.eval_batches(enc, 16, buckets) for i in part)
    assert idx == list(range(500))


def test_parse_check_is_quiet_about_odd_but_valid_source(recwarn):
    from t5vae.evaluate import parses

    assert parses("x = 0in y") and parses('x = "\\d"')  # valid, but Python warns about both
    assert not parses("x = (") and not parses("x = 1\x00")  # a syntax error; a null byte (ValueError)
    assert data.parse_quietly("y = 1if x else 2") is not None
    assert not [w for w in recwarn if issubclass(w.category, (SyntaxWarning, DeprecationWarning))]
