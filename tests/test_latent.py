"""Latent-space operations: interpolation paths, priors, the fitted aggregate posterior, latent arithmetic,
the text-level Model (encode / decode / interpolate / sample / analogy, bad input) and the CLI tables."""
import ast
import contextlib
import io
import json
import os

import jax
import numpy as np
import pytest

import t5vae as tv
from t5vae import checkpoint, cli, data, evaluate, latent

LINES = [f"x{i} = f({i}, y{i % 7})" for i in range(40)] + [f"import mod{i}" for i in range(20)]
LINES += ["return self.value", "def g(a, b):", "y = [1, 2, 3]", "assert z is None"]


@pytest.fixture(scope="module")
def tok():
    return data.train_tokenizer(LINES, 340)


@pytest.fixture(scope="module")
def cfg(tok):
    return tv.Config(t5=tv.preset("tiny").replace(vocab_size=tok.vocab_size), n_latent_tokens=3, latent_size=8,
                     max_length=24)


def random_params(cfg, seed=0):
    """Random params drawn with numpy from the spec tree (norms 1, biases 0): tv.init's first, eager call
    compiles a random op per leaf shape, most of this file's time budget; the pipeline ignores how they came."""
    rng = np.random.default_rng(seed)

    def leaf(s):
        kind = getattr(s.init, "__name__", "")
        if kind in ("ones", "zeros"):
            return np.full(s.shape, float(kind == "ones"), np.float32)
        return (0.2 * rng.standard_normal(s.shape)).astype(np.float32)

    return jax.tree.map(leaf, tv.model.param_specs(cfg), is_leaf=tv.t5.is_spec)


@pytest.fixture(scope="module")
def m(cfg, tok):
    return tv.Model(cfg, random_params(cfg), tok)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, cfg, tok, m):
    """A run directory as `t5vae train` leaves it: config, tokenizer, final params, train_config naming the corpus."""
    d = tmp_path_factory.mktemp("latent") / "run"
    d.mkdir()
    (d.parent / "corpus.txt").write_text("\n".join(LINES) + "\n")
    tok.save(d / checkpoint.TOKENIZER_FILE)
    checkpoint.save_params(d / checkpoint.PARAMS_DIR, m.params)
    (d / checkpoint.TRAIN_CONFIG_FILE).write_text(json.dumps({"corpus": str(d.parent / "corpus.txt")}))
    cfg.save_json(d / checkpoint.CONFIG_FILE)
    return d


# -- tv.interpolate ------------------------------------------------------------------------------------

def test_interpolate_counts_endpoints_and_is_batched():
    a = np.asarray(jax.random.normal(jax.random.key(0), (5, 3, 8)))
    b = np.asarray(jax.random.normal(jax.random.key(1), (5, 3, 8)))
    for kind in tv.model.INTERPOLATIONS:
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
        with pytest.raises(ValueError, match=rf"codes has shape \({', '.join(map(str, bad))},?\).*\[n, 3, 8\]"):
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
    np.testing.assert_array_equal(latent.sample_prior("tanh", 5, cfg, seed=3), latent.sample_prior("tanh", 5, cfg, seed=3))
    assert not np.array_equal(latent.sample_prior("tanh", 5, cfg, seed=3), latent.sample_prior("tanh", 5, cfg, seed=4))
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
    path = tmp_path / latent.AGGREGATE_FILE
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
    assert path.read_bytes() == before and os.listdir(tmp_path) == [latent.AGGREGATE_FILE]
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


# -- the text-level Model ------------------------------------------------------------------------------

def test_encode_decode_match_the_functional_api(m, cfg, tok):
    lines = LINES[:3] + LINES[44:46] + LINES[-3:]  # 8 lines: the smallest padded batch, shared by every test
    z = m.encode(lines)
    assert z.shape == (8, 3, 8) and np.all(np.abs(z) < 1)
    ids = data.pad_batch(data.encode_lines(tok, lines, cfg.max_length).ids, cfg.max_length)
    ref = jax.jit(tv.encode, static_argnums=1)(m.params, cfg, ids["input_ids"], ids["attention_mask"])
    np.testing.assert_allclose(z, ref, atol=1e-5)
    np.testing.assert_allclose(m.encode(lines[1]), z[1:2], atol=1e-5)
    assert m.encode([]).shape == (0, 3, 8)
    texts = m.decode(z)
    assert len(set(texts)) > 1  # the random decoder does depend on the code
    toks = np.asarray(tv.generate(m.params, cfg, z, cfg.max_length))
    assert texts == [tok.decode(t) for t in toks]
    assert m.decode(z[2]) == texts[2:3]  # one code [N, Z]; batch padding does not change a row
    assert m.decode(z, max_new_tokens=2) == [tok.decode(t) for t in toks[:, :2]]
    assert m.decode(np.zeros((0, 3, 8))) == []
    w = m.decoder_weights()
    assert m.decoder_weights() is w  # built on the first decode, reused by every later one
    other = tv.Model(cfg, m.params, tok)
    other.params = jax.tree.map(np.copy, m.params)  # new params: the laid-out decoder is built again from them
    assert other.decoder_weights() is not w and other.decode(z) == texts


def test_bad_text_input_is_a_clear_error(m):
    with pytest.raises(ValueError, match=r"lines\[1\] is empty"):
        m.encode(["x = 1", ""])
    with pytest.raises(ValueError, match=r"lines\[0\] is empty \(only whitespace\)"):
        m.encode(["  \t"])
    with pytest.raises(TypeError, match=r"lines\[1\] must be a string"):
        m.encode(["x = 1", 3])
    long = "value = " + " + ".join(f"name_{i}" for i in range(30))
    with pytest.raises(ValueError, match=r"lines\[1\] is \d+ tokens .*max_length=24 .*truncate=True"):
        m.encode(["x = 1", long])
    with pytest.warns(UserWarning, match=r"1 input\(s\) truncated to max_length=24"):
        z = m.encode(["x = 1", long], truncate=True)
    assert z.shape == (2, 3, 8)
    with pytest.raises(ValueError, match=r"\bb is \d+ tokens"):
        m.interpolate("x = 1", long)
    with pytest.raises(ValueError, match=r"\ba is empty"):
        m.interpolate("", "x = 1")


def test_bad_codes_and_lengths_are_clear_errors(m):
    other = tv.Config(t5=tv.preset("tiny"), n_latent_tokens=4, latent_size=8)
    z_other = np.zeros((2, other.n_latent_tokens, other.latent_size))
    with pytest.raises(ValueError, match=r"z has shape \(2, 4, 8\) but this model's codes are \[n, N, Z\] = \[n, 3, 8\]"):
        m.decode(z_other)
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match=f"max_new_tokens must be a positive integer, got {bad}"):
            m.decode(np.zeros((1, 3, 8)), max_new_tokens=bad)
        with pytest.raises(ValueError, match="max_new_tokens"):
            m.sample(2, prior="tanh", max_new_tokens=bad)
    with pytest.raises(ValueError, match="steps"):
        m.interpolate("x = 1", "y = 2", steps=1)
    with pytest.raises(ValueError, match="equally many"):
        m.interpolate(["x = 1", "y = 2"], ["z = 3"])
    with pytest.raises(ValueError, match="n .*positive integer"):
        m.sample(0, prior="tanh")


def test_interpolate_decodes_every_point_of_the_path(m):
    path = m.interpolate("x1 = f(1, y1)", "import mod3", steps=4)
    za, zb = m.encode(["x1 = f(1, y1)", "import mod3"])
    assert path == m.decode(np.asarray(tv.interpolate(za, zb, 4)))
    assert path[0] == m.decode(za)[0] and path[-1] == m.decode(zb)[0]
    both = m.interpolate(["x1 = f(1, y1)", "return self.value"], ["import mod3", "y = [1, 2, 3]"], 2, "lerp")
    assert len(both) == 2 and both[1] == m.interpolate("return self.value", "y = [1, 2, 3]", 2, "lerp")
    assert both[1] == m.decode(m.encode(["return self.value", "y = [1, 2, 3]"]))


def test_analogy_decodes_the_arithmetic(m):
    za, zb, zc = m.encode(["x1 = f(1, y1)", "import mod3", "import mod4"])
    assert m.analogy("x1 = f(1, y1)", "import mod3", "import mod4") == m.decode(tv.analogy(za, zb, zc))[0]
    assert m.analogy(["x1 = f(1, y1)"], "import mod3", "import mod4", scale=0.0) == m.decode(za)


def test_aggregate_posterior_is_fitted_lazily_stored_and_refreshed(run_dir, monkeypatch):
    file = run_dir / latent.AGGREGATE_FILE
    mm = tv.load(run_dir)
    assert not file.exists()
    g = mm.aggregate_posterior()
    assert file.is_file() and g.n_codes == len(data.load_corpus(str(run_dir.parent / "corpus.txt")).train)
    train = data.load_corpus(str(run_dir.parent / "corpus.txt")).train
    codes = evaluate.encode_lines(mm.params, mm.cfg, data.encode_lines(mm.tokenizer, train, 24), 128)
    np.testing.assert_allclose(g.mean, codes.reshape(len(codes), -1).mean(0), atol=1e-5)
    texts = mm.sample(3, seed=5)  # the default prior
    assert texts == mm.decode(g.sample(3, 5)) and latent.DEFAULT_PRIOR == "aggregate"
    # a fresh load reads the file instead of encoding the corpus again
    again = tv.load(run_dir)
    monkeypatch.setattr(tv.Model, "fit_aggregate", lambda *a, **k: pytest.fail("refitted a stored posterior"))
    np.testing.assert_array_equal(again.aggregate_posterior().cov, g.cov)
    monkeypatch.undo()
    # other params (e.g. a run trained further): the stored fit is stale and is recomputed
    again.params = jax.tree.map(lambda x: x * 1.01, again.params)
    assert not np.allclose(again.aggregate_posterior().mean, g.mean)
    assert tv.FittedGaussian.load(file).fingerprint == latent.params_fingerprint(again.params)


def test_aggregate_needs_training_lines(m, cfg, tok, tmp_path):
    lone = tv.Model(cfg, m.params, tok)
    with pytest.raises(ValueError, match="fit_aggregate"):
        lone.sample(2)
    lone.fit_aggregate(LINES[:30])
    assert len(lone.sample(2)) == 2
    nowhere = tv.Model(cfg, m.params, tok, str(tmp_path))
    with pytest.raises(FileNotFoundError, match="train_config.json"):
        nowhere.aggregate_posterior()
    (tmp_path / "train_config.json").write_text(json.dumps({"corpus": str(tmp_path / "gone.txt")}))
    with pytest.raises(FileNotFoundError, match="gone.txt.*training corpus"):
        nowhere.aggregate_posterior()


def test_aggregate_in_a_read_only_run_is_kept_in_memory(m, cfg, tok, tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "train_config.json").write_text(json.dumps({"corpus": str(tmp_path / "corpus.txt")}))

    def read_only(self, path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tv.FittedGaussian, "save", read_only)
    ro = tv.Model(cfg, m.params, tok, str(tmp_path))
    with pytest.warns(UserWarning, match="could not write .*aggregate_posterior.npz.*in memory only"):
        g = ro.aggregate_posterior()
    assert not (tmp_path / latent.AGGREGATE_FILE).exists()
    assert ro.aggregate_posterior() is g  # no second fit, no second warning


# -- the CLI tables ------------------------------------------------------------------------------------

def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli.main(argv)
    return rc, out.getvalue(), err.getvalue()


def test_cli_interpolate_prints_ratio_text_valid(run_dir):
    rc, out, _ = _cli(["interpolate", str(run_dir), "x1 = f(1, y1)", "import mod3", "--steps", "4"])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ratio", "text", "valid"] and len(lines) == 6
    rows = lines[1:5]
    assert [r.split()[0] for r in rows] == ["0.000", "0.333", "0.667", "1.000"]
    texts = tv.load(run_dir).interpolate("x1 = f(1, y1)", "import mod3", 4)
    for row, text in zip(rows, texts):
        valid = "yes" if _parses(text) else "no"
        assert row.rstrip().endswith(valid) and cli._show(text).strip() in row
    assert lines[5] == f"{sum(_parses(t) for t in texts)} of 4 parse with ast.parse"
    rc, out, _ = _cli(["interpolate", str(run_dir), "x1 = f(1, y1)", "import mod3", "--steps", "3", "--method", "beam"])
    beam = tv.load(run_dir).interpolate("x1 = f(1, y1)", "import mod3", 3, method="beam", num_beams=4)
    assert rc == 0 and [cli._show(t).strip() in row for t, row in zip(beam, out.splitlines()[1:4])] == [True] * 3
    rc, _, err = _cli(["interpolate", str(run_dir), "x = 1", "y = 2", "--steps", "1"])
    assert rc == 1 and "steps" in err and ">= 2" in err
    rc, _, err = _cli(["interpolate", str(run_dir), "", "y = 2"])
    assert rc == 1 and "a is empty" in err


def test_cli_sample_prints_a_table(run_dir):
    rc, out, _ = _cli(["sample", str(run_dir), "-n", "4", "--prior", "tanh", "--seed", "2"])
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split() == ["#", "text", "valid"] and len(lines) == 6
    assert [r.split()[0] for r in lines[1:5]] == ["0", "1", "2", "3"]
    texts = tv.load(run_dir).sample(4, prior="tanh", seed=2)
    assert lines[5] == f"{sum(_parses(t) for t in texts)} of 4 parse with ast.parse"
    rc, _, err = _cli(["sample", str(run_dir), "-n", "2", "--max-new-tokens", "0"])
    assert rc == 1 and "max_new_tokens must be a positive integer, got 0" in err


def _parses(s):
    try:
        ast.parse(s)
        return True
    except (SyntaxError, ValueError):
        return False
