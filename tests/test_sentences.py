"""The prose corpus's sentence extraction: what counts as a plain English sentence, how paragraphs and
sentences are cut, and what the installed Python yields."""

import os

import pytest

from t5vae import sentences


@pytest.mark.parametrize(
    "s",
    [
        "The object cannot be used after this call, but the file descriptor can be reused.",
        "It doesn't change the caller's list (the copy is shallow).",
        'The "global" statement must precede all uses of the listed names.',
        "Derived from tuple, so a vector is a tuple!",
        "Is this a question about five words?",
    ],
)
def test_plain_sentences_are_kept(s):
    assert sentences.is_clean(s)


@pytest.mark.parametrize(
    "s",
    [
        "Call os.path.join to build the path to the file.",  # dotted name
        "Set the max_length argument to a larger value now.",  # identifier
        "Return self.value if the flag is true here.",
        "The result of f() is returned to the caller here.",  # a call
        "Use x = 1 to set the value of the variable.",  # an operator
        "See https://example.org for the rest of the story.",  # a URL
        "The ValueError exception is raised on bad input.",  # CamelCase identifier
        "Use ``repr`` to show the value of an object here.",  # reST literal
        "too short here.",  # lower case start, and 3 words
        "Five words but no end",  # no final punctuation
        "Unbalanced (parenthesis in this sentence here.",
        " ".join(["Word"] * 26) + ".",  # 26 words
    ],
)
def test_code_markup_and_wrong_lengths_are_dropped(s):
    assert not sentences.is_clean(s)


def test_paragraphs_skip_code_blocks_sessions_and_directives():
    text = (
        "First paragraph that\nwraps over two lines.\n\n   indented = code\n\n>>> 1 + 1\n2\n\n"
        ".. note::\n\nA paragraph that ends with a block::\n\n+----+\n| ab |\n+----+\n\nLast one.\n"
    )
    assert list(sentences.paragraphs(text)) == ["First paragraph that wraps over two lines.", "Last one."]


def test_split_sentences_keeps_abbreviations_and_initials():
    p = "Use a list, e.g. This one. It was written by J. Smith in May. Done? Yes!"
    assert sentences.split_sentences(p) == [
        "Use a list, e.g. This one.",
        "It was written by J. Smith in May.",
        "Done?",
        "Yes!",
    ]


def test_clean_sentences_deduplicates_in_order():
    texts = [
        "The first sentence is right here. The second sentence is right here.",
        "The first sentence is right here.",
    ]
    assert sentences.clean_sentences(texts) == [
        "The first sentence is right here.",
        "The second sentence is right here.",
    ]


def test_unmark_replaces_rest_inline_markup_by_its_text():
    assert (
        sentences.unmark(
            "The :mod:`logging` module, :func:`~os.getcwd`, :ref:`the tutorial <tut>`, "
            "``x``, *very* **much** and `Python <https://python.org>`_."
        )
        == "The logging module, os.getcwd, the tutorial, x, very much and Python."
    )


def test_documentation_sources_add_their_sentences(tmp_path):
    (tmp_path / "lib").mkdir()
    doc = tmp_path / "guide.rst.txt"
    doc.write_text(
        "Guide\n=====\n\nThe :mod:`logging` module writes messages to many places.\n\n   code = block\n"
    )
    none = str(tmp_path / "no-wordnet")
    base = sentences.prose_corpus(root=str(tmp_path / "lib"), docs=[], wordnet=none)
    more = sentences.prose_corpus(root=str(tmp_path / "lib"), docs=[str(doc)], wordnet=none)
    assert more == base + ["The logging module writes messages to many places."]
    assert sentences.docs_sources(str(tmp_path / "none*")) == []


def test_the_installed_python_yields_thousands_of_clean_sentences():
    got = sentences.prose_corpus(docs=[], wordnet="/nonexistent")
    assert len(got) > 5000  # about 8,600 on CPython 3.11
    assert len(set(got)) == len(got)
    assert all(sentences.is_clean(s) and 5 <= len(s.split()) <= 25 for s in got)
    assert sentences.prose_corpus(docs=[], wordnet="/nonexistent") == got  # the same text, the same corpus


def test_fortunes_are_entries_without_their_attributions(tmp_path):
    (tmp_path / "wisdom").write_text(
        "He who hesitates is sometimes saved.\n%\nThe climate of Bombay is such that its inhabitants\n"
        "have to live elsewhere.\n\t\t-- Somebody Famous\n%\n"
    )
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x02binary index")
    got = list(sentences.fortunes(str(tmp_path)))
    assert sentences.clean_sentences(got) == [
        "He who hesitates is sometimes saved.",
        "The climate of Bombay is such that its inhabitants have to live elsewhere.",
    ]
    assert list(sentences.fortunes(str(tmp_path / "absent"))) == []


def test_wordnet_examples_are_the_quoted_parts_of_glosses_made_sentences(tmp_path):
    (tmp_path / "data.noun").write_text(
        '  1 This software and database is provided under a licence; "quoted" text here\n'
        '02084071 05 n 01 dog 0 000 | a domesticated carnivorous mammal; "the dog barked all night"\n'
        '02084072 05 n 01 cat 0 000 | a small feline; "the cat sat  on the mat!"; "a  cat\'s whiskers"\n'
        "02084073 05 n 01 fox 0 000 | a canine with no example\n"
    )
    (tmp_path / "data.verb").write_text('00001740 29 v 01 run 0 000 | move fast; "He ran to the shop"\n')
    assert list(sentences.wordnet_examples(str(tmp_path))) == [
        "The dog barked all night.",
        "The cat sat on the mat!",
        "A cat's whiskers.",
        "He ran to the shop.",
    ]
    got = sentences.prose_corpus(root=str(tmp_path / "lib"), docs=[], wordnet=str(tmp_path))
    assert got[-3:] == ["The dog barked all night.", "The cat sat on the mat!", "He ran to the shop."]
    assert list(sentences.wordnet_examples(str(tmp_path / "absent"))) == []


def test_the_installed_wordnet_adds_general_english():
    if not os.path.isdir(sentences.WORDNET):
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(
                f"WordNet is required under CI=true (apt-get install wordnet-base): no {sentences.WORDNET}"
            )
        pytest.skip(f"WordNet is not installed ({sentences.WORDNET})")
    got = sentences.clean_sentences(sentences.wordnet_examples())
    assert len(got) > 20000  # 29,000 of WordNet 3.0's 48,000 examples are clean sentences of 5-25 words
    assert "The cold hardened the butter." in got


def test_package_descriptions_read_long_descriptions_and_drop_verbatim_lines(tmp_path):
    status = tmp_path / "status"
    status.write_text(
        "Package: a\nDescription: short synopsis\n This tool converts the files of one format.\n"
        " .\n It also reads the older format.\n  verbatim text is kept out\nHomepage: x\n\n"
        "Package: b\nDescription: nothing more\n"
    )
    texts = list(sentences.package_descriptions(str(status)))
    assert texts == ["This tool converts the files of one format.\n\nIt also reads the older format.\n"]
    assert sentences.clean_sentences(texts) == [
        "This tool converts the files of one format.",
        "It also reads the older format.",
    ]
    assert list(sentences.package_descriptions(str(tmp_path / "absent"))) == []
    assert sentences.words("It's a 2-step tool, v2.") == ["it's", "a", "2", "step", "tool", "v", "2"]


def test_the_heldout_example_writes_sentences_the_corpus_lacks_and_its_known_subset(tmp_path, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "examples" / "heldout_english.py"
    spec = importlib.util.spec_from_file_location("heldout_english", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    corpus = ["The cat sat on the mat.", "A dog will sit on the mat."]
    monkeypatch.setattr(sentences, "prose_corpus", lambda: corpus)
    (tmp_path / "wisdom").write_text(
        "The cat sat on the mat.\n%\nA dog sat on the cat.\n%\nNo words here are known at all.\n%\n"
    )
    out = tmp_path / "held.txt"
    monkeypatch.setattr(sys, "argv", ["heldout_english.py", str(out), "--fortunes", str(tmp_path)])
    module.main()
    assert out.read_text() == "A dog sat on the cat.\nNo words here are known at all.\n"
    assert (tmp_path / "held-known.txt").read_text() == "A dog sat on the cat.\n"
    monkeypatch.setattr(sys, "argv", ["heldout_english.py", str(out), "--fortunes", str(tmp_path / "none")])
    with pytest.raises(SystemExit, match="no fortune files in"):
        module.main()
    assert out.read_text().startswith("A dog")  # a failed run leaves the last file as it was
