"""The model side of the page: a loaded run, its lines' codes for the map and the neighbour search, and every
request the page makes, checked first and then run under one lock (the Model's caches are not thread-safe,
and two JAX calls at once only share the same two cores)."""

from __future__ import annotations

import dataclasses
import threading
import warnings
from pathlib import Path

import numpy as np

import t5vae as tv
from t5vae import rundir, text
from t5vae.demo import core, mapview
from t5vae.demo.core import InputError
from t5vae.names import LANGUAGES

# The first path a visitor sees, per language; also the analogy's lines.
EXAMPLES = {
    "code": ("total = price * quantity", "return sorted(items)", "x = 1"),
    "prose": ("The file is opened for reading.", "This function returns a new list.", "The file is closed."),
}
EXAMPLE_A, EXAMPLE_B = EXAMPLES["code"][:2]
# The edit direction's first sets and line, per language: what the 'to' lines share and the 'from' lines
# lack (a return instead of an assignment; a question instead of a statement).
EDIT_EXAMPLES = {
    "code": (
        ("total = price * count", "name = user.name", "items = sorted(items)", "result = f(x)"),
        ("return price * count", "return user.name", "return sorted(items)", "return f(x)"),
        "value = a + b",
    ),
    "prose": (
        ("The file is open.", "The list is empty.", "The value was found.", "The server is running."),
        ("Is the file open?", "Is the list empty?", "Was the value found?", "Is the server running?"),
        "The door is locked.",
    ),
}


@dataclasses.dataclass
class Interpolation:
    """One interpolation: its link, ratios, decoded lines and parse marks (None for prose), codes
    [steps, N * Z], map xy."""

    link: core.Link
    ratios: list[float]
    lines: list[str]
    parses: list[bool] | None
    codes: np.ndarray
    xy: np.ndarray | None


@dataclasses.dataclass
class Edit:
    """One line moved along an edit direction: the amounts, the decoded lines and their parse marks (None
    for prose)."""

    amounts: list[float]
    lines: list[str]
    parses: list[bool] | None


def spread(lines: list[str], cap: int | None) -> list[str]:
    """At most ``cap`` of ``lines``, evenly spaced through them (all when cap is None or not smaller)."""
    if cap is None or len(lines) <= cap:
        return list(lines)
    return [lines[i] for i in np.unique(np.linspace(0, len(lines) - 1, max(cap, 0)).round().astype(int))]


class Backend:
    """A Model with the codes of ``map_lines`` (projected to 2-D by their PCA) and of ``pool_lines`` (the
    lines the nearest-neighbour search returns). ``language`` is what the run learned ("code" or "prose"):
    it sets the map's colours, whether lines get parse marks, and the example lines; ``name`` names the run
    on a page of several."""

    def __init__(
        self, model, map_lines=(), pool_lines=(), note: str = "", language: str = "code", name: str = ""
    ):
        if language not in LANGUAGES:
            raise ValueError(f"language must be one of {LANGUAGES}, got {language!r}")
        self.model, self.note, self.language, self.name = model, note, language, name
        self.lock = threading.Lock()
        self.map_lines = list(map_lines)
        self.map_kinds = [core.map_kind(s, language) for s in self.map_lines]
        self.pca, self.map_xy = None, np.zeros((0, 2))
        if self.map_lines:
            codes = core.flat(self._encode(self.map_lines))
            self.pca = core.PCA.fit(codes)
            self.map_xy = self.pca.project(codes)
        self.pool_lines = list(pool_lines)
        self.pool = core.flat(self._encode(self.pool_lines)) if self.pool_lines else None

    @classmethod
    def from_run(
        cls, run_dir, corpus: str | None = None, map_lines: int | None = 1000, pool_lines: int | None = 50_000
    ) -> Backend:
        """Load a run; the map shows (up to ``map_lines`` of) its validation lines and the neighbours come from
        (up to ``pool_lines`` of) its training lines, from the corpus in train_config.json or ``corpus``. The
        run's language comes from train_config.json too (an export without one: the corpus spec's)."""
        model, name = tv.load(run_dir), Path(run_dir).resolve().name
        language = rundir.language(run_dir, corpus)
        if (Path(run_dir) / rundir.TRAIN_CONFIG_FILE).is_file():
            lines = rundir.corpus(run_dir, corpus)
        elif corpus is not None:  # an export: the corpus read with the default settings
            lines = rundir.training_corpus(tv.TrainConfig(corpus=corpus))[0]
        else:
            return cls(
                model,
                note=f"{run_dir} has no {rundir.TRAIN_CONFIG_FILE} naming its corpus (pass --corpus): "
                f"no map, no nearest lines",
                language=language,
                name=name,
            )
        return cls(
            model,
            spread(list(lines.validation), map_lines),
            spread(list(lines.train), pool_lines),
            language=language,
            name=name,
        )

    @property
    def decoders(self) -> tuple[str, ...]:
        """The decoders the page offers for this run: "beam-parse" for code only."""
        return core.decoders_for(self.language)

    @property
    def marks(self) -> bool:
        """Whether lines get parse marks: code only."""
        return self.language == "code"

    # -- requests --------------------------------------------------------------------------------

    def n_tokens(self, line: str) -> int:
        return len(self.model.tokenizer.encode(line))

    def _lines(self, labels: dict[str, str], run):
        """``run()`` under the lock; the Model's refusal of a line (checked before anything is encoded) becomes
        the page's error naming the line by its label."""
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the truncation warning: the page asked for the cut
            try:
                return run()
            except text.EmptyLine as e:
                raise core.empty_line(labels[e.name]) from None
            except text.TooLong as e:
                name, n = e.too_long[0]
                raise core.too_long(labels[name], n, self.model.cfg.max_length) from None

    def _encode(self, lines: list[str], truncate: bool = True) -> np.ndarray:
        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the truncation warning: the page has checked the lines
            return self.model.encode(lines, truncate=truncate)

    def interpolate(
        self, a, b, steps=core.DEFAULT_STEPS, kind="slerp", decoder="greedy", truncate: bool = False
    ) -> Interpolation:
        """The decoded path from a to b, ``steps`` points with both ends; InputError names a bad argument."""
        steps = core.check_int(steps, "steps", core.STEPS_RANGE)
        kind = core.check_choice(kind, "kind", core.INTERPOLATIONS)
        decoder = core.check_choice(decoder, "decoder", self.decoders)
        a, b = (core.check_line(s, f"line {n}", self.model.cfg.max_length) for s, n in ((a, "A"), (b, "B")))
        path = self._lines(
            {"a": "line A", "b": "line B"},
            lambda: self.model.path(a, b, steps, kind, truncate=truncate, method=decoder),
        )
        codes = core.flat(path.codes)
        return Interpolation(
            core.Link(a, b, steps, kind, decoder),
            np.asarray(path.ratios).tolist(),
            path.lines,
            [core.parses(s) for s in path.lines] if self.marks else None,
            codes,
            self.pca.project(codes) if self.pca else None,
        )

    def sample(self, prior="aggregate", n=core.DEFAULT_SAMPLES, seed=0, decoder="greedy") -> list[str]:
        """``n`` lines decoded from codes drawn from ``prior``."""
        prior = core.check_choice(prior, "prior", tuple(tv.PRIORS))
        n = core.check_int(n, "n", core.SAMPLES_RANGE)
        seed = core.check_int(seed, "seed", (0, 2**31 - 1))
        decoder = core.check_choice(decoder, "decoder", self.decoders)
        with self.lock:
            try:
                codes = self.model.sample_codes(n, prior, seed)
            except (FileNotFoundError, ValueError) as e:  # the aggregate prior without the run's corpus
                raise InputError(f"cannot sample from the {prior} prior: {e}") from None
            return self.model.decode(codes, method=decoder)

    def analogy(self, a, b, c, decoder="greedy", truncate: bool = False) -> str:
        """The line decoded at code(a) + (code(b) - code(c))."""
        decoder = core.check_choice(decoder, "decoder", self.decoders)
        a, b, c = (
            core.check_line(s, f"line {n}", self.model.cfg.max_length) for s, n in zip((a, b, c), "abc")
        )
        return self._lines(
            {n: f"line {n}" for n in "abc"},
            lambda: self.model.analogy(a, b, c, truncate=truncate, method=decoder),
        )

    def edit(self, line, from_lines, to_lines, decoder="greedy", truncate: bool = False) -> Edit:
        """``line`` decoded at its code moved along the edit direction from the ``from_lines`` to the
        ``to_lines`` (the text of a box each: one line per line) by each of core.EDIT_AMOUNTS."""
        decoder = core.check_choice(decoder, "decoder", self.decoders)
        max_length = self.model.cfg.max_length
        line = core.check_line(line, "the line to edit", max_length)
        frm = core.check_set(from_lines, "the 'from' lines", max_length)
        to = core.check_set(to_lines, "the 'to' lines", max_length)
        names = ["the line to edit"] + [
            f"the '{w}' lines, line {k}" for w, s in (("from", frm), ("to", to)) for k in range(1, len(s) + 1)
        ]

        def run():
            z = self.model.encode([line, *frm, *to], truncate=truncate)
            along = tv.latent.direction(z[1 : 1 + len(frm)], z[1 + len(frm) :])
            return self.model.decode(tv.latent.shift(z[0], along, core.EDIT_AMOUNTS), method=decoder)

        lines = self._lines({f"lines[{i}]": n for i, n in enumerate(names)}, run)
        return Edit(list(core.EDIT_AMOUNTS), lines, [core.parses(s) for s in lines] if self.marks else None)

    def nearest(self, code, k: int = core.NEAREST_K) -> list[tuple[str, float]]:
        """The ``k`` pool lines whose codes are closest to ``code`` [N * Z], with their distances."""
        if self.pool is None:
            return []
        idx, dist = core.nearest(self.pool, code, k)
        return [(self.pool_lines[i], float(d)) for i, d in zip(idx[0], dist[0])]

    def map_html(self, path: Interpolation | None = None, current: int | None = None) -> str:
        if self.pca is None:
            return (
                f'<div id="latent-map" class="map-empty">No map: {self.note or "no validation lines"}.</div>'
            )
        return mapview.render_map(
            self.map_xy,
            self.map_kinds,
            self.map_lines,
            None if path is None else path.xy,
            path.lines if path else (),
            current,
            core.map_kind_order(self.language),
        )

    def examples(self) -> tuple[str, str]:
        """The page's first two lines: the language's EXAMPLES, or where this model's max_length cannot take
        them, the first two map lines that fit."""
        a, b, _ = EXAMPLES[self.language]
        fits = [s for s in (a, b, *self.map_lines) if self.n_tokens(s) <= self.model.cfg.max_length]
        return (fits[0], fits[1]) if len(fits) >= 2 else (a, b)

    def warm_up(self) -> None:
        """Compile what a first visitor asks for: encoding a few lines at every length bucket the corpus fills,
        greedy paths of every batch size that steps can need (8, 16, 32), a beam path of the default steps,
        samples and an analogy."""
        a, b = self.examples()
        by_length = {}
        for s in [a, b] + self.map_lines + self.pool_lines[:5000]:
            by_length.setdefault(min(self.n_tokens(s), self.model.cfg.max_length), s)
        for s in by_length.values():
            self._encode([s, s])
        for steps in (core.DEFAULT_STEPS, core.STEPS_RANGE[0], core.STEPS_RANGE[1]):
            self.interpolate(a, b, steps, truncate=True)
        self.interpolate(a, b, core.DEFAULT_STEPS, decoder="beam", truncate=True)
        try:
            self.sample()
        except InputError:
            self.sample("gaussian")
        self.analogy(a, b, a, truncate=True)
        frm, to, line = EDIT_EXAMPLES[self.language]
        self.edit(line, "\n".join(frm), "\n".join(to), truncate=True)
