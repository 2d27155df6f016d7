"""Time-to-path of the demo page's shareable links, in a real headless Chromium, and its screenshot.

    python -m benchmarks.demo RUN [--repeats 5] [--screenshot docs/demo.png] [--json PATH]

Starts ``t5vae demo RUN`` as a user does (a subprocess, on a free port), waits for the URL it prints (the
model loaded and warmed up), then for each pair of lines opens ``URL/?a=..&b=..&steps=9`` in a fresh page
load and measures the wall time from the navigation to the path's rows on the page. Pairs that are in the
run's corpus are reported as such (the screenshot should show lines the model has not seen). Needs the
demo extra (gradio), selenium, and Debian's chromium + chromium-driver.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# Lines of the kind a user types first: short statements from outside the standard library
PAIRS = [
    ("total = price * quantity", "return sorted(names)"),
    ("df = pd.read_csv(path)", "print(model.summary())"),
    ("loss = criterion(output, target)", "optimizer.zero_grad()"),
    ("x = np.zeros((3, 4))", "plt.show()"),
    ("user = User.objects.get(id=pk)", "app.run(debug=True)"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(run: str) -> tuple[subprocess.Popen, str, float]:
    port = _free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "t5vae.demo", run, "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    for line in proc.stdout:
        if "serving at" in line:
            return proc, line.rsplit("serving at", 1)[1].strip(), time.perf_counter() - t0
    raise RuntimeError(f"t5vae demo exited ({proc.wait()}) without serving")


def _browser(width: int, height: int):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
    ):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)


def _time_to_path(driver, url: str, a: str, b: str, steps: int, timeout: float = 120) -> float:
    from selenium.webdriver.common.by import By

    t0 = time.perf_counter()
    driver.get(f"{url}?a={quote(a, safe='')}&b={quote(b, safe='')}&steps={steps}")
    while time.perf_counter() - t0 < timeout:
        if len(driver.find_elements(By.CSS_SELECTOR, "#path-table tbody tr")) == steps:
            return time.perf_counter() - t0
        if driver.find_elements(By.CSS_SELECTOR, "#interp-error .demo-error"):
            raise RuntimeError(f"the page shows an error for {a!r} -> {b!r}")
        time.sleep(0.05)
    raise TimeoutError(f"no path within {timeout} s for {a!r} -> {b!r}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run directory (e.g. ./t5vae-run from README command 1)")
    p.add_argument("--repeats", type=int, default=3, help="page loads per pair (default 3)")
    p.add_argument("--steps", type=int, default=9)
    p.add_argument("--screenshot", help="save a PNG of the page showing the first pair's path")
    p.add_argument("--json", help="write the measurements here")
    args = p.parse_args(argv)

    from benchmarks import harness
    from t5vae import rundir

    corpus = rundir.corpus(args.run)
    known = set(corpus.train) | set(corpus.validation)
    proc, url, startup = _serve(args.run)
    print(f"served at {url} after {startup:.1f} s (load + warm-up)")
    driver = _browser(1280, 1700)
    times: dict[str, list[float]] = {}
    try:
        for a, b in PAIRS:
            seen = [s for s in (a, b) if s in known]
            key = f"{a} -> {b}"
            times[key] = [_time_to_path(driver, url, a, b, args.steps) for _ in range(args.repeats)]
            print(
                f"{key}: {', '.join(f'{t:.2f}' for t in times[key])} s"
                + (f" (in the corpus: {seen})" if seen else "")
            )
        if args.screenshot:
            a, b = PAIRS[0]
            _time_to_path(driver, url, a, b, args.steps)
            time.sleep(1.0)  # let the map redraw its path
            height = driver.execute_script("return document.body.scrollHeight")
            driver.set_window_size(1280, min(max(height + 40, 900), 2600))
            time.sleep(0.5)
            driver.save_screenshot(args.screenshot)
            print(f"screenshot of {a!r} -> {b!r}: {args.screenshot}")
    finally:
        driver.quit()
        proc.terminate()
        proc.wait(timeout=30)
    first = [v[0] for v in times.values()]
    every = [t for v in times.values() for t in v]
    machine = harness.machine(2048, 1 << 28, 3)  # after the timing, with the server stopped
    result = {
        **machine,
        "run": str(args.run),
        "startup_s": round(startup, 2),
        "steps": args.steps,
        "repeats": args.repeats,
        "first_load_median_s": round(statistics.median(first), 3),
        "median_s": round(statistics.median(every), 3),
        "max_s": round(max(every), 3),
        "pairs": {k: [round(t, 3) for t in v] for k, v in times.items()},
        "pairs_in_corpus": [k for k in times if any(s in known for s in k.split(" -> "))],
    }
    print(
        f"time to path: median {result['median_s']:.2f} s, first load of each pair median "
        f"{result['first_load_median_s']:.2f} s, max {result['max_s']:.2f} s ({result['cpu_model']})"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
