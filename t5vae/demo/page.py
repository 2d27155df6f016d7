"""The Gradio page over a :class:`~t5vae.demo.backend.Backend`: interpolation (table, slider, map, nearest
lines, shareable link), samples from a prior, an analogy. Results live in each browser's own gr.State;
errors are shown on the page and the server keeps serving."""
from __future__ import annotations

import logging
import traceback
from html import escape

import gradio as gr

import t5vae as tv
from t5vae.demo import core
from t5vae.demo.backend import Backend, Interpolation

log = logging.getLogger("t5vae.demo")

CSS = """
.demo-table { border-collapse: collapse; width: 100%; font-size: 0.95em; }
.demo-table th, .demo-table td { border-bottom: 1px solid #e5e5e5; padding: 3px 8px; text-align: left; }
.demo-table td.line code { white-space: pre; }
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
    return ('<span class="parse-mark ok" title="parses with ast.parse">&#10003; yes</span>' if ok else
            '<span class="parse-mark bad" title="does not parse">&#10007; no</span>')


def error_html(message: str) -> str:
    return f'<div class="demo-error" role="alert">{escape(message)}</div>' if message else ""


def lines_table(elem_id: str, head: tuple[str, ...], rows, current: int | None = None) -> str:
    """An HTML table: the first cells as given, the line as code, its parse mark; row ``current`` highlighted."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = []
    for i, (first, line) in enumerate(rows):
        cls = "row current" if i == current else "row"
        body.append(f'<tr class="{cls}" data-index="{i}"><td class="first">{escape(str(first))}</td>'
                    f'<td class="line"><code>{escape(line)}</code></td>'
                    f'<td class="parses">{mark(core.parses(line))}</td></tr>')
    return (f'<table id="{elem_id}" class="demo-table"><thead><tr>{th}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>')


def _internal(e: Exception) -> str:
    log.error("request failed:\n%s", traceback.format_exc())
    return f"internal error ({type(e).__name__}: {e}); the server keeps serving"


class Handlers:
    """The page's callbacks; each returns values for its outputs and never raises."""

    def __init__(self, backend: Backend):
        self.b = backend

    def point(self, path: Interpolation | None, index) -> tuple[str, str, str, str]:
        """(path table, current point, nearest lines, map) for point ``index`` of ``path``."""
        if path is None:
            return "", "", "", self.b.map_html()
        i = min(max(int(index or 0), 0), len(path.lines) - 1)
        rows = [(f"{r:.3f}", s) for r, s in zip(path.ratios, path.lines)]
        table = lines_table("path-table", ("ratio", "decoded line", "parses"), rows, i)
        here = (f'<div id="path-point">ratio <b>{path.ratios[i]:.3f}</b> (point {i + 1} of {len(path.lines)}): '
                f'<code>{escape(path.lines[i])}</code> {mark(path.parses[i])}</div>')
        near = self.b.nearest(path.codes[i])
        near_html = (lines_table("nearest", ("distance", "nearest training line", "parses"),
                                 [(f"{d:.3f}", s) for s, d in near]) if near else
                     '<div id="nearest">No training lines to search (the run names no corpus).</div>')
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
        return ("", cut, path, slider, core.link_query(path.link), *self.point(path, 0))

    def cut_and_interpolate(self, a, b, steps, kind, decoder):
        return (True, *self.interpolate(a, b, steps, kind, decoder, True))

    def load(self, request: gr.Request):
        """A page load: a shareable link's path, else the example lines' path."""
        query = dict(request.query_params) if request is not None else {}
        try:
            link = core.parse_link(query) or core.Link(*self.b.examples())
        except core.InputError as e:
            fill = (query.get("a", ""), query.get("b", ""), core.DEFAULT_STEPS, "slerp", "greedy")
            return (*fill, error_html(f"bad link: {e}"), gr.update(), None, gr.update(), "",
                    *self.point(None, 0))
        fill = (link.a, link.b, link.steps, link.kind, link.decoder)
        return (*fill, *self.interpolate(link.a, link.b, link.steps, link.kind, link.decoder, False))

    def sample(self, prior, n, seed, decoder):
        try:
            lines = self.b.sample(prior, n, seed, decoder)
        except core.InputError as e:
            return error_html(str(e)), ""
        except Exception as e:  # noqa: BLE001
            return error_html(_internal(e)), ""
        return "", lines_table("samples-table", ("#", "sampled line", "parses"), list(enumerate(lines, 1)))

    def analogy(self, a, b, c, decoder, truncate):
        try:
            line = self.b.analogy(a, b, c, decoder, bool(truncate))
        except core.InputError as e:
            return error_html(str(e)), ""
        except Exception as e:  # noqa: BLE001
            return error_html(_internal(e)), ""
        return "", f'<div id="analogy-result"><code>{escape(line)}</code> {mark(core.parses(line))}</div>'


def build(backend: Backend) -> gr.Blocks:
    """The page's Blocks (not launched)."""
    h, cfg = Handlers(backend), backend.model.cfg
    (slo, shi), (nlo, nhi) = core.STEPS_RANGE, core.SAMPLES_RANGE
    with gr.Blocks(title="t5vae: paths between lines of Python", analytics_enabled=False) as page:
        gr.Markdown(f"## t5vae: the latent space of a T5-VAE\n`{backend.model.run_dir}`: {cfg.n_latent_tokens} latent "
                    f"tokens x {cfg.latent_size}, lines up to {cfg.max_length} tokens. Type two lines of Python and "
                    f"decode the path between their codes ({slo} to {shi} points, both ends included).")
        with gr.Row():
            a = gr.Textbox(label="Line A", elem_id="line-a", placeholder="x = 1")
            b = gr.Textbox(label="Line B", elem_id="line-b", placeholder="return [a, b]")
        with gr.Row():
            steps = gr.Slider(slo, shi, value=core.DEFAULT_STEPS, step=1, label="Steps", elem_id="steps")
            kind = gr.Radio(list(core.INTERPOLATIONS), value="slerp", label="Kind", elem_id="kind")
            decoder = gr.Radio(list(core.DECODERS), value="greedy", label="Decoder", elem_id="decoder")
            truncate = gr.Checkbox(False, label=f"Cut lines longer than {cfg.max_length} tokens", elem_id="truncate")
        go = gr.Button("Interpolate", variant="primary", elem_id="interpolate")
        err = gr.HTML("", elem_id="interp-error")
        cut = gr.Button(f"Cut to {cfg.max_length} tokens and interpolate", visible="hidden", elem_id="cut")
        state, query = gr.State(None), gr.Textbox(visible=False)
        with gr.Row():
            with gr.Column():
                table = gr.HTML("", elem_id="path")
                scrub = gr.Slider(0, core.DEFAULT_STEPS - 1, value=0, step=1, label="Position along the path",
                                  elem_id="scrub")
                here = gr.HTML("", elem_id="here")
                link = gr.Textbox(label="Link to this interpolation", elem_id="share-link", buttons=["copy"],
                                  interactive=False)
            with gr.Column():
                gr.Markdown("**Map**: the validation lines' codes (PCA), by statement kind; hover a point to read it.")
                lmap = gr.HTML(backend.map_html(), elem_id="map")
                near = gr.HTML("", elem_id="near")
        gr.Markdown(f"### Samples from a prior\n{nlo} to {nhi} lines; *aggregate* is a Gaussian fitted to the "
                    f"training lines' codes.")
        with gr.Row():
            prior = gr.Radio(["aggregate"] + [p for p in tv.PRIORS if p != "aggregate"], value="aggregate",
                             label="Prior", elem_id="prior")
            n = gr.Number(core.DEFAULT_SAMPLES, precision=0, label=f"n ({nlo} to {nhi})", elem_id="n")
            seed = gr.Number(0, precision=0, label="Seed", elem_id="seed")
            s_decoder = gr.Radio(list(core.DECODERS), value="greedy", label="Decoder", elem_id="sample-decoder")
        s_go = gr.Button("Sample", elem_id="sample")
        s_err, s_out = gr.HTML("", elem_id="sample-error"), gr.HTML("", elem_id="samples")
        gr.Markdown("### Analogy: decode code(a) + (code(b) - code(c))")
        with gr.Row():
            an_a = gr.Textbox(label="a", elem_id="an-a", value="x = 1")
            an_b = gr.Textbox(label="b", elem_id="an-b", value="return y")
            an_c = gr.Textbox(label="c", elem_id="an-c", value="y = 1")
        an_go = gr.Button("Analogy", elem_id="analogy")
        an_err, an_out = gr.HTML("", elem_id="analogy-error"), gr.HTML("", elem_id="analogy-out")

        outs = [err, cut, state, scrub, query, table, here, near, lmap]
        inputs = [a, b, steps, kind, decoder]
        go.click(h.interpolate, inputs + [truncate], outs).then(None, [query], [link], js=LINK_JS)
        for box in (a, b):
            box.submit(h.interpolate, inputs + [truncate], outs).then(None, [query], [link], js=LINK_JS)
        cut.click(h.cut_and_interpolate, inputs, [truncate] + outs).then(None, [query], [link], js=LINK_JS)
        scrub.change(h.point, [state, scrub], [table, here, near, lmap], show_progress="hidden")
        page.load(h.load, None, inputs + outs).then(None, [query], [link], js=LINK_JS)
        s_go.click(h.sample, [prior, n, seed, s_decoder], [s_err, s_out])
        an_go.click(h.analogy, [an_a, an_b, an_c, decoder, truncate], [an_err, an_out])
    return page


def launch(backend: Backend, host: str | None = "127.0.0.1", port: int | None = 7860):
    """Serve the page without blocking -> (the Blocks, its local URL). Requests queue; several run at once,
    but the backend's lock lets one JAX call through at a time."""
    page = build(backend)
    page.queue(default_concurrency_limit=4, max_size=QUEUE_DEPTH)
    _, url, _ = page.launch(server_name=host, server_port=port, prevent_thread_lock=True, quiet=True,
                            share=False, inbrowser=False, show_error=True, ssr_mode=False, footer_links=[],
                            css=CSS, theme=gr.themes.Default(), head=HEAD)
    return page, url
