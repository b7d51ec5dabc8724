"""`harness report`: load results, summarise, print tables, write report.{md,csv,tex}."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd

from harness.fsutil import atomic_write

from .aggregate import load_results, summarise
from .tables import render_csv, render_latex, render_markdown, render_text

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
    return "\n".join(lines)


def build_report(results_path: str | os.PathLike[str],
                 out_dir: str | os.PathLike[str] | None = None) -> str:
    """Summarise all results under ``results_path``; write report.{md,csv,tex}; return console text.

    ``out_dir`` defaults to :func:`default_out_dir`. Raises
    :class:`analysis.aggregate.ResultsError` (a UsageError) for missing or inconsistent results.
    """
    df = load_results(results_path)
    summary = summarise(df)
    header = describe(df, summary, results_path)
    out = Path(out_dir) if out_dir is not None else default_out_dir(results_path)
    out.mkdir(parents=True, exist_ok=True)
    md_header = "# Robustness report\n\n" + "\n".join(f"- {h}" for h in header.splitlines())
    atomic_write(out / "report.md", md_header + "\n\n" + render_markdown(summary))
    atomic_write(out / "report.csv", render_csv(summary))
    atomic_write(out / "report.tex", render_latex(summary))
    return header + "\n\n" + render_text(summary)


if __name__ == "__main__":  # python -m analysis.report results/ [out_dir]
    print(build_report(*sys.argv[1:3]), end="")
