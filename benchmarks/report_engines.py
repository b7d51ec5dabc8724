"""Which engine for the report's core aggregation: DuckDB, polars (streaming) or pyarrow, measured.

On a synthesised results directory (benchmarks/report_scale.py), each engine runs in its own
process (wall seconds and that process's peak RSS, as report_scale.run_measured measures them)
the aggregation the report needs, reading only the columns it needs:

  per (cell, example): mean clean_correct, mean adv_correct, bool_and(adv_correct),
                       count distinct eval_run, the label y and the image (data_index);
  per (cell, example, adv_pred): counts -> the majority vote (the report's rule: most votes,
                       a tie goes to a non-finite prediction -1, then to the smallest class);
  per cell: examples, mean of the above, vote accuracy, fewest/most runs, distinct images.

The vote is a max over one integer key per (cell, example, adv_pred) — count * 4096 +
(4095 for -1, else 2047 - class) — so every engine does it as a group-by max and decodes the
winner, with no window function or join. The engines' per-cell results are compared with each
other. Also timed: reading every part file's Parquet footer (schema and num_rows) with
pyarrow.parquet.read_metadata, as a validator would, and listing the files alone (the floor).

    python benchmarks/report_engines.py --rows 10000000 --dir /tmp/report-scale
    python benchmarks/report_engines.py --results /tmp/report-scale/rows-10000000-seed-0/results
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

COLUMNS = ("cell", "example", "eval_run", "clean_correct", "adv_correct", "adv_pred", "y", "data_index")
ENGINES = ("list", "footers", "duckdb", "duckdb-nounion", "polars", "pyarrow", "pyarrow-files")
K = 4096  # vote key: count * K + (K - 1 for a non-finite prediction, else 2047 - class); classes < 2048
OUT_COLUMNS = ("cell", "n", "clean", "robust_mean", "robust_worst", "robust_vote", "runs_min", "runs_max", "images")


def list_parts(root: str | os.PathLike[str]) -> list[str]:
    """The report's file list (analysis.aggregate.find_part_files' rule, without importing it):
    every *.parquet under root, skipping names starting with '.' or '_' and ending in .tmp."""
    def ignored(name: str) -> bool:
        return name.startswith((".", "_")) or name.endswith(".tmp")

    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not ignored(d))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".parquet") and not ignored(f))
    return found


# ---------------------------------------------------------------- the engines (one per process)

DUCKDB_SQL = f"""
WITH src AS (
  SELECT {', '.join(COLUMNS)}
  FROM read_parquet($files, hive_partitioning = false, union_by_name = true)),
ex AS (
  SELECT cell, example, avg(clean_correct::DOUBLE) AS clean, avg(adv_correct::DOUBLE) AS robust_mean,
         bool_and(adv_correct) AS robust_worst, count(DISTINCT eval_run) AS runs,
         min(y) AS y, min(data_index) AS image
  FROM src GROUP BY cell, example),
votes AS (
  SELECT cell, example, max(k * {K} + CASE WHEN adv_pred = -1 THEN {K - 1} ELSE 2047 - adv_pred END) AS key
  FROM (SELECT cell, example, adv_pred, count(*) AS k FROM src GROUP BY cell, example, adv_pred)
  GROUP BY cell, example)
SELECT ex.cell AS cell, count(*) AS n, avg(clean) AS clean, avg(robust_mean) AS robust_mean,
       avg(robust_worst::DOUBLE) AS robust_worst,
       avg(CASE WHEN key % {K} <> {K - 1} AND 2047 - key % {K} = ex.y THEN 1.0 ELSE 0.0 END) AS robust_vote,
       min(runs) AS runs_min, max(runs) AS runs_max, count(DISTINCT image) AS images
FROM ex JOIN votes ON ex.cell = votes.cell AND ex.example = votes.example
GROUP BY ex.cell ORDER BY ex.cell
"""


def run_duckdb(files: list[str], union_by_name: bool = True):
    import duckdb

    con = duckdb.connect()
    sql = DUCKDB_SQL if union_by_name else DUCKDB_SQL.replace("union_by_name = true", "union_by_name = false")
    return con.sql(sql, params={"files": files}).to_arrow_table()


def run_polars(files: list[str]):
    import polars as pl

    lf = pl.scan_parquet(files, hive_partitioning=False, missing_columns="insert",
                         extra_columns="ignore").select(COLUMNS)
    ex = lf.group_by("cell", "example").agg(
        clean=pl.col("clean_correct").mean(), robust_mean=pl.col("adv_correct").mean(),
        robust_worst=pl.col("adv_correct").all(), runs=pl.col("eval_run").n_unique(),
        y=pl.col("y").min(), image=pl.col("data_index").min())
    votes = (lf.group_by("cell", "example", "adv_pred").agg(k=pl.len())
             .with_columns(key=pl.col("k").cast(pl.Int64) * K
                           + pl.when(pl.col("adv_pred") == -1).then(K - 1).otherwise(2047 - pl.col("adv_pred")))
             .group_by("cell", "example").agg(key=pl.col("key").max()))
    r = pl.col("key") % K
    voted = ((r != K - 1) & ((2047 - r) == pl.col("y"))).cast(pl.Float64)
    out = (ex.join(votes, on=["cell", "example"])
           .group_by("cell").agg(n=pl.len(), clean=pl.col("clean").mean(), robust_mean=pl.col("robust_mean").mean(),
                                 robust_worst=pl.col("robust_worst").cast(pl.Float64).mean(), robust_vote=voted.mean(),
                                 runs_min=pl.col("runs").min(), runs_max=pl.col("runs").max(),
                                 images=pl.col("image").n_unique())
           .sort("cell").collect(engine="streaming"))
    return out.to_arrow()


def run_pyarrow(files: list[str], per_file: bool = False):
    """pyarrow.dataset's scanner (per_file: pq.ParquetFile(f).read(columns) file by file, each
    file's metadata dropped once read), then Table.group_by."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    # cell as a dictionary column: 16-character strings on 10 M rows are ~200 MB; each file has
    # its own dictionary, unified once here (group_by refuses differing ones)
    if per_file:
        t = pa.concat_tables([pq.ParquetFile(f, read_dictionary=["cell"]).read(columns=list(COLUMNS))
                              for f in files])
    else:
        fmt = ds.ParquetFileFormat(read_options=ds.ParquetReadOptions(dictionary_columns=["cell"]))
        t = ds.dataset(files, format=fmt).scanner(columns=list(COLUMNS)).to_table()
    return _arrow_aggregate(t.unify_dictionaries())


def _arrow_aggregate(t):
    import pyarrow as pa
    import pyarrow.compute as pc

    t = t.append_column("clean_i", pc.cast(t["clean_correct"], pa.int8())).append_column(
        "adv_i", pc.cast(t["adv_correct"], pa.int8()))
    ex = t.group_by(["cell", "example"], use_threads=True).aggregate(
        [("clean_i", "mean"), ("adv_i", "mean"), ("adv_correct", "all"), ("eval_run", "count_distinct"),
         ("y", "min"), ("data_index", "min")])
    votes = t.group_by(["cell", "example", "adv_pred"]).aggregate([("adv_pred", "count")])
    del t
    pred = votes["adv_pred"]
    tie = pc.if_else(pc.equal(pred, -1), pa.scalar(K - 1, pa.int64()), pc.subtract(2047, pred))
    votes = votes.append_column("key", pc.add(pc.multiply(pc.cast(votes["adv_pred_count"], pa.int64()), K), tie))
    votes = votes.group_by(["cell", "example"]).aggregate([("key", "max")])
    j = ex.join(votes, keys=["cell", "example"])
    r = pc.bit_wise_and(j["key_max"], K - 1)
    voted = pc.and_(pc.not_equal(r, K - 1), pc.equal(pc.subtract(2047, r), j["y_min"]))
    j = j.append_column("voted", pc.cast(voted, pa.float64())).append_column(
        "worst", pc.cast(j["adv_correct_all"], pa.float64()))
    out = j.group_by("cell").aggregate(
        [("example", "count"), ("clean_i_mean", "mean"), ("adv_i_mean", "mean"), ("worst", "mean"), ("voted", "mean"),
         ("eval_run_count_distinct", "min"), ("eval_run_count_distinct", "max"), ("data_index_min", "count_distinct")])
    out = out.rename_columns({"example_count": "n", "clean_i_mean_mean": "clean", "adv_i_mean_mean": "robust_mean",
                              "worst_mean": "robust_worst", "voted_mean": "robust_vote",
                              "eval_run_count_distinct_min": "runs_min", "eval_run_count_distinct_max": "runs_max",
                              "data_index_min_count_distinct": "images"})
    out = out.set_column(out.schema.get_field_index("cell"), "cell", pc.cast(out["cell"], pa.string()))
    return out.select(list(OUT_COLUMNS)).sort_by("cell")


def run_footers(files: list[str]) -> dict:
    import pyarrow.parquet as pq

    rows, schemas = 0, set()
    for f in files:
        md = pq.read_metadata(f)
        rows += md.num_rows
        schemas.add(md.schema.to_arrow_schema().to_string(show_schema_metadata=False))
    return {"rows": rows, "distinct_schemas": len(schemas)}


def engine_main(engine: str, results: str, out: str | None) -> int:
    t0 = time.perf_counter()
    files = list_parts(results)
    listed = time.perf_counter() - t0
    info = {"engine": engine, "files": len(files), "list_s": round(listed, 2)}
    t1 = time.perf_counter()
    if engine == "footers":
        info |= run_footers(files)
    elif engine != "list":
        table = {"duckdb": run_duckdb, "duckdb-nounion": lambda f: run_duckdb(f, union_by_name=False),
                 "polars": run_polars, "pyarrow": run_pyarrow,
                 "pyarrow-files": lambda f: run_pyarrow(f, per_file=True)}[engine](files)
        info["cells"] = table.num_rows
        if out:
            import pyarrow.parquet as pq

            pq.write_table(table, out)
    info["work_s"] = round(time.perf_counter() - t1, 2)
    print(json.dumps(info), flush=True)
    return 0


# ---------------------------------------------------------------- the comparison (parent process)

def _agree(outs: dict[str, str]) -> str:
    import numpy as np
    import pyarrow.parquet as pq

    tables = {e: pq.read_table(p).select(list(OUT_COLUMNS)).sort_by("cell").to_pandas() for e, p in outs.items()}
    if len(tables) < 2:
        return "only one engine ran"
    names = list(tables)
    ref = tables[names[0]]
    bad = []
    for e in names[1:]:
        t = tables[e]
        if len(t) != len(ref) or list(t["cell"]) != list(ref["cell"]):
            bad.append(f"{e}: other cells")
            continue
        for c in OUT_COLUMNS[1:]:
            if not np.allclose(t[c].astype(float).to_numpy(), ref[c].astype(float).to_numpy(), rtol=1e-9, atol=1e-12):
                bad.append(f"{e}: {c} differs from {names[0]}")
    return (f"{', '.join(names)} give the same per-cell results "
            f"({len(ref)} cells; {ref['n'].sum():,} cell-examples)") if not bad else "DISAGREE: " + "; ".join(bad)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=None, help="a results directory (default: the synthesised one)")
    ap.add_argument("--rows", type=int, default=10_000_000)
    ap.add_argument("--dir", default="/tmp/report-scale")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engines", nargs="+", default=list(ENGINES), choices=ENGINES)
    ap.add_argument("--python", default=None)
    ap.add_argument("--engine", default=None, help=argparse.SUPPRESS)  # child mode
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.engine:
        return engine_main(args.engine, args.results, args.out)

    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import report_scale as rs

    results = args.results
    if results is None:
        doc = rs.synthesise(args.dir, args.rows, seed=args.seed)
        results = doc["results"]
    python = args.python or rs.default_python()
    lines = ["| engine | seconds (process) | of which listing s | work s | peak RSS GB | exit | notes |",
             "|---|---|---|---|---|---|---|"]
    outs = {}
    with tempfile.TemporaryDirectory(prefix="report-engines-") as tmp:
        for engine in args.engines:
            out = os.path.join(tmp, f"{engine}.parquet")
            res = rs.run_measured([python, str(Path(__file__).resolve()), "--engine", engine, "--results", results,
                                   "--out", out], cwd=rs.REPO)
            info = next((json.loads(x) for x in reversed(res["head"] + res["tail"]) if x.startswith("{")), {})
            note = (f"{info.get('files', '?'):,} files" if info else " / ".join(res["head"][-3:] + res["tail"][-3:]))
            if engine == "footers" and info:
                note += f"; {info['rows']:,} rows; {info['distinct_schemas']} distinct schema(s)"
            if info.get("cells"):
                note += f"; {info['cells']} cells out"
            lines.append(f"| {engine} | {res['wall_s']} | {info.get('list_s', '?')} | {info.get('work_s', '?')} | "
                         f"{res['peak_rss_gb']} | {res['rc']} | {note} |")
            print(lines[-1], file=sys.stderr, flush=True)
            if res["rc"] == 0 and os.path.exists(out):
                outs[engine] = out
        agree = _agree(outs)
    print(f"results: {results}")
    print("\n".join(lines))
    print(f"\n{agree}")
    print(f"machine: {rs.machine(report=False)}; load average at the end {os.getloadavg()[0]:.1f}; "
          f"{_versions(python)}")
    return 0


def _versions(python: str) -> str:
    import subprocess

    code = ("import duckdb, polars, pyarrow; print(f'duckdb {duckdb.__version__}, polars {polars.__version__}, "
            "pyarrow {pyarrow.__version__}')")
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


if __name__ == "__main__":
    sys.exit(main())
