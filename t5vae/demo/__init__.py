"""``t5vae demo RUN [RUN ...]``: a web page for trained runs, one tab each when there are several (the optional extra: ``pip install -e ".[demo]"``).

Gradio, not Streamlit: the command serves the page from its own process (``Blocks.launch`` in-process, no
``streamlit run`` script re-executed per click), with a request queue and per-browser state built in, and
its frontend is bundled in the wheel (fonts included), so the page fetches nothing from the network.
"""

from __future__ import annotations

import argparse
import errno
import importlib.util
import os
import socket
import sys
import time

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 7860
INSTALL = 'pip install -e ".[demo]"'


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The demo command's arguments: the run directories, --host, --port and what the map and neighbours use."""
    p.add_argument(
        "dirs",
        nargs="+",
        metavar="dir",
        help="training run directories (or exports) to load: one tab each when there are several, e.g. "
        "a code run and a prose run",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to serve on (default {DEFAULT_HOST}; 0.0.0.0 for every interface)",
    )
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    p.add_argument(
        "--corpus",
        default=None,
        help="corpus for the map and the nearest lines (default: the one "
        "in the run's train_config.json); one run only",
    )
    p.add_argument(
        "--map-lines", type=int, default=1000, help="at most this many validation lines on the map"
    )
    p.add_argument(
        "--nearest-lines",
        type=int,
        default=50_000,
        help="search the nearest lines among at most this many training lines",
    )
    return p


def cmd_demo(args: argparse.Namespace) -> int:
    """Load the runs, warm them up, serve the page, print its URL once; block until interrupted. 0 or 1."""
    if importlib.util.find_spec("gradio") is None:
        print(f"t5vae demo needs the demo extra: {INSTALL}", file=sys.stderr)
        return 1
    try:
        served, url = serve(
            args.dirs,
            args.host,
            args.port,
            corpus=args.corpus,
            map_lines=args.map_lines,
            pool_lines=args.nearest_lines,
        )
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


def check_address(host: str | None, port: int | None) -> None:
    """Before the model loads: ``port`` within 1-65535, ``host`` resolves, and ``port`` is free on it; each a
    ValueError in one line naming ``--host`` / ``--port``. None: Gradio's own choice, not checked."""
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"--port {port} is out of range: a port is a number from 1 to 65535")
    if host is None:
        return
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port or 0, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as e:
        raise ValueError(
            f"--host {host!r} does not resolve ({getattr(e, 'strerror', None) or e}): give an address "
            f"of this machine, e.g. 127.0.0.1, or 0.0.0.0 for every interface"
        ) from None
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: a closing port is free
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ValueError(
                    f"--port {port} is in use on {host} by another program: choose another --port, or "
                    f"stop the program holding it"
                ) from None
            raise ValueError(
                f"cannot serve on --host {host} --port {port} ({e.strerror}): choose an address of this "
                f"machine (--host) or another port (--port)"
            ) from None


def serve(
    run_dirs,
    host: str | None = DEFAULT_HOST,
    port: int | None = DEFAULT_PORT,
    *,
    corpus: str | None = None,
    map_lines: int | None = 1000,
    pool_lines: int | None = 50_000,
    quiet: bool = False,
):
    """Load and warm up ``run_dirs`` (one directory or several: a tab each), serve the page without blocking,
    print the URL -> (Blocks, URL)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    run_dirs = [run_dirs] if isinstance(run_dirs, (str, os.PathLike)) else list(run_dirs)
    if corpus is not None and len(run_dirs) > 1:
        raise ValueError(
            f"--corpus names the corpus of one run, but {len(run_dirs)} runs were given: serve them "
            f"without --corpus (each uses the corpus in its train_config.json)"
        )
    check_address(host, port)
    from t5vae.demo import backend, page

    t0 = time.perf_counter()
    backends = [backend.Backend.from_run(d, corpus, map_lines, pool_lines) for d in run_dirs]
    for b in backends:
        b.warm_up()
    served, url = page.launch(backends, host, port)
    if not quiet:
        shown = ", ".join(map(str, run_dirs))
        print(
            f"t5vae demo: {shown} loaded and warmed up in {time.perf_counter() - t0:.0f} s; serving at {url}",
            flush=True,
        )
    return served, url


def main(argv=None) -> int:
    """``python -m t5vae.demo RUN [RUN ...] [--host H] [--port P]`` (the same as ``t5vae demo``)."""
    return cmd_demo(add_arguments(argparse.ArgumentParser(prog="t5vae demo")).parse_args(argv))
