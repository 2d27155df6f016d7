"""Text in, text out (t5vae.text): tv.load and tv.Model's encode / decode / interpolate / analogy / sample
against the functional API, bad input, and the aggregate posterior fitted, stored and refreshed."""

import json
import os
import shutil

import jax
import numpy as np
import pytest
from conftest import TEXT_LINES as LINES
from conftest import run_cli

import t5vae as tv
from t5vae import checkpoint, data, files, latent, rundir, text


# the shared text-level model and its run directory (conftest), under this file's short names
@pytest.fixture(scope="module")
def tok(text_tok):
    return text_tok


@pytest.fixture(scope="module")
def cfg(text_cfg):
    return text_cfg


@pytest.fixture(scope="module")
def m(text_model):
    return text_model


@pytest.fixture(scope="module")
def run_dir(text_run_dir):
    return text_run_dir


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
    other.params = jax.tree.map(
        np.copy, m.params
    )  # new params: the laid-out decoder is built again from them
    assert other.decoder_weights() is not w and other.decode(z) == texts
    plain = tv.Model(cfg.replace(t5=cfg.t5.replace(kernels="plain")), m.params, tok)
    assert plain.decoder_weights() is None  # without the fast path, decoding runs on the params


def test_beam_parse_keeps_the_best_beam_that_parses(m, monkeypatch):
    z = m.encode(LINES[:3] + LINES[44:46] + LINES[-3:])
    beams = m.decode_ids(z, method="beam", all_beams=True)
    assert beams.shape == (8, 4, m.cfg.max_length)
    np.testing.assert_array_equal(beams[:, 0], m.decode_ids(z, method="beam"))  # best first
    texts = [[m.tokenizer.decode(b) for b in row] for row in beams]
    # which lines "parse" is set here, so that every branch is taken whatever the random decoder writes
    later = next(k for k in range(1, 4) if texts[0][k] != texts[0][0])
    good = {texts[0][later], texts[1][0]} - set(texts[0][:later])
    monkeypatch.setattr(text, "parses", lambda s: s in good)
    want = [next((b for b, t in zip(row, ts) if t in good), row[0]) for row, ts in zip(beams, texts)]
    got = m.decode_ids(z, method="beam-parse")
    np.testing.assert_array_equal(got, np.asarray(want))
    np.testing.assert_array_equal(got[0], beams[0, later])  # a later beam wins where the best does not parse
    none = [r for r in range(8) if not good & set(texts[r])]
    assert none and all((got[r] == beams[r, 0]).all() for r in none)  # none parses: the best beam
    assert m.decode(z, method="beam-parse") == [m.tokenizer.decode(t) for t in got]
    assert m.decode_ids(z[:0], method="beam-parse").shape == (0, m.cfg.max_length)


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
    with pytest.raises(
        ValueError, match=r"z has shape \(2, 4, 8\) but this model's codes are \[n, N, Z\] = \[n, 3, 8\]"
    ):
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
    with pytest.raises(TypeError, match="b must be one string"):
        m.analogy("x1 = f(1, y1)", b=["import mod3"], c="import mod4")


def test_aggregate_posterior_is_fitted_lazily_cached_outside_the_run_and_refreshed(run_dir, monkeypatch):
    before = sorted(p.name for p in run_dir.rglob("*"))
    mm = tv.load(run_dir)
    file = text.aggregate_cache(run_dir, latent.params_fingerprint(mm.params))
    assert not file.exists() and str(file).startswith(os.environ["XDG_CACHE_HOME"])
    g = mm.aggregate_posterior()
    assert sorted(p.name for p in run_dir.rglob("*")) == before  # the run directory is only read
    assert file.is_file() and oct(file.stat().st_mode & 0o777) == oct(0o666 & ~files.umask())
    assert g.n_codes == len(data.load_corpus(str(run_dir.parent / "corpus.txt")).train)
    train = data.load_corpus(str(run_dir.parent / "corpus.txt")).train
    codes = mm.codes(data.encode_lines(mm.tokenizer, train, 24))
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
    refit = text.aggregate_cache(run_dir, latent.params_fingerprint(again.params))
    assert tv.FittedGaussian.load(refit).fingerprint == latent.params_fingerprint(again.params)


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


def test_aggregate_without_a_writable_cache_is_kept_in_memory(m, cfg, tok, tmp_path, monkeypatch):
    (tmp_path / "corpus.txt").write_text("\n".join(LINES) + "\n")
    (tmp_path / "train_config.json").write_text(json.dumps({"corpus": str(tmp_path / "corpus.txt")}))
    (tmp_path / "not-a-dir").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "not-a-dir"))  # the cache cannot be created
    ro = tv.Model(cfg, m.params, tok, str(tmp_path))
    with pytest.warns(UserWarning, match=r"could not write .*\.npz .*in memory only"):
        g = ro.aggregate_posterior()
    assert not (tmp_path / rundir.AGGREGATE_FILE).exists()
    assert ro.aggregate_posterior() is g  # no second fit, no second warning


def test_load_gives_a_text_level_model(run):
    m = tv.load(run["out"])
    with pytest.warns(UserWarning, match="truncated to max_length=8"):  # both are longer than 8 tokens
        z = m.encode(["x1 = f(1, y1)", "import mod3"], truncate=True)
    assert z.shape == (2, 2, 8) and np.all(np.abs(z) < 1)
    texts = m.decode(z)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    with pytest.warns(UserWarning, match="truncated"):
        path = m.interpolate("x1 = f(1, y1)", "import mod3", steps=3, truncate=True)
    assert len(path) == 3  # endpoints included
    assert len(m.sample(3)) == 3
    # the loaded params are the trained ones, not a fresh init
    fresh = tv.init(m.cfg, jax.random.key(0))
    assert not np.allclose(m.params["latent_encoder"]["kernel"], fresh["latent_encoder"]["kernel"])


def test_load_falls_back_to_the_newest_checkpoint(run, tmp_path):
    """A run without final params (stopped early) loads its newest checkpoint; no checkpoint is an error."""
    final = tv.load(run["out"])
    d = tmp_path / "run"
    shutil.copytree(run["out"], d)
    shutil.rmtree(d / checkpoint.PARAMS_DIR)
    m = tv.load(d)
    assert m.run_dir == str(d) and m.cfg == final.cfg
    jax.tree.map(np.testing.assert_array_equal, m.params, final.params)  # step 6: the final params
    shutil.rmtree(d / checkpoint.CHECKPOINTS_DIR)
    with pytest.raises(FileNotFoundError, match="neither final params nor a checkpoint"):
        tv.load(d)
    with pytest.raises(FileNotFoundError, match="is not a t5vae run directory"):
        tv.load(tmp_path / "nowhere")


def _data_files(params_dir):
    return sorted(p for p in params_dir.rglob("*") if p.is_file() and "/d/" in str(p))


@pytest.mark.parametrize("damage", ["metadata deleted", "metadata truncated", "data file truncated"])
def test_damaged_final_params_fall_back_to_a_checkpoint_or_name_the_damage(run, tmp_path, damage):
    """Final params whose files are damaged are not a traceback: the newest checkpoint is used with a warning
    naming the damage; with no checkpoint left, one line names the run's params and what to do."""
    d = tmp_path / "run"
    shutil.copytree(run["out"], d)
    params = d / checkpoint.PARAMS_DIR
    if damage == "metadata deleted":
        (params / "_METADATA").unlink()
    elif damage == "metadata truncated":
        (params / "_METADATA").write_bytes((params / "_METADATA").read_bytes()[:20])
    else:
        for f in _data_files(params):
            f.write_bytes(f.read_bytes()[: len(f.read_bytes()) // 2])
    with pytest.warns(
        UserWarning, match=r"params is damaged: .* cannot be read .*; using checkpoint 6 instead"
    ):
        m = tv.load(d)
    jax.tree.map(np.testing.assert_array_equal, m.params, tv.load(run["out"]).params)
    shutil.rmtree(d / checkpoint.CHECKPOINTS_DIR)
    with pytest.raises(ValueError) as e:
        tv.load(d)
    assert str(e.value).count("\n") == 0 and len(str(e.value)) < 600
    assert f"{params} is damaged" in str(e.value) and "no readable checkpoint" in str(e.value)
    rc, _, err = run_cli(["interpolate", str(d), "x = 1", "y = 2"])
    assert rc == 1 and err.startswith("error: ") and "is damaged" in err and "Traceback" not in err


def test_a_tokenizer_from_another_run_is_refused_naming_both_sizes(run, tmp_path):
    d = tmp_path / "run"
    shutil.copytree(run["out"], d)
    assert (d / rundir.TOKENIZER_RECORD).is_file()
    other = data.train_tokenizer(LINES, 320)
    other.save(d / rundir.TOKENIZER_FILE)
    ours = data.Tokenizer.load(run["out"] / rundir.TOKENIZER_FILE).vocab_size
    assert other.vocab_size != ours
    with pytest.raises(
        ValueError,
        match=rf"spiece.model is not the tokenizer this run trained on .*has "
        rf"{other.vocab_size} pieces, the run's had {ours}",
    ):
        tv.load(d)


def test_tokenizer_vocab_larger_than_the_embedding_is_refused(run):
    m = tv.load(run["out"])
    small = m.cfg.replace(t5=m.cfg.t5.replace(vocab_size=m.tokenizer.vocab_size - 1))
    with pytest.raises(ValueError, match="do not match"):
        tv.Model(small, m.params, m.tokenizer)


def test_a_tokenizer_smaller_than_the_embedding_decodes(text_cfg, text_tok):
    """The normal case for T5 checkpoints (32100 pieces, 32128 rows): the extra rows are never decoded."""
    from conftest import random_params

    cfg = text_cfg.replace(
        t5=text_cfg.t5.replace(vocab_size=text_tok.vocab_size + 12, tie_word_embeddings=False)
    )
    params = random_params(cfg)
    params["t5"]["lm_head"][:, text_tok.vocab_size :] += 5.0  # the rows without a piece win every step
    m = tv.Model(cfg, params, text_tok)
    z = m.encode(["x1 = f(1, y1)", "import mod3"])
    assert all(isinstance(t, str) for t in m.decode(z) + m.decode(z, method="beam", num_beams=2))
    with pytest.raises(ValueError, match=f"token id {text_tok.vocab_size} is outside this tokenizer's"):
        text_tok.decode([5, text_tok.vocab_size])
