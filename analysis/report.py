"""`harness report`: load results, summarise, check validity, print tables, write report.{md,csv,tex}.

Every number is shown with its validity flags (:mod:`analysis.validity`): a ``⚑`` beside
the robust number, the codes in a ``flags`` column, the messages as table footnotes, and
all of them again in a closing "validity" section, which also lists every check as flagged,
passed or not checked (with the reason): "no flags" never hides a check that could not run.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.errors import UsageError
from harness.fsutil import atomic_write

from .aggregate import ResultsError, aggregate, open_results, sweep_totals
from .engine import Rows
from .tables import render_csv, render_latex, render_markdown, render_text, title_parts
from .validity import CHECKS, annotate, check

REPORT_DIR = "_report"  # leading underscore: the loader never reads its own output back


def default_out_dir(results_path: str | os.PathLike[str]) -> Path:
    """``<results_path>/_report`` (next to the file when given a single part file)."""
    root = Path(results_path)
    return (root.parent if root.is_file() else root) / REPORT_DIR


def _distinct(values: list[Any], limit: int = 3) -> str:
    shown = ", ".join(map(str, values[:limit])) or "?"
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def describe(data: pd.DataFrame | Rows, summary: pd.DataFrame, results_path: str | os.PathLike[str],
             totals: dict[str, Any] | None = None) -> str:
    """Header lines: what was read, how much is partial, and provenance (mixed versions show)."""
    t = totals if totals is not None else sweep_totals(data)
    partial = int((~summary["complete"]).sum())
    lines = [
        f"results: {t['rows']} rows from {t['files']} files under {results_path}; "
        f"{t['sweeps']} sweep(s), {t['cells']} cell(s), {len(summary)} configuration(s)"
        + (f", {partial} PARTIAL" if partial else ", all complete"),
        f"provenance: harness {_distinct(t['harness_version'])}; git {_distinct(t['git_rev'])}; "
        f"torch {_distinct(t['torch_version'])}; device {_distinct(t['device'])}"
        + (f"; precision {_distinct(t['precision'])}" if t.get("precision") else ""),
    ]
    mixed = t["mixed_assets"]
    if mixed:  # a checkpoint or data file replaced (and re-staged) mid-sweep
        lines.append(f"WARNING: {len(mixed)} cell(s) mix rows computed from different asset files "
                     f"(sha256 in the `assets` column): {', '.join(mixed[:5])}"
                     + (" ..." if len(mixed) > 5 else ""))
    return "\n".join(lines)


def validity_lines(flags: pd.DataFrame) -> list[str]:
    """The validity section: a summary line; one line per check of CHECKS saying whether it
    flagged something, passed, or was not checked and why (a check that could not run is
    never reported as passed); then per table its title and one line per flag
    (row: code: message), in the tables' order."""
    checked = list(flags.attrs.get("checked", []))
    not_checked = dict(flags.attrs.get("not_checked", {}))
    codes = [c for c, _ in CHECKS]
    for code in codes:
        if code not in checked:
            not_checked.setdefault(code, "no data for it")
    flagged = flags["flag"].value_counts().to_dict() if not flags.empty else {}
    if flags.empty:
        head = "validity: no flags from the checks that ran" if not_checked else \
            f"validity: no flags; all {len(codes)} checks ran"
    else:
        numbers = len(flags.drop_duplicates(["dataset", "threat", "eps", "attack_label",
                                             "classifier", "label"]))
        head = f"validity: {len(flags)} flag(s) on {numbers} number(s)"
    passed = [c for c in checked if c not in flagged]
    head += (f"; {len(flagged)} check(s) flagged, {len(passed)} passed, "
             f"{len(not_checked)} not checked")
    lines = [head]
    for code, what in CHECKS:
        if code in flagged:
            lines.append(f"  flagged: {code} ({what}): {flagged[code]} flag(s)")
        elif code in checked:
            lines.append(f"  passed: {code} ({what})")
        else:
            lines.append(f"  not checked: {code} ({what}): {not_checked[code]}")
    table = None
    for r in flags.itertuples(index=False):
        where = " · ".join(title_parts(r.dataset, r.threat, r.eps, r.attack_label))
        if where != table:
            lines.append(where)
            table = where
        lines.append(f"  ⚑ {r.label} ({r.classifier}): {r.flag}: {r.message}")
    return lines


PLOTS = ("none", "png", "svg")
from harness.results import REPORT_SPEC as SPEC_FILE  # the grid's `report:` section, per sweep


@dataclass
class ReportOptions:
    """What `harness report` was asked for beyond the standard tables."""

    plots: str = "png"
    rows: list[str] = field(default_factory=list)
    cols: list[str] = field(default_factory=list)
    where: list[str] = field(default_factory=list)
    value: str = "robust_mean"
    reference: str | None = None
    cost: bool = False


def report_specs(results_path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The grids' `report:` sections of the sweeps under ``results_path`` (one sweep directory
    or a results root holding several), in sweep order."""
    root = Path(results_path)
    if root.is_file():
        return []
    found = [root / SPEC_FILE] if (root / SPEC_FILE).is_file() else sorted(root.glob(f"*/{SPEC_FILE}"))
    specs = []
    for f in found:
        try:
            spec = json.loads(f.read_text())
        except (OSError, ValueError) as exc:
            raise ResultsError(f"{f}: unreadable report section ({exc}); plan or run the sweep again") from None
        if isinstance(spec, dict) and spec:
            if spec.get("reference"):  # written relative to the spec's directory
                spec["reference"] = str(f.parent / spec["reference"])
            specs.append(spec)
    return specs


def completeness_frame(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per partial cell (worst-of cells aside: they follow their attacks)."""
    part = cells[~cells["complete"].astype(bool) & ~cells["cell"].astype(str).str.startswith("worst:")]
    return part.rename(columns={"seen": "examples_seen", "all_runs": "examples_all_runs",
                                "planned": "examples_planned"})[
        ["cell", "sweep", "dataset", "threat", "eps", "attack_label", "classifier", "label",
         "examples_seen", "examples_all_runs", "examples_planned", "eval_runs"]].reset_index(drop=True)


def completeness_lines(partial: pd.DataFrame, configurations: int) -> list[str]:
    if partial.empty:
        return [f"completeness: all {configurations} configuration(s) complete"]
    lines = [f"completeness: {len(partial)} cell(s) partial (numbers over the rows present, not final)"]
    for r in partial.head(20).itertuples(index=False):
        lines.append(f"  {r.sweep} · {r.label} · {r.attack_label}: {r.examples_all_runs} of "
                     f"{r.examples_planned} examples have all {r.eval_runs} runs"
                     f" ({r.examples_seen - r.examples_all_runs} started, "
                     f"{r.examples_planned - r.examples_seen} not started) [cell {r.cell}]")
    if len(partial) > 20:
        lines.append(f"  ... and {len(partial) - 20} more (report.html lists them all)")
    return lines


def build_report(results_path: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str] | None = None,
                 options: ReportOptions | None = None) -> str:
    """Summarise all results under ``results_path`` out of core; write report.{md,csv,tex,html}
    and the figures; return console text: the grid's headline tables, a pivot when asked, the
    tables (filtered by ``--where``), cost, reference comparisons, then the validity section.

    Bad options (an unknown column, plots format) raise UsageError before anything is written;
    ``out_dir`` defaults to :func:`default_out_dir`. Raises
    :class:`analysis.aggregate.ResultsError` (a UsageError) for missing or inconsistent results.
    """
    from .cost import render_cost_text, totals_line
    from .figures import figure_plan, make_figures, write_figures
    from .html import render_html
    from .pivot import (apply_where, headline_tables, parse_where, pivot, render_pivot_markdown,
                        render_pivot_text)
    from .reference import compare, load_references, render_reference_text

    opts = options or ReportOptions()
    if opts.plots not in PLOTS:
        raise UsageError(f"--plots {opts.plots!r}: expected one of {', '.join(PLOTS)}")
    refs = load_references(opts.reference) if opts.reference else None
    specs = report_specs(results_path)
    rows = open_results(results_path)
    agg = aggregate(rows)
    summary = agg.summary
    flags = check(rows, summary, info=agg.info)
    summary = annotate(summary, flags)
    header = describe(rows, summary, results_path, agg.totals)
    filters = parse_where(opts.where, summary.columns) if opts.where else []
    shown = apply_where(summary, filters) if filters else summary
    if filters and shown.empty:
        raise UsageError(f"--where {' '.join(opts.where)}: no result matches")
    validity = validity_lines(flags)
    partial = completeness_frame(agg.cells)
    sections: list[tuple[str, str]] = []  # (heading, text): console, Markdown and HTML alike
    for spec in specs:
        if refs is None and spec.get("reference"):
            refs = load_references(spec["reference"])
        for title, p in headline_tables(summary, spec):
            sections.append((title, render_pivot_text(p, title)))
    if opts.rows or opts.cols:
        p = pivot(shown, opts.rows, opts.cols, opts.value)
        title = f"pivot: {', '.join(opts.rows)} × {', '.join(opts.cols) or '-'}" + (
            f" where {' '.join(opts.where)}" if opts.where else "")
        sections.append((title, render_pivot_text(p, title)))
    cost_text = render_cost_text(shown, agg.cells, device_table=opts.cost)
    ref_text = render_reference_text(compare(summary, refs)) if refs is not None else ""

    out = Path(out_dir) if out_dir is not None else default_out_dir(results_path)
    out.mkdir(parents=True, exist_ok=True)
    figures, note = [], ""
    if opts.plots != "none":
        plan = figure_plan(shown)
        figures, note = make_figures(shown, opts.plots, plan=plan), plan.note
    write_figures(figures, out)  # also clears an earlier run's figures
    lines_complete = completeness_lines(partial, len(summary))
    extra = [*sections, ("Cost", cost_text), *([("Reference numbers", ref_text)] if ref_text else []),
             ("Completeness", "\n".join(lines_complete))]
    md_header = "# Robustness report\n\n" + "\n".join(f"- {h}" for h in header.splitlines())
    md_validity = "## Validity\n\n" + "\n".join(
        f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in validity) + "\n"
    md_extra = "\n".join(f"## {h}\n\n```\n{t.rstrip()}\n```\n" for h, t in extra)
    md_figures = "".join(f"![{f.title}](figures/{f.name}.{f.fmt})\n\n" for f in figures)
    atomic_write(out / "report.md", md_header + "\n\n" + render_markdown(shown) + "\n" + md_extra
                 + "\n" + (f"## Figures\n\n{md_figures}" if figures else "") + md_validity)
    atomic_write(out / "report.csv", render_csv(shown))
    atomic_write(out / "report.tex", render_latex(shown))
    atomic_write(out / "report.html", render_html(
        title=f"Robustness report: {Path(results_path).name}", header_lines=header.splitlines(),
        summary=shown, validity=validity, completeness=partial, figures=figures, sections=extra,
        figures_note=note))
    console = [header, ""]
    console += [t.rstrip() + "\n" for _, t in sections]
    console += [render_text(shown), cost_text if opts.cost else
                totals_line(agg.cells) + " (per defence: --cost, report.md, report.html)\n"]
    if ref_text:
        console.append(ref_text)
    console += ["\n".join(lines_complete), "\n".join(validity)]
    return "\n".join(console) + "\n"


if __name__ == "__main__":  # python -m analysis.report results/ [out_dir]
    print(build_report(*sys.argv[1:3]), end="")
