"""The report as one self-contained HTML page: tables, figures, validity, completeness.

One file that can be mailed, archived or opened offline years later: inline CSS, figures
embedded (PNG as ``data:`` URIs, SVG inline), no JavaScript and no external URL anywhere. A
Content-Security-Policy meta tag forbids every fetch but ``data:`` images, so not even a
crafted label can make the page load something. Every text (labels come from user grids) is
escaped.

The tables are those of :func:`analysis.tables.iter_tables` (the same titles, cells and
footnotes as the text, Markdown and LaTeX reports). Each robust number carries a stable hook,
``<td class="num robust" data-key="dataset|threat|eps|attack_label|classifier|label">`` with
eps as :func:`analysis.tables.format_eps` prints it (:func:`data_key`), so tests and scripts
can find it; a flagged one also has class ``flagged``.
"""
from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterable, Sequence

import pandas as pd

from .figures import Figure
from .tables import FLAG, FLAGS_HEADER, HEADERS, TABLE_KEYS, format_eps, iter_tables, right_aligned

ROBUST_HEADER = HEADERS[3]  # "robust % mean [95% CI]"
#: Most partial cells listed one by one in the completeness section.
MAX_COMPLETENESS_ROWS = 500
#: Up to this many tables (or figures) the table of contents lists them open.
TOC_OPEN = 30
COMPLETENESS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("cell", "cell"), ("sweep", "sweep"), ("dataset", "dataset"), ("threat", "threat"),
    ("eps", "eps"), ("attack_label", "attack"), ("classifier", "classifier"), ("label", "defence"),
    ("examples_seen", "examples seen"), ("examples_all_runs", "with all runs"),
    ("examples_planned", "planned"), ("eval_runs", "runs"),
)
NO_FIGURES = "No figures: no swept parameter, no defence at two eps and no two defences to compare."
_NUMERIC_COMPLETENESS = {"examples_seen", "examples_all_runs", "examples_planned", "eval_runs"}

_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_CSS = """
:root{--fg:#1b1f23;--muted:#57606a;--line:#d0d7de;--head:#f6f8fa;--flagbg:#fff1c2;--flag:#b00020;
--ok:#116329;--warn:#9a4d00}
*{box-sizing:border-box}
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Arial,sans-serif;
color:var(--fg);background:#fff;max-width:1280px;margin:0 auto;padding:1rem 1.5rem 4rem}
h1{font-size:1.6rem;margin:.4rem 0 .6rem}
h2{font-size:1.3rem;border-bottom:2px solid var(--line);padding-bottom:.2rem;margin-top:2.2rem}
h3{font-size:1.05rem;margin:1.6rem 0 .4rem}
h4{font-size:.95rem;margin:1rem 0 .2rem}
a{color:#0550ae}
ul.meta{list-style:none;padding:0;color:var(--muted);font-size:13px}
ul.meta li.warn{color:var(--warn);font-weight:600}
nav.toc{background:var(--head);border:1px solid var(--line);border-radius:6px;padding:.5rem 1rem;
margin:1rem 0;font-size:13px}
nav.toc ol{margin:.2rem 0;padding-left:1.4rem}
nav.toc summary{cursor:pointer}
.scroll{overflow-x:auto}
table{border-collapse:collapse;margin:.3rem 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:.25rem .6rem;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600;white-space:nowrap}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
td.robust{font-weight:600}
td.flagged{background:var(--flagbg)}
td.flagged .flag,.flag{color:var(--flag);font-weight:700}
td.partial{color:var(--warn)}
td.codes{color:var(--flag);font-size:12px}
tr:hover td{background:#f3f6fa}
tr:hover td.flagged{background:#ffe8a3}
ul.notes{color:var(--muted);font-size:12.5px;margin:.3rem 0 1rem;padding-left:1.2rem}
ul.notes li.flagnote{color:var(--warn)}
section.validity ul{list-style:none;padding-left:.6rem;margin:.2rem 0}
section.validity li.flagged{color:var(--flag)}
section.validity li.passed{color:var(--ok)}
section.validity li.notchecked{color:var(--warn)}
section.validity li.flagline{color:var(--fg)}
p.summary{font-weight:600}
figure{margin:1.2rem 0;padding:.6rem;border:1px solid var(--line);border-radius:6px;break-inside:avoid}
figure img,figure svg{max-width:100%;height:auto;display:block}
figcaption{font-size:12.5px;color:var(--muted);margin-top:.4rem}
figcaption strong{color:var(--fg)}
pre{background:var(--head);border:1px solid var(--line);border-radius:6px;padding:.6rem .8rem;
overflow-x:auto;font-size:12px;line-height:1.35}
code{font-size:12px}
@media print{nav.toc{display:none}body{max-width:none}tr:hover td{background:none}}
"""


def esc(value: object) -> str:
    """Text or attribute value, HTML-escaped (quotes too)."""
    return html.escape(str(value), quote=True)


def data_key(dataset: object, threat: object, eps: object, attack_label: object, classifier: object,
             label: object) -> str:
    """The ``data-key`` of one robust number (eps printed as in the table titles)."""
    try:
        eps_text = format_eps(float(eps))
    except (TypeError, ValueError):
        eps_text = str(eps)
    return "|".join([str(dataset), str(threat), eps_text, str(attack_label), str(classifier), str(label)])


def _row_key(row: pd.Series) -> str:
    return data_key(row["dataset"], row["threat"], row["eps"], row["attack_label"], row["classifier"],
                    row["label"])


# ---------------------------------------------------------------- parts

def _header(lines: Iterable[str]) -> str:
    items = []
    for line in lines:
        for part in str(line).splitlines():
            if part.strip():
                cls = ' class="warn"' if part.lstrip().upper().startswith("WARNING") else ""
                items.append(f"<li{cls}>{esc(part)}</li>")
    return f'<ul class="meta">{"".join(items)}</ul>' if items else ""


def _validity(lines: Sequence[str]) -> str:
    """Summary line, then the per-check lines (flagged / passed / not checked), then per table
    its title and its flag lines; indentation in the text says which is which."""
    if not lines:
        return "<p>No validity checks were run.</p>"
    out = [f'<p class="summary">{esc(lines[0])}</p>']
    items: list[str] = []

    def flush() -> None:
        if items:
            out.append("<ul>" + "".join(items) + "</ul>")
            items.clear()

    for line in lines[1:]:
        text = line.strip()
        if not text:
            continue
        if line[:1].isspace():
            cls = ("flagged" if text.startswith("flagged:") else "passed" if text.startswith("passed:")
                   else "notchecked" if text.startswith("not checked:")
                   else "flagline" if text.startswith(FLAG) else "")
            if cls == "flagline":
                body = f'<span class="flag">{FLAG}</span>{esc(text[len(FLAG):])}'
            else:
                body = esc(text)
            items.append(f'<li class="{cls}">{body}</li>' if cls else f"<li>{body}</li>")
        else:
            flush()
            out.append(f"<h4>{esc(text)}</h4>")
    flush()
    return "".join(out)


def _cell_text(column: str, value: object) -> str:
    if value is None or (not isinstance(value, str) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return "–"
    if column == "eps":
        try:
            return format_eps(float(value))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return str(value)
    return str(value)


def _completeness(summary: pd.DataFrame, completeness: pd.DataFrame | None) -> str:
    total = len(summary)
    partial = int((~summary["complete"].astype(bool)).sum()) if "complete" in summary.columns else 0
    if completeness is None or completeness.empty:
        if partial:
            return (f"<p>{partial} of {total} configuration(s) partial (marked in the tables); "
                    "no per-cell detail was given.</p>")
        return f'<p class="summary">All {total} configurations complete.</p>'
    cols = [(c, h) for c, h in COMPLETENESS_COLUMNS if c in completeness.columns]
    head = "".join(f'<th class="num">{esc(h)}</th>' if c in _NUMERIC_COMPLETENESS else f"<th>{esc(h)}</th>"
                   for c, h in cols)
    show_done = {"examples_all_runs", "examples_planned"} <= set(completeness.columns)
    if show_done:
        head += '<th class="num">done %</th>'
    body = []
    for _, r in completeness.head(MAX_COMPLETENESS_ROWS).iterrows():
        tds = []
        for c, _ in cols:
            text = _cell_text(c, r[c])
            if c == "cell":
                tds.append(f"<td><code>{esc(text)}</code></td>")
            else:
                tds.append(f'<td class="num">{esc(text)}</td>' if c in _NUMERIC_COMPLETENESS
                           else f"<td>{esc(text)}</td>")
        if show_done:
            planned, done = r["examples_planned"], r["examples_all_runs"]
            pct = f"{100 * done / planned:.1f}" if pd.notna(planned) and planned and pd.notna(done) else "–"
            tds.append(f'<td class="num partial">{esc(pct)}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    more = len(completeness) - MAX_COMPLETENESS_ROWS
    note = f"<p>… and {more} more partial cell(s) not listed.</p>" if more > 0 else ""
    return (f'<p class="summary">{partial} of {total} configuration(s) partial; '
            f"{len(completeness)} cell(s) still miss examples or evaluation runs:</p>"
            f'<div class="scroll"><table class="completeness"><thead><tr>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table></div>{note}")


def _robust_cell(text: str, key: str, codes: str) -> str:
    cls = "num robust"
    if text.endswith(FLAG):
        cls += " flagged"
        title = f' title="flags: {esc(codes)}"' if codes else ""
        content = f'{esc(text[:-len(FLAG)].rstrip())} <span class="flag"{title}>{FLAG}</span>'
    else:
        content = esc(text)
    return f'<td class="{cls}" data-key="{esc(key)}">{content}</td>'


def _tables(summary: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(anchor, title, html) per table of iter_tables, robust cells keyed by their summary row."""
    groups = [g for _, g in summary.groupby(TABLE_KEYS, sort=False, dropna=False)]
    tables = list(iter_tables(summary))
    if len(groups) != len(tables):  # iter_tables groups the same way; guard against drift
        raise AssertionError("analysis.tables.iter_tables no longer groups by TABLE_KEYS")
    out = []
    for i, (g, (parts, headers, rows, notes)) in enumerate(zip(groups, tables), 1):
        title = " · ".join(parts)
        anchor = f"table-{i}"
        robust = headers.index(ROBUST_HEADER)
        codes_col = headers.index(FLAGS_HEADER) if FLAGS_HEADER in headers else None
        head = "".join(f'<th class="num" scope="col">{esc(h)}</th>' if right_aligned(h)
                       else f'<th scope="col">{esc(h)}</th>' for h in headers)
        body = []
        for cells, (_, r) in zip(rows, g.iterrows()):
            codes = cells[codes_col] if codes_col is not None else ""
            tds = []
            for j, (h, c) in enumerate(zip(headers, cells)):
                if j == robust:
                    tds.append(_robust_cell(c, _row_key(r), codes))
                elif j == codes_col:
                    tds.append(f'<td class="codes">{esc(c)}</td>')
                elif right_aligned(h):
                    cls = "num partial" if h == "n" and "partial" in c else "num"
                    tds.append(f'<td class="{cls}">{esc(c)}</td>')
                else:
                    tds.append(f"<td>{esc(c)}</td>")
            tr = '<tr class="flagged">' if codes else "<tr>"
            body.append(tr + "".join(tds) + "</tr>")
        note_items = "".join(
            f'<li class="flagnote">{esc(n)}</li>' if n.startswith(FLAG) else f"<li>{esc(n)}</li>"
            for n in notes)
        html_table = (f'<section class="table" id="{anchor}"><h3>{esc(title)}</h3>'
                      f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                      f"<tbody>{''.join(body)}</tbody></table></div>"
                      + (f'<ul class="notes">{note_items}</ul>' if note_items else "") + "</section>")
        out.append((anchor, title, html_table))
    return out


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


_ID = re.compile(r'(?<=\s)id="([^"]+)"')
_HREF = re.compile(r'(?<=\s)(?:xlink:)?href="#([^"]+)"')
_URL = re.compile(r"url\(#([^)]+)\)")


def inline_svg(data: bytes, prefix: str, title: str) -> str:
    """An SVG file as an element to inline in HTML: no XML prologue, doctype, metadata or
    namespace declarations (the HTML parser needs none and they are URLs), every id prefixed
    with ``prefix`` (matplotlib numbers ids per figure, so two figures would clash), its
    stylesheet scoped to it, and ``role="img"`` with ``aria-label`` for screen readers."""
    text = data.decode("utf-8")
    text = re.sub(r"^\s*<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text, flags=re.I)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    ids = set(_ID.findall(text))
    text = _ID.sub(lambda m: f'id="{prefix}{m.group(1)}"', text)
    text = _HREF.sub(lambda m: f'href="#{prefix}{m.group(1)}"' if m.group(1) in ids else m.group(0), text)
    text = _URL.sub(lambda m: f"url(#{prefix}{m.group(1)})" if m.group(1) in ids else m.group(0), text)
    start = text.index("<svg")
    end = text.index(">", start)
    tag = re.sub(r'\s+xmlns(?::\w+)?="[^"]*"', "", text[start:end])
    tag = tag.replace("<svg", f'<svg id="{prefix}svg" role="img" aria-label="{esc(title)}"', 1)
    text = text[:start] + tag + text[end:]
    # matplotlib's `*{stroke-linejoin: ...}` would otherwise apply to the whole page
    return text.replace("<style type=\"text/css\">*{", f"<style type=\"text/css\">#{prefix}svg *{{", 1).strip()


def _figure(fig: Figure, i: int) -> tuple[str, str, str]:
    anchor = f"fig-{fig.name}"
    if fig.fmt == "png":
        size = _png_size(fig.data)
        dims = f' width="{size[0]}" height="{size[1]}"' if size else ""
        b64 = base64.b64encode(fig.data).decode("ascii")
        body = (f'<img src="data:image/png;base64,{b64}" alt="{esc(fig.title)}" '
                f'title="{esc(fig.title)}"{dims}>')
    elif fig.fmt == "svg":
        body = inline_svg(fig.data, f"f{i}-", fig.title)
    else:
        raise ValueError(f"figure {fig.name}: unknown format {fig.fmt!r}")
    caption = f"<strong>{esc(fig.title)}.</strong> {esc(fig.caption)}" if fig.caption else \
        f"<strong>{esc(fig.title)}</strong>"
    return anchor, fig.title, (f'<figure id="{anchor}" data-figure="{esc(fig.name)}">{body}'
                               f"<figcaption>{caption}</figcaption></figure>")


def _toc_group(title: str, anchor: str, entries: list[tuple[str, str]]) -> str:
    link = f'<a href="#{anchor}">{esc(title)}</a> ({len(entries)})'
    if not entries:
        return f"<li>{link}</li>"
    items = "".join(f'<li><a href="#{a}">{esc(t)}</a></li>' for a, t in entries)
    opened = " open" if len(entries) <= TOC_OPEN else ""
    return f"<li><details{opened}><summary>{link}</summary><ol>{items}</ol></details></li>"


# ---------------------------------------------------------------- the page

def render_html(*, title: str, header_lines: Sequence[str], summary: pd.DataFrame,
                validity: Sequence[str], completeness: pd.DataFrame | None,
                figures: Sequence[Figure], sections: Sequence[tuple[str, str]] = (),
                figures_note: str = "") -> str:
    """The whole report as one self-contained HTML5 document (see the module docstring).

    ``header_lines``: what was read and provenance (:func:`analysis.report.describe`);
    ``validity``: :func:`analysis.report.validity_lines`; ``completeness``: one row per partial
    cell (None or empty: all complete); ``sections``: extra (heading, preformatted text)
    blocks; ``figures_note``: what the figure cap left out (``FigurePlan.note``)."""
    tables = _tables(summary)
    figs = [_figure(f, i) for i, f in enumerate(figures, 1)]
    extra = [(f"section-{i}", str(h), str(t)) for i, (h, t) in enumerate(sections, 1)]

    toc = ['<li><a href="#validity">Validity</a></li>', '<li><a href="#completeness">Completeness</a></li>',
           _toc_group("Tables", "tables", [(a, t) for a, t, _ in tables]),
           _toc_group("Figures", "figures", [(a, t) for a, t, _ in figs])]
    toc += [f'<li><a href="#{a}">{esc(h)}</a></li>' for a, h, _ in extra]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{esc(_CSP)}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="lorid-harness">',
        f"<title>{esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        f'<header id="top"><h1>{esc(title)}</h1>{_header(header_lines)}</header>',
        f'<nav class="toc" aria-label="Contents"><strong>Contents</strong><ol>{"".join(toc)}</ol></nav>',
        f'<section class="validity" id="validity"><h2>Validity</h2>{_validity(list(validity))}</section>',
        f'<section id="completeness"><h2>Completeness</h2>{_completeness(summary, completeness)}</section>',
        '<section id="tables"><h2>Tables</h2>'
        + ("".join(h for _, _, h in tables) or "<p>No results.</p>") + "</section>",
        '<section id="figures"><h2>Figures</h2>'
        + (f'<p class="note">{esc(figures_note)}</p>' if figures_note else "")
        + ("".join(h for _, _, h in figs) or f"<p>{NO_FIGURES}</p>") + "</section>",
    ]
    parts += [f'<section id="{a}"><h2>{esc(h)}</h2><pre>{esc(t)}</pre></section>' for a, h, t in extra]
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)
