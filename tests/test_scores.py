"""BLEU-4, word edit distance and path smoothness, against values worked out by hand."""

import math

import pytest

from t5vae import scores


def test_bleu_of_identical_text_is_one_and_of_disjoint_text_zero():
    refs = ["the cat sat on the mat today", "a dog ran in the park"]
    assert scores.corpus_bleu(refs, refs) == pytest.approx(1.0)
    assert scores.corpus_bleu(refs, ["x y z w v u", "q r s t u v"]) == 0.0


def test_bleu_by_hand_with_clipping_and_brevity_penalty():
    # hypothesis "the the the the" against "the cat is on the mat": unigram matches clipped to 2 of 4,
    # no bigram match -> 0 (no smoothing)
    assert scores.corpus_bleu(["the cat is on the mat"], ["the the the the"]) == 0.0
    # a 5-word hypothesis that is the first 5 words of a 6-word reference: p1..p4 = 1, BP = exp(1 - 6/5)
    ref, hyp = "one two three four five six", "one two three four five"
    assert scores.corpus_bleu([ref], [hyp]) == pytest.approx(math.exp(1 - 6 / 5))
    # precisions sum over the corpus before the mean: (4/5 unigrams... ) computed explicitly
    refs, hyps = ["a b c d e", "f g h i j"], ["a b c d e", "f g h i x"]
    p = [9 / 10, 7 / 8, 5 / 6, 3 / 4]
    assert scores.corpus_bleu(refs, hyps) == pytest.approx(math.exp(sum(map(math.log, p)) / 4))
    with pytest.raises(ValueError, match="2 references for 1 hypotheses"):
        scores.corpus_bleu(refs, hyps[:1])


def test_word_edit_distance():
    assert scores.word_edit_distance("a b c", "a b c") == 0
    assert scores.word_edit_distance("a b c", "a x c") == 1
    assert scores.word_edit_distance("a b c", "b c") == 1
    assert scores.word_edit_distance("", "a b") == 2
    assert scores.word_edit_distance("kitten sat down", "sitting sat") == 2


def test_smooth_paths():
    assert scores.is_smooth(["a b c", "a b c", "a x c", "y x c", "y x z"])
    assert not scores.is_smooth(["a b c", "y x z", "a b c", "y x z"])  # goes back to a
    assert not scores.is_smooth(["a b c", "a b c x x x x", "y x z"])  # drifts away from b, then back
    assert scores.is_smooth(["same", "same"])


def test_code_paths_are_judged_in_python_tokens():
    assert scores.code_tokens("x = f(a_1, 2)") == ["x", "=", "f", "(", "a_1", ",", "2", ")"]
    assert scores.edit_distance(scores.code_tokens("x = f(a)"), scores.code_tokens("x = g(a)")) == 1
    path = ["x = f(a)", "x = f(b)", "y = f(b)", "y = [b]"]
    assert scores.is_smooth(path, scores.code_tokens)
    assert not scores.is_smooth(["x = 1", "import os, sys", "x = 2"], scores.code_tokens)


def test_the_detour_example_tells_a_blend_from_a_switch():
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "path_detours.py"
    spec = importlib.util.spec_from_file_location("path_detours", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    switch = ["a b c d", "a b c d", "x b c d", "x y z d", "x y z w"]  # a's words give way to b's
    blend = ["a b c d", "aq bz cx d", "x y z w"]  # misspelt midpoint: far from both ends
    assert not module.has_detour(switch) and module.has_detour(blend)
    wobble = ["a b c d", "x b c d", "a b c d", "x y z w"]  # back to a by one word
    assert not scores.is_smooth(wobble) and scores.is_smooth(wobble, slack=1)
    assert not scores.is_smooth(["a b c d", "x y z d", "a b c d", "x y z w"], slack=1)
