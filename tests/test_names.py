"""The shared vocabulary: one definition of each name, used by every layer that offers it."""

import ast
import gc
from pathlib import Path

import pytest

from t5vae import cli, decoding, evaluate, latent, names
from t5vae.demo import core


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("x = 1", "Assign"),
        ("return x", "Return"),
        ("f(x)", "Expr"),
        ("# a comment", names.EMPTY),
        ("def f(:", names.NO_PARSE),
        ("y = 1if x else 2", "Assign"),
    ],
)
def test_statement_kind_and_parses(line, kind):
    assert names.statement_kind(line) == kind
    assert names.parses(line) == (kind != names.NO_PARSE)


def test_every_layer_offers_the_same_objects():
    assert latent.INTERPOLATIONS is names.INTERPOLATIONS and latent.PRIORS is names.PRIORS
    assert decoding.METHODS is names.METHODS and set(names.DECODERS) - {names.PARSING_BEAM} < set(
        names.METHODS
    )
    assert names.PARSING_BEAM not in names.METHODS  # text.Model's, on top of the generator's beam search
    assert evaluate.statement_kind is names.statement_kind and core.statement_kind is names.statement_kind
    assert core.parses is names.parses and core.DECODERS is names.DECODERS


def test_cli_choices_are_the_shared_names():
    parser = cli.parser()
    sub = next(a for a in parser._actions if a.choices and "interpolate" in a.choices).choices
    actions = {a.dest: a for a in sub["interpolate"]._actions}
    assert tuple(actions["kind"].choices) == names.INTERPOLATIONS
    assert tuple(actions["method"].choices) == names.DECODERS
    sample = {a.dest: a for a in sub["sample"]._actions}
    assert tuple(sample["prior"].choices) == names.PRIORS


def test_names_imports_only_the_standard_library():
    tree = ast.parse(Path(names.__file__).read_text())
    found = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    found |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert found and found <= {"__future__", "ast", "gc", "threading", "warnings"}, found


class _ParsesWhenCollected:
    """A reference cycle whose finalizer parses, as a leaked asyncio task that logs its exception does
    (3.11's traceback printing calls ast.parse)."""

    def __init__(self):
        self.cycle = self

    def __del__(self):
        ast.parse("a = (1 + (2 * (3 - x)))")


def test_a_parse_survives_finalizers_that_parse_during_it():
    source = "\n".join(f"def f{i}(a, b):\n    return [a + b * {i} for _ in range(3)]" for i in range(300))
    threshold = gc.get_threshold()
    gc.set_threshold(50)  # collect often, so that collections fall inside the parse
    try:
        for _ in range(5):
            for _ in range(200):
                _ParsesWhenCollected()
            tree = names.parse_quietly(source)
            assert tree is not None and len(tree.body) == 300
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
