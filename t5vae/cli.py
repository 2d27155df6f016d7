"""The ``t5vae`` command: train, eval, interpolate, sample, info.

Every field of :class:`t5vae.Config` (``--pooling``, ``--latent-size``…), of the T5 backbone
(``--t5-d-model``…) and of :class:`t5vae.train_config.TrainConfig` (``--steps``, ``--learning-rate``…) is a flag
(t5vae.flags); ``--config FILE`` (JSON, or TOML on Python 3.11+) sets any of them first: a flat object of those
names, the backbone fields under "t5". Flags win over the file.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

from t5vae import hugepages
from t5vae.config import Config
from t5vae.flags import add_setting_flags, build_configs, int_at_least
from t5vae.names import DECODERS, INTERPOLATIONS, PRIORS, decoders_for, parses
from t5vae.rundir import RunDirBusy

DEFAULT_OUT = "t5vae-run"


def cmd_train(args) -> int:
    from t5vae import sharding, train

    sharding.initialize_distributed()  # a no-op unless launched as several processes
    mesh = sharding.make_mesh(args.mesh) if args.mesh else None
    cfg, tc = build_configs(args)
    out = args.out or DEFAULT_OUT
    print(
        f"run directory: {Path(out).absolute()}" + (f"; mesh {dict(mesh.shape)}" if mesh is not None else "")
    )
    _, results = train.run(cfg, tc, out, init_from=args.init_from, overwrite=args.overwrite, mesh=mesh)
    if "example" in results:
        print("Interpolation between two held-out lines (slerp, 9 interior points):")
        for i, s in enumerate(results["example"]):
            print(f"  {i:2d}  {s}")
    print(f"load it with: t5vae.load({str(out)!r})")
    return 0


def cmd_eval(args) -> int:
    from t5vae import data, evaluate, rundir, text

    m = text.load(args.dir)
    tc = rundir.train_config(args.dir)
    corpus = rundir.corpus(args.dir)
    lines, name = corpus.validation, rundir.EVAL_NAME
    if args.lines:  # a held-out set: every line of another corpus that the run did not train on
        args.min_chars = tc.min_chars if args.min_chars is None else args.min_chars
        args.max_chars = tc.max_chars if args.max_chars is None else args.max_chars
        other = data.load_corpus(args.lines, 50.0, args.min_chars, args.max_chars)
        seen = set(corpus.train)
        lines = [s for s in sorted(other.train + other.validation, key=_stable_hash) if s not in seen]
        lines = lines[: args.max_lines]
        name = "eval-" + re.sub(r"[^A-Za-z0-9_.-]+", "_", args.lines).strip("_")
        print(
            f"{args.lines}: {len(lines)} lines of {args.min_chars}-{args.max_chars} characters not in the run's "
            f"training corpus" + (f" (at most --max-lines {args.max_lines})" if args.max_lines else "")
        )
        if len(lines) < 2:
            raise ValueError(f"{args.lines} holds fewer than 2 lines the run has not trained on")
    pairs = tc.eval_pairs if args.pairs is None else args.pairs
    results = evaluate.evaluate(
        m,
        lines,
        pairs=pairs,
        batch_size=tc.eval_batch_size,
        seed=tc.seed,
        kind=args.kind,
        method=args.method,
        language=tc.language,
    )
    if args.lines:
        results["source"] = f"Held out ({args.lines}, {args.min_chars}-{args.max_chars} characters)"
    print(evaluate.save(results, args.dir, name))
    return 0


def _stable_hash(line: str) -> int:
    import zlib

    return zlib.crc32(line.encode("utf-8"))


def _show(text: str) -> str:
    """A decoded line as it reads in a table: tabs, newlines and other control characters escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def print_table(rows, first: str, marks: bool = True) -> None:
    """``first | text | valid?`` rows (valid: parses with ast.parse) and a count of the valid ones; without
    ``marks`` (a prose run) ``first | text`` only."""
    rows = [(k, _show(t), parses(t) if marks else None) for k, t in rows]
    width = max([len(t) for _, t, _ in rows] + [4])
    print(f"{first:>6}  {'text':<{width}}  valid" if marks else f"{first:>6}  text")
    for k, t, ok in rows:
        print(f"{k:>6}  {t:<{width}}  {'yes' if ok else 'no'}" if marks else f"{k:>6}  {t}")
    if marks:
        print(f"{sum(ok for *_, ok in rows)} of {len(rows)} parse with ast.parse")


def _is_code(run_dir) -> bool:
    """Whether the run learned code, so that its lines get parse marks (an export without a train_config: code)."""
    from t5vae import rundir

    return rundir.language(run_dir) == "code"


def cmd_interpolate(args) -> int:
    from t5vae import text

    code = _is_code(args.dir)
    if args.method not in decoders_for("code" if code else "prose"):
        raise ValueError(
            f"--method {args.method} keeps the beams that parse as Python, but {args.dir} learned prose"
        )
    path = text.load(args.dir).path(
        args.a, args.b, args.steps, args.kind, max_new_tokens=args.max_new_tokens, method=args.method
    )
    print_table(zip((f"{r:.3f}" for r in path.ratios), path.lines), "ratio", code)
    return 0


def cmd_sample(args) -> int:
    from t5vae import text

    prior = {"prior": args.prior} if args.prior else {}  # default: t5vae.latent.DEFAULT_PRIOR
    texts = text.load(args.dir).sample(args.n, seed=args.seed, max_new_tokens=args.max_new_tokens, **prior)
    print_table(enumerate(texts), "#", _is_code(args.dir))
    return 0


def cmd_info(args) -> int:
    import jax

    import t5vae

    print(f"t5vae {t5vae.__version__}, jax {jax.__version__}, devices {jax.devices()}")
    if args.dir:
        from t5vae import checkpoint, rundir, vae

        cfg = Config.load_json(Path(args.dir) / rundir.CONFIG_FILE)
        n = sum(math.prod(a.shape) for a in jax.tree.leaves(vae.abstract_params(cfg)))
        print(json.dumps(cfg.to_dict(), indent=2))
        print(f"parameters: {n:,}")
        steps = checkpoint.committed_steps(args.dir)
        print(
            f"checkpoints: {steps or 'none'}; final params: {(Path(args.dir) / rundir.PARAMS_DIR).is_dir()}"
        )
        if (Path(args.dir) / f"{rundir.EVAL_NAME}.md").is_file():
            print((Path(args.dir) / f"{rundir.EVAL_NAME}.md").read_text())
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="t5vae", description="T5-VAE: smooth latent spaces of sentences and code"
    )
    sub = p.add_subparsers(dest="command", required=True)
    _add_train_command(sub)
    _add_eval_command(sub)
    _add_decoding_commands(sub)
    sub.add_parser(
        "bench",
        add_help=False,
        help="benchmarks against the Flax reference (python -m benchmarks; "
        "needs the bench extra): its arguments pass through, e.g. t5vae bench --quick",
    )
    d = sub.add_parser(
        "demo", help="serve the interpolation page for a run directory (pip install -e '.[demo]')"
    )
    _add_demo_arguments(d)
    f = sub.add_parser("info", help="versions and devices; with DIR, a run's config, size and checkpoints")
    f.add_argument("dir", nargs="?")
    f.set_defaults(fn=cmd_info)
    return p


def _add_train_command(sub) -> None:
    """``train``: the run's own flags, then every setting of the configs (t5vae.flags)."""
    t = sub.add_parser(
        "train",
        help="train (or resume) a T5-VAE; with no arguments: the default model on the "
        "embedded Python-statement corpus",
    )
    t.add_argument("--out", help=f"run directory (default ./{DEFAULT_OUT}); an existing run is resumed")
    t.add_argument("--config", help="JSON/TOML file of settings (flags override it)")
    t.add_argument("--init-from", help="a converted T5 directory (python -m weights_convert) to start from")
    t.add_argument("--overwrite", action="store_true", help="delete an existing run in --out and start over")
    t.add_argument(
        "--mesh",
        help="device mesh, e.g. data=2,model=4 or fsdp=-1 (axes data, fsdp, model; -1 = the "
        "remaining devices); default: one device",
    )
    add_setting_flags(t)
    t.set_defaults(fn=cmd_train)


def _add_eval_command(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a run on its validation split; prints and saves the table")
    e.add_argument("dir")
    e.add_argument(
        "--pairs",
        type=int_at_least(0),
        help="interpolation pairs (default: the run's eval_pairs; 0: reconstruction only)",
    )
    e.add_argument("--kind", default="slerp", choices=INTERPOLATIONS, help="interpolation path")
    e.add_argument(
        "--method",
        default="greedy",
        choices=DECODERS,
        help="how the interpolation paths are decoded (reconstruction is always greedy; beam: 4 beams; "
        "beam-parse, code runs only: the best of the 4 beams that parses)",
    )
    e.add_argument(
        "--lines",
        help="evaluate on another corpus instead of the run's validation split, e.g. "
        "py:optax (an installed package's statements), py:DIR or a text file; lines "
        "the run trained on are left out; saved as eval-<name>.md",
    )
    e.add_argument("--min-chars", type=int_at_least(1), help="with --lines (default: the run's min_chars)")
    e.add_argument("--max-chars", type=int_at_least(1), help="with --lines (default: the run's max_chars)")
    e.add_argument(
        "--max-lines", type=int_at_least(2), help="with --lines: at most this many (a fixed sample)"
    )
    e.set_defaults(fn=cmd_eval)


def _add_decoding_commands(sub) -> None:
    """``interpolate`` and ``sample``: tables of decoded lines from a trained run."""
    i = sub.add_parser(
        "interpolate",
        help="decode the path between two lines' codes: a table of ratio, text, and whether it parses",
    )
    i.add_argument("dir"), i.add_argument("a"), i.add_argument("b")
    i.add_argument(
        "--steps",
        type=int_at_least(2),
        default=9,
        help="points on the path, both endpoints included (default 9)",
    )
    i.add_argument(
        "--kind",
        default="slerp",
        choices=INTERPOLATIONS,
        help="slerp per latent token (default), slerp of the whole flattened code, or lerp",
    )
    i.add_argument(
        "--max-new-tokens",
        type=int_at_least(1),
        help="tokens decoded per point (default: the model's max_length)",
    )
    i.add_argument(
        "--method",
        default="greedy",
        choices=DECODERS,
        help="decoding (beam: 4 beams; beam-parse, code runs only: the best of them that parses)",
    )
    i.set_defaults(fn=cmd_interpolate)
    s = sub.add_parser(
        "sample", help="decode codes drawn from a prior: a table of text and whether it parses"
    )
    s.add_argument("dir"), s.add_argument("-n", type=int_at_least(1), default=10)
    s.add_argument("--seed", type=int_at_least(0), default=0)
    s.add_argument(
        "--prior",
        choices=PRIORS,
        help="aggregate (default): a Gaussian fitted to the training codes (computed on first use and kept "
        "in ~/.cache/t5vae, never in DIR); gaussian: N(0, I) clipped to the tanh range; tanh: tanh of N(0, I)",
    )
    s.add_argument(
        "--max-new-tokens",
        type=int_at_least(1),
        help="tokens decoded per sample (default: the model's max_length)",
    )
    s.set_defaults(fn=cmd_sample)


def _add_demo_arguments(p: argparse.ArgumentParser) -> None:
    try:
        from t5vae import demo
    except ImportError as e:  # the demo extra is not installed: say so when the command runs
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(fn=lambda args, why=e: _missing_demo(why))  # bound now: ``e`` ends with the block
        return
    demo.add_arguments(p)
    p.set_defaults(fn=demo.cmd_demo)


def _missing_demo(e: ImportError) -> int:
    raise ValueError(f"t5vae demo needs the demo extra (pip install -e '.[demo]'): {e}")


def cmd_bench(bench_args: list) -> int:
    try:
        from benchmarks.__main__ import main as bench_main
    except ImportError as e:
        raise ValueError(
            f"t5vae bench needs the benchmarks package of a t5vae checkout and the Flax reference "
            f"(pip install -e '.[bench]'): {e}"
        ) from e
    return bench_main(bench_args)


def main(argv=None) -> int:
    """The command line. Run as the ``t5vae`` command (``argv`` None), ``train`` first restarts itself with
    huge-page malloc (:func:`hugepage_env`); called with an explicit ``argv`` it never does."""
    if argv is None and sys.argv[1:2] == ["train"]:
        hugepages.restart_with_hugepages(sys.argv[1:])
    argv = sys.argv[1:] if argv is None else list(argv)
    quiet_library_logs()
    try:
        if argv[:1] == ["bench"]:  # everything after it is the benchmark's own command line
            return cmd_bench(argv[1:])
        args = parser().parse_args(argv)
        return args.fn(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError, RunDirBusy) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def quiet_library_logs() -> None:
    """orbax logs every save and restore at INFO through absl: keep its warnings and errors only. Our own
    warnings (a damaged final params directory, a cut line) read as one ``warning:`` line, not as a source
    location and its code."""
    import logging
    import warnings

    logging.getLogger("absl").setLevel(logging.WARNING)
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


if __name__ == "__main__":
    sys.exit(main())
