"""Latent-space operations (t5vae.latent): interpolation paths, shape checks of codes, priors, the fitted
aggregate posterior and its file, latent arithmetic."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import t5vae as tv
from t5vae import latent, rundir


@pytest.fixture(scope="module")
def cfg():
    return tv.Config(t5=tv.preset("tiny"), n_latent_tokens=3, latent_size=8)


# -- tv.interpolate ------------------------------------------------------------------------------------


def test_interpolate_endpoints_and_kinds():
    a = jax.random.normal(jax.random.key(0), (3, 8))
    b = jax.random.normal(jax.random.key(1), (3, 8))
    for kind in ("slerp", "slerp_flat", "lerp"):
        zs = tv.interpolate(a, b, steps=9, kind=kind)  # 9 points, endpoints included
        assert zs.shape == (9, 3, 8)
        np.testing.assert_allclose(zs[0], a, atol=1e-5)
        np.testing.assert_allclose(zs[-1], b, atol=1e-5)
    lerp = tv.interpolate(a, b, steps=3, kind="lerp")
    np.testing.assert_allclose(lerp[1], (a + b) / 2, atol=1e-6)
    # slerp between unit vectors stays on the sphere; lerp does not
    ua, ub = a / jnp.linalg.norm(a, axis=-1, keepdims=True), b / jnp.linalg.norm(b, axis=-1, keepdims=True)
    norms = np.linalg.norm(tv.interpolate(ua, ub, 9, "slerp"), axis=-1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    assert np.linalg.norm(tv.interpolate(ua, ub, 9, "lerp")[4], axis=-1).min() < 0.999
    with pytest.raises(ValueError, match="kind"):
        tv.interpolate(a, b, kind="cubic")
    with pytest.raises(ValueError, match="steps"):
        tv.interpolate(a, b, steps=1)


def test_interpolate_counts_endpoints_and_is_batched():
    a = np.asarray(jax.random.normal(jax.random.key(0), (5, 3, 8)))
    b = np.asarray(jax.random.normal(jax.random.key(1), (5, 3, 8)))
    for kind in latent.INTERPOLATIONS:
        zs = np.asarray(tv.interpolate(a, b, steps=5, kind=kind))
        assert zs.shape == (5, 5, 3, 8)
        np.testing.assert_allclose(zs[0], a, atol=1e-5)
        np.testing.assert_allclose(zs[-1], b, atol=1e-5)
        for i in (0, 3):  # a batch of pairs is the same as one pair at a time
            np.testing.assert_allclose(zs[:, i], tv.interpolate(a[i], b[i], 5, kind), atol=1e-6)
    two = np.asarray(tv.interpolate(a[0], b[0], steps=2))
    assert two.shape == (2, 3, 8)
    np.testing.assert_allclose(tv.interpolate(a, b, 5, "lerp")[2], (a + b) / 2, atol=1e-6)


def test_slerp_flat_walks_the_whole_code_on_one_great_circle():
    a = np.asarray(jax.random.normal(jax.random.key(2), (3, 8)))
    b = np.asarray(jax.random.normal(jax.random.key(3), (3, 8)))
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)  # unit norm as flattened vectors, not per token
    flat = np.asarray(tv.interpolate(a, b, 7, "slerp_flat")).reshape(7, -1)
    per_token = np.asarray(tv.interpolate(a, b, 7, "slerp")).reshape(7, -1)
    np.testing.assert_allclose(np.linalg.norm(flat, axis=-1), 1.0, atol=1e-5)
    assert abs(np.linalg.norm(per_token, axis=-1) - 1.0).max() > 1e-3
    # the flattened path is the analytic slerp of the two unit vectors
    omega = np.arccos(np.dot(a.ravel(), b.ravel()))
    t = 0.5
    mid = (np.sin((1 - t) * omega) * a.ravel() + np.sin(t * omega) * b.ravel()) / np.sin(omega)
    np.testing.assert_allclose(flat[3], mid, atol=1e-5)


def test_interpolate_rejects_bad_steps_and_shapes():
    a, b = np.zeros((3, 8)), np.ones((3, 8))
    for steps in (1, 0, -2, 2.5, 9.0, True):
        with pytest.raises(ValueError, match=r"steps .*>= 2"):
            tv.interpolate(a, b, steps=steps)
    with pytest.raises(ValueError, match=r"\(3, 8\) and z_b \(3, 9\)"):
        tv.interpolate(a, np.ones((3, 9)))
    with pytest.raises(ValueError, match="slerp_flat"):
        tv.interpolate(a, b, kind="spline")


# -- priors, the fitted Gaussian, arithmetic -----------------------------------------------------------


def test_check_codes_names_the_argument_and_both_shapes(cfg):
    z = np.zeros((3, 8), np.float32)
    assert latent.check_codes(z, cfg).shape == (1, 3, 8)
    assert latent.check_codes(np.zeros((0, 3, 8)), cfg).shape == (0, 3, 8)
    for bad in ((4, 8), (2, 3, 9), (2, 3, 8, 1), (24,)):
        with pytest.raises(
            ValueError, match=rf"codes has shape \({', '.join(map(str, bad))},?\).*\[n, 3, 8\]"
        ):
            latent.check_codes(np.zeros(bad), cfg, "codes")
    with pytest.raises(ValueError, match="non-finite"):
        latent.check_codes(np.full((1, 3, 8), np.nan), cfg)


def test_priors_shapes_ranges_and_statistics(cfg):
    g = latent.sample_prior("gaussian", 4000, cfg, seed=0)
    t = latent.sample_prior("tanh", 4000, cfg, seed=0)
    assert g.shape == t.shape == (4000, 3, 8) and g.dtype == np.float32
    assert np.abs(g).max() <= latent.CLIP and np.abs(t).max() <= latent.CLIP
    # N(0, I) clipped: about 32 % of the coordinates sit on the clip bound; tanh(N(0, I)) has variance ~0.39
    assert 0.29 < np.mean(np.abs(g) == np.float32(latent.CLIP)) < 0.35
    assert 0.37 < t.var() < 0.42 and 0.49 < g.var() < 0.54
    np.testing.assert_array_equal(
        latent.sample_prior("tanh", 5, cfg, seed=3), latent.sample_prior("tanh", 5, cfg, seed=3)
    )
    assert not np.array_equal(
        latent.sample_prior("tanh", 5, cfg, seed=3), latent.sample_prior("tanh", 5, cfg, seed=4)
    )
    with pytest.raises(ValueError, match="prior must be one of"):
        latent.sample_prior("laplace", 3, cfg)
    with pytest.raises(ValueError, match="aggregate"):
        latent.sample_prior("aggregate", 3, cfg)
    for n in (0, -1, 2.0):
        with pytest.raises(ValueError, match="n .*positive integer"):
            latent.sample_prior("tanh", n, cfg)


def rel(x, y):
    """Relative Frobenius distance of x from y."""
    return np.linalg.norm(x - y) / np.linalg.norm(y)


def test_fitted_gaussian_recovers_mean_and_covariance(cfg):
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((24, 24)) * 0.05
    mean = rng.uniform(-0.3, 0.3, 24)
    codes = (mean + rng.standard_normal((20000, 24)) @ mix.T).reshape(-1, 3, 8)
    g = tv.FittedGaussian.fit(codes, ridge=0.0, fingerprint="abc")
    assert g.shape == (3, 8) and g.n_codes == 20000
    np.testing.assert_allclose(g.mean, mean, atol=0.01)
    assert rel(g.cov, mix @ mix.T) < 0.03
    s = g.sample(20000, seed=1).reshape(20000, -1)
    assert rel(np.cov(s, rowvar=False), g.cov) < 0.03
    np.testing.assert_allclose(s.mean(0), g.mean, atol=0.01)
    # a wide Gaussian's samples are clipped into the tanh range
    wide = tv.FittedGaussian.fit(rng.standard_normal((500, 3, 8)) * 3)
    assert np.abs(wide.sample(100)).max() <= latent.CLIP
    ridged = tv.FittedGaussian.fit(np.repeat(codes[:1], 5, 0))  # a degenerate fit is still sampleable
    assert np.all(np.diag(ridged.cov) > 0) and ridged.sample(2).shape == (2, 3, 8)
    with pytest.raises(ValueError, match=r"at least two codes .*\(1, 3, 8\)"):
        tv.FittedGaussian.fit(codes[:1])
    np.testing.assert_array_equal(latent.sample_prior("aggregate", 6, cfg, 2, g), g.sample(6, 2))
    with pytest.raises(ValueError, match=r"\[4, 6\] but this model's codes are \[3, 8\]"):
        latent.sample_prior("aggregate", 2, cfg, 0, tv.FittedGaussian.fit(codes.reshape(-1, 4, 6)))


def test_fitted_gaussian_file_is_written_atomically(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    g = tv.FittedGaussian.fit(rng.uniform(-1, 1, (50, 3, 8)), fingerprint="f00d")
    path = tmp_path / rundir.AGGREGATE_FILE
    g.save(path)
    back = tv.FittedGaussian.load(path)
    np.testing.assert_array_equal(back.cov, g.cov)
    assert (back.shape, back.n_codes, back.fingerprint) == ((3, 8), 50, "f00d")
    before = path.read_bytes()

    def broken(f, **arrays):
        f.write(b"PK half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken)
    with pytest.raises(OSError, match="disk full"):
        tv.FittedGaussian.fit(rng.uniform(-1, 1, (50, 3, 8))).save(path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [rundir.AGGREGATE_FILE]
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz is not an aggregate-posterior file"):
        tv.FittedGaussian.load(tmp_path / "junk.npz")


def test_analogy_is_a_plus_b_minus_c():
    rng = np.random.default_rng(2)
    a, b, c = (rng.uniform(-0.5, 0.5, (2, 3, 8)) for _ in range(3))
    np.testing.assert_allclose(tv.analogy(a, b, c), a + b - c, atol=1e-6)
    np.testing.assert_allclose(tv.analogy(a, b[0], c[0], scale=0.5), a + 0.5 * (b[0] - c[0]), atol=1e-6)
    big = tv.analogy(a, b + 2, c - 2)
    assert np.abs(big).max() == np.float32(latent.CLIP)
    assert np.abs(tv.analogy(a, b + 2, c - 2, clip=False)).max() > 3
    with pytest.raises(ValueError, match=r"a \(2, 3, 8\), b \(3, 9\)"):
        tv.analogy(a, b[0, :, :1].repeat(9, -1), c)
    with pytest.raises(ValueError, match="do not broadcast"):
        tv.analogy(a, b, np.zeros((3, 3, 8)))


def test_an_edit_direction_is_the_difference_of_mean_codes_and_shift_moves_along_it():
    rng = np.random.default_rng(3)
    frm, to = rng.uniform(-0.5, 0.5, (4, 3, 8)), rng.uniform(-0.5, 0.5, (2, 3, 8))
    d = latent.direction(frm, to)
    np.testing.assert_allclose(d, to.mean(0) - frm.mean(0), atol=1e-6)
    code = rng.uniform(-0.5, 0.5, (3, 8))
    moved = latent.shift(code, d, [-1, 0, 0.5, 2])
    assert moved.shape == (4, 3, 8)
    np.testing.assert_allclose(moved[1], code, atol=1e-6)
    np.testing.assert_allclose(moved[2], code + 0.5 * d, atol=1e-6)
    assert np.abs(latent.shift(code, d + 5, [1])).max() == np.float32(latent.CLIP)
    assert np.abs(latent.shift(code, d + 5, [1], clip=False)).max() > 4
    with pytest.raises(ValueError, match=r"non-empty sets .* got \(0, 3, 8\) and \(2, 3, 8\)"):
        latent.direction(frm[:0], to)
    with pytest.raises(ValueError, match=r"got \(4, 3, 8\) and \(2, 3, 4\)"):
        latent.direction(frm, to[..., :4])
    with pytest.raises(ValueError, match=r"one shape \[N, Z\]"):
        latent.shift(code, d[:, :4], [1])


def test_params_fingerprint_tells_params_apart():
    p = {"a": np.zeros(3, np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
    f = latent.params_fingerprint(p)
    assert len(f) == 8 and f == latent.params_fingerprint(jax.tree.map(np.copy, p))
    q = jax.tree.map(np.copy, p)
    q["b"]["c"][1, 1] = 1.0001
    assert latent.params_fingerprint(q) != f
