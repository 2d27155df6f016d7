"""The package layout's rules: no import cycle among the project's modules (function-local imports count),
no module over 400 lines, and the leaf modules import nothing from the project."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("t5vae", "weights_convert", "benchmarks")


def modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules ``name`` imports anywhere in its file (top level or inside functions)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(
                    pkg.split(".")[: len(pkg.split(".")) - node.level + 1] + ([base] if base else [])
                )
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    g = {m: imports_of(m, p, known) for m, p in mods.items()}
    # a package's __init__ runs before any of its submodules: importing a.b imports a too
    for m in g:
        g[m] = {t for t in g[m] if not m.startswith(t + ".")}
    return g


def find_cycle(g: dict[str, set[str]]):
    state, stack = {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == "open":
                return stack[stack.index(t) :] + [t]
            if t not in state:
                cycle = visit(t)
                if cycle:
                    return cycle
        stack.pop()
        state[m] = "done"
        return None

    for m in sorted(g):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_no_import_cycles():
    g = graph()
    assert "t5vae.t5" in g and "t5vae.specs" in g["t5vae.t5"]  # the graph sees real edges
    cycle = find_cycle(g)
    assert cycle is None, " -> ".join(cycle)


def test_cycle_finder_finds_a_planted_cycle():
    g = graph()
    g["t5vae.specs"] = g["t5vae.specs"] | {"t5vae.vae"}  # vae -> t5 -> specs -> vae
    assert find_cycle(g) is not None


@pytest.mark.parametrize("leaf", ["t5vae.files", "t5vae.names", "t5vae.specs", "t5vae.augment"])
def test_leaf_modules_import_nothing_from_the_project(leaf):
    assert graph()[leaf] == set()


def test_configs_import_only_the_leaves():
    """The atomic-write helper; a run's settings add the shared names (its language follows its corpus spec)."""
    assert graph()["t5vae.config"] == {"t5vae.files"}
    assert graph()["t5vae.train_config"] == {"t5vae.config", "t5vae.names"}


def test_corpus_imports_only_the_shared_names():
    assert graph()["t5vae.corpus"] == {"t5vae.names"}


def test_no_module_over_400_lines():
    long = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def reachable(g: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for t in g.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_inference_layer_reaches_neither_training_nor_evaluation():
    g = graph()
    below = reachable(g, "t5vae.text")
    assert {"t5vae.vae", "t5vae.data", "t5vae.rundir"} <= below  # the walk sees real edges
    assert not below & {"t5vae.train", "t5vae.evaluate", "t5vae.runlog"}, below
    assert "t5vae.text" in reachable(g, "t5vae.evaluate") and "t5vae.evaluate" in reachable(g, "t5vae.train")


def test_the_demo_and_the_cli_decode_only_through_the_model():
    g = graph()
    for m in ("t5vae.cli", "t5vae.demo.backend", "t5vae.demo.core", "t5vae.demo.page"):
        assert not g[m] & {"t5vae.decoding", "t5vae.batched", "t5vae.decoder_layout", "t5vae.latent"}, (
            m,
            g[m],
        )


def long_functions(pkg: str) -> list[str]:
    long = []
    for m, p in modules().items():
        if m.split(".")[0] != pkg:
            continue
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{m}.{node.name}: {n}")
    return long


@pytest.mark.parametrize("pkg", ["t5vae", "weights_convert", "benchmarks"])
def test_no_function_over_80_lines(pkg):
    long = long_functions(pkg)
    assert not long, long
