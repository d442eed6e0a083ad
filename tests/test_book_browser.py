"""Every page of the built book, opened in a real browser (headless Chromium, network off), is readable.

Fails when an output or code block is wider than its column at 1400 px (``scrollWidth > clientWidth``), an image
does not load, maths is left as raw TeX, or an absolute path of a machine appears in the text. Screenshots of
every page land in ``_build/screenshots/`` for people to look at. The book is the one ``.ci/run`` built in
``_build/html`` (built here if missing). Chromium and its driver are Debian's ``chromium`` and
``chromium-driver``; nothing is downloaded.
"""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HTML = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"
WIDTH = 1400
#: An absolute path of a machine: a home, a temporary or a system folder, a checkout.
ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/(?:home|root|tmp|work|usr|opt|var|mnt|srv|Users)/[\w.-]")
#: Raw TeX that MathJax should have typeset.
RAW_MATH = re.compile(r"\\\(|\\\[|\$\$")

# what the page reports: blocks wider than their column, broken images, visible text outside code
PROBE = """
const wide = [];
for (const el of document.querySelectorAll('div.cell_output, div.output, div.highlight pre, pre, table, div.math')) {
  if (el.scrollWidth > el.clientWidth + 1) {
    wide.push(el.tagName + '.' + el.className.toString().slice(0, 40) + ': ' + el.scrollWidth + ' > ' + el.clientWidth
              + ' px: ' + (el.innerText || '').slice(0, 80).replace(/\\s+/g, ' '));
  }
}
for (const el of document.querySelectorAll('mjx-container[display="true"]')) {
  const column = el.closest('div.math, div.cell_output, article') || el.parentElement;
  if (el.getBoundingClientRect().right > column.getBoundingClientRect().right + 1) {
    wide.push('display maths wider than its column: ' + (el.getAttribute('aria-label') || '').slice(0, 60));
  }
}
const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(-80));
const article = document.querySelector('article') || document.body;
const clone = article.cloneNode(true);
clone.querySelectorAll('pre, code, mjx-container, script, style').forEach(e => e.remove());
return {wide: wide, broken: broken, text: clone.innerText, all_text: article.innerText};
"""


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("the browser test needs Debian's chromium and chromium-driver: "
                    "apt-get install -y chromium chromium-driver (.ci/run does this)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={WIDTH},1000", "--hide-scrollbars",
                # network off: every host resolves nowhere and every request goes to a dead proxy
                "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
                "--proxy-bypass-list=<-loopback>"):
        opts.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=opts)


def _build_if_missing() -> None:
    if not (HTML / "index.html").exists():
        subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", str(ROOT)], check=True,
                       capture_output=True)


@pytest.fixture(scope="module")
def book():
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = _driver()
    yield driver
    driver.quit()


def _pages():
    _build_if_missing()
    skip = {"genindex.html", "search.html", "index.html"}  # index.html only redirects to book/intro.html
    return sorted(p.relative_to(HTML).as_posix() for p in HTML.rglob("*.html")
                  if not p.relative_to(HTML).parts[0].startswith("_") and p.name not in skip)


def test_the_book_has_pages():
    assert "notebooks/91_audit_report.html" in _pages() and "book/intro.html" in _pages()


@pytest.mark.parametrize("page", _pages())
def test_page_reads_offline(book, page):
    book.set_window_size(WIDTH, 1000)
    book.get((HTML / page).as_uri())
    book.set_script_timeout(60)
    typeset = book.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "if (!window.MathJax || !MathJax.startup) { done('no MathJax'); return; }"
        "MathJax.startup.promise.then(() => done('ok'), e => done('MathJax failed: ' + e));")
    found = book.execute_script(PROBE)
    height = book.execute_script("return document.documentElement.scrollHeight")
    book.set_window_size(WIDTH, min(max(height, 600), 12_000))
    book.save_screenshot(str(SHOTS / (page.replace("/", "__").removesuffix(".html") + ".png")))

    problems = []
    problems += [f"wider than its column: {w}" for w in found["wide"]]
    problems += [f"image not loaded: {src}" for src in found["broken"]]
    uses_math = bool(RAW_MATH.search(found["text"])) or "mjx-container" in book.page_source
    if uses_math and typeset != "ok":
        problems.append(f"maths not typeset offline ({typeset})")
    problems += [f"raw TeX left in the text: ...{found['text'][max(0, m.start() - 40):m.end() + 40]!r}..."
                 for m in RAW_MATH.finditer(found["text"])][:3]
    problems += [f"absolute path in the text: ...{found['all_text'][max(0, m.start() - 30):m.end() + 40]!r}..."
                 for m in ABSOLUTE_PATH.finditer(found["all_text"])][:3]
    assert not problems, f"{page}:\n  " + "\n  ".join(problems)
