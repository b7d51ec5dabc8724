"""Render a summary (see :func:`analysis.aggregate.summarise`) as text, Markdown, CSV, LaTeX.

One table per (dataset, threat, eps, attack_label). A group that is not complete shows
``n`` as ``seen/planned (partial)`` and the table gets a footnote, in every format: a
partial number must never pass for a finished one.

A summary annotated by :func:`analysis.validity.annotate` (columns ``flags`` and
``flag_messages``) marks each flagged robust number with ``⚑``; a table with a flagged row
gains a last ``flags`` column (the codes) and one footnote per distinct message, naming the
rows it concerns. The CSV carries the ``flags`` codes of every row.

``n`` counts distinct images (the interval's unit); a table whose rows met non-finite
predictions or gradients gains ``non-finite`` / ``nan-grad`` columns and a footnote, so that
no number silently rests on a failed computation.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import pandas as pd

from .aggregate import SUMMARY_COLUMNS

TABLE_KEYS = ["dataset", "threat", "eps", "attack_label"]
HEADERS = ["defence", "classifier", "clean %", "robust % mean [95% CI]", "vote %", "worst %",
           "runs", "n"]
PARTIAL_NOTE = ("(partial): not every planned example has all its evaluation runs yet; "
                "the numbers cover only the rows present and are not final.")
CELLS_NOTE = ("(k cells): k grid cells (e.g. seeds) pooled into one row; n counts distinct "
              "images and the 95% CI is clustered by image.")
NONFINITE_HEADER = "non-finite"
NAN_GRAD_HEADER = "nan-grad"
NONFINITE_NOTE = ("non-finite: rows (example x run) whose clean or adversarial prediction came "
                  "from non-finite logits, counted as wrong.")
NAN_GRAD_NOTE = ("nan-grad: the attack's gradient evaluations that met a non-finite value and "
                 "were zeroed (J examples in brackets).")
FLAG = "⚑"
FLAGS_HEADER = "flags"
_NAMES = frozenset({"defence", "classifier", FLAGS_HEADER})  # left-aligned; the rest are numbers


def right_aligned(header: str) -> bool:
    """Whether a column holds numbers (right-aligned in every format)."""
    return header not in _NAMES


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


def _count(row: pd.Series, col: str) -> int:
    value = row.get(col, 0)
    return 0 if value is None or pd.isna(value) else int(value)


def _n_text(row: pd.Series) -> str:
    """Images; a partial row adds the (cell, example) pairs seen of those planned."""
    cells = int(row["cells"])
    seen = _count(row, "cell_n") or int(row["n"])
    if row["complete"]:
        return f"{row['n']} ({cells} cells)" if cells > 1 else str(row["n"])
    if cells > 1:
        return f"{row['n']} ({seen}/{row['cell_examples']} in {cells} cells, partial)"
    return f"{seen}/{row['cell_examples']} (partial)"


def _flags(row: pd.Series) -> str:
    value = row.get("flags", "")
    return value if isinstance(value, str) else ""


def row_cells(row: pd.Series) -> list[str]:
    """The display strings of one summary row, in HEADERS order (the robust number carries
    ``⚑`` when the row is flagged)."""
    robust = f"{_pct(row['robust_mean'])} [{_pct(row['ci_lo'])}, {_pct(row['ci_hi'])}]"
    if _flags(row):
        robust += f" {FLAG}"
    return [str(row["label"]), str(row["classifier"]), _pct(row["clean"]), robust,
            _pct(row["robust_vote"]), _pct(row["robust_worst"]), str(row["runs"]), _n_text(row)]


def flag_notes(g: pd.DataFrame) -> list[str]:
    """One footnote per distinct (code, message) of a table's rows, naming the rows."""
    if "flag_messages" not in g.columns:
        return []
    name_classifier = g["classifier"].nunique() > 1
    rows_of: dict[tuple[str, str], list[str]] = {}
    for _, r in g.iterrows():
        name = f"{r['label']} ({r['classifier']})" if name_classifier else str(r["label"])
        for code, message in r["flag_messages"] or []:
            rows_of.setdefault((code, message), []).append(name)
    return [f"{FLAG} {code}: {message} [{', '.join(names)}]"
            for (code, message), names in rows_of.items()]


def iter_tables(summary: pd.DataFrame
                ) -> Iterator[tuple[list[str], list[str], list[list[str]], list[str]]]:
    """Yield (title parts, headers, display rows, footnotes) per table, in the summary's order.
    A table with non-finite predictions or gradients gets ``non-finite`` / ``nan-grad``
    columns; one with a flagged row a last ``flags`` column and the flag footnotes."""
    for key, g in summary.groupby(TABLE_KEYS, sort=False, dropna=False):
        notes = []
        if not g["complete"].all():
            notes.append(PARTIAL_NOTE)
        if (g["cells"] > 1).any():
            notes.append(CELLS_NOTE)
        rows = [row_cells(r) for _, r in g.iterrows()]
        headers = list(HEADERS)
        if any(_count(r, "nonfinite") for _, r in g.iterrows()):
            headers.append(NONFINITE_HEADER)
            rows = [[*c, str(_count(r, "nonfinite"))] for c, (_, r) in zip(rows, g.iterrows())]
            notes.append(NONFINITE_NOTE)
        if any(_count(r, "grad_nonfinite") for _, r in g.iterrows()):
            headers.append(NAN_GRAD_HEADER)
            rows = [[*c, f"{_count(r, 'grad_nonfinite')} ({_count(r, 'grad_nonfinite_examples')})"
                     if _count(r, "grad_nonfinite") else "0"] for c, (_, r) in zip(rows, g.iterrows())]
            notes.append(NAN_GRAD_NOTE)
        codes = [_flags(r) for _, r in g.iterrows()]
        if any(codes):
            headers.append(FLAGS_HEADER)
            rows = [[*cells, code] for cells, code in zip(rows, codes)]
            notes += flag_notes(g)
        yield title_parts(*key), headers, rows, notes


def aligned(headers: list[str], rows: list[list[str]], right: list[bool]) -> list[str]:
    """A plain-text table: the header, a rule of dashes, then the rows, each column as wide as
    its widest cell and right-aligned where ``right`` says (numbers)."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if r else c.ljust(w)
                         for c, w, r in zip(cells, widths, right)).rstrip()

    return [line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def render_text(summary: pd.DataFrame) -> str:
    """Aligned plain-text tables for the console."""
    blocks = []
    robust_col = HEADERS.index("robust % mean [95% CI]")
    for parts, headers, rows, notes in iter_tables(summary):
        if FLAGS_HEADER in headers:  # flagged table: keep the unmarked numbers aligned
            rows = [[c if i != robust_col or c.endswith(FLAG) else c + "  " for i, c in enumerate(r)]
                    for r in rows]
        right = [right_aligned(h) for h in headers]
        blocks.append("\n".join([" · ".join(parts), *aligned(headers, rows, right), *notes]))
    return "\n\n".join(blocks) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def render_markdown(summary: pd.DataFrame) -> str:
    """GitHub pipe tables, one ``###`` section per table."""
    blocks = []
    for parts, headers, rows, notes in iter_tables(summary):
        align = ["---:" if right_aligned(h) else "---" for h in headers]
        body = [f"### {_md(' · '.join(parts))}", ""]
        body += ["| " + " | ".join(_md(c) for c in r) + " |" for r in [headers, align, *rows]]
        body += [""] + [f"- {_md(n)}" if n.startswith(FLAG) else f"_{_md(n)}_" for n in notes]
        blocks.append("\n".join(body).rstrip())
    return "\n\n".join(blocks) + "\n"


def render_csv(summary: pd.DataFrame) -> str:
    """All groups in one machine-readable table; floats at full (round-trip) precision.
    An annotated summary adds the ``flags`` codes (semicolon-joined, empty when none)."""
    columns = list(SUMMARY_COLUMNS) + (["flags"] if "flags" in summary.columns else [])
    return summary[columns].to_csv(index=False, lineterminator="\n")


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
        "–": "--", FLAG: r"$^\dagger$"}


def _tex(text: str) -> str:
    return "".join(_TEX.get(ch, ch) for ch in text)


def render_latex(summary: pd.DataFrame) -> str:
    """booktabs tables (needs ``\\usepackage{booktabs}``), one ``table`` float per group."""
    blocks = []
    for parts, headers, rows, notes in iter_tables(summary):
        spec = "".join("r" if right_aligned(h) else "l" for h in headers)
        body = [r"\begin{table}[ht]", r"\centering",
                r"\caption{" + r" $\cdot$ ".join(_tex(p) for p in parts) + "}",
                rf"\begin{{tabular}}{{{spec}}}", r"\toprule",
                " & ".join(_tex(h) for h in headers) + r" \\", r"\midrule"]
        body += [" & ".join(_tex(c) for c in r) + r" \\" for r in rows]
        body += [r"\bottomrule", r"\end{tabular}"]
        body += [r"\par\footnotesize " + _tex(n) for n in notes]
        body.append(r"\end{table}")
        blocks.append("\n".join(body))
    return "\n\n".join(blocks) + "\n"
