"""Evaluation (t5vae.evaluate): fixed-shape padded batches, decoding codes in them, the results table and
files. The whole evaluation of a trained run is exercised by ``t5vae eval`` in test_cli."""

import json

import numpy as np
import pytest
from conftest import TEXT_LINES

from t5vae import evaluate


def test_decoding_in_fixed_batches_gives_the_models_decodings(text_model, text_cfg, text_tok):
    lines = TEXT_LINES[:5]
    z = text_model.encode(lines)
    toks = text_model.decode_ids(z, batch_size=4)  # batches of 4: 4 + 1 padded
    assert toks.shape == (5, text_cfg.max_length) and toks.dtype == np.int32
    assert [text_tok.decode(t) for t in toks] == text_model.decode(z)
    beam2 = text_model.decode_ids(z, method="beam", num_beams=2, batch_size=4)
    assert beam2.shape == toks.shape
    with pytest.raises(ValueError, match="method must be one of"):
        evaluate.evaluate(text_model, lines, method="sampled")


def test_interpolation_quality_needs_two_lines_and_a_pair():
    rng = np.random.default_rng(0)
    assert evaluate.interpolation_quality(None, ["x = 1"], None, 5, rng) == {"interp_pairs": 0}
    assert evaluate.interpolation_quality(None, ["x = 1", "y = 2"], None, 0, rng) == {"interp_pairs": 0}


def test_path_figures_by_the_length_of_the_longer_end():
    lines = ["x = 1", "y = " + "2" * 40, "z = 3", "w = " + "4" * 60]  # 5, 41, 5 and 64 characters
    idx = np.array([[0, 2], [0, 1], [2, 1], [3, 0]])
    got = evaluate.paths_by_length(lines, idx, {"interp_smooth": np.array([1, 0, 1, 1], bool)}, "code")
    assert got == {
        "n_pairs_len_0_40": 1,
        "interp_smooth_len_0_40": 1.0,
        "n_pairs_len_41_60": 2,
        "interp_smooth_len_41_60": 0.5,
        "n_pairs_len_61_80": 1,
        "interp_smooth_len_61_80": 1.0,
    }
    table = evaluate.table(
        {
            "n_lines": 4,
            "n_truncated": 0,
            "language": "code",
            **got,
            **{"interp_valid_and_distinct" + t: 0.25 for t in ("_len_0_40", "_len_41_60", "_len_61_80")},
        }
    )
    assert "Interpolation paths by the length of their longer end (characters):" in table
    assert (
        "| length | pairs | valid and distinct | smooth |" in table
        and "| 41-60 | 2 | 0.250 | 0.500 |" in table
    )


def test_code_paths_are_judged_against_their_decoded_ends(text_model, monkeypatch):
    """Distinct means different from both decoded ends, not from the input lines; smooth in Python tokens."""
    r = evaluate.evaluate(text_model, TEXT_LINES[:6], pairs=3, steps=3, batch_size=8)
    assert {"interp_valid", "interp_distinct", "interp_smooth", "n_pairs_len_0_40"} <= set(r)
    assert (
        r["interp_valid_and_distinct_len_0_40"] == r["interp_valid_and_distinct"]
    )  # short lines: one bucket
    paths = [
        ["a = 1", "b = 2", "a = 1"],
        ["a = 1", "c = 3", "d = 4"],
    ]  # decoded ends: a = 1, then a = 1 / d = 4
    monkeypatch.setattr(
        evaluate,
        "decoded_paths",
        lambda *a, **k: (np.array([[0, 1], [2, 3]]), None, np.array(paths, dtype=object)),
    )
    got = evaluate.interpolation_quality(None, TEXT_LINES[:4], None, 2, np.random.default_rng(0), steps=1)
    assert got["interp_distinct"] == 1.0 and got["interp_valid"] == 1.0
    assert got["interp_smooth"] == 0.5  # the first path goes away from its end and back


def test_evaluation_decodes_through_the_model(text_model, monkeypatch):
    """Every token evaluation reads comes from Model.decode_ids: the one decode path."""
    calls = []
    real = type(text_model).decode_ids

    def spy(self, z, *args, **kwargs):
        calls.append((len(z), kwargs.get("method", "greedy"), kwargs.get("num_beams")))
        return real(self, z, *args, **kwargs)

    monkeypatch.setattr(type(text_model), "decode_ids", spy)
    r = evaluate.evaluate(
        text_model, TEXT_LINES[:6], pairs=2, steps=3, method="beam", num_beams=3, batch_size=8
    )
    assert (
        calls == [(6, "greedy", None), (10, "beam", 3)] and r["interp_method"] == "beam"
    )  # 2 x (3 + 2 ends)
    calls.clear()
    r = evaluate.evaluate(text_model, TEXT_LINES[:6], pairs=2, steps=3, method="beam-parse", batch_size=8)
    assert calls == [(6, "greedy", None), (10, "beam-parse", 4)] and r["interp_method"] == "beam-parse"


def test_table_and_files(tmp_path):
    results = {
        "n_lines": 12,
        "n_truncated": 1,
        "recon_token_acc": 0.51234,
        "recon_exact_match": 0.25,
        "heldout_mmd": 0.012345,
        "active_units": 7,
        "latent_units": 24,
        "interp_pairs": 3,
        "interp_kind": "lerp",
        "interp_method": "beam",
        "interp_valid": 0.5,
        "interp_distinct": 0.75,
        "interp_valid_and_distinct": 0.375,
        "example": ["a = 1", "a = 2", "b = 2"],
    }
    text = evaluate.table(results)
    assert text.startswith(
        "Validation: 12 lines (1 truncated), 3 interpolation pairs x 9 interior points (lerp, beam)\n"
    )
    for row in (
        "| greedy reconstruction token accuracy | 0.512 |",
        "| held-out MMD (unbiased) | 0.0123 |",
        "| active latent units (var > 0.01) | 7 / 24 |",
        "| interpolation: valid and distinct | 0.375 |",
    ):
        assert row in text, row
    assert text.endswith("Example interpolation:\n\n    a = 1\n    a = 2\n    b = 2\n")
    short = evaluate.table({"n_lines": 2, "n_truncated": 0, "recon_token_acc": 1.0})
    assert "0 interpolation pairs" in short and "Example" not in short and "MMD" not in short
    assert evaluate.save(results, tmp_path) == text
    assert (tmp_path / "eval.md").read_text() == text
    assert json.loads((tmp_path / "eval.json").read_text()) == results


def test_exact_match_by_length_bucket():
    lines = ["x" * 10, "y" * 40, "z" * 41, "w" * 75, "v" * 90]
    got = evaluate.exact_by_length(lines, np.array([True, False, True, False, True]))
    assert got == {
        "recon_exact_len_0_40": 0.5,
        "n_len_0_40": 2,
        "recon_exact_len_41_60": 1.0,
        "n_len_41_60": 1,
        "recon_exact_len_61_80": 0.0,
        "n_len_61_80": 1,
        "recon_exact_len_81_up": 1.0,
        "n_len_81_up": 1,
    }


def test_mutual_information_tells_collapse_from_separated_codes():
    rng = np.random.default_rng(0)
    apart = rng.uniform(-1, 1, (200, 4, 8)).astype(np.float32)
    collapsed = np.zeros_like(apart) + rng.normal(0, 1e-3, apart.shape).astype(np.float32)
    hi, lo = evaluate.mutual_information(apart, 0.1), evaluate.mutual_information(collapsed, 0.1)
    assert hi["mutual_info_max"] == pytest.approx(np.log(200))
    assert hi["mutual_info"] > 0.95 * np.log(200) and abs(lo["mutual_info"]) < 0.05


def test_linear_probe_reads_a_kind_written_into_the_codes():
    rng = np.random.default_rng(1)
    lines = (
        [f"x{i} = {i}" for i in range(60)]
        + [f"return y{i}" for i in range(40)]
        + [f"import m{i}" for i in range(20)]
    )
    kinds = np.array([0] * 60 + [1] * 40 + [2] * 20)
    noise = rng.normal(0, 1, (120, 2, 8))
    coded = noise.copy()
    coded[:, 0, :3] += 3 * np.eye(3)[kinds]  # the kind, linearly readable
    got = evaluate.linear_probe(lines, coded)
    assert got["probe_classes"] == 3 and got["probe_accuracy"] > 0.85 > 0.7 > got["probe_majority"]
    blind = evaluate.linear_probe(lines, noise)
    assert (
        blind["probe_accuracy"] < 0.8
    )  # noise carries no kind: near the majority baseline, not above the coded one
    assert evaluate.statement_kind("return x") == "Return" and evaluate.statement_kind("x = (") == "no parse"


def test_prose_evaluation_measures_words_bleu_and_smooth_paths(text_model):
    """language="prose": BLEU-4 and word-length buckets, paths judged against their decoded ends (distinct,
    smooth, ran to max_length); no parse check and no statement-kind probe."""
    sentences = [
        "The cat sat on the mat today.",
        "A dog ran in the park at noon.",
        "We read the old book twice.",
        "It rained all day long here.",
    ]
    r = evaluate.evaluate(text_model, sentences, pairs=3, steps=3, batch_size=8, language="prose")
    assert r["language"] == "prose" and 0.0 <= r["recon_bleu4"] <= 1.0
    assert {"interp_distinct", "interp_smooth", "interp_degenerate", "interp_smooth_len_0_8"} <= set(r)
    assert r["n_pairs_len_0_8"] == 3 and "| length | pairs | distinct | smooth |" in evaluate.table(r)
    assert not {"interp_valid", "probe_accuracy"} & set(r)
    assert {k for k in r if k.startswith("n_len_")} == {"n_len_0_8"}  # every sentence has at most 8 words
    assert len(r["example"]) == 5  # the two sentences and three interior points
    assert "Exact match by line length (words)" in evaluate.table(r)
    with pytest.raises(ValueError, match="language must be one of"):
        evaluate.evaluate(text_model, sentences, language="french")
    with pytest.raises(ValueError, match=r"method must be one of \('greedy', 'beam'\) for prose"):
        evaluate.evaluate(text_model, sentences, language="prose", method="beam-parse")


def test_prose_paths_count_points_that_run_to_max_length(text_model, monkeypatch):
    """A point whose decoding never ends (a phrase repeated to max_length) is degenerate."""
    limit = text_model.cfg.max_length
    rng = np.random.default_rng(0)
    z = text_model.encode(TEXT_LINES[:2])

    def fixed(self, codes, **kw):
        out = np.full((len(codes), limit), 5, np.int32)  # no point ends ...
        out[:2, 3], out[:2, 4:] = (
            text_model.cfg.t5.eos_token_id,
            0,
        )  # ... but the first end and one interior point
        return out

    monkeypatch.setattr(type(text_model), "decode_ids", fixed)
    r = evaluate.prose_paths(text_model, TEXT_LINES[:2], z, 1, rng, steps=3)
    assert r["interp_degenerate"] == 2 / 3 and r["interp_pairs"] == 1


def test_exact_match_by_length_in_words_for_prose():
    lines = ["one two three", "a b c d e f g h i j", "w " * 20]
    got = evaluate.exact_by_length(lines, np.array([True, False, True]), "prose")
    assert got == {
        "recon_exact_len_0_8": 1.0,
        "n_len_0_8": 1,
        "recon_exact_len_9_12": 0.0,
        "n_len_9_12": 1,
        "recon_exact_len_17_up": 1.0,
        "n_len_17_up": 1,
    }
