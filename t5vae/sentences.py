"""The English sentences of the ``prose`` corpus (:func:`prose_corpus`), from text a machine has without a
download and with no data file in the repository. First the Python installation's own text: the language
reference that ``pydoc`` ships (``pydoc_data.topics``) and the docstrings of the standard library's modules,
classes and functions (read with ``ast``, nothing imported); the same Python version gives the same
sentences on every machine. Where Debian's Python documentation is installed (``apt-get install
python3.11-doc``: the reST sources of docs.python.org under /usr/share/doc/python3.X/html/_sources), its
sentences are added: :func:`docs_sources` says whether. Where WordNet is installed (``apt-get install
wordnet-base``: /usr/share/wordnet), the example sentences of its glosses are added too: general English
("The cold hardened the butter.") beside the technical English of the rest, which a model of English needs
for the words that Python's documentation never uses.

Python's text is technical English, full of code. A paragraph is kept only as prose (no indented block, no
``>>>`` session, no reST table or directive); it is split into sentences; a sentence is kept when it reads as
a plain English sentence of ``min_words``-``max_words`` words: a capital first, a full stop, question or
exclamation mark last, and nothing that marks code or markup (identifiers with ``_`` or dots or inner
capitals, calls, brackets, operators, backquotes, URLs, reST roles); quotes, apostrophes and parentheses
around words are English and stay. Duplicates are dropped.
"""

from __future__ import annotations

import ast
import glob
import os
import re
import sysconfig
from typing import Iterable, Iterator

from t5vae.names import parse_quietly

MIN_WORDS, MAX_WORDS = 5, 25

# abbreviations that end in a full stop inside a sentence
_ABBREVIATIONS = ("e.g.", "i.e.", "etc.", "vs.", "cf.", "Mr.", "Mrs.", "Dr.", "No.", "approx.", "al.")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_CODE_CHARS = set("_=<>[]{}`*\\/|@#$%^~")
_URL = re.compile(r"https?:|www\.|\.com\b|\.org\b", re.I)
_INNER_CAPITAL = re.compile(r"[a-z][A-Z]")
_CALL = re.compile(r"\w\(|\(\)")
_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+")
_WRAP_OPEN, _WRAP_CLOSE = "(\"'", ")\"'.,:;!?"
_TABLE = re.compile(r"^[\s=+\-*~^|]+$")
# reST inline markup, replaced by the text it shows: :role:`text <target>` / :role:`~a.b`, ``literal``,
# **strong**, *emphasis*, `link <url>`_
_ROLE = re.compile(r":[a-z]+(?::[a-z]+)*:`~?([^`<]*?)\s*(?:<[^>]*>)?`")
_LITERAL = re.compile(r"``([^`]+)``")
_EMPHASIS = re.compile(r"\*\*?([^*\s][^*]*?)\*\*?")
_LINK = re.compile(r"`([^`<]+?)\s*(?:<[^>]*>)?`_{1,2}")


def unmark(text: str) -> str:
    """reST inline markup replaced by the text it shows (roles, literals, emphasis, links)."""
    for pattern in (_ROLE, _LITERAL, _EMPHASIS, _LINK):
        text = pattern.sub(r"\1", text)
    return text


def paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of prose joined onto one line: blocks separated by blank lines, without indented (code or
    grammar) blocks, interactive sessions, reST tables, directives, headings or list items; inline reST
    markup is replaced by its text."""
    block: list[str] = []
    for line in text.splitlines() + [""]:
        if line.strip():
            block.append(line)
            continue
        if block and _is_prose(block):
            yield unmark(" ".join(ln.strip() for ln in block))
        block = []


def _is_prose(block: list[str]) -> bool:
    first = block[0]
    if first[:1].isspace() or first.lstrip().startswith(("..", ">>>", "-", "*", "+", "#", ":")):
        return False
    if any(_TABLE.match(ln) or ln.lstrip().startswith(">>>") for ln in block):
        return False
    return not block[-1].rstrip().endswith("::")


def split_sentences(paragraph: str) -> list[str]:
    """Sentences of one paragraph: split after ., ! or ? followed by a capital, except after a common
    abbreviation (e.g., i.e., etc.) or a single capital letter (an initial)."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(paragraph):
        last = out[-1].split()[-1] if out else ""
        if out and (last in _ABBREVIATIONS or re.fullmatch(r"[A-Z]\.", last)):
            out[-1] += " " + piece
        else:
            out.append(piece)
    return [" ".join(s.split()) for s in out]


def is_clean(sentence: str, min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> bool:
    """A plain English sentence of ``min_words``-``max_words`` words with no code, markup or URL in it."""
    words = sentence.split()
    if not min_words <= len(words) <= max_words:
        return False
    if not (sentence[0].isupper() and sentence[-1] in ".!?") or sentence.isupper():
        return False
    if (
        _CODE_CHARS & set(sentence)
        or _CALL.search(sentence)
        or _URL.search(sentence)
        or not sentence.isascii()
    ):
        return False
    if sentence.count('"') % 2 or sentence.count("(") != sentence.count(")") or "\"'" in sentence:
        return False
    for w in words:
        core = w.lstrip(_WRAP_OPEN).rstrip(_WRAP_CLOSE)
        if w in _ABBREVIATIONS or (not core and w in ("-", "--")):
            continue
        if not _WORD.fullmatch(core) or _INNER_CAPITAL.search(core):
            return False
    return True


def docstrings(root: str) -> Iterator[str]:
    """Module, class and function docstrings of the ``.py`` files under ``root`` (tests and site-packages
    left out), in a stable order."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames if d not in ("site-packages", "test", "tests", "idle_test", "__pycache__")
        )
        for name in sorted(filenames):
            if not name.endswith(".py"):
                continue
            try:
                with open(os.path.join(dirpath, name), encoding="utf-8") as f:
                    tree = parse_quietly(f.read())
            except (OSError, UnicodeDecodeError):
                continue
            if tree is None:
                continue
            for node in ast.walk(tree):
                if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield doc


def reference_topics() -> Iterator[str]:
    """The language reference's topics as pydoc shows them (``pydoc_data.topics``), in key order."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def clean_sentences(
    texts: Iterable[str], min_words: int = MIN_WORDS, max_words: int = MAX_WORDS
) -> list[str]:
    """Every clean sentence of ``texts``, first occurrence kept, in order."""
    seen: dict[str, None] = {}
    for text in texts:
        for para in paragraphs(text):
            for s in split_sentences(para):
                if s not in seen and is_clean(s, min_words, max_words):
                    seen[s] = None
    return list(seen)


def docs_sources(pattern: str = "/usr/share/doc/python3*/html/_sources") -> list[str]:
    """The reST sources of the newest installed Debian Python documentation (``*.rst.txt``), sorted; [] when
    none is installed."""
    roots = sorted(glob.glob(pattern), key=lambda p: [int(x) for x in re.findall(r"\d+", p)])
    return sorted(glob.glob(os.path.join(roots[-1], "**", "*.txt"), recursive=True)) if roots else []


def package_descriptions(status: str = "/var/lib/dpkg/status") -> Iterator[str]:
    """The long descriptions of the Debian packages installed on this machine (dpkg's ``status`` file), one
    text per package with its paragraphs separated by blank lines, in file order; nothing where the file is
    absent. General English about software, written by people other than Python's authors: held-out text
    for a model trained on :func:`prose_corpus` (the package descriptions are not part of it)."""
    try:
        text = _read(status)
    except OSError:
        return
    for stanza in text.split("\n\n"):
        lines, inside = [], False
        for line in stanza.splitlines():
            if line.startswith("Description:"):
                inside = True
            elif inside and line.startswith(" "):
                # " ." is a blank line; "  text" (two spaces) is shown verbatim (code, lists, tables): it
                # ends the paragraph and is left out
                lines.append("" if line.strip() == "." or line.startswith("  ") else line[1:])
            else:
                inside = False
        if lines:
            yield "\n".join(lines)


FORTUNES = "/usr/share/games/fortunes"


def fortunes(root: str = FORTUNES) -> Iterator[str]:
    """The entries of the fortune files under ``root`` (Debian's ``fortunes`` package: quotations from
    literature, speeches and people, jokes), one text per entry with its attribution lines (``-- Author``)
    left out, files in name order; nothing where ``root`` is absent. General English that neither Python's
    text nor WordNet holds: held-out text for a model trained on :func:`prose_corpus`."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return
    for name in names:
        path = os.path.join(root, name)
        if "." in name or not os.path.isfile(path):  # index (.dat) and link (.u8) files
            continue
        for entry in re.split(r"^%$", _read(path), flags=re.M):
            yield "\n".join(ln.strip() for ln in entry.splitlines() if not ln.lstrip().startswith("--"))


WORDNET = "/usr/share/wordnet"
_WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
_QUOTED = re.compile(r'"([^"]+)"')


def wordnet_examples(root: str = WORDNET) -> Iterator[str]:
    """The example sentences of WordNet's glosses (the quoted parts after a synset's definition: ``| a
    domesticated carnivorous mammal; "the dog barked all night"``), each with a capital first and a full
    stop last where it had none, in file order (nouns, verbs, adjectives, adverbs); nothing where WordNet's
    database is not under ``root``. Definitions are noun phrases, not sentences, and are left out."""
    for name in _WORDNET_FILES:
        try:
            text = _read(os.path.join(root, name))
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("  ") or "|" not in line:  # the licence header is indented
                continue
            for example in _QUOTED.findall(line.split("|", 1)[1]):
                example = " ".join(example.split())
                if example:
                    end = "" if example[-1] in ".!?" else "."
                    yield example[0].upper() + example[1:] + end


def words(sentence: str) -> list[str]:
    """The lower-cased words of a sentence (letters, apostrophes and hyphens; or digits)."""
    return [w.lower() for w in _WORD.findall(sentence)]


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def prose_corpus(
    min_words: int = MIN_WORDS,
    max_words: int = MAX_WORDS,
    root: str | None = None,
    docs: list[str] | None = None,
    wordnet: str = WORDNET,
) -> list[str]:
    """The ``prose`` corpus: the clean sentences of the reference topics, of the standard library's docstrings
    (``root``, default this Python's stdlib directory), of the documentation sources ``docs`` (default
    :func:`docs_sources`: none where the documentation is not installed), then WordNet's examples under
    ``wordnet`` (none where it is not installed)."""
    root = root or sysconfig.get_paths()["stdlib"]
    docs = docs_sources() if docs is None else docs

    def texts():
        yield from reference_topics()
        yield from docstrings(root)
        yield from map(_read, docs)
        yield from wordnet_examples(wordnet)

    return clean_sentences(texts(), min_words, max_words)
