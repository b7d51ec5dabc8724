"""`harness report`: load results, summarise, check validity, print tables, write report.{md,csv,tex}.

Every number is shown with its validity flags (:mod:`analysis.validity`): a ``⚑`` beside
the robust number, the codes in a ``flags`` column, the messages as table footnotes, and
all of them again in a closing "validity" section, which also lists every check as flagged,
passed or not checked (with the reason): "no flags" never hides a check that could not run.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from harness.fsutil import atomic_write

from .aggregate import load_results, summarise, with_worst_over_attacks
from .tables import render_csv, render_latex, render_markdown, render_text, title_parts
from .validity import CHECKS, annotate, check

REPORT_DIR = "_report"  # leading underscore: the loader never reads its own output back


def default_out_dir(results_path: str | os.PathLike[str]) -> Path:
    """``<results_path>/_report`` (next to the file when given a single part file)."""
    root = Path(results_path)
    return (root.parent if root.is_file() else root) / REPORT_DIR


def _distinct(df: pd.DataFrame, col: str, limit: int = 3) -> str:
    if col not in df.columns:
        return "?"
    values = sorted(map(str, df[col].dropna().unique()))
    shown = ", ".join(values[:limit]) or "?"
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def describe(df: pd.DataFrame, summary: pd.DataFrame, results_path: str | os.PathLike[str]) -> str:
    """Header lines: what was read, how much is partial, and provenance (mixed versions show)."""
    partial = int((~summary["complete"]).sum())
    lines = [
        f"results: {len(df)} rows from {df['source_file'].nunique()} files under {results_path}; "
        f"{df['sweep'].nunique()} sweep(s), {df['cell'].nunique()} cell(s), "
        f"{len(summary)} configuration(s)"
        + (f", {partial} PARTIAL" if partial else ", all complete"),
        f"provenance: harness {_distinct(df, 'harness_version')}; git {_distinct(df, 'git_rev')}; "
        f"torch {_distinct(df, 'torch_version')}; device {_distinct(df, 'device')}",
    ]
    if "assets" in df.columns:  # a checkpoint or data file replaced (and re-staged) mid-sweep
        mixed = sorted(c for c, v in df.dropna(subset=["assets"]).groupby("cell")["assets"] if v.nunique() > 1)
        if mixed:
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


def build_report(results_path: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str] | None = None) -> str:
    """Summarise all results under ``results_path``; write report.{md,csv,tex}; return console text
    (the tables, then the validity section).

    ``out_dir`` defaults to :func:`default_out_dir`. Raises
    :class:`analysis.aggregate.ResultsError` (a UsageError) for missing or inconsistent results.
    """
    df = load_results(results_path)
    summary = summarise(with_worst_over_attacks(df))
    flags = check(df, summary)
    summary = annotate(summary, flags)
    header = describe(df, summary, results_path)
    validity = validity_lines(flags)
    out = Path(out_dir) if out_dir is not None else default_out_dir(results_path)
    out.mkdir(parents=True, exist_ok=True)
    md_header = "# Robustness report\n\n" + "\n".join(f"- {h}" for h in header.splitlines())
    md_validity = "## Validity\n\n" + "\n".join(
        f"  - {line.strip()}" if line.startswith(" ") else f"- {line}" for line in validity) + "\n"
    atomic_write(out / "report.md", md_header + "\n\n" + render_markdown(summary) + "\n" + md_validity)
    atomic_write(out / "report.csv", render_csv(summary))
    atomic_write(out / "report.tex", render_latex(summary))
    return header + "\n\n" + render_text(summary) + "\n" + "\n".join(validity) + "\n"


if __name__ == "__main__":  # python -m analysis.report results/ [out_dir]
    print(build_report(*sys.argv[1:3]), end="")
