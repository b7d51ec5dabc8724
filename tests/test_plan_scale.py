"""The plan at scale (issue 13): the factored grid (CellTable) and the batched plan build give
what the one-dict-per-cell construction gave; a task reads its row, not the plan; `harness run`
and the tasks set their thread counts from the cores they own. Speed is measured in
benchmarks/plan_scale.py, never asserted here."""
from __future__ import annotations

import copy
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

import harness.plan as plan_mod
from harness import grid as grid_mod
from harness.catalog import assets_dir, pins
from harness.grid import Grid, canonical_json, cell_hash, cell_label, load_grid
from harness.plan import (COLUMNS, load_plan, load_plan_row, make_plan, param_columns, plan_table, shard_ranges,
                          write_plan)
from harness.registry import KINDS

from conftest import TINY_GRID

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import plan_scale  # noqa: E402  (the benchmark's synthetic grid)


# ---------------------------------------------------------------- the construction before CellTable
# Written out here as it was (one dict per combination, deep copies, exclusions per flattened
# cell, duplicates by hash, one plan row at a time): the reference the new one must equal.

def old_cells(raw: dict[str, Any], file: str) -> list[dict[str, Any]]:
    s = grid_mod._settings(raw, file)
    axes: dict[str, list[Any]] = {kind: [v for key, e in grid_mod._entries(raw, kind, file)
                                         for v in grid_mod._expand_entry(kind, e, file, key)] for kind in KINDS}
    axes["seeds"] = s["seeds"]
    groups = grid_mod._zip_groups(raw.get("zip", []), list(grid_mod.ZIP_AXES), file, "zip")
    cells = [{**{k: copy.deepcopy(c[k]) for k in KINDS}, "seed": c["seeds"], "eval_runs": s["eval_runs"],
              "data_seed": s["data_seed"], "precision": s["precision"]}
             for c in grid_mod._combine(axes, groups, file, "zip")]
    flats = [grid_mod.flatten(c) for c in cells]
    known = sorted({p for f in flats for p in f})
    rules = [grid_mod._check_rule(r, i, known, axes, file) for i, r in enumerate(raw.get("exclude", []))]
    kept = [c for c, f in zip(cells, flats)
            if not any(all(p in f and canonical_json(f[p]) in v for p, v in r.items()) for r in rules)]
    seen: set[str] = set()
    out = []
    for c in kept:
        if cell_hash(c) not in seen:
            seen.add(cell_hash(c))
            out.append(c)
    return out


def old_plan(g: Grid, cells: list[dict[str, Any]]) -> pd.DataFrame:
    root = assets_dir(None, g.assets)
    pinned = json.dumps(pins(cells, root), sort_keys=True)
    columns = param_columns(cells)
    rows = []
    for cell in cells:
        fixed = {"sweep": g.sweep, "cell": cell_hash(cell), "cell_json": canonical_json(cell),
                 "label": cell_label(cell), "attack_label": cell_label(cell, "attack"),
                 **{k: cell[k]["name"] for k in KINDS}, "seed": cell["seed"], "batch_size": g.batch_size,
                 "nfe_per_example": plan_mod.nfe_per_purification(cell["purifier"]),
                 "denoiser": str(cell["purifier"]["params"].get("denoiser") or "")
                 if plan_mod.nfe_per_purification(cell["purifier"]) else ""}
        for k, (start, stop) in enumerate(shard_ranges(g.examples, g.shard_size)):
            rows.append({**fixed, "shard": k, "start": start, "stop": stop,
                         "nfe_total": plan_mod.nfe_row(cell, stop - start),
                         "gflop_total": plan_mod.gflop_row(cell, stop - start), "assets_dir": str(root),
                         "asset_sha256": pinned, "param_columns": columns})
    df = pd.DataFrame(rows)
    df["row"] = range(len(df))
    df["cell_examples"] = df.groupby("cell")["stop"].transform("max")  # what tasks computed
    ints = ("row", "shard", "start", "stop", "seed", "batch_size", "nfe_per_example", "nfe_total", "cell_examples")
    return df[list(COLUMNS)].astype({c: "int64" for c in ints})


SCALE = 20_000  # cells of the moderate grid (x 2 seeds, 3 shards: 120,000 rows)


def moderate_grid() -> str:
    """benchmarks/plan_scale's grid at SCALE cells, with what the plain one lacks: a duplicate
    variant, a bare purifier and attack, two seeds, three shards (the last short), exclusions."""
    raw = yaml.safe_load(plan_scale.grid_text(SCALE))
    lorid = raw["purifier"]
    first = {"name": "lorid", "params": {**lorid["params"], "t_s": lorid["params"]["t_s"][0]}}  # a duplicate
    raw["purifier"] = ["none", lorid, first]
    raw["attack"] = [raw["attack"], "none"]
    raw.update(seeds=[0, 7], examples=20, shard_size=8,
               exclude=[{"purifier.name": "none", "attack.params.eps": raw["attack"][0]["params"]["eps"][1:]},
                        {"purifier.params.t_s": lorid["params"]["t_s"][-3:], "seed": 7}])
    return yaml.safe_dump(raw, sort_keys=False, width=10_000)


ZIPPED = """
sweep: zipped
dataset: digits
classifier: [digits-cnn, {name: digits-cnn, params: {}}]
purifier:
  - none
  - {name: lorid, params: {t_s: [0.05, 0.1, 0.2], loops: [2, 3, 4], steps: 2}, zip: [[t_s, loops]]}
attack: [none, {name: pgd, params: {eps: [0.1, 0.2], step_size: 0.05, steps: 2}}, none]
seeds: [3, 1, 3, 2]
zip: [[purifier, seeds]]
examples: 10
shard_size: 4
eval_runs: 2
exclude: [{purifier.params.loops: 3, attack.name: pgd}]
"""


@pytest.mark.parametrize("name", ["smoke", "cifar10", "zipped", "tiny", "moderate"])
def test_plan_matches_the_old_construction(name: str, tmp_path: Path) -> None:
    texts = {"zipped": ZIPPED, "tiny": TINY_GRID, "moderate": moderate_grid()}
    path = REPO / "grids" / f"{name}.yaml"
    if name in texts:
        path = tmp_path / f"{name}.yaml"
        path.write_text(texts[name])
    g = load_grid(path)
    cells = old_cells(yaml.safe_load(path.read_text()), str(path))
    assert g.cells == cells
    old, new = old_plan(g, cells), make_plan(g)
    pd.testing.assert_frame_equal(new, old)
    if name == "moderate":
        assert len(cells) > SCALE and new["cell"].nunique() == len(cells) and len(new) == 3 * len(cells)
        assert new["stop"].tolist()[:3] == [8, 16, 20] and set(new["seed"]) == {0, 7}
    if name == "zipped":  # 2 x 4 x 4 combinations: duplicates collapse (32 -> 12), 2 excluded
        assert len(cells) == 10
        assert [(c["purifier"]["params"].get("t_s"), c["seed"]) for c in cells][::3] == \
            [(None, 3), (0.05, 1), (0.1, 3), (0.2, 2)]  # seeds zipped with the purifiers


def test_cells_share_variants_and_stay_read_only_by_contract(tmp_path: Path) -> None:
    """No deep copy per cell: cells with the same purifier variant hold the same dict."""
    path = tmp_path / "g.yaml"
    path.write_text(plan_scale.grid_text(12))
    g = load_grid(path)
    assert len(g.cells) == 12
    by_ts = {}
    for c in g.cells:
        by_ts.setdefault(c["purifier"]["params"]["t_s"], []).append(c["purifier"])
    assert all(all(v is vs[0] for v in vs) for vs in by_ts.values())
    rep = g.representative_cells
    assert {id(c["purifier"]) for c in rep} == {id(c["purifier"]) for c in g.cells}
    assert {id(c["attack"]) for c in rep} == {id(c["attack"]) for c in g.cells}


def test_json_pieces_follow_the_cell_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A setting added to the cell (say a precision) lands in the composed JSON and the hash."""
    path = tmp_path / "t.yaml"
    path.write_text(TINY_GRID)
    plain = grid_mod._cell

    def with_setting(combo: dict[str, Any], s: dict[str, Any]) -> dict[str, Any]:
        return {**plain(combo, s), "precision": "fp32%s"}  # a '%' too: the pieces are not a %-template

    monkeypatch.setattr(grid_mod, "_cell", with_setting)
    g = load_grid(path)
    df = make_plan(g)
    assert df.drop_duplicates("cell")["cell_json"].tolist() == [canonical_json(c) for c in g.cells]
    assert df.drop_duplicates("cell")["cell"].tolist() == [cell_hash(c) for c in g.cells]
    assert all('"precision":"fp32%s"' in t for t in df["cell_json"])


# ---------------------------------------------------------------- one row read

def _same(x: Any, y: Any) -> bool:
    return x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))


def _rows_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)


@pytest.mark.parametrize("group", [1, 3, 7, 4096])
def test_row_read_equals_the_whole_plans_row(group: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(plan_mod, "ROW_GROUP_ROWS", group)
    path = tmp_path / "g.yaml"
    path.write_text(ZIPPED)
    plan = write_plan(load_grid(path), tmp_path / "jobs")
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(plan).metadata
    whole = load_plan(plan)
    n = len(whole)
    assert n > 20 and meta.num_row_groups == -(-n // group)
    for i in (0, 1, n // 2, n - 2, n - 1):
        row = load_plan_row(plan, i)
        assert _rows_equal(row, {k: v.item() if hasattr(v, "item") else v for k, v in whole.iloc[i].to_dict().items()})
        assert row["row"] == i and isinstance(row["start"], int) and isinstance(row["cell_json"], str)
        assert row["cell_examples"] == whole.loc[whole.cell == row["cell"], "stop"].max() == 10
    for bad in (-1, n):
        with pytest.raises(IndexError, match=f"row {bad} out of range 0..{n - 1}"):
            load_plan_row(plan, bad)


def test_row_read_of_a_plan_without_cell_examples(tmp_path: Path) -> None:
    """A plan written before the column (by pandas, one row group) still reads, the column computed."""
    path = tmp_path / "t.yaml"
    path.write_text(TINY_GRID)
    df = make_plan(load_grid(path))
    old = tmp_path / "plan.parquet"
    df.drop(columns="cell_examples").to_parquet(old, index=False)
    assert load_plan_row(old, 3) == {**{k: v.item() if hasattr(v, "item") else v for k, v in
                                        df.iloc[3].to_dict().items()}, "cell_examples": 12}
    with pytest.raises(Exception, match="no plan"):
        load_plan_row(tmp_path / "missing.parquet", 0)


def test_streamed_and_prebuilt_plans_are_the_same_bytes(tmp_path: Path) -> None:
    """`harness plan` streams, `harness submit` writes the table it built: an identical plan
    is then recognised as such (left untouched) whichever wrote it."""
    path = tmp_path / "g.yaml"
    path.write_text(ZIPPED)
    g = load_grid(path)
    a = write_plan(g, tmp_path / "a")
    b = write_plan(g, tmp_path / "b", plan=plan_table(g))
    assert a.read_bytes() == b.read_bytes()
    before = a.stat()
    write_plan(g, tmp_path / "a", plan=plan_table(g))
    assert (a.stat().st_ino, a.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_task_reads_only_its_row(tiny_grid: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The task path never loads the whole plan: with every whole-plan reader broken it runs a
    row (and gets its cell's example count from the row)."""
    from harness.launch import task

    plan = write_plan(load_grid(tiny_grid), tmp_path / "jobs")
    expected = load_plan(plan).iloc[3].to_dict()

    def whole_plan(*a: Any, **k: Any) -> None:
        raise AssertionError("the task read the whole plan")

    monkeypatch.setattr(plan_mod, "load_plan", whole_plan)
    monkeypatch.setattr(pd, "read_parquet", whole_plan)
    seen: dict[str, Any] = {}
    real_run_row = task.run_row

    def run_row(row: dict[str, Any], *a: Any, **k: Any) -> int:
        seen.update(row=row, cell_examples=k["cell_examples"])
        return real_run_row(row, *a, **k)

    monkeypatch.setattr(task, "run_row", run_row)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    written = task.run_task(str(plan), 0, str(tmp_path / "results"))  # none x none: fast
    assert written == 6 * 2  # 6 examples x 2 evaluation runs
    assert seen["cell_examples"] == 12 and seen["row"]["row"] == 0
    task.run_task(str(plan), 3, str(tmp_path / "results"))  # the second shard of (none, pgd)
    assert seen["row"]["cell"] == expected["cell"] and seen["row"]["start"] == 6 and seen["cell_examples"] == 12
    with pytest.raises(IndexError, match="out of range"):
        task.run_task(str(plan), 99, str(tmp_path / "results"))


# ---------------------------------------------------------------- threads

@pytest.fixture
def torch_threads() -> Any:
    import torch
    from threadpoolctl import threadpool_info, threadpool_limits

    before, blas = torch.get_num_threads(), threadpool_info()
    yield torch
    torch.set_num_threads(before)
    for lib in blas:
        threadpool_limits(lib["num_threads"], user_api=lib["user_api"])


def test_threads_from_the_cores_owned(torch_threads: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    from harness.ranks import World, configure_threads, owned_cores

    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    assert owned_cores() == 6 and owned_cores(4) == 1 and World(size=3).configure_threads() == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5})
    assert configure_threads() == 1 == torch_threads.get_num_threads()
    assert all(lib["num_threads"] == 1 for lib in threadpool_info() if lib["user_api"] == "blas")
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "3")
    assert configure_threads(2) == 3  # Slurm's allocation is per task already
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch_threads.set_num_threads(5)
    assert configure_threads() == 5  # OMP_NUM_THREADS set: the libraries took it themselves


def test_harness_run_configures_threads(torch_threads: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.ranks as ranks
    from harness.cli import main

    for var in ("OMP_NUM_THREADS", "SLURM_CPUS_PER_TASK"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1})
    torch_threads.set_num_threads(2)
    calls = []
    real = ranks.configure_threads
    monkeypatch.setattr(ranks, "configure_threads", lambda *a: calls.append(a) or real(*a))
    grid = tmp_path / "g.yaml"
    grid.write_text("sweep: run-threads\ndataset: digits\nclassifier: digits-cnn\npurifier: none\n"
                    "attack: none\nexamples: 2\n")
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--grid", str(grid), "--jobs", "jobs", "--results", "results"]) == 0
    assert calls == [()] and torch_threads.get_num_threads() == 1
