"""The Gradio page over a :class:`~t5vae.demo.backend.Backend`: interpolation (table, slider, map, nearest
lines, shareable link), samples from a prior, an analogy, an edit direction with a slider along it. Results
live in each browser's own gr.State; errors are shown on the page and the server keeps serving."""

from __future__ import annotations

import dataclasses
import logging
import traceback
from html import escape

import gradio as gr

import t5vae as tv
from t5vae.demo import core
from t5vae.demo.backend import EDIT_EXAMPLES, EXAMPLES, Backend, Edit, Interpolation

log = logging.getLogger("t5vae.demo")

CSS = """
.demo-table { border-collapse: collapse; width: 100%; font-size: 0.95em; }
.demo-table th, .demo-table td { border-bottom: 1px solid #e5e5e5; padding: 3px 8px; text-align: left; }
.demo-table td.line code { white-space: pre-wrap; }
.demo-table tr.current { background: #fff3c4; }
.parse-mark.ok { color: #1a7f37; } .parse-mark.bad { color: #c62828; }
.demo-error { color: #b00020; background: #fdecea; border: 1px solid #f5c2c0; padding: 6px 10px; border-radius: 4px; }
.map-legend { font-size: 0.85em; margin-top: 4px; } .map-kind { margin-right: 10px; white-space: nowrap; }
"""
# the link box gets the page's own origin, and the address bar becomes the link (nothing leaves the page)
LINK_JS = """(q) => { if (!q) { return ""; } const u = window.location.origin + window.location.pathname + q;
try { window.history.replaceState(null, "", u); } catch (e) {} return u; }"""


# An unload listener keeps Chrome from putting the page into its back-forward cache on navigation: a cached
# Gradio page keeps its event streams open, and after five links followed in one tab the sixth waited ~50 s
# for one of the six connections Chrome allows per host.
QUEUE_DEPTH = 16  # requests waiting beyond this are turned away ("queue is full") instead of held in memory
HEAD = "<script>window.addEventListener('unload', function () {});</script>"


def mark(ok: bool) -> str:
    return (
        '<span class="parse-mark ok" title="parses with ast.parse">&#10003; yes</span>'
        if ok
        else '<span class="parse-mark bad" title="does not parse">&#10007; no</span>'
    )


def error_html(message: str) -> str:
    return f'<div class="demo-error" role="alert">{escape(message)}</div>' if message else ""


def lines_table(
    elem_id: str, head: tuple[str, str], rows, current: int | None = None, marks: bool = True
) -> str:
    """An HTML table: the first cells as given, the line as code and, with ``marks``, its parse mark; row
    ``current`` highlighted."""
    th = "".join(f"<th>{escape(h)}</th>" for h in (*head, "parses")[: 3 if marks else 2])
    body = []
    for i, (first, line) in enumerate(rows):
        cls = "row current" if i == current else "row"
        mark_cell = f'<td class="parses">{mark(core.parses(line))}</td>' if marks else ""
        body.append(
            f'<tr class="{cls}" data-index="{i}"><td class="first">{escape(str(first))}</td>'
            f'<td class="line"><code>{escape(line)}</code></td>{mark_cell}</tr>'
        )
    return (
        f'<table id="{elem_id}" class="demo-table"><thead><tr>{th}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _internal(e: Exception) -> str:
    log.error("request failed:\n%s", traceback.format_exc())
    return f"internal error ({type(e).__name__}: {e}); the server keeps serving"


class Handlers:
    """One run's callbacks; each returns values for its outputs and never raises. On a page of several runs,
    ``run`` names this one in its links and ``prefix`` keeps its element ids apart from the other tabs';
    the ``first`` tab also takes links that name no run."""

    def __init__(self, backend: Backend, run: str | None = None, prefix: str = "", first: bool = True):
        self.b, self.run, self.prefix, self.first = backend, run, prefix, first
        self.noun = "line" if backend.language == "code" else "sentence"

    def id(self, name: str) -> str:
        return self.prefix + name

    def table(self, name: str, head: tuple[str, str], rows, current: int | None = None) -> str:
        return lines_table(self.id(name), head, rows, current, self.b.marks)

    def point(self, path: Interpolation | None, index) -> tuple[str, str, str, str]:
        """(path table, current point, nearest lines, map) for point ``index`` of ``path``."""
        if path is None:
            return "", "", "", self.b.map_html()
        i = min(max(int(index or 0), 0), len(path.lines) - 1)
        rows = [(f"{r:.3f}", s) for r, s in zip(path.ratios, path.lines)]
        table = self.table("path-table", ("ratio", f"decoded {self.noun}"), rows, i)
        shown = f" {mark(path.parses[i])}" if path.parses is not None else ""
        here = (
            f'<div id="{self.id("path-point")}">ratio <b>{path.ratios[i]:.3f}</b> (point {i + 1} of '
            f"{len(path.lines)}): <code>{escape(path.lines[i])}</code>{shown}</div>"
        )
        near = self.b.nearest(path.codes[i])
        near_html = (
            self.table(
                "nearest", ("distance", f"nearest training {self.noun}"), [(f"{d:.3f}", s) for s, d in near]
            )
            if near
            else f'<div id="{self.id("nearest")}">No training {self.noun}s to search (the run names no '
            f"corpus).</div>"
        )
        return table, here, near_html, self.b.map_html(path, i)

    def interpolate(self, a, b, steps, kind, decoder, truncate):
        """-> error, cut-button, state, slider, link query, table, current point, nearest, map."""
        cut = gr.update(visible="hidden")  # rendered but hidden: Gradio 6.17 never shows a button again after
        # a visible=False update that reached it before it was ever shown
        try:
            path = self.b.interpolate(a, b, steps, kind, decoder, bool(truncate))
        except core.TooLong as e:
            return (error_html(str(e)), gr.update(visible=True), None, gr.update(), "", *self.point(None, 0))
        except core.InputError as e:
            return (error_html(str(e)), cut, None, gr.update(), "", *self.point(None, 0))
        except Exception as e:  # noqa: BLE001 - shown on the page; the server keeps serving
            return (error_html(_internal(e)), cut, None, gr.update(), "", *self.point(None, 0))
        slider = gr.update(minimum=0, maximum=len(path.lines) - 1, value=0, step=1, interactive=True)
        link = dataclasses.replace(path.link, run=self.run)
        return ("", cut, path, slider, core.link_query(link), *self.point(path, 0))

    def cut_and_interpolate(self, a, b, steps, kind, decoder):
        return (True, *self.interpolate(a, b, steps, kind, decoder, True))

    def load(self, request: gr.Request):
        """A page load: a shareable link's path (when the link is for this run), else the example lines'."""
        query = dict(request.query_params) if request is not None else {}
        if self.run is not None and query.get("run", self.run if self.first else None) != self.run:
            query = {}  # another tab's link
        try:
            link = core.parse_link(query) or core.Link(*self.b.examples())
        except core.InputError as e:
            fill = (query.get("a", ""), query.get("b", ""), core.DEFAULT_STEPS, "slerp", "greedy")
            return (
                *fill,
                error_html(f"bad link: {e}"),
                gr.update(),
                None,
                gr.update(),
                "",
                *self.point(None, 0),
            )
        fill = (link.a, link.b, link.steps, link.kind, link.decoder)
        return (*fill, *self.interpolate(link.a, link.b, link.steps, link.kind, link.decoder, False))

    def sample(self, prior, n, seed, decoder):
        try:
            lines = self.b.sample(prior, n, seed, decoder)
        except core.InputError as e:
            return error_html(str(e)), ""
        except Exception as e:  # noqa: BLE001
            return error_html(_internal(e)), ""
        return "", self.table("samples-table", ("#", f"sampled {self.noun}"), list(enumerate(lines, 1)))

    def analogy(self, a, b, c, decoder, truncate):
        try:
            line = self.b.analogy(a, b, c, decoder, bool(truncate))
        except core.InputError as e:
            return error_html(str(e)), ""
        except Exception as e:  # noqa: BLE001
            return error_html(_internal(e)), ""
        shown = f" {mark(core.parses(line))}" if self.b.marks else ""
        return "", f'<div id="{self.id("analogy-result")}"><code>{escape(line)}</code>{shown}</div>'

    def edit(self, line, from_lines, to_lines, decoder, truncate):
        """-> error, state, slider, table, current point."""
        try:
            moved = self.b.edit(line, from_lines, to_lines, decoder, bool(truncate))
        except core.InputError as e:
            return error_html(str(e)), None, gr.update(), *self.edit_point(None, 0)
        except Exception as e:  # noqa: BLE001
            return error_html(_internal(e)), None, gr.update(), *self.edit_point(None, 0)
        zero = moved.amounts.index(0)
        slider = gr.update(minimum=0, maximum=len(moved.lines) - 1, value=zero, step=1, interactive=True)
        return "", moved, slider, *self.edit_point(moved, zero)

    def edit_point(self, moved: Edit | None, index) -> tuple[str, str]:
        """(table, current point) for point ``index`` of an edit."""
        if moved is None:
            return "", ""
        i = min(max(int(index or 0), 0), len(moved.lines) - 1)
        rows = [(f"{t:+.2f}", s) for t, s in zip(moved.amounts, moved.lines)]
        shown = f" {mark(moved.parses[i])}" if moved.parses is not None else ""
        here = (
            f'<div id="{self.id("edit-point")}">amount <b>{moved.amounts[i]:+.2f}</b>: '
            f"<code>{escape(moved.lines[i])}</code>{shown}</div>"
        )
        return self.table("edit-table", ("amount", f"decoded {self.noun}"), rows, i), here


def _interpolation(h: Handlers, page: gr.Blocks) -> tuple[gr.Radio, gr.Checkbox]:
    """The path section: two lines, the path's table, slider, link, map and nearest lines; loaded on open.
    -> the decoder and cut controls, which the analogy shares."""
    b, cfg, i = h.b, h.b.model.cfg, h.id
    (slo, shi), code = core.STEPS_RANGE, b.language == "code"
    what = "lines of Python" if code else "sentences"
    gr.Markdown(
        f"`{b.model.run_dir}` ({b.language}): {cfg.n_latent_tokens} latent tokens x {cfg.latent_size}, "
        f"{h.noun}s up to {cfg.max_length} tokens. Type two {what} and decode the path between their codes "
        f"({slo} to {shi} points, both ends included)."
    )
    ex = EXAMPLES[b.language]
    with gr.Row():
        a = gr.Textbox(label=f"{h.noun.title()} A", elem_id=i("line-a"), placeholder=ex[2])
        bb = gr.Textbox(label=f"{h.noun.title()} B", elem_id=i("line-b"), placeholder=ex[1])
    with gr.Row():
        steps = gr.Slider(slo, shi, value=core.DEFAULT_STEPS, step=1, label="Steps", elem_id=i("steps"))
        kind = gr.Radio(list(core.INTERPOLATIONS), value="slerp", label="Kind", elem_id=i("kind"))
        decoder = gr.Radio(list(b.decoders), value="greedy", label="Decoder", elem_id=i("decoder"))
        truncate = gr.Checkbox(
            False, label=f"Cut {h.noun}s longer than {cfg.max_length} tokens", elem_id=i("truncate")
        )
    go = gr.Button("Interpolate", variant="primary", elem_id=i("interpolate"))
    err = gr.HTML("", elem_id=i("interp-error"))
    cut = gr.Button(f"Cut to {cfg.max_length} tokens and interpolate", visible="hidden", elem_id=i("cut"))
    state, query = gr.State(None), gr.Textbox(visible=False)
    with gr.Row():
        with gr.Column():
            table = gr.HTML("", elem_id=i("path"))
            scrub = gr.Slider(
                0,
                core.DEFAULT_STEPS - 1,
                value=0,
                step=1,
                label="Position along the path",
                elem_id=i("scrub"),
            )
            here = gr.HTML("", elem_id=i("here"))
            link = gr.Textbox(
                label="Link to this interpolation",
                elem_id=i("share-link"),
                buttons=["copy"],
                interactive=False,
            )
        with gr.Column():
            colour = "statement kind" if code else "length in words"
            gr.Markdown(
                f"**Map**: the validation {h.noun}s' codes (PCA), by {colour}; hover a point to read it."
            )
            lmap = gr.HTML(b.map_html(), elem_id=i("map"))
            near = gr.HTML("", elem_id=i("near"))
    outs = [err, cut, state, scrub, query, table, here, near, lmap]
    inputs = [a, bb, steps, kind, decoder]
    for event in (go.click, a.submit, bb.submit):
        event(h.interpolate, inputs + [truncate], outs).then(None, [query], [link], js=LINK_JS)
    cut.click(h.cut_and_interpolate, inputs, [truncate] + outs).then(None, [query], [link], js=LINK_JS)
    scrub.change(h.point, [state, scrub], [table, here, near, lmap], show_progress="hidden")
    page.load(h.load, None, inputs + outs).then(None, [query], [link], js=LINK_JS)
    return decoder, truncate


def _samples_and_analogy(h: Handlers, decoder, truncate) -> None:
    """Samples from a prior, and an analogy decoded at code(a) + (code(b) - code(c))."""
    (nlo, nhi), i = core.SAMPLES_RANGE, h.id
    gr.Markdown(
        f"### Samples from a prior\n{nlo} to {nhi} {h.noun}s; *aggregate* is a Gaussian fitted to the "
        f"training {h.noun}s' codes."
    )
    with gr.Row():
        prior = gr.Radio(
            ["aggregate"] + [p for p in tv.PRIORS if p != "aggregate"],
            value="aggregate",
            label="Prior",
            elem_id=i("prior"),
        )
        n = gr.Number(core.DEFAULT_SAMPLES, precision=0, label=f"n ({nlo} to {nhi})", elem_id=i("n"))
        seed = gr.Number(0, precision=0, label="Seed", elem_id=i("seed"))
        s_decoder = gr.Radio(list(h.b.decoders), value="greedy", label="Decoder", elem_id=i("sample-decoder"))
    s_go = gr.Button("Sample", elem_id=i("sample"))
    s_err, s_out = gr.HTML("", elem_id=i("sample-error")), gr.HTML("", elem_id=i("samples"))
    s_go.click(h.sample, [prior, n, seed, s_decoder], [s_err, s_out])
    gr.Markdown("### Analogy: decode code(a) + (code(b) - code(c))")
    ex = EXAMPLES[h.b.language]
    with gr.Row():
        boxes = [
            gr.Textbox(label=n, elem_id=i(f"an-{n}"), value=v) for n, v in zip("abc", (ex[2], ex[1], ex[0]))
        ]
    an_go = gr.Button("Analogy", elem_id=i("analogy"))
    an_err, an_out = gr.HTML("", elem_id=i("analogy-error")), gr.HTML("", elem_id=i("analogy-out"))
    an_go.click(h.analogy, boxes + [decoder, truncate], [an_err, an_out])


def _edit_direction(h: Handlers, decoder, truncate) -> None:
    """A line moved along the direction from one set of lines to another (their mean codes' difference)."""
    i, (lo, hi) = h.id, core.EDIT_SET_RANGE
    amounts = core.EDIT_AMOUNTS
    gr.Markdown(
        f"### Edit direction\nDecode code(line) + amount x (mean code of the *to* {h.noun}s - mean code of "
        f"the *from* {h.noun}s), amount {amounts[0]:+g} to {amounts[-1]:+g}: what the *to* {h.noun}s share "
        f"and the *from* {h.noun}s lack. {lo} to {hi} {h.noun}s per box, one per line."
    )
    frm, to, example = EDIT_EXAMPLES[h.b.language]
    with gr.Row():
        boxes = [
            gr.Textbox("\n".join(lines), lines=4, label=label, elem_id=i(name))
            for lines, label, name in ((frm, "From", "edit-from"), (to, "To", "edit-to"))
        ]
    line = gr.Textbox(example, label=f"{h.noun.title()} to edit", elem_id=i("edit-line"))
    go = gr.Button("Edit", elem_id=i("edit"))
    err, state = gr.HTML("", elem_id=i("edit-error")), gr.State(None)
    table = gr.HTML("", elem_id=i("edit-out"))
    scrub = gr.Slider(0, len(amounts) - 1, value=0, step=1, label="Amount", elem_id=i("edit-scrub"))
    here = gr.HTML("", elem_id=i("edit-here"))
    for event in (go.click, line.submit):
        event(h.edit, [line, *boxes, decoder, truncate], [err, state, scrub, table, here])
    scrub.change(h.edit_point, [state, scrub], [table, here], show_progress="hidden")


def _sections(h: Handlers, page: gr.Blocks) -> None:
    """One run's sections; the path's decoder and cut controls also serve the analogy and the edit."""
    controls = _interpolation(h, page)
    _samples_and_analogy(h, *controls)
    _edit_direction(h, *controls)


def tab_names(backends: list[Backend]) -> list[str]:
    """Each run's name on a page of several: its directory's name, or its path where two names clash."""
    names = [b.name or f"run {k + 1}" for k, b in enumerate(backends)]
    return [n if names.count(n) == 1 else str(b.model.run_dir) for n, b in zip(names, backends)]


def build(backends: Backend | list[Backend]) -> gr.Blocks:
    """The page's Blocks (not launched): one run's sections, or one tab per run (a link's ``run`` picks the
    tab it opens in)."""
    backends = [backends] if isinstance(backends, Backend) else list(backends)
    with gr.Blocks(title="t5vae: paths between lines", analytics_enabled=False) as page:
        gr.Markdown("## t5vae: the latent space of a T5-VAE")
        if len(backends) == 1:
            _sections(Handlers(backends[0]), page)
            return page
        names = tab_names(backends)
        with gr.Tabs(elem_id="runs") as tabs:
            for k, (b, name) in enumerate(zip(backends, names)):
                with gr.Tab(f"{name} ({b.language})", id=k, elem_id=f"tab-{k}"):
                    _sections(Handlers(b, run=name, prefix=f"run{k}-", first=k == 0), page)

        def select(request: gr.Request):
            run = dict(request.query_params).get("run") if request is not None else None
            return gr.Tabs(selected=names.index(run) if run in names else 0)

        page.load(select, None, tabs)
    return page


def launch(backends: Backend | list[Backend], host: str | None = "127.0.0.1", port: int | None = 7860):
    """Serve the page without blocking -> (the Blocks, its local URL). Requests queue; several run at once,
    but each backend's lock lets one JAX call through at a time."""
    page = build(backends)
    page.queue(default_concurrency_limit=4, max_size=QUEUE_DEPTH)
    _, url, _ = page.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=True,
        quiet=True,
        share=False,
        inbrowser=False,
        show_error=True,
        ssr_mode=False,
        footer_links=[],
        css=CSS,
        theme=gr.themes.Default(),
        head=HEAD,
    )
    return page, url
