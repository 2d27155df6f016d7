"""Batched encoding and decoding (t5vae.batched): padded batches of a few fixed sizes."""

import numpy as np

from t5vae import batched


def test_padded_batches_cover_every_row_in_one_shape():
    x = np.arange(20, dtype=np.float32).reshape(10, 2) + 1
    got = list(batched.padded(x, 4))
    assert [(s, n) for s, _, n in got] == [(0, 4), (4, 4), (8, 2)]
    assert all(b.shape == (4, 2) and b.dtype == x.dtype for _, b, _ in got)
    np.testing.assert_array_equal(np.concatenate([b[:n] for _, b, n in got]), x)
    np.testing.assert_array_equal(got[-1][1][2:], 0)  # the last batch is zero-padded
    assert list(batched.padded(x[:0], 4)) == []
    assert [n for *_, n in batched.padded(x, 16)] == [10]
    assert [batched.batch_size(n) for n in (1, 8, 9, 100, 129, 5000)] == [8, 8, 16, 128, 128, 128]
