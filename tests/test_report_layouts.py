"""How `harness report` reads part files at scale, checked against the plain way.

A part file whose footer statistics prove one value of each per-file constant is copied
narrow (the constants stored once per file); any other file row by row. Footers of many
files are read by forked processes, figures drawn by forked workers. Each shortcut must give
exactly what the plain path gives."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import analysis.aggregate as agg
import analysis.figures as figures
from analysis.aggregate import load_results, open_results, summarise
from fixtures_results import SCHEMA, row, write_part
from harness.results import check_header

ATTACKS = ("pgd(exact,eot=4,steps=20)", "square(queries=100)")


def _meta(cell: str, label: str, attack_label: str, sweep: str = "s1") -> dict:
    return dict(sweep=sweep, cell=cell, label=label, dataset="digits", classifier="mlp",
                purifier=label.split("(")[0], attack=attack_label.split("(")[0],
                attack_label=attack_label, threat="linf", eps=0.15, cell_examples=6, eval_runs=2)


def _cells() -> dict[str, list[dict]]:
    """Four cells (two defences x two attacks, so worst-of rows exist), 6 examples x 2 runs,
    with times that do not add up exactly in floating point."""
    out = {}
    for i, (label, attack) in enumerate([(lb, a) for lb in ("none", "lorid(t_s=0.1)") for a in ATTACKS]):
        cell = f"{i:x}" * 16
        meta = _meta(cell, label, attack)
        out[cell] = [row(meta, ex, run, y=ex % 3, adv_pred=(ex + run + i) % 3, time_s=0.1 * (1 + ex + run))
                     for ex in range(6) for run in range(2)]
    return out


def _per_cell(root: Path) -> Path:
    for rows in _cells().values():  # two parts per cell, as a worker writes them
        write_part(root, rows[:6], part=0)
        write_part(root, rows[6:], part=3)
    return root


def _one_file(root: Path) -> Path:
    """Every cell's rows in one file (an older layout): no column is constant in it."""
    root.mkdir(parents=True)
    rows = [r for rs in _cells().values() for r in rs]
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), root / "all.parquet")
    return root


def _comparable(df: pd.DataFrame) -> pd.DataFrame:
    df = df.drop(columns=["source_file"])
    for c in df.columns:
        if isinstance(df[c].dtype, pd.CategoricalDtype):
            df[c] = df[c].astype(object)
    return df.sort_values(["cell", "example", "eval_run"]).reset_index(drop=True)


def test_footer_proves_constants_or_says_it_cannot(tmp_path: Path) -> None:
    f = tmp_path / "x.parquet"
    table = pa.table({"a": ["k", "k", "k"], "b": [1, 2, 3], "c": pa.array([None] * 3, pa.string()),
                      "d": [0.25, 0.25, 0.25]})
    pq.write_table(table, f, row_group_size=2)  # two row groups: each must agree
    _, head = check_header(f, required=[], constants=["a", "c", "d", "missing"])
    assert head.constants == {"a": "k", "c": None, "d": 0.25, "missing": None}
    _, head = check_header(f, required=[], constants=["a", "b"])
    assert head.constants is None  # b differs: not a per-file constant
    pq.write_table(pa.table({"a": ["k", None, "k"]}), f)
    assert check_header(f, required=[], constants=["a"])[1].constants is None  # a value and a null
    pq.write_table(pa.table({"a": ["k", "k"]}), f, write_statistics=False)
    assert check_header(f, required=[], constants=["a"])[1].constants is None  # nothing proves it


def test_narrow_and_row_by_row_copies_agree(tmp_path: Path) -> None:
    narrow, wide = _per_cell(tmp_path / "narrow"), _one_file(tmp_path / "wide")
    n, w = open_results(narrow), open_results(wide)
    files = n.df("SELECT count(*) FILTER (WHERE narrow) AS narrow, count(*) AS n FROM files").iloc[0]
    assert (files["narrow"], files["n"]) == (8, 8)  # every per-cell part was copied narrow
    assert w.df("SELECT count(*) AS k FROM rows_narrow")["k"].iloc[0] == 0  # and the mixed one not
    assert n.df("SELECT sum(n) AS k FROM consts")["k"].iloc[0] == 48  # the constants stand for every row
    pd.testing.assert_frame_equal(_comparable(load_results(narrow)), _comparable(load_results(wide)))
    a, b = summarise(n), summarise(w)
    pd.testing.assert_frame_equal(a, b)
    a, b = agg.aggregate(n).summary, agg.aggregate(w).summary  # with the worst-of rows
    assert (a["attack_label"].str.startswith("worst-of[")).sum() == 2
    pd.testing.assert_frame_equal(a, b)
    # both together: the union of the two copies (two sweeps, so no key is duplicated)
    mixed = tmp_path / "mixed"
    _per_cell(mixed)
    more = [dict(r, sweep="s2", cell="e" + r["cell"][1:]) for rs in _cells().values() for r in rs]
    pq.write_table(pa.Table.from_pylist(more, schema=SCHEMA), mixed / "older.parquet")
    both = load_results(mixed)
    assert len(both) == 96 and set(both["sweep"]) == {"s1", "s2"}


def test_each_row_names_the_file_it_came_from(tmp_path: Path) -> None:
    root = _per_cell(tmp_path / "r")
    df = load_results(root)
    for name, g in df.groupby("source_file", observed=True):
        keys = pq.read_table(name, columns=["cell", "example", "eval_run"]).to_pandas()
        got = g[["cell", "example", "eval_run"]].astype({"cell": object})
        assert sorted(map(tuple, got.to_numpy().tolist())) == sorted(map(tuple, keys.to_numpy().tolist()))


def test_time_totals_are_exact_and_deterministic(tmp_path: Path) -> None:
    root = _per_cell(tmp_path / "r")
    s = summarise(open_results(root))
    cells = _cells()
    for _, r in s.iterrows():
        rows = [x for rs in cells.values() for x in rs if x["label"] == r["label"] and x["attack_label"] == r["attack_label"]]
        assert r["time_s"] == sum(round(x["time_s"] * 1e9) for x in rows) / 1e9  # integer ns, summed exactly


def test_footers_read_by_processes_equal_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _per_cell(tmp_path / "r")
    (root / "s1" / "bad.parquet").write_bytes(b"not parquet")
    files = agg.find_part_files(root)
    monkeypatch.setattr(agg, "_FOOTER_PROCESSES_FROM", 10**9)
    threads = agg._footers(files)
    monkeypatch.setattr(agg, "_FOOTER_PROCESSES_FROM", 1)
    processes = agg._footers(files)
    assert [(k, h.reason, h.rows, h.constants) for k, h in threads] == \
        [(k, h.reason, h.rows, h.constants) for k, h in processes]
    assert sum(k is None for k, _ in processes) == 1  # the bad file, refused in its child


def test_figures_drawn_by_workers_are_the_same_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from test_figures import make_summary

    summary = make_summary()
    monkeypatch.setattr(figures, "_PER_WORKER", 10**9)
    alone = figures.make_figures(summary, "png", limit=6)
    monkeypatch.setattr(figures, "_PER_WORKER", 2)
    workers = figures.make_figures(summary, "png", limit=6)
    assert len(alone) == 6 and alone == workers
