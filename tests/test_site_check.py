"""tests/check_site.py passes a good hand-made page and fails each kind of broken page.

The pages are written to a temporary folder (no Jupyter Book needed). MathJax comes from the
installed ``sphinx-mathjax-offline`` package, as on the real site, so the good page also shows
that the checker waits for typesetting. Needs Debian's /usr/bin/chromium (skipped without it).
"""
from __future__ import annotations

import importlib.util
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("check_site", HERE / "check_site.py")
check_site = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("check_site", check_site)
_spec.loader.exec_module(check_site)

needs_chromium = pytest.mark.skipif(
    not Path(check_site.CHROMIUM).exists(),
    reason=f"{check_site.CHROMIUM} is missing: the site check needs Debian's chromium (apt-get install chromium)",
)


def _png(width: int = 4, height: int = 3) -> bytes:
    """A small solid-colour RGB PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    rows = b"".join(b"\x00" + b"\xc0\x30\x30" * width for _ in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def _mathjax_dir() -> Path:
    spec = importlib.util.find_spec("sphinx-mathjax-offline")
    assert spec is not None and spec.origin, "sphinx-mathjax-offline is not installed (requirements.txt)"
    return Path(spec.origin).parent / "static" / "mathjax"


LONG = "x = " + " + ".join(f"weight_{i} * feature_{i}" for i in range(40))
FIGURE = '<figure><img src="pixel.png" alt="a red square"><figcaption><p>A red square.</p></figcaption></figure>'


def _page(body: str, title: str = "A chapter", mathjax: bool = True) -> str:
    script = '<script defer src="mathjax/tex-chtml.js"></script>' if mathjax else ""
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{title}</title>{script}
<style>main {{ max-width: 600px; margin: 0 auto; }} pre {{ white-space: pre-wrap; overflow-wrap: anywhere; }}</style>
</head><body><main><article class="bd-article">
<h1>{title}</h1>
{body}
</article></main></body></html>
"""


GOOD = _page(f"""
<p>A budget \\(\\epsilon = 0.3\\) and a display equation $$\\frac{{1}}{{2}} \\|r\\|_2^2$$ typeset by MathJax.</p>
{FIGURE}
<div class="cell_input"><pre>loss = r"$$\\frac{{1}}{{2}}$$"  # TeX inside code is fine
{LONG}</pre></div>
<div class="cell_output"><div class="output stream"><pre>accuracy: 0.98
Warning: this is a warning, not an error</pre></div></div>
<table><tr><th>model</th><th>accuracy</th></tr><tr><td>LeNet</td><td>0.99</td></tr></table>
<div style="display: none"><pre>Traceback (most recent call last):</pre> \\frac{{hidden}}{{text}}</div>
""")

BAD = {
    "traceback": _page(f"""{FIGURE}
<div class="cell_output"><div class="output stream"><pre>Traceback (most recent call last):
  File "&lt;stdin&gt;", line 1, in &lt;module&gt;
ValueError: boom</pre></div></div>"""),
    "error_output": _page(f"""{FIGURE}
<div class="cell_output"><div class="output text_plain"><pre>RuntimeError: CUDA out of memory</pre></div></div>"""),
    "raw_tex": _page(f"<p>The bound $$\\frac{{1}}{{2}} \\|r\\|$$ is left raw.</p>{FIGURE}", mathjax=False),
    "raw_tex_command": _page(f"<p>A budget of \\epsilon = 0.3 was used.</p>{FIGURE}", mathjax=False),
    "broken_image": _page('<figure><img src="missing.png" alt="gone"><figcaption>A missing image.</figcaption></figure>'),
    "uncaptioned_image": _page('<div class="cell_output"><img src="pixel.png" alt="no caption"></div>'),
    "empty_caption": _page('<figure><img src="pixel.png" alt="empty caption"><figcaption> </figcaption></figure>'),
    "scrolling_pre": _page(f'{FIGURE}<pre style="white-space: pre; overflow-x: auto">{LONG}</pre>'),
    "wide_table": _page(FIGURE + '<div class="pst-scrollable-table-container" style="overflow-x: auto"><table>'
                        + "<tr>" + "".join(f'<td style="white-space: nowrap">column_number_{i}</td>' for i in range(30))
                        + "</tr></table></div>"),
    "external_request": _page(f'{FIGURE}<figure><img src="http://example.invalid/x.png"><figcaption>Remote.'
                              "</figcaption></figure>"),
    "no_h1": _page(FIGURE).replace("<h1>A chapter</h1>", ""),
}

# Which check must fail for each bad page.
EXPECTED = {
    "traceback": "traceback", "error_output": "traceback", "raw_tex": "tex", "raw_tex_command": "tex",
    "broken_image": "image", "uncaptioned_image": "figure", "empty_caption": "figure",
    "scrolling_pre": "scroll", "wide_table": "scroll", "external_request": "network", "no_h1": "h1",
}


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("site")
    (root / "pixel.png").write_bytes(_png())
    (root / "mathjax").symlink_to(_mathjax_dir(), target_is_directory=True)
    (root / "good.html").write_text(GOOD, encoding="utf-8")
    for name, html in BAD.items():
        (root / f"{name}.html").write_text(html, encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def results(site):
    pages = ["good.html"] + [f"{name}.html" for name in BAD]
    return {r.page.removesuffix(".html"): r for r in check_site.check_pages(site, pages)}


@needs_chromium
def test_good_page_passes(results):
    assert results["good"].ok, results["good"].problems


@needs_chromium
@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_page_fails_the_right_check(results, name):
    result = results[name]
    assert not result.ok, f"{name}: the checker found nothing wrong"
    assert result.problems.get(EXPECTED[name]), f"{name}: expected a {EXPECTED[name]!r} problem, got {result.problems}"


@needs_chromium
def test_only_the_broken_thing_is_reported(results):
    """A page with one defect is not also blamed for others (no false alarms from the checks)."""
    for name in ("traceback", "raw_tex", "uncaptioned_image", "scrolling_pre"):
        assert set(k for k, v in results[name].problems.items() if v) == {EXPECTED[name]}, results[name].problems


@needs_chromium
def test_command_line_exit_status_and_report(site):
    script = HERE / "check_site.py"
    ok = subprocess.run([sys.executable, str(script), str(site), "good.html"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "good.html" in ok.stdout
    bad = subprocess.run([sys.executable, str(script), str(site), "good.html", "traceback.html", "absent.html"],
                         capture_output=True, text=True)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    lines = bad.stdout.splitlines()
    assert any(line.startswith("FAIL traceback.html") for line in lines), bad.stdout
    assert any(line.startswith("FAIL absent.html") for line in lines), bad.stdout
    assert any("[traceback]" in line for line in lines), bad.stdout


def test_pages_come_from_the_toc(tmp_path):
    toc = tmp_path / "_toc.yml"
    toc.write_text("format: jb-book\nroot: book/intro\nparts:\n  - caption: A\n    chapters:\n"
                   "      - file: book/running\n      - file: book/executed/baselines.ipynb\n"
                   "        sections:\n          - file: book/executed/extra\n", encoding="utf-8")
    assert check_site.toc_pages(toc) == [
        "book/intro.html", "book/running.html", "book/executed/baselines.html", "book/executed/extra.html"]
