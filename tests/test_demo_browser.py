"""The demo page in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium),
served from a tiny run that `t5vae train` makes here: a shareable link opens with its path, the inputs and
the button work as a person uses them, bad input is an error on the page, nothing is fetched from off the
machine. Under CI=true a missing browser, driver or library fails these tests instead of skipping them."""

import contextlib
import io
import json
import os
import shutil
import socket
from urllib.parse import parse_qsl, quote, urlsplit

import pytest
from conftest import require

from t5vae import cli
from t5vae.demo import core

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
NAMES = ["x", "y", "total", "count", "items", "value", "data", "name"]
WAIT = 60  # seconds for a result to show (the first requests of a path length compile)
pytestmark = pytest.mark.filterwarnings("ignore:'HTTP_422_UNPROCESSABLE_ENTITY' is deprecated")  # Gradio's


def corpus_lines() -> list[str]:
    """Single statements of several kinds (the map's colours): assignments, calls, returns, imports."""
    out = []
    for i, a in enumerate(NAMES):
        for j, b in enumerate(NAMES):
            if a != b:
                out += [
                    f"{a} = {b} + {i * 8 + j}",
                    f"print({a}, {b})",
                    f"return {a}[{j}]",
                    f"{a}.append({b})",
                ]
        out += [f"import {a}", f"del {a}", f"assert {a} is not None"]
    return out


def need_browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        why = f"{' and '.join(missing)} missing (apt-get install chromium chromium-driver)"
        if IN_CI:
            pytest.fail(f"the browser tests need {why} under CI=true")
        pytest.skip(why)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The tiny model of both runs: the same shapes, so the server reuses one run's compiled functions for the other.
# 64 lines reach the same length bucket (a batch); an eval batch of 8 is one compile.
TINY = (
    "--steps 2 --t5-d-model 32 --t5-d-kv 8 --t5-d-ff 64 --t5-num-layers 1 --t5-num-heads 2 "
    "--t5-relative-attention-num-buckets 8 --n-latent-tokens 2 --latent-size 8 --max-length 24 --vocab-size 400 "
    "--batch-size 64 --validation-percent 15 --eval-pairs 1 --eval-batch-size 8 --eval-every 0 --max-minutes 3 "
    "--progress false"
).split()


def train_tiny(out, lines: list[str], *flags: str):
    """`t5vae train` of the tiny model on ``lines``, in this process (the server reuses what the evaluation
    compiled) -> the run directory."""
    corpus = out.parent / f"{out.name}.txt"
    corpus.write_text("\n".join(lines) + "\n")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = cli.main(["train", "--out", str(out), "--corpus", str(corpus), *TINY, *flags])
    assert rc == 0, printed.getvalue()[-3000:]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    require("gradio")
    require("selenium")
    need_browser()
    return train_tiny(tmp_path_factory.mktemp("demo") / "run", corpus_lines())


SENTENCE_WORDS = ["the file", "a module", "this function", "every list", "the new value", "an old name"]
VERBS = ["reads", "keeps", "opens", "writes", "returns", "checks"]


def sentence_lines() -> list[str]:
    """Short English sentences (3-6 words, so that they share one length bucket), for the tiny prose run."""
    return [
        f"{a.capitalize()} {v} {b}." for a in SENTENCE_WORDS for b in SENTENCE_WORDS if a != b for v in VERBS
    ]


@pytest.fixture(scope="module")
def prose_run(tiny_run):
    """A tiny run on English sentences with --language prose."""
    return train_tiny(tiny_run.parent / "prose", sentence_lines(), "--language", "prose", "--min-chars", "10")


@pytest.fixture(scope="module")
def served(tiny_run):
    """(URL, what serve printed) of the page for the tiny run, shared by the module's tests."""
    from t5vae.demo import serve

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        page, url = serve(tiny_run, "127.0.0.1", free_port())
    yield url, printed.getvalue()
    page.close()


@pytest.fixture(scope="module")
def server(served):
    return served[0]


@pytest.fixture(scope="module")
def browser(server):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1800",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-renderer-backgrounding",
        "--disable-background-timer-throttling",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    yield driver
    driver.quit()


def css(driver, selector):
    from selenium.webdriver.common.by import By

    return driver.find_elements(By.CSS_SELECTOR, selector)


def wait(driver, check, timeout=WAIT):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: check(d))


def path_rows(driver):
    """[(ratio, line, parse mark)] of the path table as shown."""
    rows = css(driver, "#path-table tbody tr")
    return [
        (
            r.find_element("css selector", ".first").text,
            r.find_element("css selector", ".line code").get_attribute("textContent"),
            r.find_element("css selector", ".parses").text,
        )
        for r in rows
    ]


def open_link(driver, url, a, b, steps, timeout=WAIT):
    driver.get(f"{url}?a={quote(a, safe='')}&b={quote(b, safe='')}&steps={steps}")
    wait(driver, lambda d: len(path_rows(d)) == steps or css(d, "#interp-error .demo-error"), timeout)


def type_into(driver, elem_id, text):
    """Select what the box holds and type over it, key by key (WebElement.clear() would not tell Gradio)."""
    from selenium.webdriver.common.keys import Keys

    box = css(driver, f"#{elem_id} textarea, #{elem_id} input")[0]
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.BACKSPACE)
    if text:
        box.send_keys(text)


def click(driver, elem_id):
    css(driver, f"#{elem_id}")[0].click()


def error_text(driver, elem_id="interp-error"):
    found = css(driver, f"#{elem_id} .demo-error")
    return found[0].text if found else ""


def test_a_shareable_link_opens_with_its_path(browser, server):
    a, b = "total = count + 1", "s = 'a&b=#'"
    open_link(browser, server, a, b, 5)
    rows = path_rows(browser)
    assert [r[0] for r in rows] == ["0.000", "0.250", "0.500", "0.750", "1.000"], rows
    for _, line, mark in rows:
        assert mark == ("✓ yes" if core.parses(line) else "✗ no"), (line, mark)
    assert css(browser, "#line-a textarea, #line-a input")[0].get_attribute("value") == a
    assert css(browser, "#line-b textarea, #line-b input")[0].get_attribute("value") == b
    assert error_text(browser) == ""
    link = wait(
        browser, lambda d: css(d, "#share-link textarea, #share-link input")[0].get_attribute("value")
    )
    assert urlsplit(link).query == core.link_query(core.Link(a, b, 5))[1:] and browser.current_url == link
    assert len(css(browser, "#latent-map circle.path-point")) == 5 and css(
        browser, "#latent-map polyline.map-path"
    )
    points = css(browser, "#latent-map circle.map-point")
    assert len(points) > 10
    hover = points[0].find_element("css selector", "title").get_attribute("textContent")
    line, kind = hover.rsplit(" (", 1)
    assert (
        kind == core.statement_kind(line) + ")" and line in corpus_lines()
    )  # a validation line and its kind


def test_the_inputs_slider_and_button_as_a_person_uses_them(browser, server):
    browser.get(server)
    wait(browser, lambda d: len(path_rows(d)) == core.DEFAULT_STEPS)  # the example path
    type_into(browser, "line-a", "x = [1, 2]")
    type_into(browser, "line-b", "return value")
    browser.find_element("xpath", "//*[@id='kind']//label[normalize-space()='lerp']").click()
    type_into(browser, "steps", "4\t")
    click(browser, "interpolate")
    link = wait(browser, lambda d: "kind=lerp" in d.current_url and d.current_url)
    assert core.parse_link(dict(parse_qsl(urlsplit(link).query))) == core.Link(
        "x = [1, 2]", "return value", 4, "lerp"
    )
    assert len(path_rows(browser)) == 4
    scrub = css(browser, "#scrub input[type=range]")[0]
    scrub.send_keys("\ue014")  # arrow right: the second point
    wait(browser, lambda d: "point 2 of 4" in css(d, "#path-point")[0].text)
    assert css(browser, "#path-table tr.current")[0].get_attribute("data-index") == "1"
    assert css(browser, "#latent-map circle.path-current")[0].get_attribute("data-index") == "1"
    nearest = css(browser, "#nearest tbody tr")
    assert len(nearest) == core.NEAREST_K
    assert all(
        r.find_element("css selector", "code").get_attribute("textContent") in corpus_lines() for r in nearest
    )


def test_bad_input_is_an_error_on_the_page_and_the_server_keeps_serving(browser, server):
    open_link(browser, server, "x = 1", "y = 2", 3)
    type_into(browser, "line-a", "")
    click(browser, "interpolate")
    wait(browser, lambda d: error_text(d))
    assert "empty" in error_text(browser) and "line A" in error_text(browser) and not path_rows(browser)
    long = " + ".join(f"name_{i}" for i in range(12))
    type_into(browser, "line-a", long)
    click(browser, "interpolate")
    wait(browser, lambda d: "longer than" in error_text(d))
    assert "max length of 24 tokens" in error_text(browser)
    cut = wait(browser, lambda d: [b for b in css(d, "#cut") if b.is_displayed()])  # offered only now
    cut[0].click()
    wait(browser, lambda d: len(path_rows(d)) == 3 and not error_text(d))
    assert css(browser, "#truncate input")[0].is_selected()
    open_link(browser, server, "x = 1", "y = 2", 100)
    assert "steps must be a whole number from 2 to 32, got 100" in error_text(browser)


def test_a_5_mb_line_is_refused_before_tokenizing_even_with_cutting_on(browser, server):
    open_link(browser, server, "x = 1", "y = 2", 3)
    box = css(browser, "#truncate input")[0]
    if not box.is_selected():
        box.click()
    browser.execute_script("""const t = document.querySelector('#line-a textarea, #line-a input');
        t.value = 'x = ' + '1 + '.repeat(1250000); t.dispatchEvent(new Event('input', {bubbles: true}));""")
    click(browser, "interpolate")
    wait(browser, lambda d: error_text(d))
    assert "line A is 5,000,004 characters; the page takes at most 384" in error_text(browser)
    open_link(browser, server, "x = 1", "y = 2", 3)  # the server keeps serving
    assert len(path_rows(browser)) == 3 and not error_text(browser)


def test_samples_and_analogy(browser, server):
    browser.get(server)
    wait(browser, lambda d: path_rows(d))
    click(browser, "sample")
    wait(browser, lambda d: css(d, "#samples-table tbody tr"))
    rows = css(browser, "#samples-table tbody tr")
    assert len(rows) == core.DEFAULT_SAMPLES
    for r in rows:
        line = r.find_element("css selector", "code").get_attribute("textContent")
        assert r.find_element("css selector", ".parses").text == ("✓ yes" if core.parses(line) else "✗ no")
    browser.find_element("xpath", "//*[@id='prior']//label[normalize-space()='tanh']").click()
    type_into(browser, "n", "0")
    click(browser, "sample")
    wait(browser, lambda d: error_text(d, "sample-error"))
    assert "n must be a whole number from 1 to 32, got 0" in error_text(browser, "sample-error")
    click(browser, "analogy")
    wait(browser, lambda d: css(d, "#analogy-result code"))
    type_into(browser, "an-b", "")
    click(browser, "analogy")
    wait(browser, lambda d: "line b is empty" in error_text(d, "analogy-error"))


def test_an_edit_direction_and_its_slider(browser, server):
    browser.get(server)
    wait(browser, lambda d: path_rows(d))
    type_into(browser, "edit-from", "x = 1\ny = 2")
    type_into(browser, "edit-to", "return x\nreturn y")
    type_into(browser, "edit-line", "total = 3")
    click(browser, "edit")
    wait(browser, lambda d: len(css(d, "#edit-table tbody tr")) == len(core.EDIT_AMOUNTS))
    rows = css(browser, "#edit-table tbody tr")
    assert [r.find_element("css selector", ".first").text for r in rows] == [
        f"{t:+.2f}" for t in core.EDIT_AMOUNTS
    ]
    for r in rows:
        line = r.find_element("css selector", "code").get_attribute("textContent")
        assert r.find_element("css selector", ".parses").text == ("✓ yes" if core.parses(line) else "✗ no")
    zero = core.EDIT_AMOUNTS.index(0)
    assert css(browser, "#edit-table tr.current")[0].get_attribute("data-index") == str(zero)
    css(browser, "#edit-scrub input[type=range]")[0].send_keys("\ue014")  # arrow right: the next amount
    wait(browser, lambda d: "amount +0.25" in css(d, "#edit-point")[0].text)
    assert css(browser, "#edit-table tr.current")[0].get_attribute("data-index") == str(zero + 1)
    type_into(browser, "edit-to", "")
    click(browser, "edit")
    wait(browser, lambda d: error_text(d, "edit-error"))
    assert "the 'to' lines: type 1 to 64 lines, one per line; got 0" in error_text(browser, "edit-error")


def test_two_browser_tabs_at_once_each_see_their_own_path(browser, server):
    pairs = [("x = 1", "y = 2", 3), ("import data", "return items[0]", 6)]
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    second = browser.current_window_handle
    for handle, (a, b, steps) in zip((first, second), pairs):
        browser.switch_to.window(handle)
        browser.get(f"{server}?a={quote(a, safe='')}&b={quote(b, safe='')}&steps={steps}")
    for handle, (a, b, steps) in zip((first, second), pairs):
        browser.switch_to.window(handle)
        wait(browser, lambda d: len(path_rows(d)) == steps)
        assert css(browser, "#line-a textarea, #line-a input")[0].get_attribute("value") == a
    browser.close()
    browser.switch_to.window(first)


def test_links_followed_one_after_another_in_one_tab_all_open(browser, server):
    """Chrome's back-forward cache kept each left page's event streams open: the sixth link waited ~50 s for
    a connection (six per host) until the page opted out of that cache."""
    for i in range(7):
        open_link(browser, server, f"x = {i}", "return y", 2 + i % 2, timeout=30)
        assert len(path_rows(browser)) == 2 + i % 2


def test_nothing_was_fetched_from_off_this_machine(browser, server):
    browser.get(server)
    wait(browser, lambda d: path_rows(d))
    seen = set()
    for entry in browser.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg["method"] == "Network.requestWillBeSent":
            seen.add(msg["params"]["request"]["url"])
    assert any(u.startswith(server) for u in seen)
    off = sorted(
        u
        for u in seen
        if urlsplit(u).scheme not in ("data", "blob")
        and urlsplit(u).hostname not in ("127.0.0.1", "localhost")
    )
    assert not off, off


def test_the_url_is_printed_once_when_loaded_and_warmed_up(served):
    url, printed = served
    assert url.startswith("http://127.0.0.1:") and printed.count(url) == 1
    assert "loaded and warmed up" in printed.splitlines()[-1] and printed.splitlines()[-1].endswith(url)


@pytest.fixture(scope="module")
def two_runs(tiny_run, prose_run):
    """The page of a code run and a prose run, one tab each."""
    from t5vae.demo import serve

    with contextlib.redirect_stdout(io.StringIO()):
        page, url = serve([tiny_run, prose_run], "127.0.0.1", free_port())
    yield url
    page.close()


def test_a_code_run_and_a_prose_run_side_by_side(browser, two_runs):
    browser.get(two_runs)
    wait(browser, lambda d: len(css(d, "#run0-path-table tbody tr")) == core.DEFAULT_STEPS)
    tabs = [t.text for t in css(browser, "button[role=tab]")]
    assert tabs == ["run (code)", "prose (prose)"], tabs
    code_rows = css(browser, "#run0-path-table tbody tr")
    assert all(r.find_elements("css selector", ".parses") for r in code_rows)  # code: parse marks
    css(browser, "button[role=tab]")[1].click()
    wait(browser, lambda d: len(css(d, "#run1-path-table tbody tr")) == core.DEFAULT_STEPS)
    prose_table = css(browser, "#run1-path-table")[0]
    assert prose_table.find_elements("css selector", "th")[1].text == "decoded sentence"
    assert not prose_table.find_elements(
        "css selector", ".parses"
    ) and "parse-mark" not in prose_table.get_attribute("outerHTML")
    legend = css(browser, "#run1-map .map-legend")[0].text
    assert "words" in legend and "Assign" not in legend, legend
    # a link to the prose run opens in its tab with its path; the code tab shows its examples
    a, b = "The file reads a module.", "Every list checks the new value."
    browser.get(f"{two_runs}?a={quote(a, safe='')}&b={quote(b, safe='')}&steps=5&run=prose")
    wait(browser, lambda d: len(css(d, "#run1-path-table tbody tr")) == 5)
    assert css(browser, "#run1-line-a textarea, #run1-line-a input")[0].get_attribute("value") == a
    assert css(browser, "#tab-1")[0].is_displayed() and not css(browser, "#tab-0")[0].is_displayed()
    link = wait(
        browser,
        lambda d: css(d, "#run1-share-link textarea, #run1-share-link input")[0].get_attribute("value"),
    )
    assert core.parse_link(dict(parse_qsl(urlsplit(link).query))) == core.Link(a, b, 5, run="prose")
    click(browser, "run1-sample")
    wait(browser, lambda d: len(css(d, "#run1-samples-table tbody tr")) == core.DEFAULT_SAMPLES)
    assert not css(browser, "#run1-samples-table .parses")
    # the prose tab's edit direction starts from statements and questions, and has no parse marks
    to = css(browser, "#run1-edit-to textarea")[0].get_attribute("value")
    assert to.split("\n")[0] == "Is the file open?", to
    click(browser, "run1-edit")
    wait(browser, lambda d: len(css(d, "#run1-edit-table tbody tr")) == len(core.EDIT_AMOUNTS))
    assert (
        not css(browser, "#run1-edit-table .parses")
        and "decoded sentence" in css(browser, "#run1-edit-table th")[1].text
    )
