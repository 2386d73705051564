"""Check the built book in a real headless browser, as a reader would see it.

    python tests/check_site.py _build/html [--toc _toc.yml] [PAGE.html ...]

Serves the built HTML on 127.0.0.1, opens every page listed in ``_toc.yml`` (the root page
and every ``file:`` entry; or the PAGEs given, relative to the HTML folder) in headless
Chromium (Debian's ``/usr/bin/chromium`` driven by Playwright; no browser is downloaded) and
checks, once the page has loaded and MathJax has finished typesetting:

* ``h1``        the page rendered: its main content has a non-empty <h1>;
* ``image``     every <img> loaded (``complete && naturalWidth > 0``);
* ``figure``    every image in the main content sits in a <figure> with a non-empty <figcaption>;
* ``traceback`` no visible text contains a Python traceback, and no output cell shows an error
                (an error output, or a line such as ``ValueError: ...``);
* ``tex``       no raw TeX is visible outside code (``$$``, ``\\(``, ``\\frac``-style commands,
                ``$x^2$``-style inline math) and MathJax reported no TeX error;
* ``scroll``    nothing in the main content scrolls sideways (``scrollWidth > clientWidth + 1``
                for code blocks, outputs, tables and their wrappers, the article, the page);
* ``network``   no request went to a host other than localhost (such requests are blocked and
                reported), and every local resource the page asked for was served.

Prints one line per page and one per failed check; exits 1 if any check failed, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import functools
import http.server
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "[::1]"}
VIEWPORT = {"width": 1280, "height": 900}
MATHJAX_TIMEOUT_MS = 30_000
PAGE_TIMEOUT_MS = 60_000

# Runs in the page once it has loaded: resolves when MathJax (if the page loads it) has typeset.
WAIT_FOR_MATHJAX = """
async (timeoutMs) => {
  const timeout = new Promise((resolve) => setTimeout(() => resolve("timeout"), timeoutMs));
  const typeset = (async () => {
    // A deferred MathJax script has run by the load event; give it a moment to define startup.
    for (let i = 0; i < 50 && window.MathJax && !(window.MathJax.startup && window.MathJax.startup.promise); i++) {
      await new Promise((r) => setTimeout(r, 100));
    }
    if (window.MathJax && window.MathJax.startup && window.MathJax.startup.promise) {
      await window.MathJax.startup.promise;
      return "typeset";
    }
    return window.MathJax ? "not-started" : "none";
  })();
  const state = await Promise.race([typeset, timeout]);
  if (document.fonts && document.fonts.ready) await document.fonts.ready;
  return state;
}
"""

# Runs in the page after MathJax: returns {check: [problem, ...]} for the in-page checks.
PAGE_CHECKS = """
() => {
  const problems = {h1: [], image: [], figure: [], traceback: [], tex: [], scroll: []};
  const main = document.querySelector("article.bd-article") || document.querySelector("main")
            || document.querySelector("[role=main]") || document.body;
  const short = (s, n = 100) => { s = String(s).replace(/\\s+/g, " ").trim(); return s.length > n ? s.slice(0, n) + "..." : s; };
  const visible = (el) => el.checkVisibility ? el.checkVisibility({checkVisibilityCSS: true}) : el.getClientRects().length > 0;
  const describe = (el) => {
    let d = el.tagName.toLowerCase();
    if (el.id) d += "#" + el.id;
    const cls = (el.getAttribute("class") || "").trim().split(/\\s+/).filter(Boolean).slice(0, 3);
    if (cls.length) d += "." + cls.join(".");
    return d;
  };
  const imgName = (img) => {
    const name = img.getAttribute("src") || img.currentSrc || "(no src)";
    const section = img.closest("section");
    const heading = section && section.querySelector("h1, h2, h3, h4, h5, h6");
    return heading ? `${name} (section "${short(heading.innerText.replace(/#$/, ""), 60)}")` : name;
  };

  // h1: the page rendered.
  const h1 = main.querySelector("h1") || document.querySelector("h1");
  if (!h1 || !h1.innerText.trim()) problems.h1.push("no <h1> with text: the page did not render");

  // image: every <img> on the page loaded.
  for (const img of document.images) {
    if (!(img.complete && img.naturalWidth > 0)) problems.image.push(`image did not load: ${imgName(img)}`);
  }

  // figure: every image in the main content is a captioned figure.
  for (const img of main.querySelectorAll("img")) {
    const fig = img.closest("figure");
    if (!fig) { problems.figure.push(`image without <figure>/<figcaption>: ${imgName(img)}`); continue; }
    const cap = fig.querySelector("figcaption");
    if (!cap || !cap.innerText.trim()) problems.figure.push(`figure without a caption text: ${imgName(img)}`);
  }

  // traceback: no traceback anywhere in the visible text; no error shown by an output cell.
  const bodyText = document.body.innerText;
  const tbAt = bodyText.indexOf("Traceback (most recent call last)");
  if (tbAt >= 0) problems.traceback.push(`visible traceback: "${short(bodyText.slice(tbAt, tbAt + 160))}"`);
  // "ValueError: ...", "Error: ...", or a bare "KeyError" line (a traceback's last line).
  const errorLine = /^\\s*(?:[A-Za-z_][\\w.]*)?(?:Error|Exception):(?:\\s|$)|^\\s*[A-Za-z_][\\w.]*(?:Error|Exception)\\s*$/m;
  for (const out of main.querySelectorAll(".cell_output, .output, .output_area")) {
    if (!visible(out) || out.parentElement.closest(".cell_output, .output, .output_area")) continue;
    if (out.matches(".traceback, .error") || out.querySelector(".traceback, .error, .output.traceback")) {
      problems.traceback.push(`error output cell: "${short(out.innerText)}"`);
      continue;
    }
    const m = out.innerText.match(errorLine);
    if (m) {
      const line = out.innerText.slice(m.index).split("\\n").find((l) => l.trim());
      problems.traceback.push(`output cell shows an error: "${short(line)}"`);
    }
  }

  // tex: no raw TeX in visible text outside code; no MathJax error.
  const codeLike = "pre, code, kbd, samp, script, style, textarea, .highlight, mjx-container, .MathJax, mjx-assistive-mml";
  const rawTex = [
    [/\\$\\$/, "$$"],
    [/\\\\[()\\[\\]]/, "\\\\( \\\\) \\\\[ \\\\] delimiters"],
    [/\\\\[A-Za-z]{2,}/, "a backslash command"],
    [/\\\\[,;:!{}_^]/, "a TeX escape"],
    [/(^|[^\\w$])\\$[^$\\s][^$\\n]*?[\\\\^_{}][^$\\n]*?\\$/, "$...$ inline math"],
  ];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  const reported = new Set();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    const text = node.textContent;
    if (!parent || !text.trim() || parent.closest(codeLike) || !visible(parent)) continue;
    const block = parent.closest("p, li, td, th, dd, dt, figcaption, caption, h1, h2, h3, h4, h5, h6, div, section") || parent;
    if (reported.has(block)) continue;
    for (const [re, what] of rawTex) {
      const m = text.match(re);
      if (m) {
        reported.add(block);
        const at = Math.max(0, m.index - 30);
        problems.tex.push(`raw TeX (${what}) in ${describe(block)}: "${short(text.slice(at, m.index + 60))}"`);
        break;
      }
    }
  }
  for (const err of document.querySelectorAll("mjx-merror, .MathJax_Error")) {
    problems.tex.push(`MathJax error: "${short(err.getAttribute("data-mjx-error") || err.textContent)}"`);
  }

  // scroll: nothing in the main content scrolls sideways.
  const wide = [];
  const scrollers = main.querySelectorAll(
    "pre, code, table, .highlight, .cell_input, .cell_output, .output, .pst-scrollable-table-container, .table-wrapper, figure");
  for (const el of [document.documentElement, main, ...scrollers]) {
    if (el !== document.documentElement && (!visible(el) || el.clientWidth === 0)) continue;
    if (el.scrollWidth > el.clientWidth + 1) {
      // Report the innermost element only: its ancestors overflow because of it.
      wide.push(el);
    }
  }
  for (const el of wide) {
    if (wide.some((other) => other !== el && el.contains(other))) continue;
    const label = el === document.documentElement ? "the page" : describe(el);
    problems.scroll.push(`${label} scrolls sideways (scrollWidth ${el.scrollWidth} > clientWidth ${el.clientWidth}): "${short(el.innerText, 60)}"`);
  }
  return problems;
}
"""


@dataclass
class PageResult:
    page: str
    problems: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not any(self.problems.values())

    def add(self, check: str, message: str) -> None:
        self.problems.setdefault(check, []).append(message)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


class SiteServer:
    """``python -m http.server`` for ``root`` on 127.0.0.1 (a free port), in a background thread."""

    def __init__(self, root: Path):
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def __enter__(self) -> "SiteServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def toc_pages(toc_path: Path) -> list[str]:
    """HTML pages (relative to the HTML folder) of the root and every ``file:`` entry of a ``_toc.yml``."""
    import yaml

    toc = yaml.safe_load(toc_path.read_text(encoding="utf-8"))
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            for key in ("root", "file"):
                if isinstance(node.get(key), str):
                    files.append(node[key])
            for value in node.values():
                if isinstance(value, (list, dict)):
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(toc)
    pages = []
    for entry in files:
        stem = entry.rsplit(".", 1)[0] if entry.endswith((".md", ".ipynb", ".rst", ".py")) else entry
        if f"{stem}.html" not in pages:
            pages.append(f"{stem}.html")
    return pages


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about", "chrome-error"):
        return True
    return (parts.hostname or "") in LOCAL_HOSTS or f"[{parts.hostname}]" in LOCAL_HOSTS


def check_pages(html_dir: Path, pages: list[str], viewport: dict | None = None) -> list[PageResult]:
    """Open each page (path relative to ``html_dir``) in headless Chromium and run every check."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    html_dir = Path(html_dir).resolve()
    results = []
    with SiteServer(html_dir) as server, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            for page_path in pages:
                result = PageResult(page_path)
                results.append(result)
                if not (html_dir / page_path).is_file():
                    result.add("h1", f"{page_path} is not in {html_dir} (was the page built?)")
                    continue
                context = browser.new_context(viewport=viewport or VIEWPORT, service_workers="block")
                try:
                    _check_one(context, server.base_url + page_path, result, PlaywrightError)
                finally:
                    context.close()
        finally:
            browser.close()
    return results


def _check_one(context, url: str, result: PageResult, PlaywrightError) -> None:
    external: list[str] = []
    broken: list[str] = []

    def route(route_):
        request_url = route_.request.url
        if _is_local(request_url):
            route_.continue_()
        else:
            external.append(request_url)
            route_.abort("blockedbyclient")

    def on_response(response):
        if response.status >= 400 and _is_local(response.url) and not response.url.endswith("/favicon.ico"):
            broken.append(f"{response.status} {response.url}")

    def on_failed(request):
        if _is_local(request.url) and not request.url.endswith("/favicon.ico"):
            broken.append(f"{request.failure} {request.url}")

    context.route("**/*", route)
    page = context.new_page()
    page.on("response", on_response)
    page.on("requestfailed", on_failed)
    page.set_default_timeout(PAGE_TIMEOUT_MS)
    try:
        response = page.goto(url, wait_until="load")
    except PlaywrightError as exc:
        result.add("h1", f"page did not load: {exc}".splitlines()[0])
        return
    if response is None or response.status >= 400:
        result.add("h1", f"page answered {response.status if response else 'nothing'}")
        return
    mathjax = page.evaluate(WAIT_FOR_MATHJAX, MATHJAX_TIMEOUT_MS)
    if mathjax in ("timeout", "not-started"):
        result.add("tex", f"MathJax did not finish typesetting ({mathjax})")
    page.wait_for_load_state("networkidle")
    for check, problems in page.evaluate(PAGE_CHECKS).items():
        for problem in problems:
            result.add(check, problem)
    for request_url in dict.fromkeys(external):
        result.add("network", f"request to a non-localhost host (blocked): {request_url}")
    for item in dict.fromkeys(broken):
        result.add("network", f"local resource not served: {item}")


def report(results: list[PageResult], out=sys.stdout) -> bool:
    """Print one line per page and one per failed check; True when every page passed."""
    for result in results:
        n = sum(len(p) for p in result.problems.values())
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.page}" + ("" if result.ok else f"  ({n} problem{'s' * (n != 1)})"),
              file=out)
        for check, problems in result.problems.items():
            for problem in problems:
                print(f"     [{check}] {problem}", file=out)
    failed = sum(not r.ok for r in results)
    print(f"{len(results) - failed}/{len(results)} pages passed", file=out)
    return failed == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("html_dir", type=Path, help="the built site, e.g. _build/html")
    parser.add_argument("pages", nargs="*", help="pages to check, relative to html_dir (default: every page of --toc)")
    parser.add_argument("--toc", type=Path, default=Path(__file__).resolve().parent.parent / "_toc.yml",
                        help="the book's _toc.yml (default: the repository's)")
    parser.add_argument("--width", type=int, default=VIEWPORT["width"], help="viewport width in CSS pixels")
    args = parser.parse_args(argv)

    if not args.html_dir.is_dir():
        print(f"error: {args.html_dir} is not a folder (build the book first)", file=sys.stderr)
        return 2
    if not Path(CHROMIUM).exists():
        print(f"error: {CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    pages = args.pages or toc_pages(args.toc)
    if not pages:
        print(f"error: no pages to check in {args.toc}", file=sys.stderr)
        return 2
    results = check_pages(args.html_dir, pages, viewport={"width": args.width, "height": VIEWPORT["height"]})
    return 0 if report(results) else 1


if __name__ == "__main__":
    sys.exit(main())
