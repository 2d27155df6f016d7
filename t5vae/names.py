"""The vocabulary the library, the command line and the demo share, in one jax-free place: the ways to
interpolate, decode and sample, the kinds of corpus spec, and the parse check and statement kind of a line.
Imports nothing from t5vae (the CLI builds its parser, and the demo its page, from these without jax)."""

from __future__ import annotations

import ast
import gc
import threading
import warnings

INTERPOLATIONS = ("slerp", "slerp_flat", "lerp")  # per latent token, over the whole code, linear
DEFAULT_INTERPOLATION = "slerp"
METHODS = ("greedy", "sample", "beam")  # every way vae.generate decodes
# The deterministic ones: what paths, evaluation and the demo offer. "beam-parse" is text.Model's beam search
# that keeps the best-scored of the beams whose line parses (the best beam when none does): for code only.
PARSING_BEAM = "beam-parse"
DECODERS = ("greedy", "beam", PARSING_BEAM)
DEFAULT_BEAMS = 4
PRIORS = ("gaussian", "tanh", "aggregate")
DEFAULT_PRIOR = "aggregate"
# How a corpus spec is read (t5vae.corpus.parse_spec): the embedded standard-library corpus, the statements
# of another Python tree (py:), the embedded English sentences (prose: t5vae.sentences), a TFDS dataset
# (tfds:), array_record files of UTF-8 lines, text files.
CORPUS_KINDS = ("stdlib", "py", "prose", "tfds", "array_record", "text")
PROSE = "prose"  # the spec of the embedded English corpus
# What a corpus holds, which sets the training defaults (train_config.LANGUAGE_DEFAULTS) and what evaluation
# measures: code lines (parse checks, statement kinds) or sentences (BLEU, smooth paths, lengths in words).
LANGUAGES = ("code", "prose")
# Length buckets of exact match and of the demo's prose map: characters for code, words for prose.
LENGTH_BUCKETS = {
    "code": ((0, 40), (41, 60), (61, 80), (81, None)),
    "prose": ((0, 8), (9, 12), (13, 16), (17, None)),
}


def decoders_for(language: str) -> tuple[str, ...]:
    """The decoders that make sense for a corpus's language: the parse check is Python's, so not for prose."""
    return DECODERS if language == "code" else tuple(d for d in DECODERS if d != PARSING_BEAM)


def line_length(line: str, language: str) -> int:
    """A line's length in the unit of its language's buckets: characters for code, words for prose."""
    return len(line) if language == "code" else len(line.split())


def length_bucket(line: str, language: str) -> tuple[int, int | None]:
    """The bucket of :data:`LENGTH_BUCKETS` that holds ``line`` (the last one holds everything longer)."""
    n = line_length(line, language)
    buckets = LENGTH_BUCKETS[language]
    return next((b for b in buckets if b[1] is not None and n <= b[1]), buckets[-1])


def corpus_language(spec: str | None) -> str:
    """The language a corpus spec holds unless told otherwise: "prose" for the embedded English corpus,
    "code" for every other (a text, TFDS or array_record corpus of sentences says so with language="prose")."""
    return "prose" if spec == PROSE else "code"


NO_PARSE, EMPTY = "no parse", "empty"  # statement_kind of a line that does not parse / holds no statement


# ast.parse is not re-entrant on CPython 3.11: a garbage collection inside it can run a finalizer that parses
# too (3.11's traceback printing parses source to place its carets, so a finalizer that logs an exception
# does), which corrupts the parser's interpreter-wide recursion counter and raises "SystemError: AST
# constructor recursion depth mismatch" (CPython gh-106905). Parses are serialised and run with the cyclic
# collector paused.
_PARSE_LOCK = threading.Lock()


def parse_quietly(s: str) -> ast.Module | None:
    """``ast.parse(s)``, or None if ``s`` does not parse. Python's warnings for odd but valid source
    (``1if x else y``, ``"\\d"``) are not printed: generated text is full of them. Safe to call from any
    thread, and while finalizers that parse are pending (see ``_PARSE_LOCK``)."""
    with _PARSE_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collecting = gc.isenabled()
        gc.disable()
        try:
            return ast.parse(s)
        except (SyntaxError, ValueError):
            return None
        finally:
            if collecting:
                gc.enable()


def parses(line: str) -> bool:
    """Whether ``line`` parses with ``ast.parse``."""
    return parse_quietly(line) is not None


def statement_kind(line: str) -> str:
    """The class name of the line's first statement (``Assign``, ``Return``, ``Expr``...), :data:`NO_PARSE`
    or :data:`EMPTY` (a comment or blank)."""
    tree = parse_quietly(line)
    if tree is None:
        return NO_PARSE
    return type(tree.body[0]).__name__ if tree.body else EMPTY
