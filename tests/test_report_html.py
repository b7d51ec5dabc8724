"""analysis.html: one self-contained page, checked as text and as a real browser renders it.

The browser checks run headless Chromium (tests/browser.py): three launches, a few seconds.
"""
from __future__ import annotations

import io
import re
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from analysis.figures import Figure, figure_plan, make_figures
from analysis.html import data_key, render_html
from analysis.tables import iter_tables
from browser import dump_dom, screenshot
from test_figures import EPS8, make_summary

EVIL = "<script>alert(1)</script>"
VALIDITY = [
    "validity: 1 flag(s) on 1 number(s); 1 check(s) flagged, 1 passed, 8 not checked",
    "  flagged: no-eot (a random defence is attacked with EOT): 1 flag(s)",
    "  passed: attack-weak (the bare classifier under the same attack goes to ~0%)",
    "  not checked: eps-unbounded (an unbounded eps gives ~0%): no attack had an unbounded eps",
    "cifar10 · linf eps=8/255 · pgd",
    "  ⚑ diffpure t*=0.1 (wrn-28-10): no-eot: random defence attacked without EOT",
]
HEADER = ["results: 16896 rows from 33 files under results/; 1 sweep(s), 33 cell(s), 34 configuration(s), 1 PARTIAL",
          "provenance: harness 0.4.0; git 1a2b3c4; torch 2.4.0; device NVIDIA H100"]
# robust 0.5 + 0.4 * 0.2 + 0.02 * 3 = 64 %, 95% CI 1.96 * sqrt(.64 * .36 / 512) = 4.2 points
KEY_LORID = data_key("cifar10", "linf", EPS8, "pgd", "wrn-28-10", "lorid t_s=0.2 loops=3")
KEY_DIFFPURE = data_key("cifar10", "linf", EPS8, "pgd", "wrn-28-10", "diffpure t*=0.1")
KEY_BARE = data_key("cifar10", "linf", 2 / 255, "pgd", "wrn-28-10", "none")


def _summary() -> pd.DataFrame:
    s = make_summary()
    evil = s[s["label"].eq("none") & s["attack"].eq("pgd") & (s["eps"] == EPS8)].assign(label=EVIL)
    return pd.concat([s, evil], ignore_index=True)


def _completeness() -> pd.DataFrame:
    return pd.DataFrame([{
        "cell": "c0ffee12", "sweep": "sweep-a", "dataset": "cifar10", "threat": "none", "eps": 0.0,
        "attack_label": "none", "classifier": "wrn-28-10", "label": "diffpure t*=0.1",
        "examples_seen": 256, "examples_all_runs": 256, "examples_planned": 512, "eval_runs": 1}])


def _page(summary: pd.DataFrame, figures: list[Figure], **kw) -> str:
    return render_html(title="Robustness report", header_lines=HEADER, summary=summary, validity=VALIDITY,
                       completeness=kw.pop("completeness", _completeness()), figures=figures,
                       sections=[("Cost per configuration", "defence  nfe  s/row\nlorid    20   0.05")], **kw)


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return _summary()


@pytest.fixture(scope="module")
def pages(summary: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The report with PNG figures and with SVG figures, written to files."""
    out = tmp_path_factory.mktemp("report")
    paths = {}
    for fmt in ("png", "svg"):
        figs = make_figures(summary, fmt, limit=8)
        paths[fmt] = out / f"report-{fmt}.html"
        paths[fmt].write_text(_page(summary, figs, figures_note=figure_plan(summary, 8).note), encoding="utf-8")
    return paths


def test_self_contained(pages: dict[str, Path]) -> None:
    for path in pages.values():
        text = path.read_text(encoding="utf-8")
        assert text.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in text
        assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:|//|file:)""", text, re.I)
        assert not re.search(r"""url\(\s*["']?\s*(?:https?:|//)""", text, re.I)
        assert "http://" not in text and "https://" not in text  # not even a namespace URI
        assert not re.search(r"<script|<link|<iframe|@import", text, re.I)
        assert "Content-Security-Policy" in text
    assert "data:image/png;base64," in pages["png"].read_text()
    svg = pages["svg"].read_text()
    assert "<svg " in svg and "<?xml" not in svg and "<!DOCTYPE svg" not in svg
    ids = re.findall(r'\sid="([^"]+)"', svg)
    assert len(ids) == len(set(ids)), "duplicate ids between inlined figures"
    for ref in re.findall(r'href="#([^"]+)"|url\(#([^)]+)\)', svg):
        assert (ref[0] or ref[1]) in set(ids)


def test_tables_validity_completeness_sections(pages: dict[str, Path], summary: pd.DataFrame) -> None:
    text = pages["png"].read_text(encoding="utf-8")
    import html as std_html
    titles = [" · ".join(parts) for parts, *_ in iter_tables(summary)]
    assert len(titles) == 5
    for t in titles:
        assert f"<h3>{std_html.escape(t)}</h3>" in text
    for line in VALIDITY:
        assert std_html.escape(line.strip().removeprefix("⚑").strip()) in text
    assert "1 of 34 configuration(s) partial" in text and "c0ffee12" in text
    assert "Cost per configuration" in text and "<pre>defence  nfe  s/row" in text
    for h in HEADER:
        assert std_html.escape(h) in text
    assert 'href="#validity"' in text and 'href="#table-1"' in text and 'id="table-5"' in text
    assert "possible figures left out" in text


def test_labels_are_escaped(pages: dict[str, Path]) -> None:
    for path in pages.values():
        text = path.read_text(encoding="utf-8")
        assert EVIL not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text


def test_all_complete(summary: pd.DataFrame) -> None:
    done = summary.assign(complete=True)
    for completeness in (None, _completeness().iloc[:0]):
        assert "All 34 configurations complete." in _page(done, [], completeness=completeness)
    assert "No figures" in _page(done, [], completeness=None)


class _Dom(HTMLParser):
    """The parts of a browser's DOM the tests look at."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: dict[str, tuple[str, str]] = {}  # data-key -> (class, text)
        self.headings: list[str] = []
        self.figures: list[str] = []  # alt / aria-label of every img and svg
        self._cell: tuple[str, str] | None = None
        self._h3: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "td" and a.get("data-key"):
            self._cell, self._text = (a["data-key"] or "", a.get("class") or ""), []
        elif tag == "h3":
            self._h3, self._text = "", []
        elif tag == "img" and a.get("src", "").startswith("data:image/png;base64,"):
            self.figures.append(a.get("alt") or "")
        elif tag == "svg" and a.get("role") == "img":
            self.figures.append(a.get("aria-label") or "")

    def handle_data(self, data: str) -> None:
        self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell:
            self.cells[self._cell[0]] = (self._cell[1], "".join(self._text).strip())
            self._cell = None
        elif tag == "h3" and self._h3 is not None:
            self.headings.append("".join(self._text).strip())
            self._h3 = None


def _parse(dom: str) -> _Dom:
    parsed = _Dom()
    parsed.feed(dom)
    return parsed


@pytest.mark.parametrize("fmt", ["png", "svg"])
def test_in_chromium_the_numbers_tables_and_figures_are_there(fmt: str, pages: dict[str, Path],
                                                               summary: pd.DataFrame) -> None:
    dom = _parse(dump_dom(pages[fmt]))
    assert dom.cells[KEY_LORID] == ("num robust", "64.0 [59.8, 68.2]")
    cls, text = dom.cells[KEY_DIFFPURE]
    assert "flagged" in cls.split() and text.endswith("⚑") and text.startswith("62.0 [")
    assert dom.cells[KEY_BARE][1].startswith("10.0 [")
    assert data_key("cifar10", "linf", EPS8, "pgd", "wrn-28-10", EVIL) in dom.cells  # parsed back as text
    assert len(dom.cells) == len(summary)
    assert dom.headings == [" · ".join(parts) for parts, *_ in iter_tables(summary)]
    assert any("robust accuracy vs t_s" in f for f in dom.figures), dom.figures
    assert any("robust accuracy vs loops" in f for f in dom.figures), dom.figures
    assert any("robust accuracy vs eps" in f for f in dom.figures), dom.figures
    assert len(dom.figures) == 8


def test_in_chromium_the_page_is_drawn(pages: dict[str, Path], tmp_path: Path) -> None:
    png = screenshot(pages["svg"], tmp_path / "shot.png", size=(1280, 3000))
    im = Image.open(io.BytesIO(png.read_bytes())).convert("RGB")
    assert im.size == (1280, 3000)
    colours = im.getcolors(1 << 24)
    assert colours is not None and len(colours) > 200, "hardly any colours: blank page?"
    white = sum(n for n, c in colours if c == (255, 255, 255)) / (im.width * im.height)
    assert white < 0.95, f"{white:.0%} white"
    # the figures (below the tables) are drawn too: the bottom third is not empty either
    bottom = im.crop((0, 2000, 1280, 3000)).getcolors(1 << 24)
    assert bottom is not None and len(bottom) > 50
