"""Render a summary (see :func:`analysis.aggregate.summarise`) as text, Markdown, CSV, LaTeX.

One table per (dataset, threat, eps, attack_label). A group that is not complete shows
``n`` as ``seen/planned (partial)`` and the table gets a footnote, in every format: a
partial number must never pass for a finished one.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd

from .aggregate import SUMMARY_COLUMNS

TABLE_KEYS = ["dataset", "threat", "eps", "attack_label"]
HEADERS = ["defence", "classifier", "clean %", "robust % mean [95% CI]", "vote %", "worst %",
           "runs", "n"]
_LEFT = 2  # the first two columns are names; the rest are numbers, right-aligned
PARTIAL_NOTE = ("(partial): not every planned example has all its evaluation runs yet; "
                "the numbers cover only the rows present and are not final.")
CELLS_NOTE = "(k cells): k grid cells (e.g. seeds) pooled into one row."


def format_eps(eps: float) -> str:
    """``0.15`` stays ``0.15``; ``8/255`` prints as ``8/255`` rather than ``0.0313725``."""
    plain = f"{eps:g}"
    k = round(eps * 255)
    if k and math.isclose(eps * 255, k, abs_tol=1e-6) and len(f"{k}/255") < len(plain):
        return f"{k}/255"
    return plain


def title_parts(dataset: str, threat: str, eps: float, attack_label: str) -> list[str]:
    if threat == "none" and attack_label == "none":
        return [str(dataset), "no attack"]
    budget = "none" if threat == "none" else f"{threat} eps={format_eps(eps)}"
    return [str(dataset), budget, str(attack_label)]


def _pct(x: float) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _n_text(row: pd.Series) -> str:
    extra = [f"{row['cells']} cells"] if row["cells"] > 1 else []
    if row["complete"]:
        return f"{row['n']} ({extra[0]})" if extra else str(row["n"])
    return f"{row['n']}/{row['cell_examples']} (" + ", ".join(["partial", *extra]) + ")"


def row_cells(row: pd.Series) -> list[str]:
    """The display strings of one summary row, in HEADERS order."""
    robust = f"{_pct(row['robust_mean'])} [{_pct(row['ci_lo'])}, {_pct(row['ci_hi'])}]"
    return [str(row["label"]), str(row["classifier"]), _pct(row["clean"]), robust,
            _pct(row["robust_vote"]), _pct(row["robust_worst"]), str(row["runs"]), _n_text(row)]


def iter_tables(summary: pd.DataFrame) -> Iterator[tuple[list[str], list[list[str]], list[str]]]:
    """Yield (title parts, display rows, footnotes) per table, in the summary's order."""
    for key, g in summary.groupby(TABLE_KEYS, sort=False, dropna=False):
        notes = []
        if not g["complete"].all():
            notes.append(PARTIAL_NOTE)
        if (g["cells"] > 1).any():
            notes.append(CELLS_NOTE)
        yield title_parts(*key), [row_cells(r) for _, r in g.iterrows()], notes


def render_text(summary: pd.DataFrame) -> str:
    """Aligned plain-text tables for the console."""
    blocks = []
    for parts, rows, notes in iter_tables(summary):
        widths = [max(len(r[i]) for r in [HEADERS, *rows]) for i in range(len(HEADERS))]

        def line(cells: list[str]) -> str:
            return "  ".join(c.ljust(w) if i < _LEFT else c.rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

        body = [" · ".join(parts), line(HEADERS), "  ".join("-" * w for w in widths)]
        body += [line(r) for r in rows] + notes
        blocks.append("\n".join(body))
    return "\n\n".join(blocks) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(summary: pd.DataFrame) -> str:
    """GitHub pipe tables, one ``###`` section per table."""
    blocks = []
    align = ["---"] * _LEFT + ["---:"] * (len(HEADERS) - _LEFT)
    for parts, rows, notes in iter_tables(summary):
        body = [f"### {_md(' · '.join(parts))}", ""]
        body += ["| " + " | ".join(_md(c) for c in r) + " |" for r in [HEADERS, align, *rows]]
        body += [""] + [f"_{_md(n)}_" for n in notes]
        blocks.append("\n".join(body).rstrip())
    return "\n\n".join(blocks) + "\n"


def render_csv(summary: pd.DataFrame) -> str:
    """All groups in one machine-readable table; floats at full (round-trip) precision."""
    return summary[list(SUMMARY_COLUMNS)].to_csv(index=False, lineterminator="\n")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "–": "--"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def render_latex(summary: pd.DataFrame) -> str:
    """booktabs tables (needs ``\\usepackage{booktabs}``), one ``table`` float per group."""
    blocks = []
    spec = "l" * _LEFT + "r" * (len(HEADERS) - _LEFT)
    for parts, rows, notes in iter_tables(summary):
        body = [r"\begin{table}[ht]", r"\centering",
                r"\caption{" + r" $\cdot$ ".join(_tex(p) for p in parts) + "}",
                rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(_tex(h) for h in HEADERS) + r" \\", r"\midrule"]
        body += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
        body += [r"\bottomrule", r"\end{tabular}"]
        body += [r"\par\footnotesize " + _tex(n) for n in notes]
        body.append(r"\end{table}")
        blocks.append("\n".join(body))
    return "\n\n".join(blocks) + "\n"
