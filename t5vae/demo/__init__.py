"""``t5vae demo RUN``: a web page for a trained run (the optional extra: ``pip install -e ".[demo]"``).

Gradio, not Streamlit: the command serves the page from its own process (``Blocks.launch`` in-process, no
``streamlit run`` script re-executed per click), with a request queue and per-browser state built in, and
its frontend is bundled in the wheel (fonts included), so the page fetches nothing from the network.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
INSTALL = 'pip install -e ".[demo]"'


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo command's arguments: the run directory, --host, --port and what the map and neighbours use."""
    p.add_argument("dir", help="a training run directory (or an export) to load")
    p.add_argument("--host", default=DEFAULT_HOST, help=f"address to serve on (default {DEFAULT_HOST}; 0.0.0.0 "
                                                        f"for every interface)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument("--corpus", default=None, help="corpus for the map and the nearest lines (default: the one "
                                                  "in the run's train_config.json)")
    p.add_argument("--map-lines", type=int, default=1000, help="at most this many validation lines on the map")
    p.add_argument("--nearest-lines", type=int, default=50_000,
                   help="search the nearest lines among at most this many training lines")
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the run, warm it up, serve the page, print its URL once; block until interrupted. 0 or 1."""
    if importlib.util.find_spec("gradio") is None:
        print(f"t5vae demo needs the demo extra: {INSTALL}", file=sys.stderr)
        return 1
    try:
        served, url = serve(args.dir, args.host, args.port, corpus=args.corpus, map_lines=args.map_lines,
                            pool_lines=args.nearest_lines)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"t5vae demo: {e}", file=sys.stderr)
        return 1
    try:
        served.block_thread()
    except KeyboardInterrupt:
        pass
    finally:
        served.close()
    return 0


def serve(run_dir, host: str | None = DEFAULT_HOST, port: int | None = DEFAULT_PORT, *, corpus: str | None = None,
          map_lines: int | None = 1000, pool_lines: int | None = 50_000, quiet: bool = False):
    """Load and warm up ``run_dir``, serve its page without blocking, print the URL -> (Blocks, URL)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from t5vae.demo import backend, page

    t0 = time.perf_counter()
    b = backend.Backend.from_run(run_dir, corpus, map_lines, pool_lines)
    b.warm_up()
    served, url = page.launch(b, host, port)
    if not quiet:
        print(f"t5vae demo: {run_dir} loaded and warmed up in {time.perf_counter() - t0:.0f} s; serving at {url}",
              flush=True)
    return served, url


def main(argv=None) -> int:
    """``python -m t5vae.demo RUN [--host H] [--port P]`` (the same as ``t5vae demo``)."""
    return cmd_demo(add_arguments(argparse.ArgumentParser(prog="t5vae demo")).parse_args(argv))
