"""The demo's logic without a browser: input checks and their stated bounds, shareable links, parse marks and
statement kinds, the map's PCA and SVG, nearest lines, the backend's lock and the page's callbacks (on a fake
model: these tests are about the demo, not about a trained T5-VAE; the browser tests use a real run)."""

import re
import socket
import threading
import time
import warnings
import zlib
from types import SimpleNamespace
from urllib.parse import parse_qsl

import numpy as np
import pytest
from conftest import require

import t5vae as tv
from t5vae import demo, text
from t5vae.demo import backend, core, mapview

# -- checks ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("value, want", [(2, 2), ("9", 9), (32.0, 32), (" 5 ", 5)])
def test_check_int_accepts_whole_numbers_in_bounds(value, want):
    assert core.check_int(value, "steps", core.STEPS_RANGE) == want


@pytest.mark.parametrize("value", [1, 33, -4, "100", 9.5, "nine", "", None, True, float("nan"), float("inf")])
def test_check_int_names_the_bounds(value):
    with pytest.raises(core.InputError, match="steps must be a whole number from 2 to 32"):
        core.check_int(value, "steps", core.STEPS_RANGE)


def test_stated_bounds():
    assert core.STEPS_RANGE == (2, 32) and core.SAMPLES_RANGE == (1, 32)
    assert core.STEPS_RANGE[0] <= core.DEFAULT_STEPS <= core.STEPS_RANGE[1]
    assert core.INTERPOLATIONS == ("slerp", "slerp_flat", "lerp")


def test_the_models_refusals_read_as_the_pages_errors():
    assert str(core.empty_line("line A")) == "line A is empty: there is nothing to encode"
    e = core.too_long("line B", 9, 8)
    assert isinstance(e, core.TooLong) and isinstance(e, core.InputError)
    assert str(e).startswith(
        "line B is 9 tokens, longer than the model's max length of 8"
    ) and "cut it to 8" in str(e)


# -- links -----------------------------------------------------------------------------------------

TRICKY = ["x = a & b", "s = '#?%+=;/'", "é = ['@', 1]", "  if x:", "\tz = 'tab'", "y = 1 + 2"]


@pytest.mark.parametrize("a", TRICKY)
def test_link_round_trips_every_character(a):
    link = core.Link(a, "return [a, b]", 5, "lerp", "beam")
    q = core.link_query(link)
    assert q.startswith("?a=") and "+" not in q and " " not in q and "#" not in q
    query = dict(parse_qsl(q[1:], keep_blank_values=True))  # how the server reads it
    assert core.parse_link(query) == link


def test_link_query_is_the_issue_format_with_defaults_left_out():
    assert core.link_query(core.Link("x = 1", "y = 2", 9)) == "?a=x%20%3D%201&b=y%20%3D%202&steps=9"
    assert core.link_query(core.Link("x", "y", 3, "slerp_flat")).endswith("&steps=3&kind=slerp_flat")


def test_parse_link_defaults_and_errors():
    assert core.parse_link({}) is None and core.parse_link({"steps": "4"}) is None
    assert core.parse_link({"a": "x = 1", "b": "y = 2"}) == core.Link("x = 1", "y = 2", 9, "slerp", "greedy")
    with pytest.raises(core.InputError, match="only line a"):
        core.parse_link({"a": "x = 1"})
    with pytest.raises(core.InputError, match="from 2 to 32, got 100"):
        core.parse_link({"a": "x", "b": "y", "steps": "100"})
    with pytest.raises(core.InputError, match="kind must be one of slerp, slerp_flat, lerp"):
        core.parse_link({"a": "x", "b": "y", "kind": "cubic"})
    with pytest.raises(core.InputError, match="decoder must be one of greedy, beam"):
        core.parse_link({"a": "x", "b": "y", "decoder": "sample"})


# -- lines -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line, kind",
    [
        ("x = 1", "Assign"),
        ("return x", "Return"),
        ("f(x)", "Expr"),
        ("import os", "Import"),
        ("x += 1", "AugAssign"),
        ("def f(:", "no parse"),
        ("# only a comment", "empty"),
        ("for x in y:", "no parse"),
    ],
)
def test_statement_kind(line, kind):
    assert core.statement_kind(line) == kind
    assert core.parses(line) == (kind != "no parse")


def test_parse_check_is_quiet():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert core.parses("x = '\\d'") and core.parses("y = 1if x else 2")
    assert not caught


# -- PCA, nearest lines, the map ---------------------------------------------------------------------


def test_pca_finds_the_two_widest_directions_and_projects_consistently():
    rng = np.random.default_rng(0)
    e = np.linalg.qr(rng.standard_normal((6, 6)))[0].T  # orthonormal rows
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)[:, None]  # uncorrelated coefficients, widths 10 and 3
    x = 10 * np.cos(t) * e[0] + 3 * np.sin(t) * e[1] + 5.0
    pca = core.PCA.fit(x)
    assert np.allclose(np.abs(pca.axes @ e[0]), [1, 0], atol=1e-6)
    assert np.allclose(np.abs(pca.axes @ e[1]), [0, 1], atol=1e-6)
    assert all(ax[np.argmax(np.abs(ax))] > 0 for ax in pca.axes)  # the sign rule: deterministic
    xy = pca.project(x)
    assert np.allclose(xy.mean(0), 0, atol=1e-9) and xy[:, 0].var() > 5 * xy[:, 1].var()
    assert np.allclose(xy, (x - x.mean(0)) @ pca.axes.T)
    assert np.allclose(pca.project(x[:3]), xy[:3])  # a path's points land where the same codes would


def test_pca_of_degenerate_data():
    line = np.outer(np.arange(5.0), [1.0, 2.0, 0.0])  # rank 1: the second axis is zero
    pca = core.PCA.fit(line)
    assert np.allclose(pca.axes[1], 0) and np.isclose(np.linalg.norm(pca.axes[0]), 1)
    assert np.allclose(core.PCA.fit(line[:1]).axes, 0)
    with pytest.raises(ValueError, match="PCA needs"):
        core.PCA.fit(np.zeros((0, 3)))


def test_nearest_matches_brute_force_closest_first():
    rng = np.random.default_rng(1)
    pool, q = rng.standard_normal((300, 16)), rng.standard_normal((4, 16))
    idx, dist = core.nearest(pool, q, 7)
    brute = np.linalg.norm(q[:, None] - pool[None], axis=-1)
    assert np.array_equal(idx, np.argsort(brute, 1)[:, :7])
    assert np.allclose(dist, np.sort(brute, 1)[:, :7], atol=1e-4)
    i, d = core.nearest(pool, pool[42], 1)
    assert i.tolist() == [[42]] and d[0, 0] == 0
    tie_pool = np.array([[1.0, 0], [0, 1.0], [1.0, 0]])
    assert core.nearest(tie_pool, [1.0, 0], 9)[0].tolist() == [[0, 2, 1]]  # ties by index; k capped at m


def test_flat_codes():
    assert core.flat(np.zeros((3, 2, 4))).shape == (3, 8) and core.flat(np.zeros((2, 4))).shape == (1, 8)


def test_map_svg_has_a_point_per_line_the_path_and_escaped_hover_text():
    xy = np.array([[0, 0], [1, 0], [0, 1], [1, 1]])
    kinds, lines = ["Assign", "Assign", "Return", "Expr"], ["x = 1", "y = 2", "return a<b", "f(x)"]
    html = mapview.render_map(
        xy,
        kinds,
        lines,
        path_xy=[[0, 0], [0.5, 0.5], [1, 1]],
        path_lines=["x = 1", "z = <3", "f(x)"],
        current=1,
    )
    assert html.count('class="map-point"') == 4 and html.count('class="path-point') == 3
    assert html.count("path-current") == 1 and 'data-index="1" ' in html.split("path-current")[1][:20]
    assert "<title>return a&lt;b (Return)</title>" in html and "ratio 0.500: z = &lt;3" in html
    assert 'class="map-path"' in html
    plain = mapview.render_map(xy, kinds, lines)
    assert "path-point" not in plain and "map-path" not in plain


def test_kind_colours_most_frequent_first_then_grey():
    kinds = ["Expr"] * 3 + ["Assign"] * 5 + [f"K{i}" for i in range(12)]
    colours = mapview.kind_colours(kinds)
    assert colours["Assign"] == mapview.PALETTE[0] and colours["Expr"] == mapview.PALETTE[1]
    assert sum(c == mapview.OTHER for c in colours.values()) == len(colours) - len(mapview.PALETTE)


def test_spread_is_even_and_keeps_both_ends():
    lines = [str(i) for i in range(100)]
    assert backend.spread(lines, 5) == ["0", "25", "50", "74", "99"]
    assert backend.spread(lines, None) == lines and backend.spread(lines, 500) == lines
    assert len(backend.spread(lines, 10)) == 10


# -- the backend on a fake model ---------------------------------------------------------------------


class FakeModel:
    """tv.Model's surface: a line's code is seeded by its CRC, a code decodes to a line naming its mean; it
    records how many calls overlap."""

    def __init__(self, n_latent=2, size=3, max_length=8):
        self.cfg = SimpleNamespace(n_latent_tokens=n_latent, latent_size=size, max_length=max_length)
        self.tokenizer = SimpleNamespace(encode=lambda s: s.split() + ["</s>"])
        self.run_dir, self.active, self.most, self.calls = "fake-run", 0, 0, 0

    def _call(self):
        self.calls += 1
        self.active += 1
        self.most = max(self.most, self.active)
        time.sleep(0.005)
        self.active -= 1

    def encode(self, lines, truncate=False):
        self._check(lines, [f"lines[{i}]" for i in range(len(lines))], truncate)
        self._call()
        return np.stack(
            [
                np.tanh(
                    np.random.default_rng(zlib.crc32(s.encode())).standard_normal(
                        (self.cfg.n_latent_tokens, self.cfg.latent_size)
                    )
                )
                for s in lines
            ]
        ).astype(np.float32)

    def decode(self, z, method="greedy"):
        self._call()
        return [
            f"v = {float(np.mean(c)):.6f}" + (" # beam" if method == "beam" else "") for c in np.asarray(z)
        ]

    def sample_codes(self, n, prior, seed):
        if prior == "aggregate":
            raise FileNotFoundError("the run names no corpus")
        return np.random.default_rng(seed).uniform(
            -0.9, 0.9, (n, self.cfg.n_latent_tokens, self.cfg.latent_size)
        )

    def _check(self, lines, names, truncate):
        """The Model's line checks (t5vae.text): before any encoding, an empty line, then too many tokens."""
        for s, n in zip(lines, names):
            if not s.strip():
                raise text.EmptyLine(f"{n} is empty", n)
        long = [(n, len(self.tokenizer.encode(s))) for s, n in zip(lines, names)]
        long = [(n, k) for n, k in long if k > self.cfg.max_length]
        if long and not truncate:
            raise text.TooLong("too long", long)

    def path(self, a, b, steps, kind, truncate=False, method="greedy"):
        self._check([a, b], "ab", truncate)
        z = self.encode([a, b], truncate)
        codes = np.asarray(tv.interpolate(z[0], z[1], steps, kind))
        return SimpleNamespace(ratios=np.linspace(0, 1, steps), codes=codes, lines=self.decode(codes, method))

    def analogy(self, a, b, c, truncate=False, method="greedy"):
        self._check([a, b, c], "abc", truncate)
        za, zb, zc = self.encode([a, b, c], truncate)
        return self.decode([np.clip(za + zb - zc, -0.999, 0.999)], method)[0]


MAP = ["x = 1", "return y", "f(z)", "import os", "y = [1, 2]", "def g(:"]
POOL = ["a = 1", "b = 2", "return c", "print(d)", "e.append(f)"]


@pytest.fixture(scope="module")
def fake():
    return backend.Backend(FakeModel(), MAP, POOL)


def test_backend_path_rows_codes_and_map_points(fake):
    p = fake.interpolate("x = 1", "return y", 5, "lerp")
    assert (
        p.ratios == [0, 0.25, 0.5, 0.75, 1]
        and len(p.lines) == 5
        and p.parses == [core.parses(s) for s in p.lines]
    )
    z = fake.model.encode(["x = 1", "return y"])
    assert np.allclose(p.codes[0], z[0].ravel(), atol=1e-6) and np.allclose(
        p.codes[-1], z[1].ravel(), atol=1e-6
    )
    assert np.allclose(p.xy[0], fake.map_xy[0], atol=1e-5)  # line A is on the map: its path point sits on it
    assert p.link == core.Link("x = 1", "return y", 5, "lerp", "greedy")
    html = fake.map_html(p, 2)
    assert html.count('class="map-point"') == len(MAP) and html.count('class="path-point') == 5
    assert fake.map_kinds == ["Assign", "Return", "Expr", "Import", "Assign", "no parse"]


def test_backend_checks_before_any_model_call(fake):
    calls = fake.model.calls
    with pytest.raises(core.InputError, match="line B is empty"):
        fake.interpolate("x = 1", " ")
    with pytest.raises(core.TooLong):
        fake.interpolate("x = 1", "a b c d e f g h i")
    with pytest.raises(core.InputError, match="from 2 to 32"):
        fake.interpolate("x = 1", "y = 2", steps=40)
    with pytest.raises(core.InputError, match="n must be a whole number from 1 to 32, got 0"):
        fake.sample("gaussian", 0)
    with pytest.raises(core.InputError, match="prior must be one of"):
        fake.sample("uniform", 4)
    with pytest.raises(
        core.InputError, match="cannot sample from the aggregate prior: the run names no corpus"
    ):
        fake.sample("aggregate", 4)
    with pytest.raises(core.InputError, match="line c is empty"):
        fake.analogy("x = 1", "y = 2", "")
    assert fake.model.calls == calls
    assert len(fake.interpolate("x = 1", "a b c d e f g h i", truncate=True).lines) == 9
    assert fake.model.calls == calls + 2  # one encode, one decode


def test_an_edit_moves_the_line_along_the_mean_difference_of_two_sets(fake):
    moved = fake.edit("x = 1", "a = 1\n\n  b = 2  \n", "return a\nreturn b")
    assert moved.amounts == list(core.EDIT_AMOUNTS) and core.EDIT_AMOUNTS[4] == 0
    assert len(moved.lines) == len(moved.parses) == len(core.EDIT_AMOUNTS) == 13
    z = fake.model.encode(["x = 1", "a = 1", "b = 2", "return a", "return b"])
    along = z[3:].mean(0) - z[1:3].mean(0)
    assert moved.lines[4] == fake.model.decode(z[:1])[0]  # amount 0: the line's own decoding
    assert moved.lines[8] == fake.model.decode([np.clip(z[0] + along, -0.999, 0.999)])[0]
    assert moved.lines[0] == fake.model.decode([np.clip(z[0] - along, -0.999, 0.999)])[0]


@pytest.mark.parametrize(
    "args, says",
    [
        (("x = 1", " \n", "y"), "the 'from' lines: type 1 to 64 lines, one per line; got 0"),
        (("x = 1", "y\n" * 65, "y"), "the 'from' lines: type 1 to 64 lines, one per line; got 65"),
        (("x = 1", "y", "z\n" + "w" * 200), "the 'to' lines, line 2 is 200 characters"),
        (("", "y", "z"), "the line to edit is empty"),
        (("x = 1", "y", "z\na b c d e f g h i"), "the 'to' lines, line 2 is 10 tokens, longer than"),
    ],
)
def test_an_edit_names_the_box_and_line_it_refuses(fake, args, says):
    calls = fake.model.calls
    with pytest.raises(core.InputError, match=re.escape(says)):
        fake.edit(*args)
    assert fake.model.calls == calls


def test_example_lines_fit_the_model(fake):
    assert fake.examples() == (backend.EXAMPLE_A, backend.EXAMPLE_B)
    short = backend.Backend(FakeModel(max_length=3), MAP)  # example A is 5 tokens here, B 3
    assert short.examples() == (backend.EXAMPLE_B, "return y")
    assert backend.Backend(FakeModel(max_length=1), MAP).examples() == (backend.EXAMPLE_A, backend.EXAMPLE_B)


def test_nearest_lines_of_a_pool_line_is_itself(fake):
    code = core.flat(fake.model.encode(["print(d)"]))[0]
    near = fake.nearest(code, 3)
    assert near[0] == ("print(d)", pytest.approx(0, abs=1e-3)) and len(near) == 3
    assert [d for _, d in near] == sorted(d for _, d in near)
    assert backend.Backend(FakeModel()).nearest(code) == []


def test_concurrent_requests_get_their_own_results_and_never_overlap_in_the_model():
    b = backend.Backend(FakeModel(), MAP, POOL)
    pairs = [(f"x{i} = {i}", f"return y{i}") for i in range(8)]
    want = [b.interpolate(a, c, 4).lines for a, c in pairs]
    got = [None] * len(pairs)

    def work(i):
        got[i] = b.interpolate(*pairs[i], 4).lines

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(pairs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want and len({tuple(g) for g in got}) == len(pairs)
    assert b.model.most == 1  # the lock let one model call through at a time


# -- the page's callbacks (Gradio imported, no server) -------------------------------------------------


@pytest.fixture(scope="module")
def handlers(fake):
    require("gradio")
    from t5vae.demo import page

    return page.Handlers(fake)


def test_callbacks_show_errors_on_the_page(handlers):
    err, cut, state, _, query, table, *_ = handlers.interpolate("", "y = 2", 9, "slerp", "greedy", False)
    assert "empty" in err and 'role="alert"' in err and state is None and query == "" and table == ""
    assert cut["visible"] == "hidden"
    err, cut, state, *_ = handlers.interpolate("x = 1", "a b c d e f g h i", 9, "slerp", "greedy", False)
    assert "longer than the model&#x27;s max length of 8" in err and cut["visible"] is True and state is None
    truncate, err, cut, state, *_ = handlers.cut_and_interpolate(
        "x = 1", "a b c d e f g h i", 9, "slerp", "greedy"
    )
    assert truncate is True and err == "" and len(state.lines) == 9
    err, out = handlers.sample("tanh", 99, 0, "greedy")
    assert "from 1 to 32, got 99" in err and out == ""
    err, out = handlers.sample("tanh", 3, 0, "beam")
    assert err == "" and out.count('class="row') == 3 and "# beam" in out
    err, state, slider, table, here = handlers.edit("x = 1", "a = 1", "", "greedy", False)
    assert "the &#x27;to&#x27; lines: type 1 to 64" in err and state is None and table == here == ""
    err, state, slider, table, here = handlers.edit("x = 1", "a = 1", "return a", "beam", False)
    assert err == "" and table.count('<tr class="row') == 13 and slider["value"] == 4
    assert 'class="row current" data-index="4"' in table and "amount <b>+0.00</b>" in here
    table, here = handlers.edit_point(state, 12)
    assert 'data-index="12"' in table.split("current")[1][:20] and "+2.00" in here and "# beam" in here


def test_load_computes_the_linked_path(handlers):
    link = core.Link("x = 1", "s = 'a&b'", 5, "slerp_flat")
    req = SimpleNamespace(query_params=dict(parse_qsl(core.link_query(link)[1:])))
    a, b, steps, kind, decoder, err, cut, state, slider, query, table, here, near, lmap = handlers.load(req)
    assert (a, b, steps, kind, decoder) == ("x = 1", "s = 'a&b'", 5, "slerp_flat", "greedy") and err == ""
    assert table.count('<tr class="row') == 5 and query == core.link_query(link) and slider["maximum"] == 4
    assert "point 1 of 5" in here and near.count('<tr class="row') == core.NEAREST_K
    bad = handlers.load(SimpleNamespace(query_params={"a": "x", "b": "y", "steps": "0"}))
    assert "bad link" in bad[5] and "from 2 to 32, got 0" in bad[5] and bad[:2] == ("x", "y")
    plain = handlers.load(SimpleNamespace(query_params={}))
    assert plain[:2] == (backend.EXAMPLE_A, backend.EXAMPLE_B) and plain[10].count('<tr class="row') == 9


def test_an_unexpected_failure_is_an_error_on_the_page_not_a_crash(handlers):
    class Broken(FakeModel):
        def decode(self, z, method="greedy"):
            raise RuntimeError("boom")

    from t5vae.demo import page

    broken = page.Handlers(backend.Backend(Broken()))
    err, cut, state, *_ = broken.interpolate("x = 1", "y = 2", 3, "slerp", "greedy", False)
    assert "internal error (RuntimeError: boom)" in err and state is None
    assert "internal error" in broken.sample("tanh", 2, 0, "greedy")[0]
    assert handlers.interpolate("x = 1", "y = 2", 3, "slerp", "greedy", False)[0] == ""  # others unaffected


def test_cmd_demo_serves_with_the_arguments_then_blocks(monkeypatch):
    import argparse

    require("gradio")
    calls = []
    page = SimpleNamespace(block_thread=lambda: calls.append("block"), close=lambda: calls.append("close"))
    monkeypatch.setattr(demo, "serve", lambda *a, **k: calls.append((a, k)) or (page, "http://h:1/"))
    args = demo.add_arguments(argparse.ArgumentParser()).parse_args(
        ["run", "--port", "1234", "--corpus", "c.txt", "--map-lines", "10", "--nearest-lines", "20"]
    )
    assert demo.cmd_demo(args) == 0
    assert calls == [
        ((["run"], "127.0.0.1", 1234), {"corpus": "c.txt", "map_lines": 10, "pool_lines": 20}),
        "block",
        "close",
    ]


def test_add_arguments_and_a_missing_run(tmp_path, capsys):
    import argparse

    args = demo.add_arguments(argparse.ArgumentParser()).parse_args(["some-run"])
    assert (args.dirs, args.host, args.port, args.corpus) == (["some-run"], "127.0.0.1", 7860, None)
    assert demo.add_arguments(argparse.ArgumentParser()).parse_args(["code-run", "prose-run"]).dirs == [
        "code-run",
        "prose-run",
    ]
    args = demo.add_arguments(argparse.ArgumentParser()).parse_args(
        ["r", "--host", "0.0.0.0", "--port", "8080"]
    )
    assert (args.host, args.port) == ("0.0.0.0", 8080)
    require("gradio")
    with socket.socket() as s:  # a port that is free now
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args.host, args.port = "127.0.0.1", port
    assert demo.cmd_demo(argparse.Namespace(**{**vars(args), "dirs": [str(tmp_path / "missing")]})) == 1
    assert "is not a t5vae run directory" in capsys.readouterr().err
    two = {**vars(args), "dirs": ["a", "b"], "corpus": "c.txt"}
    assert demo.cmd_demo(argparse.Namespace(**two)) == 1
    assert "--corpus names the corpus of one run, but 2 runs were given" in capsys.readouterr().err


def test_missing_demo_extra_is_a_clear_error(monkeypatch, capsys):
    import argparse
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "gradio" else real(name, *a)
    )
    assert demo.cmd_demo(argparse.Namespace(dirs=["x"])) == 1
    assert 'pip install -e ".[demo]"' in capsys.readouterr().err


def test_spaces_entry_point_serves_the_run_named_by_the_environment(monkeypatch):
    import importlib
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent))
    app = importlib.import_module("app")
    calls = []
    blocked = SimpleNamespace(block_thread=lambda: calls.append("blocked"))
    monkeypatch.setattr(demo, "serve", lambda *a, **k: calls.append((a, k)) or (blocked, "url"))
    app.main({"T5VAE_RUN": "/runs/x", "GRADIO_SERVER_PORT": "9000"})
    assert calls == [(("/runs/x", "0.0.0.0", 9000), {"corpus": None}), "blocked"]
    app.main({"T5VAE_CORPUS": "lines.txt"})
    assert calls[2] == (("t5vae-run", "0.0.0.0", 7860), {"corpus": "lines.txt"})


def test_serving_a_run_writes_nothing_into_its_directory(text_run_dir):
    """The demo (and every reader) fits the aggregate prior into the user's cache, not the run."""
    from t5vae.demo.backend import Backend

    before = {p.name: p.stat().st_mtime_ns for p in text_run_dir.rglob("*")}
    b = Backend.from_run(text_run_dir, map_lines=8, pool_lines=16)
    assert len(b.sample("aggregate", 2)) == 2 and b.model._aggregate is not None
    moved = b.edit("x = 1", "y = 2\nz = 3", "return y")  # the real Model's codes and refusals
    assert len(moved.lines) == len(core.EDIT_AMOUNTS) and all(isinstance(s, str) for s in moved.lines)
    with pytest.raises(core.TooLong, match=r"the 'to' lines, line 2 is \d+ tokens"):
        b.edit("x = 1", "y = 2", "return y\n" + " + ".join(["value"] * 30))
    assert {p.name: p.stat().st_mtime_ns for p in text_run_dir.rglob("*")} == before


@pytest.mark.parametrize(
    "flags, says",
    [
        (["--port", "70000"], "--port 70000 is out of range: a port is a number from 1 to 65535"),
        (["--port", "0"], "--port 0 is out of range"),
        (["--host", "no.such.host.invalid"], "--host 'no.such.host.invalid' does not resolve"),
        (
            ["--host", "192.0.2.1"],
            "cannot serve on --host 192.0.2.1",
        ),  # TEST-NET: an address of no machine here
        ("busy", "is in use on 127.0.0.1 by another program: choose another --port"),
    ],
)
def test_host_and_port_are_checked_before_the_model_loads(text_run_dir, monkeypatch, flags, says):
    from conftest import run_cli

    from t5vae.demo.backend import Backend

    require("gradio")
    monkeypatch.setattr(Backend, "from_run", lambda *a, **k: pytest.fail("loaded the model before the check"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        if flags == "busy":
            flags = ["--port", str(busy.getsockname()[1])]
        rc, _, err = run_cli(["demo", str(text_run_dir), *flags])
    assert rc == 1 and says in err and err.count("\n") == 1, err


@pytest.mark.parametrize(
    "line, says",
    [
        (
            "x" * 129,
            "line A is 129 characters; the page takes at most 128 (16 per token of the model's max length of 8",
        ),
        ("x = 1\x00", "line A holds the control character U+0000 at position 6"),
        ("\x00" * 50, "line A holds the control character U+0000 at position 1"),
        ("x = '\ufffd'", "line A holds U+FFFD, the replacement character, at position 6"),
    ],
)
def test_long_lines_and_control_characters_are_refused_before_tokenizing(fake, line, says):
    calls = fake.model.calls
    with pytest.raises(core.InputError, match=re.escape(says)):
        fake.interpolate(line, "y = 2", truncate=True)
    assert fake.model.calls == calls
    assert core.check_line("x = 1\t# tab", "a", 8) == "x = 1\t# tab" and core.check_line(None, "a", 8) == ""
    q = core.parse_link(dict(parse_qsl("a=%ff&b=x", keep_blank_values=True)))  # invalid UTF-8 in a link
    with pytest.raises(core.InputError, match="line A holds U\\+FFFD"):
        fake.interpolate(q.a, q.b)


# -- prose runs and pages of several runs ------------------------------------------------------------

SENTENCES = [
    "The file is opened.",
    "This function returns a new list of strings for the caller.",
    "A short one here.",
    "Every module in the package is read once and then kept in memory for later use again.",
]


def test_map_colours_code_by_statement_kind_and_prose_by_length_in_words():
    assert core.map_kind("x = 1", "code") == "Assign"
    assert [core.map_kind(s, "prose") for s in SENTENCES] == [
        "up to 8 words",
        "9-12 words",
        "up to 8 words",
        "17+ words",
    ]
    assert core.map_kind(" ".join(["word"] * 13), "prose") == "13-16 words"
    order = core.map_kind_order("prose")
    assert (
        order == ["up to 8 words", "9-12 words", "13-16 words", "17+ words"]
        and core.map_kind_order("code") is None
    )
    colours = mapview.kind_colours(["9-12 words", "up to 8 words", "9-12 words", "17+ words"], order)
    assert list(colours) == ["up to 8 words", "9-12 words", "17+ words"]  # the buckets' order, not frequency


def test_a_link_names_its_run_on_a_page_of_several():
    link = core.Link("a b", "c", 5, run="prose-run")
    assert core.link_query(link).endswith("&run=prose-run")
    assert core.parse_link(dict(parse_qsl(core.link_query(link)[1:]))) == link
    assert "run=" not in core.link_query(core.Link("a", "b"))


def test_a_prose_backend_has_no_parse_marks_and_english_examples():
    require("gradio")
    from t5vae.demo import page

    prose = backend.Backend(
        FakeModel(max_length=16), SENTENCES, SENTENCES, language="prose", name="prose-run"
    )
    assert prose.map_kinds[1] == "9-12 words" and prose.examples() == backend.EXAMPLES["prose"][:2]
    path = prose.interpolate("The file is opened.", "A short one here.", 5)
    assert path.parses is None and len(path.lines) == 5
    h = page.Handlers(prose)
    table, here, near, _ = h.point(path, 2)
    assert "<th>parses</th>" not in table and "parse-mark" not in table + here + near
    assert "decoded sentence" in table and "nearest training sentence" in near
    assert (
        "parse-mark"
        not in h.sample("tanh", 2, 0, "greedy")[1] + h.analogy(*SENTENCES[:3], "greedy", False)[1]
    )
    assert prose.decoders == ("greedy", "beam") and backend.Backend(FakeModel()).decoders[-1] == "beam-parse"
    with pytest.raises(core.InputError, match="decoder must be one of greedy, beam, got 'beam-parse'"):
        prose.interpolate("The file is opened.", "A short one here.", 5, decoder="beam-parse")
    code_table = page.Handlers(backend.Backend(FakeModel(), MAP, POOL)).point(path, 0)[0]
    assert "<th>parses</th>" in code_table and "parse-mark" in code_table
    with pytest.raises(ValueError, match="language must be one of"):
        backend.Backend(FakeModel(), language="french")


def test_each_tab_takes_the_links_for_its_own_run():
    require("gradio")
    from t5vae.demo import page

    code = backend.Backend(FakeModel(), MAP, POOL, name="code-run")
    prose = backend.Backend(FakeModel(max_length=16), SENTENCES, language="prose", name="prose-run")
    assert page.tab_names([code, prose]) == ["code-run", "prose-run"]
    first = page.Handlers(code, run="code-run", prefix="run0-", first=True)
    second = page.Handlers(prose, run="prose-run", prefix="run1-", first=False)
    link = core.Link("The file is opened.", "A short one here.", 4, run="prose-run")
    req = SimpleNamespace(query_params=dict(parse_qsl(core.link_query(link)[1:])))
    got = second.load(req)
    assert (
        got[:3] == (link.a, link.b, 4)
        and got[9] == core.link_query(link)
        and 'id="run1-path-table"' in got[10]
    )
    assert first.load(req)[:2] == backend.EXAMPLES["code"][:2]  # another tab's link: the examples
    plain = SimpleNamespace(
        query_params={"a": "x = 1", "b": "y = 2"}
    )  # a link without run= is the first tab's
    assert (
        first.load(plain)[:2] == ("x = 1", "y = 2")
        and second.load(plain)[:2] == backend.EXAMPLES["prose"][:2]
    )
    assert first.load(plain)[9].endswith("&run=code-run")
