"""Load per-example result part files and reduce them to one row per defence configuration.

Rows are keyed by (cell, example, eval_run). A cell is one content-hashed grid point, so
every row of a cell shares its dataset, threat, eps, attack, classifier and defence label.
Summaries group cells by those columns; several cells in one group (e.g. seeds) are pooled
and counted in ``cells``. The unit of independence is the image, ``(dataset, data_index)``
(the example position where an older writer left no ``data_index``): ``n`` counts images and
the interval is clustered by image (:mod:`analysis.stats`).

A prediction of :data:`NONFINITE_PRED` (-1) came from non-finite logits: it is never correct,
never a class in the majority vote, and counted (``nonfinite``) beside the number, as is
``grad_nonfinite``, the attack's zeroed non-finite gradients (absent in older rows: 0).

Each resolved plugin parameter is a typed column ``<kind>.<param>`` (``purifier.t_s``, ...).
The per-cell constants ``cell_json`` and ``assets`` live once per cell in
``cell=<hash>/_cell.json`` and are re-attached here as categorical columns. Directories
written before that layout (``cell_json``/``assets`` on every row, no parameter columns), and
directories mixing both, read the same: the parameter columns are derived from ``cell_json``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from harness.errors import UsageError

from .stats import clustered_interval

from harness.results import NONFINITE_PRED

#: One summary row (and, minus classifier/label, one table) per combination of these.
GROUP_KEYS: tuple[str, ...] = ("dataset", "threat", "eps", "attack_label", "classifier", "label")
ROW_KEY: tuple[str, ...] = ("cell", "example", "eval_run")
REQUIRED_COLUMNS: tuple[str, ...] = (
    "sweep", "cell", *GROUP_KEYS, "cell_examples", "eval_runs", "example", "y", "eval_run",
    "clean_correct", "adv_pred", "adv_correct", "nfe", "time_s",
)
# Planned per-cell values: constant within a cell unless the writer has a bug.
_CELL_CONSTANT: tuple[str, ...] = (*GROUP_KEYS, "cell_examples", "eval_runs")

#: ``n``: distinct images; ``cell_n``: (cell, example) pairs seen (``cell_examples`` planned);
#: ``nonfinite``: rows with a non-finite prediction; ``grad_nonfinite``: the attack's non-finite
#: gradient evaluations, over ``grad_nonfinite_examples`` (cell, example) pairs.
SUMMARY_COLUMNS: tuple[str, ...] = (
    *GROUP_KEYS, "cells", "n", "cell_n", "cell_examples", "complete", "runs", "rows", "clean",
    "robust_mean", "ci_lo", "ci_hi", "robust_vote", "robust_worst", "nonfinite", "grad_nonfinite",
    "grad_nonfinite_examples", "nfe", "time_s", "sweeps",
)
#: Per-row failure columns added by :func:`with_failures` (worst-of rows combine them).
ROW_NONFINITE = "nonfinite_row"


class ResultsError(UsageError, ValueError):
    """Result files missing or inconsistent. A UsageError, so the CLI exits with code 2."""


def _ignored(name: str) -> bool:
    # `_report/`, `.tmp` files of an in-flight atomic write, hidden files: never results.
    return name.startswith((".", "_")) or name.endswith(".tmp")


def find_part_files(path: str | os.PathLike[str]) -> list[Path]:
    """All result ``*.parquet`` files under ``path`` (recursive, sorted), skipping ignored names."""
    root = Path(path)
    if root.is_file():
        return [root] if root.suffix == ".parquet" and not _ignored(root.name) else []
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not _ignored(d))  # prunes the walk
        found.extend(Path(dirpath, f) for f in sorted(filenames)
                     if f.endswith(".parquet") and not _ignored(f))
    return found


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read every result part file under ``path`` into one DataFrame (one row per example-run).

    Adds a categorical ``source_file`` column. Raises :class:`ResultsError` when there are no
    part files, a file lacks a required column, a (cell, example, eval_run) key appears more
    than once, or a cell's planned values disagree between rows.
    """
    files = find_part_files(path)
    if not files:
        raise ResultsError(f"no result files under {path}")
    from harness.results import read_part

    tables: list[pa.Table] = []
    bad: list[str] = []
    for f in files:
        table, check = read_part(f, required=REQUIRED_COLUMNS)
        if table is None or not check.ok:
            bad.append(f"{f}: {check.reason}")
        else:
            tables.append(table)
    bad += _marker_problems(files, path)
    if bad:
        raise ResultsError(f"{len(bad)} bad result file(s) under {path} (`harness run` or `harness submit "
                           "--resume` moves them to <shard>/_bad/ and computes their rows again):\n  "
                           + "\n  ".join(bad))
    tables = _with_cell_columns(tables, files)
    # permissive: older writers may lack optional columns or use narrower integer types.
    df = pa.concat_tables(tables, promote_options="permissive").to_pandas()
    if df.empty:
        raise ResultsError(f"no result rows under {path} ({len(files)} empty file(s))")
    counts = [t.num_rows for t in tables]
    df["source_file"] = pd.Categorical.from_codes(
        np.repeat(np.arange(len(files)), counts), categories=[str(f) for f in files])
    _check_duplicates(df)
    _check_cells(df)
    return df


def _marker_problems(files: list[Path], path: str | os.PathLike[str]) -> list[str]:
    """Shard completion markers (``_COMPLETE.json``) under ``path`` that list a part file which
    is gone: rows the marker vouches for are missing."""
    from harness.results import COMPLETE, marker_parts

    root = Path(path)
    dirs = {f.parent for f in files}
    if root.is_dir():
        dirs |= {m.parent for m in root.rglob(COMPLETE)
                 if not any(_ignored(p) for p in m.relative_to(root).parts[:-1])}
    out = []
    for d in sorted(dirs):
        parts = marker_parts(d)
        if isinstance(parts, str):
            if parts.startswith("unreadable"):
                out.append(f"{d / COMPLETE}: unreadable completion marker {parts[len('unreadable '):]}")
            continue  # absent, or an older marker without a part list
        marker = d / COMPLETE
        for p in parts:
            name = p.get("name", "?")
            f = d / name
            if not f.is_file():  # (a rewritten part is judged by its own check, not its size)
                out.append(f"{marker}: lists {name}, which is missing")
    return out


# ---------------------------------------------------------------- per-cell columns

def _cell_file(part: Path, cache: dict[Path, dict[str, str] | None]) -> dict[str, str] | None:
    """The _cell.json of the cell directory holding ``part`` (cell=<hash>/shard=<k>/part), or None."""
    from harness.results import CELL_FILE, read_cell_file

    d = part.parent.parent
    if d not in cache:
        f = d / CELL_FILE
        try:
            cache[d] = read_cell_file(f) if f.is_file() else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResultsError(f"{f}: unreadable per-cell file ({exc})") from None
    return cache[d]


def _constant(value: str | None, n: int) -> pa.Array:
    """``n`` copies of one string as a dictionary array (one dictionary entry, small in memory)."""
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()))


def _derived_params(tables: list[pa.Table]) -> list[tuple[str, str]]:
    """Parameter columns of rows written before they existed: from their cells' JSON."""
    from harness.results import param_fields

    cells = set()
    for t in tables:
        if "cell_json" in t.column_names and not any("." in c for c in t.column_names):
            cells.update(v for v in t.column("cell_json").unique().to_pylist() if v)
    parsed = []
    for c in sorted(cells):
        try:
            cell = json.loads(c)
        except ValueError:
            continue
        if isinstance(cell, dict):
            parsed.append(cell)
    return param_fields(parsed) if parsed else []


def _with_cell_columns(tables: list[pa.Table], files: list[Path]) -> list[pa.Table]:
    """Every table with ``cell_json`` and ``assets`` as dictionary columns (from its cell's
    _cell.json where the rows lack them) and, for rows older than the parameter columns, those
    columns and ``data_seed`` derived from ``cell_json``."""
    from harness.results import ARROW_TYPES, CELL_COLUMNS, param_values

    cache: dict[Path, dict[str, str] | None] = {}
    derived = _derived_params(tables)
    out = []
    for table, f in zip(tables, files):
        n = table.num_rows
        has_params = any("." in c for c in table.column_names)
        if "cell_json" not in table.column_names:
            meta = _cell_file(f, cache)
            if meta is not None:
                cells = set(table.column("cell").unique().to_pylist())
                if cells - {meta["cell"]}:
                    raise ResultsError(f"{f}: rows of cell(s) {', '.join(sorted(cells))} under the "
                                       f"_cell.json of cell {meta['cell']}")
            for col in CELL_COLUMNS:
                table = table.append_column(col, _constant(meta[col] if meta else None, n))
        else:  # an older writer's rows: the same strings on every row, dictionary-encoded here
            for col in CELL_COLUMNS:
                if col in table.column_names:
                    i = table.column_names.index(col)
                    encoded = table.column(col).cast(pa.string()).combine_chunks().dictionary_encode()
                    table = table.set_column(i, col, encoded)
        wanted = [*([] if has_params else derived),
                  *([] if "data_seed" in table.column_names else [("data_seed", "int64")])]
        if wanted and "cell_json" in table.column_names:
            codes = table.column("cell_json").chunk(0)
            per_cell: list[dict[str, Any]] = []
            for c in codes.dictionary.to_pylist():
                try:
                    cell = json.loads(c) if c else {}
                except ValueError:
                    cell = {}
                cell = cell if isinstance(cell, dict) else {}
                per_cell.append({**param_values(cell, derived), "data_seed": cell.get("data_seed")})
            for name, typ in wanted:
                values = pa.array([v[name] for v in per_cell], ARROW_TYPES[typ])
                table = table.append_column(name, values.take(codes.indices))
        out.append(table)
    return out


def _check_duplicates(df: pd.DataFrame) -> None:
    dup = df[df.duplicated(list(ROW_KEY), keep=False)]
    if dup.empty:
        return
    parts = []
    for cell, rows in list(dup.groupby("cell", sort=True))[:3]:
        keys = rows.drop_duplicates(list(ROW_KEY))
        first = keys.iloc[0]
        same = rows[(rows["example"] == first["example"]) & (rows["eval_run"] == first["eval_run"])]
        files = ", ".join(sorted({Path(str(s)).name for s in same["source_file"]}))
        parts.append(f"cell {cell}: {len(keys)} (example, eval_run) key(s) appear more than once, "
                     f"e.g. example {first['example']} run {first['eval_run']} in {files}")
    more = dup["cell"].nunique() - len(parts)
    tail = f"; and {more} more cell(s)" if more > 0 else ""
    raise ResultsError("duplicate result rows (a writer or resume bug): "
                       + "; ".join(parts) + tail)


def _check_cells(df: pd.DataFrame) -> None:
    spread = df.groupby("cell", sort=True)[list(_CELL_CONSTANT)].nunique(dropna=False)
    bad = spread[(spread > 1).any(axis=1)]
    if not bad.empty:
        cell = bad.index[0]
        cols = [c for c in _CELL_CONSTANT if bad.loc[cell, c] > 1]
        raise ResultsError(f"cell {cell}: rows disagree on {', '.join(cols)} "
                           "(one content hash must mean one configuration)")


def with_failures(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with a boolean ``nonfinite_row`` (a -1 clean or adversarial prediction, or one
    carried in by a worst-of row) and ``grad_nonfinite`` filled with 0 where absent."""
    bad = df["adv_pred"] == NONFINITE_PRED
    if "clean_pred" in df.columns:
        bad = bad | (df["clean_pred"] == NONFINITE_PRED)
    if ROW_NONFINITE in df.columns:
        bad = bad | df[ROW_NONFINITE].eq(True)
    grad = (df["grad_nonfinite"].fillna(0) if "grad_nonfinite" in df.columns
            else pd.Series(0, index=df.index))
    return df.assign(**{ROW_NONFINITE: bad.to_numpy(), "grad_nonfinite": grad.astype("int64")})


def _majority_vote(df: pd.DataFrame) -> pd.Series:
    """Most frequent adv_pred per (cell, example); ties go to the smallest class index.

    A non-finite prediction (-1) is a failure, not a class: it can never be the correct
    answer, and a tie between the failures and a class goes to the failures (a vote that is
    at best tied with failed purifications is no majority for the true class).
    """
    failed = df["adv_pred"] == NONFINITE_PRED
    # 0 for failures, 1 for classes: sorting on it puts the failures first among equal counts
    votes = df.assign(_is_class=(~failed).astype(int))
    counts = (votes.groupby(["cell", "example", "_is_class", "adv_pred"], sort=False).size()
              .rename("k").reset_index())
    counts = counts.sort_values(["cell", "example", "k", "_is_class", "adv_pred"],
                                ascending=[True, True, False, True, True])
    return counts.drop_duplicates(["cell", "example"]).set_index(["cell", "example"])["adv_pred"]


def per_example(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (cell, example): mean clean/adv correctness over runs, vote, worst case, the
    image it shows (``image``), its non-finite rows and its attack's non-finite gradients."""
    df = with_failures(df)
    image = (df["data_index"].fillna(df["example"]) if "data_index" in df.columns
             else df["example"]).astype("int64")
    ex = df.assign(_image=image).groupby(["cell", "example"], sort=True).agg(
        y=("y", "first"),
        image=("_image", "first"),
        clean=("clean_correct", "mean"),
        robust_mean=("adv_correct", "mean"),
        robust_worst=("adv_correct", "all"),
        runs_seen=("eval_run", "nunique"),
        nonfinite=(ROW_NONFINITE, "sum"),
        grad_nonfinite=("grad_nonfinite", "max"),  # one count per example, repeated over runs
    )
    vote = _majority_vote(df).reindex(ex.index)
    ex["robust_vote"] = (vote.to_numpy() == ex["y"].to_numpy()) & (vote.to_numpy() != NONFINITE_PRED)
    cells = df.groupby("cell", sort=False)[list(_CELL_CONSTANT) + ["sweep"]].first()
    return ex.reset_index().join(cells, on="cell")


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    # Baselines (`none` threat/attack/defence) lead; the rest sort by name, label before classifier.
    helpers = {f"_{c}_named": frame[c].astype(str) != "none"
               for c in ("threat", "attack_label", "label")}
    order = ["dataset", "_threat_named", "threat", "eps", "_attack_label_named", "attack_label",
             "_label_named", "label", "classifier"]
    return (frame.assign(**helpers).sort_values(order, kind="stable")
            .drop(columns=list(helpers)).reset_index(drop=True))


def summarise(df: pd.DataFrame, z: float = 1.96) -> pd.DataFrame:
    """One row per (dataset, threat, eps, attack_label, classifier, label); see SUMMARY_COLUMNS.

    Accuracies weight every (cell, example) equally (mean over them of the per-example mean
    over runs), so an example with a missing run is not under-weighted. ``complete`` is true
    only when every cell in the group has all ``cell_examples`` examples, each with all
    ``eval_runs`` runs. ``ci_lo``/``ci_hi`` bound ``robust_mean`` clustered by image
    (:func:`analysis.stats.clustered_interval`), however many seeds, cells or runs are
    pooled; ``n`` is the number of images. ``nfe`` is the mean per row (one purification),
    ``time_s`` the total over rows.
    """
    keys = list(GROUP_KEYS)
    ex = per_example(df)
    ex["full"] = ex["runs_seen"] >= ex["eval_runs"]
    per_cell = ex.groupby("cell", sort=False).agg(
        n=("example", "size"), n_full=("full", "sum"),
        cell_examples=("cell_examples", "first"), eval_runs=("eval_runs", "first"))
    per_cell["complete"] = ((per_cell["n"] == per_cell["cell_examples"])
                            & (per_cell["n_full"] == per_cell["cell_examples"]))
    ex = ex.join(per_cell["complete"], on="cell")
    row_stats = df.groupby(keys, sort=False, dropna=False).agg(
        rows=("example", "size"), nfe=("nfe", "mean"), time_s=("time_s", "sum")).reset_index()

    records = []
    for key, g in ex.groupby(keys, sort=False, dropna=False):
        planned = per_cell.loc[g["cell"].unique()]
        # the interval function exactly as tests/test_coverage.py checks it
        lo, hi = clustered_interval(g["robust_mean"].to_numpy(), g["image"].to_numpy(), z)
        records.append({
            **dict(zip(keys, key)),
            "cells": len(planned),
            "n": int(g["image"].nunique()),
            "cell_n": len(g),
            "cell_examples": int(planned["cell_examples"].sum()),
            "complete": bool(planned["complete"].all()),
            # Cells pooled in one group normally share eval_runs; if not, report the fewest.
            "runs": int(planned["eval_runs"].min()),
            "clean": float(g["clean"].mean()),
            "robust_mean": float(g["robust_mean"].mean()),
            "ci_lo": lo,
            "ci_hi": hi,
            "robust_vote": float(g["robust_vote"].mean()),
            "robust_worst": float(g["robust_worst"].mean()),
            "nonfinite": int(g["nonfinite"].sum()),
            "grad_nonfinite": int(g["grad_nonfinite"].sum()),
            "grad_nonfinite_examples": int((g["grad_nonfinite"] > 0).sum()),
            "sweeps": ",".join(sorted(map(str, g["sweep"].unique()))),
        })
    out = pd.DataFrame.from_records(records).merge(row_stats, on=keys, how="left")
    return _sort(out[list(SUMMARY_COLUMNS)])


WORST_OF = "worst-of"


def with_worst_over_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """Append, for every defence attacked by two or more attacks at the same threat and eps,
    rows of a synthetic attack `worst-of[a | b | ...]`: an example counts as robust in
    evaluation run r only if it is robust under every attack in run r (as DiffPure reports
    min(AutoAttack standard, rand), but per example, which is never weaker).

    Only examples and runs present under every attack are combined; the synthetic cells are
    marked complete only when each constituent is. A non-finite prediction under any attack
    marks the combined row (``nonfinite_row``); the attacks' non-finite gradients add up.
    """
    df = with_failures(df)
    attacked = df[df["attack"].astype(str) != "none"]
    keys = ["sweep", "dataset", "classifier", "label", "threat", "eps", "seed"]
    keys = [k for k in keys if k in attacked.columns]
    out = []
    for key, g in attacked.groupby(keys, sort=False, dropna=False):
        labels = sorted(g["attack_label"].unique())
        if len(labels) < 2:
            continue
        per = [g[g["attack_label"] == a].set_index(["example", "eval_run"]) for a in labels]
        common = per[0].index
        for p in per[1:]:
            common = common.intersection(p.index)
        if common.empty:
            continue
        first = per[0].loc[common]
        robust = pd.concat([p.loc[common, "adv_correct"] for p in per], axis=1).all(axis=1)
        # the prediction of the first attack that fooled it (or the shared one when none did)
        adv_pred = first["adv_pred"].copy()
        for p in reversed(per):
            fooled = ~p.loc[common, "adv_correct"]
            adv_pred[fooled] = p.loc[common, "adv_pred"][fooled]
        cells = sorted(g["cell"].unique())
        rows = first.reset_index()
        rows["adv_correct"] = robust.to_numpy()
        rows["adv_pred"] = adv_pred.to_numpy()
        rows["attack"] = WORST_OF
        rows["attack_label"] = f"{WORST_OF}[{' | '.join(labels)}]"
        rows["cell"] = "worst:" + "+".join(c[:8] for c in cells)
        rows["cell_json"] = "{}"
        for c in [c for c in rows.columns if c.startswith("attack.")]:  # several attacks: none of theirs
            rows[c] = rows[c].where(pd.Series(False, index=rows.index))
        rows["cell_examples"] = min(int(p["cell_examples"].iloc[0]) for p in per)
        rows["eval_runs"] = min(int(p["eval_runs"].iloc[0]) for p in per)
        rows[ROW_NONFINITE] = pd.concat([p.loc[common, ROW_NONFINITE] for p in per],
                                        axis=1).any(axis=1).to_numpy()
        rows["grad_nonfinite"] = sum(p.loc[common, "grad_nonfinite"].to_numpy() for p in per)
        rows["nfe"] = sum(p.loc[common, "nfe"].to_numpy() for p in per)
        rows["time_s"] = sum(p.loc[common, "time_s"].to_numpy() for p in per)
        out.append(rows[df.columns])
    return pd.concat([df, *out], ignore_index=True) if out else df
