"""Data (t5vae.data): tokenizer round trips and training, truncation, bucketed batches."""

import numpy as np
import pytest

import t5vae as tv
from t5vae import data

TRICKY = [
    "x = 1",
    "\tdef  f(a):\t@dec é 中文 ∑",
    "  two  spaces  ",
    "@property",
    "s = '\\x00'  # ok",
    "🙂 = 3",
]


@pytest.fixture(scope="module")
def tok(stdlib_corpus):
    return data.train_tokenizer(stdlib_corpus.train[:4000], 420)


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


def test_tokenizer_training_is_deterministic(stdlib_corpus):
    a = data.train_tokenizer(stdlib_corpus.train[:2000], 400)
    b = data.train_tokenizer(stdlib_corpus.train[:2000], 400)
    assert a.proto == b.proto


def test_tokenizer_training_refuses_an_empty_corpus():
    with pytest.raises(ValueError, match="empty corpus"):
        data.train_tokenizer([], 100)


def test_truncation_is_counted_and_keeps_eos(tok):
    enc = data.encode_lines(tok, ["a = 1", "x" * 50 + " = " + "y" * 50], 12)
    assert enc.n_truncated == 1
    assert len(enc.ids[1]) == 12 and enc.ids[1][-1] == data.EOS
    assert tok.decode(enc.ids[0]) == "a = 1"


def test_batches_use_fixed_bucket_shapes_and_cover_the_epoch(tok, stdlib_corpus):
    enc = data.encode_lines(tok, stdlib_corpus.train[:500], 32)
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


def test_swap_in_replaces_a_line_only_within_its_length_bucket(tok):
    lines = ["x = 1", "total = compute(a, b)", "y = 2" * 20]
    enc = data.encode_lines(tok, lines, 24)
    assert enc.truncated.tolist() == [False, False, True]
    buckets = (8, 16, 24)
    new = {0: "z = 3", 1: "a_much_longer_name = another_function(first_arg, second_arg, third)", 2: "w = 4"}
    out, swapped = data.swap_in(enc, new, tok, buckets)
    assert swapped == [0]  # 1 would leave its bucket; 2 was truncated, so its tokens are not the whole line
    assert tok.decode(out.ids[0]) == "z = 3" and out.ids[0][-1] == data.EOS
    assert all(np.array_equal(out.ids[i], enc.ids[i]) for i in (1, 2))
    assert tok.decode(enc.ids[0]) == "x = 1"  # the input is not modified
    with pytest.raises(IndexError, match="line index 5 is outside the 3 encoded lines"):
        data.swap_in(enc, {5: "q = 1"}, tok, buckets)


def test_batch_stream_with_renaming_keeps_shapes_and_is_a_pure_function_of_the_step(tok, stdlib_corpus):
    from t5vae import augment

    lines = stdlib_corpus.train[:600]
    enc, buckets = data.encode_lines(tok, lines, 32), (8, 12, 16, 24, 32)
    plain = data.BatchStream(enc, 16, buckets, 5)
    a = data.BatchStream(enc, 16, buckets, 5, augment.Renamer(lines, p_line=0.5), tok)
    b = data.BatchStream(enc, 16, buckets, 5, augment.Renamer(lines, p_line=0.5), tok)
    n = a.per_epoch
    assert n == plain.per_epoch
    steps = [0, n - 1, n, 2 * n + 3]
    for i in steps:  # same shapes as without renaming, and some rows renamed
        assert a(i)["input_ids"].shape == plain(i)["input_ids"].shape
    assert a.swapped > 0.3 * 0.5 * len(lines)
    assert any(not np.array_equal(a(i)["input_ids"], plain(i)["input_ids"]) for i in steps)
    for i in reversed(steps):  # another stream, visited in another order: the same batches
        assert np.array_equal(b(i)["input_ids"], a(i)["input_ids"])
    e0 = {tok.decode(r) for i in range(n) for r in a(i)["input_ids"]}
    e1 = {tok.decode(r) for i in range(n, 2 * n) for r in a(i)["input_ids"]}
    assert len(e0 - e1) > 0.1 * len(e0)  # each epoch renames afresh
    with pytest.raises(ValueError, match="a renamer needs the tokenizer"):
        data.BatchStream(enc, 16, buckets, 5, augment.Renamer(lines))
