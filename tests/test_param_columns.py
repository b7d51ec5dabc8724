"""Every resolved parameter is a typed `<kind>.<param>` column; per-cell constants are stored
once per cell (`cell=<hash>/_cell.json`); old result directories (cell_json/assets on every
row) and mixed ones still read and report the same."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import TINY_GRID, harness

# The tiny grid with two LoRID cells that differ in t_s and loops (zipped): 3 purifiers × 2 attacks.
GRID = TINY_GRID.replace("params: {t_s: 0.05, loops: 2, steps: 2}",
                         "params: {t_s: [0.05, 0.1], loops: [1, 2], steps: 2}\n    zip: [[t_s, loops]]")
PGD = "pgd(norm=linf,eps=0.1,steps=2,step_size=0.05,eot=2)"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real `harness run` of GRID and its `harness report`; returns the working directory."""
    d = tmp_path_factory.mktemp("params")
    (d / "tiny.yaml").write_text(GRID)
    r = harness("run", "--grid", "tiny.yaml", "--jobs", "jobs", "--results", "results", cwd=d, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = harness("report", "results/tiny", cwd=d)
    assert rep.returncode == 0, rep.stderr[-3000:]
    (d / "report.stdout").write_text(rep.stdout)
    return d


def _parts(results: Path) -> list[Path]:
    return sorted(results.rglob("rank-*-part-*.parquet"))


def test_parameters_are_typed_columns_pandas_groups_by_them(run: Path) -> None:
    # the whole directory in one call (partitioning=None: the files carry `cell` and `shard`
    # themselves, which pyarrow's hive discovery of cell=/shard= would otherwise clash with)
    df = pd.read_parquet(run / "results/tiny", partitioning=None)
    assert len(df) == 6 * 12 * 2
    assert "cell_json" not in df.columns and "assets" not in df.columns
    for col in ("sweep", "cell", "label", "attack_label", "dataset", "classifier", "purifier", "attack",
                "threat", "eps", "seed", "data_seed", "eval_runs", "found_by", "device"):
        assert col in df.columns, col
    assert df["data_seed"].eq(0).all() and df["eval_runs"].eq(2).all()

    lorid = df[df["purifier"] == "lorid"]
    assert df.loc[df["purifier"] != "lorid", ["purifier.t_s", "purifier.loops"]].isna().all().all()
    assert set(lorid["purifier.t_s"]) == {0.05, 0.1} and set(lorid["purifier.loops"]) == {1, 2}
    assert set(df.loc[df["attack"] == "pgd", "attack.steps"]) == {2}
    assert df.loc[df["attack"] == "pgd", "attack.eps"].eq(0.1).all()
    assert df.loc[df["attack"] == "none", "attack.eps"].isna().all()
    assert set(df["classifier.path"]) == {""}

    by_ts = df.groupby("purifier.t_s")["adv_correct"].mean()
    by_loops = df.groupby("purifier.loops")["adv_correct"].mean()
    assert list(by_ts.index) == [0.05, 0.1] and list(by_loops.index) == [1, 2]
    # t_s and loops were zipped: the same two groups of rows
    assert by_ts.to_list() == by_loops.to_list()

    # the same numbers as the report: robust accuracy under PGD per LoRID configuration
    csv = pd.read_csv(run / "results/tiny/_report/report.csv")
    pgd = df[df["attack_label"] == PGD]
    for t_s, loops in ((0.05, 1), (0.1, 2)):
        label = f"lorid(t_s={t_s},loops={loops},steps=2)"
        (row,) = csv[(csv["label"] == label) & (csv["attack_label"] == PGD)].itertuples()
        got = pgd[pgd["purifier.t_s"] == t_s]
        assert got["adv_correct"].mean() == pytest.approx(row.robust_mean, abs=1e-12)
        assert got["clean_correct"].mean() == pytest.approx(row.clean, abs=1e-12)
        assert (pgd.groupby("purifier.loops")["adv_correct"].mean()[loops]
                == pytest.approx(row.robust_mean, abs=1e-12))


def test_every_part_file_of_a_sweep_has_one_schema(run: Path) -> None:
    parts = _parts(run / "results/tiny")
    assert len(parts) == 6 * 2 * 2  # 6 cells × 2 shards × 2 batches
    schema = pq.read_schema(parts[0])
    assert all(pq.read_schema(f).equals(schema) for f in parts[1:])
    types = {f.name: f.type for f in schema}
    assert types["purifier.t_s"] == pa.float64()  # "number": an int step and a fraction both fit
    assert types["purifier.loops"] == pa.int64() and types["purifier.steps"] == pa.int64()
    assert types["purifier.sampler"] == pa.string() and types["classifier.path"] == pa.string()
    assert types["attack.eps"] == pa.float64() and types["attack.steps"] == pa.int64()
    assert types["attack.random_start"] == pa.bool_() and types["data_seed"] == pa.int64()
    plan = pd.read_parquet(run / "jobs/tiny/plan.parquet")
    planned = json.loads(plan["param_columns"].iloc[0])
    assert plan["param_columns"].nunique() == 1
    assert [n for n, _ in planned] == [n for n in schema.names if "." in n]


def test_cell_constants_once_per_cell(run: Path) -> None:
    from harness.results import CELL_FILE, read_cell_file

    plan = pd.read_parquet(run / "jobs/tiny/plan.parquet").drop_duplicates("cell")
    cells = sorted((run / "results/tiny").glob("cell=*"))
    assert len(cells) == len(plan) == 6
    assert len(list((run / "results/tiny").rglob(CELL_FILE))) == 6
    for p in plan.itertuples():
        meta = read_cell_file(run / "results/tiny" / f"cell={p.cell}" / CELL_FILE)
        assert meta["cell"] == p.cell and meta["cell_json"] == p.cell_json
        assert meta["label"] == p.label and meta["attack_label"] == p.attack_label
        assert json.loads(meta["assets"]) == {}  # bundled models only: no catalogued files
    for f in _parts(run / "results/tiny"):
        names = pq.read_schema(f).names
        assert "cell_json" not in names and "assets" not in names


def test_loader_reattaches_cell_constants_as_categoricals(run: Path) -> None:
    from analysis.aggregate import load_results

    df = load_results(run / "results/tiny")
    assert isinstance(df["cell_json"].dtype, pd.CategoricalDtype)
    assert isinstance(df["assets"].dtype, pd.CategoricalDtype)
    plan = pd.read_parquet(run / "jobs/tiny/plan.parquet").drop_duplicates("cell").set_index("cell")
    assert (df["cell_json"].astype(str) == plan.loc[df["cell"], "cell_json"].to_numpy()).all()
    assert df.groupby("cell")["cell_json"].nunique().eq(1).all()


def test_duckdb_groups_by_a_parameter(run: Path) -> None:
    duckdb = pytest.importorskip("duckdb")
    glob = str(run / "results/tiny/**/*.parquet")
    got = duckdb.sql(f"""SELECT "purifier.t_s", avg(adv_correct::INT) FROM read_parquet('{glob}')
                         GROUP BY 1 ORDER BY 1 NULLS LAST""").fetchall()
    df = pd.read_parquet(run / "results/tiny", partitioning=None)
    want = df.groupby("purifier.t_s")["adv_correct"].mean()
    assert [g for g, _ in got] == [0.05, 0.1, None]
    assert [v for _, v in got[:2]] == pytest.approx(want.to_list())


def test_polars_groups_by_a_parameter(run: Path) -> None:
    pl = pytest.importorskip("polars")
    df = pl.read_parquet(str(run / "results/tiny/**/*.parquet"))
    got = (df.group_by("purifier.loops").agg(pl.col("adv_correct").mean())
           .drop_nulls("purifier.loops").sort("purifier.loops"))
    want = pd.read_parquet(run / "results/tiny", partitioning=None).groupby("purifier.loops")["adv_correct"].mean()
    assert got["purifier.loops"].to_list() == [1, 2]
    assert got["adv_correct"].to_list() == pytest.approx(want.to_list())


# ---------------------------------------------------------------- old layout

def to_old_layout(src: Path, dst: Path, cells: set[str] | None = None) -> None:
    """Rewrite part files as a writer before this change did: cell_json and assets on every row,
    no parameter columns, no data_seed, no _cell.json (only for `cells`, all when None)."""
    from harness.results import CELL_FILE, read_cell_file

    for f in _parts(src):
        cell_dir = f.parent.parent
        if cells is not None and cell_dir.name[5:] not in cells:
            continue
        meta = read_cell_file(cell_dir / CELL_FILE)
        t = pq.ParquetFile(f).read()
        t = t.drop_columns([c for c in t.column_names if "." in c or c == "data_seed"])
        t = t.append_column("cell_json", pa.array([meta["cell_json"]] * t.num_rows, pa.string()))
        t = t.append_column("assets", pa.array([meta["assets"]] * t.num_rows, pa.string()))
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(t, out)  # in place when dst is src
    if cells is not None:
        for c in cells:
            (src / f"cell={c}" / CELL_FILE).unlink()


def _report(cwd: Path, path: str) -> tuple[str, str, str]:
    r = harness("report", path, cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    out = Path(cwd, path, "_report")
    return (r.stdout.replace(path, "<results>"), (out / "report.csv").read_text(),
            (out / "report.md").read_text().replace(path, "<results>"))


def test_report_is_the_same_for_old_new_and_mixed_layouts(run: Path, tmp_path: Path) -> None:
    from analysis.aggregate import load_results

    new = _report(run, "results/tiny")
    assert new[0] == (run / "report.stdout").read_text().replace("results/tiny", "<results>")
    old_dir = tmp_path / "old" / "tiny"
    to_old_layout(run / "results/tiny", old_dir)
    assert not list(old_dir.rglob("_cell.json"))
    assert _report(tmp_path, "old/tiny") == new

    # an old directory reads with the parameter columns derived from cell_json
    a = load_results(run / "results/tiny").drop(columns=["source_file"])
    b = load_results(old_dir).drop(columns=["source_file"])
    key = ["cell", "example", "eval_run"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    params = [c for c in a.columns if "." in c] + ["data_seed"]
    assert params and set(params) <= set(b.columns)
    pd.testing.assert_frame_equal(a[params], b[params])
    pd.testing.assert_series_equal(a["cell_json"].astype(str), b["cell_json"].astype(str))
    pd.testing.assert_series_equal(a["assets"].astype(str), b["assets"].astype(str))

    # old and new files in one directory (a sweep resumed across the change)
    mixed = tmp_path / "mixed" / "tiny"
    shutil.copytree(run / "results/tiny", mixed, ignore=shutil.ignore_patterns("_report"))
    lorid_cells = {c for c in a.loc[a["purifier"] == "lorid", "cell"].unique()}
    to_old_layout(mixed, mixed, cells={sorted(lorid_cells)[0]})
    assert _report(tmp_path, "mixed/tiny") == new
    m = load_results(mixed).sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a[params], m[params])


def test_plan_without_param_columns_still_runs(run: Path, tmp_path: Path) -> None:
    """A plan written before the column: the worker derives the row's columns from its cell."""
    plan = pd.read_parquet(run / "jobs/tiny/plan.parquet")
    (tmp_path / "jobs/tiny").mkdir(parents=True)
    old = tmp_path / "jobs/tiny/plan.parquet"
    plan.drop(columns=["param_columns"]).to_parquet(old, index=False)
    row = int(plan.index[(plan["purifier"] == "none") & (plan["attack"] == "none")][0])
    p = subprocess.run([sys.executable, "-m", "harness.launch.task", "--plan", str(old), "--row", str(row),
                        "--results", str(tmp_path / "results")], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    parts = _parts(tmp_path / "results/tiny")
    assert parts
    names = [n for n in pq.read_schema(parts[0]).names if "." in n]
    assert names == ["classifier.path", "classifier.sha256"]  # this cell's own plugins' parameters
    assert len(list((tmp_path / "results/tiny").rglob("_cell.json"))) == 1


# ---------------------------------------------------------------- _cell.json writes

def test_cell_file_concurrent_identical_writes_and_conflict(tmp_path: Path) -> None:
    from harness.errors import UsageError
    from harness.results import (CELL_FILE, CellFileConflict, cell_file_bytes, read_cell_file,
                                 remove_stale_temporaries, write_cell_file)

    cell_json = json.dumps({"seed": 0, "purifier": {"name": "none", "params": {}}}, sort_keys=True,
                           separators=(",", ":"))
    data = cell_file_bytes("s", "abc", cell_json, json.dumps({"asset:x": {"": "1" * 64}}, sort_keys=True))
    d = tmp_path / "cell=abc"
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            write_cell_file(d / f"shard={i % 3}", i, data)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert (d / CELL_FILE).read_bytes() == data
    assert not list(d.rglob("*.tmp"))  # no temporaries left
    assert read_cell_file(d / CELL_FILE)["cell_json"] == cell_json
    write_cell_file(d / "shard=0", 0, data)  # idempotent
    other = cell_file_bytes("s", "abc", cell_json, json.dumps({"asset:x": {"": "2" * 64}}, sort_keys=True))
    with pytest.raises(CellFileConflict, match="other content"):
        write_cell_file(d / "shard=1", 0, other)
    assert issubclass(CellFileConflict, UsageError)
    assert (d / CELL_FILE).read_bytes() == data
    # what a writer killed mid-write leaves: its rank's temporary, cleared when the rank restarts
    stale = d / "shard=0" / f".rank-1-{CELL_FILE}.999-abc.tmp"
    stale.write_bytes(b"{")
    assert remove_stale_temporaries(d / "shard=0", 0) == 0 and stale.exists()
    assert remove_stale_temporaries(d / "shard=0", 1) == 1 and not stale.exists()


def test_status_without_a_plan_labels_cells_from_their_cell_file(run: Path, tmp_path: Path) -> None:
    from harness.launch.status import sweep_status

    only = tmp_path / "results" / "tiny"
    shutil.copytree(run / "results/tiny", only)
    st = sweep_status(only)
    assert st.plan is None and len(st.cells) == 6
    assert {c["label"] for c in st.cells} == {"none", "lorid(t_s=0.05,loops=1,steps=2)",
                                              "lorid(t_s=0.1,loops=2,steps=2)"}
    assert {c["attack_label"] for c in st.cells} == {"none", PGD}
    assert all(c["done"] == 12 for c in st.cells)
