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
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.errors import UsageError
from harness.results import NONFINITE_PRED

from .engine import (FILE_CONSTANT, ROW_TYPES, Rows, connect, from_frame, lit, normalised_select, q,
                     sql_type)
from .parallel import forked_map
from .stats import interval_from_clusters

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
#: A worst-of row's failure carried in from its attacks (the statistics read it with the preds).
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


# ---------------------------------------------------------------- opening a results directory

def open_results(path: str | os.PathLike[str], with_params: bool = False) -> Rows:
    """Validate every result part file under ``path`` and return its rows as a DuckDB view
    (nothing is read into memory but file footers and per-cell constants).

    The columns the report reads (``with_params``: and the parameter columns) are copied once
    into a compressed on-disk DuckDB table: one Parquet scan instead of one per query, and the
    many queries that follow (checks, statistics) run on DuckDB's own storage. A part whose
    footer proves it holds one value of each per-file column (engine.FILE_CONSTANT: the
    cell's identity, plugins, provenance; every file this writer writes) has only its per-row
    columns copied, and those values stored once per file (see :func:`_copy_rows`).

    Raises :class:`ResultsError` when there are no part files, a file is bad (unreadable, a
    required column missing or mistyped, not exactly its examples × eval runs: the reason
    :func:`harness.results.read_part` gives), a completion marker lists a missing part, a
    (cell, example, eval_run) key appears more than once, or a cell's planned values disagree.
    """
    from harness.results import REQUIRED_COLUMNS as WRITER_COLUMNS

    files = find_part_files(path)
    if not files:
        raise ResultsError(f"no result files under {path}")
    footer_rows: dict[str, int] = {}  # files of this writer: the row invariants apply
    bad: list[str] = []
    available: dict[str, str] = {}
    empty: list[Path] = []
    # Files by (schema, constants proven): each group is one plain scan. A file whose footer
    # proves its FILE_CONSTANT columns is copied narrow (its constants stored once, in `files`).
    groups: dict[tuple, list[tuple[Path, Any]]] = {}
    writer = set(WRITER_COLUMNS)
    for f, (key, head) in zip(files, _footers(files)):
        if key is None:
            bad.append(f"{f}: {head.reason}")
            continue
        available.update(dict(key))
        if writer <= {n for n, _ in key}:
            footer_rows[str(f)] = head.rows
            if head.rows == 0:
                empty.append(f)
        if head.rows:
            groups.setdefault((key, _typed_constants(head.constants)), []).append((f, head))
    good = [f for g in groups.values() for f, _ in g]
    con = connect(on_disk=True)
    duplicates = pd.DataFrame(columns=["cell", "example", "file_lo", "file_hi"])
    params = _param_fields(available)
    if good:
        try:
            _copy_rows(con, groups, params if with_params else [])
            problems, duplicates = _row_problems(con, footer_rows)
            bad += problems + [f"{f}: {_verdict(f)}" for f in empty]
        except Exception as exc:  # noqa: BLE001 (a data page that does not decode)
            bad += _slow_problems(good, exc)
    else:
        bad += [f"{f}: {_verdict(f)}" for f in empty]
    bad += _marker_problems(files, path)
    if bad:
        raise ResultsError(f"{len(bad)} bad result file(s) under {path} (`harness run` or `harness submit "
                           "--resume` moves them to <shard>/_bad/ and computes their rows again):\n  "
                           + "\n  ".join(bad))
    if not good:
        raise ResultsError(f"no result rows under {path} ({len(files)} empty file(s))")
    rows = Rows(con, "rows", params if with_params else [], consts_view="consts")
    _check_duplicates(rows, duplicates)
    _check_cells(rows)
    rows.cells = _cells_table(rows, files, params)
    _relabel(rows)
    return rows


def _footer(f: Path) -> tuple[tuple[tuple[str, str], ...] | None, Any]:
    """A part's footer checks (harness.results.check_header, with its FILE_CONSTANT values) and
    its schema as (name, type) pairs (None when refused)."""
    from harness.results import check_header

    schema, head = check_header(f, required=REQUIRED_COLUMNS, constants=FILE_CONSTANT)
    return (None if schema is None else tuple(zip(schema.names, map(str, schema.types)))), head


def _footer_chunk(files: list[Path]) -> list[tuple[tuple[tuple[str, str], ...] | None, Any]]:
    return [_footer(f) for f in files]


#: From this many part files the footers are read by worker processes.
_FOOTER_PROCESSES_FROM = 1000


def _footers(files: list[Path]) -> list[tuple[tuple[tuple[str, str], ...] | None, Any]]:
    """:func:`_footer` of every file, in order. Parsing a footer into Python objects holds the
    GIL, so thousands of them are read by forked worker processes (analysis.parallel): 7,140
    footers took 2.6 s on 2 cores against 5.8-6.6 s in 4 threads. Fewer files, or no process
    pool to be had, are read in threads."""
    cores = os.cpu_count() or 1
    if len(files) >= _FOOTER_PROCESSES_FROM and cores > 1:
        chunks = [files[i:i + 256] for i in range(0, len(files), 256)]
        done = forked_map(_footer_chunk, chunks, min(cores, 8))
        if done is not None:
            return [h for part in done for h in part]
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:  # past 4, threads contend for the GIL (measured)
        return list(pool.map(_footer, files))


def _typed_constants(values: dict[str, Any] | None) -> bool:
    """Whether a file's footer constants are all of their columns' SQL types (else the file is
    copied row by row and the normalising casts apply)."""
    if values is None:
        return False
    for name, v in values.items():
        typ = ROW_TYPES[name]
        ok = (v is None or (typ == "VARCHAR" and isinstance(v, str))
              or (typ == "BIGINT" and isinstance(v, int) and not isinstance(v, bool))
              or (typ == "DOUBLE" and isinstance(v, (int, float)) and not isinstance(v, bool)))
        if not ok:
            return False
    return True


#: What a narrow copy stores per row: everything but the per-file constants.
_NARROW = tuple(c for c in ROW_TYPES if c not in FILE_CONSTANT and c != "source_file")


def _copy_rows(con: Any, groups: dict[tuple, list[tuple[Path, Any]]], kept: list[tuple[str, str]]) -> None:
    """Copy the rows into the on-disk tables behind the view ``rows`` (every ROW_TYPES column,
    the ``kept`` parameter columns and ``fid``, the file's number) and ``consts`` (one row per
    narrow file, one per row of the others; see Rows.consts_view). Files proven to hold one
    value of each FILE_CONSTANT column (``narrow``) store only the per-row columns, and their
    constants once in ``files``: the copy is the largest single cost of a report."""
    import pyarrow as pa

    extra = [(n, sql_type(t)) for n, t in kept]
    con.execute("CREATE TABLE rows_narrow (fid BIGINT, " + ", ".join(
        f"{q(n)} {t}" for n, t in [*((c, ROW_TYPES[c]) for c in _NARROW), *extra]) + ")")
    con.execute("CREATE TABLE rows_wide (fid BIGINT, " + ", ".join(
        f"{q(n)} {t}" for n, t in [*ROW_TYPES.items(), *extra]) + ")")
    fid = 0
    table: dict[str, list[Any]] = {"fid": [], "source_file": [], "n": [], "narrow": [],
                                   **{c: [] for c in FILE_CONSTANT}}
    for (schema_key, narrow), members in groups.items():
        paths = [str(f) for f, _ in members]
        for f, head in members:
            table["fid"].append(len(table["fid"]))
            table["source_file"].append(str(f))
            table["n"].append(head.rows)
            table["narrow"].append(narrow)
            for c in FILE_CONSTANT:
                table[c].append(head.constants[c] if narrow else None)
        source = (f"(SELECT *, filename AS source_file, {fid} + file_index AS fid FROM read_parquet("
                  f"$files, filename = true, hive_partitioning = false))")
        available = {**dict(schema_key), "source_file": ""}
        if narrow:
            select = normalised_select(available, source, kept, only=_NARROW, extra="fid")
            con.execute(f"INSERT INTO rows_narrow BY NAME {select}", {"files": paths})
        else:
            select = normalised_select(available, source, kept, extra="fid")
            con.execute(f"INSERT INTO rows_wide BY NAME {select}", {"files": paths})
        fid += len(members)
    arrow = {"VARCHAR": pa.string(), "BIGINT": pa.int64(), "DOUBLE": pa.float64()}
    frame = pa.table({"fid": pa.array(table["fid"], pa.int64()),
                      "source_file": pa.array(table["source_file"], pa.string()),
                      "n": pa.array(table["n"], pa.int64()), "narrow": pa.array(table["narrow"], pa.bool_()),
                      **{c: pa.array(table[c], arrow[ROW_TYPES[c]]) for c in FILE_CONSTANT}})
    con.register("files_frame", frame)
    con.execute("CREATE TABLE files AS SELECT * FROM files_frame")
    con.unregister("files_frame")
    row_cols = [*ROW_TYPES, *(n for n, _ in kept)]
    narrow_cols = ", ".join(f"f.{q(c)}" if c in FILE_CONSTANT or c == "source_file" else f"r.{q(c)}"
                            for c in row_cols)
    wide_cols = ", ".join(q(c) for c in row_cols)
    consts = ", ".join(q(c) for c in (*FILE_CONSTANT, "source_file"))
    con.execute(f"""CREATE VIEW rows AS
        SELECT {narrow_cols}, r.fid FROM rows_narrow r JOIN files f USING (fid)
        UNION ALL SELECT {wide_cols}, fid FROM rows_wide""")
    con.execute(f"""CREATE VIEW consts AS
        SELECT {consts}, n FROM files WHERE narrow
        UNION ALL SELECT {consts}, 1 AS n FROM rows_wide""")


def _labels(cells: pd.DataFrame) -> pd.DataFrame:
    """Per cell, the data set's and classifier's labels where one plugin appears with different
    parameters in these results: ``celebahq(attribute=Smiling)`` and ``...=Eyeglasses`` are two
    configurations, never pooled into one number. Only the parameters that differ are named
    (a checkpoint path constant over the sweep would only clutter every title)."""
    parsed = []
    for text in cells["cell_json"]:
        try:
            cell = json.loads(text) if isinstance(text, str) and text else None
        except ValueError:
            cell = None
        parsed.append(cell if isinstance(cell, dict) else {})
    out = pd.DataFrame({"cell": cells["cell"], "dataset": None, "classifier": None})
    for kind in ("dataset", "classifier"):
        entries = [(c.get(kind) or {}) if isinstance(c.get(kind), dict) else {} for c in parsed]
        values: dict[tuple[str, str], set[str]] = {}
        for e in entries:
            for p, v in (e.get("params") or {}).items():
                values.setdefault((str(e.get("name")), p), set()).add(json.dumps(v, sort_keys=True))
        varying = {key for key, seen in values.items() if len(seen) > 1}
        labels = []
        for e in entries:
            name = str(e.get("name"))
            shown = [f"{p}={_short(v)}" for p, v in sorted((e.get("params") or {}).items())
                     if (name, p) in varying]
            labels.append(f"{name}({','.join(shown)})" if shown else None)
        out[kind] = labels
    return out


def _short(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _relabel(rows: Rows) -> None:
    """Point ``rows.view`` at a view whose dataset/classifier carry their labels (see _labels),
    when some cell needs it; the common sweep (plugin defaults) keeps the plain table."""
    labels = _labels(rows.cells)
    labels = labels[labels["dataset"].notna() | labels["classifier"].notna()]
    if labels.empty:
        return
    rows.con.register("cell_labels_frame", labels)
    rows.con.execute("CREATE OR REPLACE TEMP TABLE cell_labels AS SELECT * FROM cell_labels_frame")
    rows.con.unregister("cell_labels_frame")

    def labelled(view: str) -> str:
        rows.con.execute(f"""CREATE OR REPLACE TEMP VIEW {view}_labelled AS
            SELECT r.* REPLACE (coalesce(l.dataset, r.dataset) AS dataset,
                                coalesce(l.classifier, r.classifier) AS classifier)
            FROM {view} r LEFT JOIN cell_labels l USING (cell)""")
        return f"{view}_labelled"

    rows.view = labelled(rows.view)
    if rows.consts_view is not None:  # (else consts derive from the view)
        rows.consts_view = labelled(rows.consts_view)


def _param_fields(available: dict[str, str]) -> list[tuple[str, str]]:
    """The parameter columns the files have, with their column types."""
    from harness.results import ARROW_TYPES

    names = {str(t): n for n, t in ARROW_TYPES.items()}
    return [(c, names.get(t, "string")) for c, t in sorted(available.items()) if "." in c]


def _verdict(f: Path) -> str:
    from harness.results import read_part

    return read_part(f, required=REQUIRED_COLUMNS)[1].reason or "inconsistent rows"


def _row_problems(con: Any, footer_rows: dict[str, int]) -> tuple[list[str], pd.DataFrame]:
    """Files of this writer (``footer_rows``: their row counts) whose rows are not exactly their
    examples × eval runs, from ONE grouping by (cell, example): its rows, the bit mask of the
    runs seen (a run seen twice sets one bit for two rows) and the first and last file holding
    it. The few files it suspects are read whole, for read_part's reason. Returns those problems
    and the keys seen twice that no bad file of this writer explains, for :func:`_check_duplicates`."""
    from harness.results import _PART_RE

    con.execute("""CREATE OR REPLACE TEMP TABLE fe AS
        SELECT cell, example, count(*) AS c, count(eval_run) AS c_run,
               bit_or(CASE WHEN eval_run BETWEEN 0 AND 63 THEN (1::UBIGINT << eval_run::INTEGER) END) AS mask,
               min(eval_run) AS run_min, max(eval_run) AS run_max, count(eval_runs) AS c_decl,
               min(eval_runs) AS decl_lo, max(eval_runs) AS decl_hi,
               min(fid) AS file_lo, max(fid) AS file_hi
        FROM rows GROUP BY cell, example""")
    # runs outside 0..63 cannot be proven unique by the mask: count those cells' keys exactly
    exact = con.sql("""SELECT DISTINCT cell FROM fe WHERE run_min < 0 OR run_max > 63""").df()["cell"].tolist()
    dup = con.sql("""SELECT cell, example, file_lo, file_hi FROM fe
                     WHERE c_run = c AND run_min >= 0 AND run_max <= 63 AND bit_count(mask) < c""").df()
    if exact:
        con.register("exact_cells", pd.DataFrame({"cell": exact}))
        more = con.sql("""SELECT cell, example, min(fid) AS file_lo, max(fid) AS file_hi
                          FROM rows WHERE cell IN (SELECT cell FROM exact_cells)
                          GROUP BY cell, example, eval_run HAVING count(*) > 1""").df()
        dup = pd.concat([dup, more.drop_duplicates(["cell", "example"])], ignore_index=True)
    names = dict(con.sql("SELECT fid, source_file FROM files").fetchall())
    for c in ("file_lo", "file_hi"):  # file numbers (cheaper to group) back to names
        dup[c] = dup[c].map(names)
    within = (dup["file_lo"] == dup["file_hi"]) & dup["file_lo"].isin(footer_rows)
    inside = set(dup.loc[within, "file_lo"])  # read_part names these files' duplicated rows
    stats = con.sql("""
        SELECT any_value(f.source_file) AS source_file, sum(c) AS n, sum(c_run) AS n_run, sum(c_decl) AS n_decl,
               min(decl_lo) AS decl, max(decl_hi) AS decl_hi, count(*) AS examples,
               count(example) AS named, bool_and(c = decl_lo) AS each_full,
               bool_and(run_min >= 0 AND run_max <= 63 AND bit_count(mask) = c) AS unique_runs,
               min(run_min) AS run_min, max(run_max) AS run_max, min(example) AS first
        FROM fe JOIN files f ON f.fid = fe.file_lo WHERE file_lo = file_hi GROUP BY file_lo""").df().set_index("source_file")
    want = pd.Series(footer_rows, dtype="int64")
    st = stats.reindex(want.index)
    named = pd.Series([_PART_RE.match(Path(f).name) for f in want.index], index=want.index)
    first = named.map(lambda m: int(m.group(2)) if m else None)
    ok = ((st["n"] == want) & (st["named"] == st["examples"]) & (st["n_run"] == st["n"])
          & (st["n_decl"] == st["n"]) & (st["decl"] == st["decl_hi"]) & st["each_full"].eq(True)
          & st["unique_runs"].eq(True) & (st["run_min"] >= 0) & (st["run_max"] < st["decl"])
          & (st["n"] == st["examples"] * st["decl"]) & (first.isna() | (first == st["first"])))
    suspects = set(want.index[~ok.fillna(False).astype(bool)]) | (inside & set(want.index))
    return [f"{f}: {_verdict(Path(f))}" for f in sorted(suspects)], dup[~within]


def _slow_problems(files: list[Path], exc: BaseException) -> list[str]:
    """A scan failed: read each file whole to name the culprit(s)."""
    from harness.results import read_part

    found = [f"{f}: {c.reason}" for f in files for c in [read_part(f, required=REQUIRED_COLUMNS)[1]]
             if not c.ok]
    return found or [f"result files could not be scanned: {str(exc).splitlines()[0]}"]


def _cell_file(directory: Path, cache: dict[Path, dict[str, str] | None]) -> dict[str, str] | None:
    """The _cell.json of a cell directory, or None."""
    from harness.results import CELL_FILE, read_cell_file

    if directory not in cache:
        f = directory / CELL_FILE
        try:
            cache[directory] = read_cell_file(f) if f.is_file() else None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ResultsError(f"{f}: unreadable per-cell file ({exc})") from None
    return cache[directory]


def _telemetry(directory: Path | None) -> dict[str, float]:
    """Rows, joules and devices the tasks of one cell directory recorded (NVML, where present;
    nothing for rows outside a cell directory)."""
    tel_rows, energy, energy_rows, gpus = 0, 0.0, 0, set()
    found = sorted(directory.glob("shard=*/_telemetry-rank-*.json")) if directory is not None else []
    for f in found:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue  # telemetry never makes a result invalid
        rows = int(doc.get("rows") or 0)
        tel_rows += rows
        if isinstance(doc.get("energy_j"), (int, float)) and math.isfinite(doc["energy_j"]):
            energy += float(doc["energy_j"])
            energy_rows += rows
        if doc.get("gpu"):
            gpus.add(str(doc["gpu"]))
    return {"telemetry_rows": tel_rows, "energy_j": energy if energy_rows else math.nan,
            "energy_rows": energy_rows, "gpu": ",".join(sorted(gpus)) or None}


def _cells_table(rows: Rows, files: list[Path], params: list[tuple[str, str]]) -> pd.DataFrame:
    """One row per cell: cell JSON and assets (from its _cell.json, or from the rows of files
    written before it existed), whether rows mix asset files, parameter values, telemetry."""
    on_rows = rows.df(f"""SELECT cell, any_value(cell_json) AS cell_json, any_value(assets) AS assets,
                                 1 + coalesce(min(assets) <> max(assets), false)::INT AS asset_kinds
                          FROM {rows.consts} GROUP BY cell""").set_index("cell")
    cache: dict[Path, dict[str, str] | None] = {}
    dirs: dict[str, Path] = {}
    for f in files:  # cell=<hash>/shard=<k>/part
        d = f.parent.parent
        if d.name.startswith("cell="):
            dirs.setdefault(d.name[5:], d)
    # rows under a cell directory must be that cell's (one hash, one configuration)
    placed = rows.df(f"SELECT source_file, min(cell) AS lo, max(cell) AS hi FROM {rows.consts} GROUP BY source_file")
    for r in placed.itertuples(index=False):
        d = Path(r.source_file).parent.parent
        meta = _cell_file(d, cache) if d.name.startswith("cell=") else None
        if meta is not None and not (r.lo == r.hi == meta["cell"]):
            found = sorted({r.lo, r.hi})
            raise ResultsError(f"{r.source_file}: rows of cell(s) {', '.join(found)} under the "
                               f"_cell.json of cell {meta['cell']}")
    records = []
    for cell, r in on_rows.iterrows():
        d = dirs.get(str(cell))
        meta = _cell_file(d, cache) if d is not None else None
        cell_json = r["cell_json"] if isinstance(r["cell_json"], str) else (meta or {}).get("cell_json")
        assets = r["assets"] if isinstance(r["assets"], str) else (meta or {}).get("assets")
        records.append({"cell": cell, "cell_json": cell_json, "assets": assets,
                        "mixed_assets": int(r["asset_kinds"]) > 1,
                        **_telemetry(d)})
    cells = pd.DataFrame.from_records(records, columns=[
        "cell", "cell_json", "assets", "mixed_assets", "telemetry_rows", "energy_j", "energy_rows", "gpu"])
    return _with_params(cells, params)


def _with_params(cells: pd.DataFrame, have: list[tuple[str, str]]) -> pd.DataFrame:
    """``cells`` with a column per parameter (the plan's union over these cells, from their JSON;
    columns the rows carry come first, so both layouts give the same columns) and data_seed."""
    from harness.results import param_fields, param_values

    parsed = []
    for c in cells["cell_json"]:
        try:
            cell = json.loads(c) if isinstance(c, str) and c else {}
        except ValueError:
            cell = {}
        parsed.append(cell if isinstance(cell, dict) else {})
    fields = dict(have)
    fields.update({n: t for n, t in param_fields([p for p in parsed if p])} if any(parsed) else {})
    values = [param_values(p, list(fields.items())) for p in parsed]
    out = cells.copy()
    for name in fields:
        out[name] = [v[name] for v in values]
    out["data_seed"] = [p.get("data_seed") for p in parsed]
    out.attrs["params"] = list(fields.items())
    return out


def as_rows(data: pd.DataFrame | Rows) -> Rows:
    """Rows over a DataFrame (tests, small inputs) or the Rows of :func:`open_results`."""
    if isinstance(data, Rows):
        return data
    rows = from_frame(data)
    if rows.cells is None:
        rows.cells = _frame_cells(data, rows)
        _relabel(rows)
    return rows


def _frame_cells(df: pd.DataFrame, rows: Rows) -> pd.DataFrame:
    cells = rows.df("""SELECT cell, any_value(cell_json) AS cell_json, any_value(assets) AS assets,
                              coalesce(min(assets) <> max(assets), false) AS mixed_assets
                       FROM rows GROUP BY cell""")
    cells["telemetry_rows"], cells["energy_j"], cells["energy_rows"], cells["gpu"] = 0, math.nan, 0, None
    return _with_params(cells, rows.params)


def load_results(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Every result row under ``path`` as one DataFrame (validated as by :func:`open_results`),
    with ``cell_json``/``assets`` and the parameter columns re-attached from each cell (categorical
    ``cell_json``, ``assets`` and ``source_file``). Materialises all rows: for tests and small
    sweeps; `harness report` aggregates out of core instead."""
    rows = open_results(path, with_params=True)
    df = rows.df(f"SELECT * EXCLUDE (fid) FROM {rows.view}")
    cells = rows.cells.set_index("cell")
    for col in ("cell_json", "assets"):
        df[col] = df[col].where(df[col].notna(), df["cell"].map(cells[col]))
    dtypes = {"int64": "Int64", "float64": "float64", "bool": "boolean"}
    for name, typ in [*cells.attrs["params"], ("data_seed", "int64")]:
        derived = df["cell"].map(cells[name]).astype(object)
        have = df[name].astype(object) if name in df.columns else derived
        merged = have.where(have.notna(), derived)
        df[name] = merged.astype(dtypes[typ]) if typ in dtypes else merged
    for col in ("cell_json", "assets", "source_file"):
        df[col] = pd.Categorical(df[col])
    drop = [c for c in ("nonfinite_row",) if df[c].isna().all()]
    return df.drop(columns=drop).sort_values(["source_file", "cell", "example", "eval_run"],
                                             kind="stable").reset_index(drop=True)


def _check_duplicates(rows: Rows, dup: pd.DataFrame) -> None:
    """(cell, example, eval_run) keys in two files (found by _row_problems): a writer or resume
    bug, named with an example and the files holding it."""
    if dup.empty:
        return
    parts = []
    for cell, g in list(dup.sort_values(["cell", "example"]).groupby("cell", sort=True))[:3]:
        first = g.iloc[0]
        examples = ", ".join(str(int(e)) for e in g["example"])
        detail = rows.df(f"""SELECT example, eval_run, list(source_file ORDER BY source_file) AS files
                             FROM {rows.view} WHERE cell = {lit(str(cell))} AND example IN ({examples})
                             GROUP BY example, eval_run HAVING count(*) > 1 ORDER BY example, eval_run""")
        run = int(detail["eval_run"].iloc[0]) if len(detail) else "?"
        files = ", ".join(sorted({Path(str(s)).name for s in (detail["files"].iloc[0] if len(detail) else
                                                                [first["file_lo"], first["file_hi"]])}))
        parts.append(f"cell {cell}: {len(detail) or len(g)} (example, eval_run) key(s) appear more than once, "
                     f"e.g. example {first['example']} run {run} in {files}")
    more = dup["cell"].nunique() - len(parts)
    tail = f"; and {more} more cell(s)" if more > 0 else ""
    raise ResultsError("duplicate result rows (a writer or resume bug): " + "; ".join(parts) + tail)


def _check_cells(rows: Rows) -> None:
    # 2 where the cell's rows hold two values, or a value and a null (no DISTINCT: slow in DuckDB)
    spread = rows.df("SELECT cell, " + ", ".join(
        f"(min({q(c)}) IS DISTINCT FROM max({q(c)}))::INT + (count({q(c)}) BETWEEN 1 AND count(*) - 1)::INT "
        f"+ 1 AS {q(c)}" for c in _CELL_CONSTANT) + f" FROM {rows.consts} GROUP BY cell ORDER BY cell")
    spread = spread.set_index("cell")
    bad = spread[(spread > 1).any(axis=1)]
    if not bad.empty:
        cell = bad.index[0]
        cols = [c for c in _CELL_CONSTANT if bad.loc[cell, c] > 1]
        raise ResultsError(f"cell {cell}: rows disagree on {', '.join(cols)} "
                           "(one content hash must mean one configuration)")


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


# ---------------------------------------------------------------- the statistics, in SQL

#: A row's failure: a -1 prediction, or one carried in by a worst-of row.
_NONFINITE_SQL = (f"(adv_pred = {NONFINITE_PRED} OR coalesce(clean_pred = {NONFINITE_PRED}, false) "
                  "OR coalesce(nonfinite_row, false))")


def _per_example_sql(src: str, key: str = "cell") -> str:
    """One row per (``key``, example) (``key``: the cell, or a worst-of group's number): the
    per-example numbers, the sums the group statistics and validity checks need, and the
    majority vote. A non-finite prediction (-1) is a failure, not
    a class: it is never correct, and a tie between the failures and a class goes to the
    failures (the vote key ranks -1 above every class at equal counts); other ties go to the
    smallest class index."""
    # Narrow on purpose: one row per (cell, example) is the big intermediate (10 M rows at one
    # run each); per-cell sums (cost, perturbation) come from a separate grouping by cell.
    return f"""
    WITH r AS (SELECT {key}, example, y, data_index, eval_runs, clean_correct, adv_correct, adv_pred,
                      clean_pred, {_NONFINITE_SQL} AS nf, coalesce(grad_nonfinite, 0) AS g FROM {src}),
    votes AS (SELECT {key}, example, adv_pred, count(*) AS k FROM r WHERE eval_runs > 1
              GROUP BY {key}, example, adv_pred),
    vote AS (SELECT {key}, example, arg_max(adv_pred, k * 4294967296 - adv_pred) AS vote
             FROM votes GROUP BY {key}, example),
    ex AS (
      SELECT {key}, example, any_value(y) AS y, any_value(coalesce(data_index, example)) AS image,
             sum(clean_correct::BIGINT) AS clean_rows, sum(adv_correct::BIGINT) AS robust_rows,
             count(*) AS runs_seen,  -- (cell, example, eval_run) keys are unique
             bool_and(adv_correct) AS robust_worst, sum(nf::BIGINT) AS nonfinite,
             max(g) AS grad_nonfinite, any_value(adv_pred) AS one_pred,
             coalesce(min(clean_pred) <> max(clean_pred), false)
               OR min(adv_pred) <> max(adv_pred) AS varies
      FROM r GROUP BY {key}, example)
    SELECT ex.* EXCLUDE (one_pred),
           (coalesce(vote.vote, ex.one_pred) = ex.y AND coalesce(vote.vote, ex.one_pred) <> {NONFINITE_PRED})
             AS robust_vote
    FROM ex LEFT JOIN vote USING ({key}, example)"""


def _cell_constants_sql(consts: str) -> str:
    """Per cell: its planned constants (from ``consts``, see Rows.consts)."""
    return f"""SELECT cell, any_value(sweep) AS sweep, {', '.join(f'any_value({q(c)}) AS {q(c)}' for c in _CELL_CONSTANT)},
                      any_value(purifier) AS purifier, any_value(attack) AS attack, any_value(seed) AS seed
               FROM {consts} GROUP BY cell"""


def _ns(col: str) -> str:
    """Seconds as integer nanoseconds: their sums are exact, so a total does not depend on the
    order a parallel scan adds in (a float sum differs in the last bits from run to run)."""
    return f"round({col} * 1e9)::BIGINT"


def _cell_sums_sql(src: str, key: str = "cell") -> str:
    """Per ``key``: the sums over its rows (``src``) that need no per-example step."""
    return f"""SELECT {key}, count(*) AS rows, sum(nfe) AS nfe_sum, sum({_ns('time_s')})::HUGEINT AS time_ns,
                      sum(grad_evals) AS grad_sum, count(grad_evals) AS grad_rows,
                      sum(perturbation) FILTER (WHERE adv_correct) AS pert_sum,
                      count(perturbation) FILTER (WHERE adv_correct) AS pert_rows,
                      sum(adv_correct::BIGINT) AS robust_rows_cell,
                      bool_or(found_by IS NOT NULL) AS found_by,
                      bool_or(grad_nonfinite IS NOT NULL) AS grad_recorded
               FROM {src} GROUP BY {key}"""


@dataclass
class Aggregate:
    """What one out-of-core pass over the rows gives: the summary (one row per GROUP_KEYS), the
    per-group facts the validity checks read (``info``), per cell (``cells``: examples ``seen``,
    ``all_runs``, ``planned``, ``complete``, cost sums, telemetry, its constants) and totals."""

    summary: pd.DataFrame
    info: pd.DataFrame
    cells: pd.DataFrame
    totals: dict[str, Any]


def _materialise(rows: Rows, tag: str, worst: bool = False) -> tuple[str, str]:
    """Per-example and per-cell tables of the rows (``worst``: and of the worst-of rows in
    ``worst_narrow``/``worst_cells``, see aggregate), temporary; DuckDB spills them when large."""
    ex, cc = f"ex_{tag}", f"cc_{tag}"
    per_ex, sums, consts = [_per_example_sql(rows.view)], [_cell_sums_sql(rows.view)], rows.consts
    if worst:  # grouped by the worst-of group's number (not its long cell name), named after
        w = ("(SELECT n.*, c.eval_runs, NULL::DOUBLE AS perturbation, NULL::VARCHAR AS found_by "
             "FROM worst_narrow n JOIN worst_cells c USING (wid))")  # (none of their own)
        per_ex.append(f"SELECT c.cell, e.* EXCLUDE (wid) FROM ({_per_example_sql(w, 'wid')}) e "
                      "JOIN worst_cells c USING (wid)")
        sums.append(f"SELECT c.cell, s.* EXCLUDE (wid) FROM ({_cell_sums_sql(w, 'wid')}) s "
                    "JOIN worst_cells c USING (wid)")
        consts = f"(SELECT * FROM {consts} UNION ALL BY NAME SELECT * EXCLUDE (wid) FROM worst_cells)"
    union = " UNION ALL BY NAME ".join
    rows.con.execute(f"CREATE OR REPLACE TEMP TABLE {ex} AS " + union(f"(SELECT * FROM ({p}))" for p in per_ex))
    keys = ", ".join(q(k) for k in GROUP_KEYS)
    rows.con.execute(f"""CREATE OR REPLACE TEMP TABLE {cc} AS
        SELECT *, dense_rank() OVER (ORDER BY {keys}) AS gid
        FROM ({_cell_constants_sql(consts)}) JOIN ({union(f"(SELECT * FROM ({p}))" for p in sums)}) USING (cell)""")
    return ex, cc


def aggregate(data: pd.DataFrame | Rows, worst_of: bool = True, z: float = 1.96) -> Aggregate:
    """Summary, validity facts, completeness and totals of the rows (with worst-of rows over
    attacks when ``worst_of``), computed out of core; see :func:`summarise` for the numbers."""
    rows = as_rows(data)
    const_src, worst = rows.consts, False
    if worst_of:
        narrow = _worst_sql(rows, _WORST_REPORT_COLUMNS, part="narrow")
        if narrow is not None:  # rows per (group, example, run); their constants once per group
            rows.con.execute(f"CREATE OR REPLACE TEMP TABLE worst_narrow AS SELECT * FROM {narrow}")
            rows.con.execute("CREATE OR REPLACE TEMP TABLE worst_cells AS SELECT * FROM "
                             + str(_worst_sql(rows, part="cells")))
            const_src = f"(SELECT * FROM {rows.consts} UNION ALL BY NAME SELECT * EXCLUDE (wid) FROM worst_cells)"
            worst = True
    ex, cc = _materialise(rows, "all", worst)
    keys = list(GROUP_KEYS)
    per_cell = rows.df(f"""
        SELECT e.cell, any_value(c.gid) AS gid, count(*) AS seen,
               sum((e.runs_seen >= c.eval_runs)::BIGINT) AS all_runs,
               any_value(c.cell_examples) AS planned, any_value(c.eval_runs) AS eval_runs,
               any_value(c.rows) AS rows, any_value(c.nfe_sum) AS nfe_sum, any_value(c.time_ns) / 1e9 AS time_s,
               any_value(c.grad_sum) AS grad_sum, any_value(c.grad_rows) AS grad_rows
        FROM {ex} e JOIN {cc} c USING (cell) GROUP BY e.cell""")
    per_cell["complete"] = (per_cell["seen"] == per_cell["planned"]) & (per_cell["all_runs"] == per_cell["planned"])
    counts = rows.df(f"""
        SELECT c.gid, e.runs_seen AS runs, sum(e.clean_rows) AS k_clean, sum(e.robust_rows) AS k_robust,
               count(*) AS examples
        FROM {ex} e JOIN {cc} c USING (cell) GROUP BY c.gid, e.runs_seen""")
    rows.con.register("group_lcm", _common_denominators(counts))
    # Per image T_i = sum over its (cell, example) of k / runs, held as the integer T_i * L (L: the
    # lcm of the group's run counts), so every sum below is exact and independent of the order a
    # parallel scan adds in: the interval is the same to the last bit on every run.
    groups = rows.df(f"""
        WITH e AS (SELECT e.*, c.gid FROM {ex} e JOIN {cc} c USING (cell)),
        img AS (SELECT gid, image, sum(robust_rows * (l // runs_seen))::HUGEINT AS tn, count(*) AS m,
                       any_value(l) AS l
                FROM e JOIN group_lcm USING (gid) GROUP BY gid, image),
        ratio AS (SELECT gid, sum(tn) AS tn_sum, count(*) AS k, sum(m) AS m_sum,
                         bool_and(tn = 0 OR tn = m * l) AS all01, any_value(l) AS l
                  FROM img GROUP BY gid),
        spread AS (SELECT img.gid, sum(((ratio.m_sum * img.tn - ratio.tn_sum * img.m)
                                        * (ratio.m_sum * img.tn - ratio.tn_sum * img.m))::HUGEINT)::VARCHAR
                              AS squares_num  -- as text: a DataFrame would turn a HUGEINT into a float
                   FROM img JOIN ratio USING (gid) GROUP BY img.gid),
        g AS (SELECT gid, count(*) AS cell_n,
                     avg(robust_vote::DOUBLE) AS robust_vote, avg(robust_worst::DOUBLE) AS robust_worst,
                     sum(nonfinite) AS nonfinite, sum(grad_nonfinite) AS grad_nonfinite,
                     count_if(grad_nonfinite > 0) AS grad_nonfinite_examples,
                     bool_or(varies) AS random_seen
              FROM e GROUP BY gid),
        c AS (SELECT gid, sum(rows) AS rows, sum(nfe_sum) / sum(rows) AS nfe, sum(time_ns) / 1e9 AS time_s,
                     sum(grad_sum) / nullif(sum(grad_rows), 0) AS grad_evals,
                     sum(pert_sum) / nullif(sum(pert_rows), 0) AS pert_robust,
                     sum(robust_rows_cell) AS robust_rows, bool_or(found_by) AS found_by,
                     bool_or(grad_recorded) AS grad_recorded
              FROM {cc} GROUP BY gid)
        SELECT *, k AS n FROM g JOIN ratio USING (gid) JOIN spread USING (gid) JOIN c USING (gid)
        ORDER BY gid""")
    rows.con.unregister("group_lcm")
    _exact_means(groups, counts)
    consts = rows.df(f"""SELECT gid, {', '.join(f'any_value({q(k)}) AS {q(k)}' for k in keys)},
                                any_value(purifier) AS purifier, any_value(attack) AS attack,
                                count(*) AS cells, string_agg(DISTINCT sweep, ',' ORDER BY sweep) AS sweeps
                         FROM {cc} GROUP BY gid""").set_index("gid")
    cell_gid = rows.df(f"SELECT cell, gid FROM {cc}")
    devices = rows.df(f"SELECT DISTINCT cell, device FROM {const_src}").dropna().merge(cell_gid, on="cell")
    consts["devices"] = devices.groupby("gid")["device"].agg(lambda v: sorted(set(v)))
    summary = _summary_frame(groups, consts, per_cell, rows.cells, cell_gid, z)
    info = _info_frame(groups, consts, rows.cells, cell_gid)
    totals = sweep_totals(rows)
    constants = rows.df(f"""SELECT * EXCLUDE (gid, cell_examples, eval_runs, rows, nfe_sum, time_ns, grad_sum,
                                              grad_rows, pert_sum, pert_rows, robust_rows_cell, found_by,
                                              grad_recorded) FROM {cc}""")
    constants["device"] = constants["cell"].map(devices.groupby("cell")["device"].agg(
        lambda v: ",".join(sorted(set(v)))))
    per_cell = per_cell.merge(constants, on="cell")
    if rows.cells is not None:
        per_cell = per_cell.merge(rows.cells[["cell", "energy_j", "energy_rows", "gpu"]], on="cell", how="left")
    for t in (ex, cc, "worst_narrow", "worst_cells"):
        rows.con.execute(f"DROP TABLE IF EXISTS {t}")
    return Aggregate(summary, info, per_cell, totals)


def _common_denominators(counts: pd.DataFrame) -> pd.DataFrame:
    """Per group, the lcm of its examples' run counts (the denominator of every k / runs)."""
    from math import lcm

    out = counts.groupby("gid")["runs"].agg(lambda r: lcm(*(int(x) for x in r)))
    if (out > 2**40).any():  # would overflow the integer sums (only with hundreds of run counts)
        raise ResultsError("too many different numbers of evaluation runs in one configuration "
                           f"(lcm {out.max()}) to sum the interval exactly")
    return out.rename("l").reset_index()


def _exact_means(groups: pd.DataFrame, counts: pd.DataFrame) -> None:
    """The group means of per-example accuracies (k / runs each) and the interval's sums as
    exact fractions, rounded once: integer sums per number of runs (means) and the integer
    numerators of the per-image totals (``tn_sum``, ``squares_num`` over (L * M)^2).
    Deterministic, whatever order a parallel scan summed in (a float sum differs in the last bit)."""
    from fractions import Fraction

    exact: dict[int, list[Fraction]] = {}
    for r in counts.itertuples(index=False):
        acc = exact.setdefault(int(r.gid), [Fraction(0), Fraction(0), Fraction(0)])
        acc[0] += Fraction(int(r.k_clean), int(r.runs))
        acc[1] += Fraction(int(r.k_robust), int(r.runs))
        acc[2] += int(r.examples)
    for col, i in (("clean", 0), ("robust_mean", 1)):
        groups[col] = [float(exact[g][i] / exact[g][2]) for g in groups["gid"]]
    groups["r"] = groups["robust_mean"]
    groups["squares"] = [float(Fraction(int(sq), (int(l) * int(m)) ** 2))
                         for sq, l, m in zip(groups["squares_num"], groups["l"], groups["m_sum"])]


def sweep_totals(data: pd.DataFrame | Rows) -> dict[str, Any]:
    """Rows, files, sweeps, cells, the distinct provenance values, and the cells whose rows mix
    asset files (a checkpoint replaced and re-staged mid-sweep)."""
    rows = as_rows(data)
    seen = rows.df(f"""SELECT sweep, cell, source_file, harness_version, git_rev, torch_version, device, precision,
                              sum(n) AS n
                       FROM {rows.consts} GROUP BY ALL""")
    out: dict[str, Any] = {"rows": int(seen["n"].sum()), "files": seen["source_file"].nunique(),
                           "sweeps": seen["sweep"].nunique(), "cells": seen["cell"].nunique()}
    for k in ("harness_version", "git_rev", "torch_version", "device", "precision"):
        out[k] = sorted(seen[k].dropna().unique())
    cells = rows.cells
    out["mixed_assets"] = sorted(cells.loc[cells["mixed_assets"].astype(bool), "cell"]) if cells is not None else []
    return out


def _summary_frame(groups: pd.DataFrame, consts: pd.DataFrame, per_cell: pd.DataFrame,
                   cells: pd.DataFrame | None, cell_gid: pd.DataFrame, z: float) -> pd.DataFrame:
    planned = per_cell.groupby("gid").agg(cell_examples=("planned", "sum"), complete=("complete", "all"),
                                          runs=("eval_runs", "min"))
    out = groups.join(consts, on="gid").join(planned, on="gid")
    lo_hi = [interval_from_clusters(float(r.r), int(r.k), float(r.squares), float(r.m_sum), bool(r.all01), z)
             for r in out.itertuples(index=False)]
    out["ci_lo"] = [a for a, _ in lo_hi]
    out["ci_hi"] = [b for _, b in lo_hi]
    for c in ("cells", "n", "cell_n", "cell_examples", "runs", "rows", "nonfinite", "grad_nonfinite",
              "grad_nonfinite_examples"):
        out[c] = out[c].astype("int64")
    out["complete"] = out["complete"].astype(bool)
    out["s_per_row"] = out["time_s"] / out["rows"]
    out["devices"] = [",".join(v) if isinstance(v, list) else "" for v in out["devices"]]
    energy = _group_energy(cells, cell_gid)
    out = out.join(energy, on="gid")
    out = out.join(_group_params(cells, cell_gid), on="gid")
    extra = ["purifier", "attack", "grad_evals", "s_per_row", "energy_j", "j_per_row", "devices"]
    params = [c for c in out.columns if "." in c]
    return _sort(out[[*SUMMARY_COLUMNS, *extra, *params]])


def _group_energy(cells: pd.DataFrame | None, cell_gid: pd.DataFrame) -> pd.DataFrame:
    """Joules per group and per row from the cells' NVML telemetry (NaN without any)."""
    if cells is None or cells.empty:
        return pd.DataFrame(columns=["energy_j", "j_per_row"], index=pd.Index([], name="gid"))
    c = cell_gid.merge(cells[["cell", "energy_j", "energy_rows"]], on="cell", how="left")
    g = c.groupby("gid").agg(energy_j=("energy_j", lambda s: s.sum(min_count=1)),
                             energy_rows=("energy_rows", "sum"))
    g["j_per_row"] = g["energy_j"] / g["energy_rows"].where(g["energy_rows"] > 0)
    return g[["energy_j", "j_per_row"]]


def _hashable(v: Any) -> Any:
    return tuple(v) if isinstance(v, (list, np.ndarray)) else v


def _group_params(cells: pd.DataFrame | None, cell_gid: pd.DataFrame) -> pd.DataFrame:
    """Each parameter column's value per group, where all its cells agree (else None)."""
    names = [n for n, _ in (cells.attrs.get("params", []) if cells is not None else [])]
    if not names:
        return pd.DataFrame(index=pd.Index([], name="gid"))
    c = cell_gid.merge(cells[["cell", *names]], on="cell", how="left")
    out = {}
    for gid, g in c.groupby("gid", sort=True):
        row = {}
        for n in names:
            values = {_hashable(v) for v in g[n] if v is not None and not (isinstance(v, float) and math.isnan(v))}
            row[n] = next(iter(values)) if len(values) == 1 else None
            if isinstance(row[n], tuple):
                row[n] = list(row[n])
        out[gid] = row
    frame = pd.DataFrame.from_dict(out, orient="index", columns=names)
    frame.index.name = "gid"
    return frame


def _info_frame(groups: pd.DataFrame, consts: pd.DataFrame, cells: pd.DataFrame | None,
                cell_gid: pd.DataFrame) -> pd.DataFrame:
    """Per group, what the validity checks read: plugin names, the attack's parameters (from a
    cell's JSON), randomness seen, mean perturbation on robust rows. Worst-of groups (synthetic
    cells) carry none of it, as they never had a plugin of their own."""
    keys = list(GROUP_KEYS)
    info = groups[["gid", "random_seen", "pert_robust", "robust_rows", "found_by", "grad_recorded"]].join(
        consts[[*keys, "purifier", "attack"]], on="gid")
    first_json = (cell_gid.merge(cells[["cell", "cell_json"]], on="cell", how="left")
                  .sort_values("cell").groupby("gid")["cell_json"].first()) if cells is not None else None
    info["cell_json"] = info["gid"].map(first_json) if first_json is not None else None
    worst = info["attack"].astype(str) == WORST_OF
    for c in ("purifier", "attack", "cell_json", "pert_robust"):
        info[c] = info[c].astype(object).where(~worst, None)
    return info.drop(columns=["gid"])


def per_example(df: pd.DataFrame | Rows) -> pd.DataFrame:
    """One row per (cell, example): mean clean/adv correctness over runs, vote, worst case, the
    image it shows (``image``), its non-finite rows and its attack's non-finite gradients."""
    rows = as_rows(df)
    ex, cc = _materialise(rows, "pe")
    out = rows.df(f"""SELECT e.cell, e.example, e.y, e.image, e.clean_rows / e.runs_seen AS clean,
                             e.robust_rows / e.runs_seen AS robust_mean, e.robust_worst,
                             e.runs_seen, e.nonfinite, e.grad_nonfinite, e.robust_vote,
                             {', '.join(f'c.{q(k)}' for k in _CELL_CONSTANT)}, c.sweep
                      FROM {ex} e JOIN {cc} c USING (cell) ORDER BY e.cell, e.example""")
    return out


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    # Baselines (`none` threat/attack/defence) lead; the rest sort by name, label before classifier.
    helpers = {f"_{c}_named": frame[c].astype(str) != "none"
               for c in ("threat", "attack_label", "label")}
    order = ["dataset", "_threat_named", "threat", "eps", "_attack_label_named", "attack_label",
             "_label_named", "label", "classifier"]
    return (frame.assign(**helpers).sort_values(order, kind="stable")
            .drop(columns=list(helpers)).reset_index(drop=True))


def summarise(df: pd.DataFrame | Rows, z: float = 1.96) -> pd.DataFrame:
    """One row per (dataset, threat, eps, attack_label, classifier, label); see SUMMARY_COLUMNS,
    then ``purifier``, ``attack``, the cost columns (``grad_evals`` and ``s_per_row`` per row,
    ``energy_j`` and ``j_per_row`` from NVML telemetry where recorded, ``devices``) and each
    parameter column's value where the group's cells agree.

    Accuracies weight every (cell, example) equally (mean over them of the per-example mean
    over runs), so an example with a missing run is not under-weighted. ``complete`` is true
    only when every cell in the group has all ``cell_examples`` examples, each with all
    ``eval_runs`` runs. ``ci_lo``/``ci_hi`` bound ``robust_mean`` clustered by image
    (:func:`analysis.stats.clustered_interval`, from per-image sums), however many seeds, cells
    or runs are pooled; ``n`` is the number of images. ``nfe`` is the mean per row (one
    purification), ``time_s`` the total over rows.
    """
    return aggregate(df, worst_of=False, z=z).summary


WORST_OF = "worst-of"


#: What the summary reads of a worst-of row beyond its combined outcome (the report path).
_WORST_REPORT_COLUMNS = ("y", "data_index", "clean_pred", "clean_correct", "purifier", "device")


def _worst_sql(rows: Rows, columns: tuple[str, ...] | None = None, part: str = "rows") -> str | None:
    """SQL of the worst-of rows of ``rows`` (None when no defence met two attacks): for every
    defence attacked by two or more attacks at the same threat and eps (and sweep, seed), an
    example counts as robust in evaluation run r only if it is robust under every attack in run
    r (as DiffPure reports min(AutoAttack standard, rand), but per example, which is never
    weaker). Only examples and runs present under every attack are combined; the synthetic
    cells' planned examples and runs are their constituents' fewest. The prediction is the first
    (by label) attack's that fooled it; failures (non-finite) and costs add up."""
    keys = ["sweep", "dataset", "classifier", "label", "threat", "eps", "seed"]
    k = ", ".join(q(c) for c in keys)
    # per cell first (small), so the row-level work is one join on `cell` and one grouping
    groups = f"""
      pc AS (SELECT cell, {', '.join(f'any_value({q(c)}) AS {q(c)}' for c in keys)},
                    any_value(attack_label) AS attack_label, any_value(attack) AS attack,
                    any_value(cell_examples) AS ce, any_value(eval_runs) AS er,
                    any_value(purifier) AS purifier, any_value(device) AS device
             FROM {rows.consts} GROUP BY cell),
      l AS (SELECT {k}, count(*) AS nl, list(attack_label ORDER BY attack_label) AS labels,
                   list(cell ORDER BY cell) AS cells, min(ce) AS ce, min(er) AS er,
                   arg_min_null(purifier, attack_label) AS purifier,
                   arg_min(device, attack_label) AS device
            FROM pc WHERE attack IS DISTINCT FROM 'none' GROUP BY {k}
            HAVING count(*) >= 2 AND count(DISTINCT attack_label) = count(*)),
      lw AS (SELECT *, row_number() OVER (ORDER BY {k}) AS wid FROM l)"""
    if not rows.sql(f"WITH {groups} SELECT count(*) FROM lw").fetchall()[0][0]:
        return None
    firsts = [c for c in ROW_TYPES if c not in {
        *keys, "cell", "attack", "attack_label", "cell_examples", "eval_runs", "example", "eval_run",
        "adv_pred", "adv_correct", "nfe", "time_s", "grad_nonfinite", "grad_evals", "nonfinite_row",
        "cell_json", "source_file"}]
    params = [n for n, _ in rows.params if not n.startswith("attack.")]
    if columns is not None:  # only what the caller reads (each is one more aggregate per key)
        firsts, params = [c for c in firsts if c in columns], []
    cell = "'worst:' || array_to_string(list_transform(lw.cells, lambda c: c[1:8]), '+')"
    label = f"'{WORST_OF}[' || array_to_string(lw.labels, ' | ') || ']'"
    if part == "cells":  # per group: its synthetic cell's constants (device, purifier: the first attack's)
        return f"""(WITH {groups}
            SELECT wid, {', '.join(f'lw.{q(c)}' for c in keys)}, {cell} AS cell, '{WORST_OF}' AS attack,
                   {label} AS attack_label, ce AS cell_examples, er AS eval_runs, '{{}}' AS cell_json,
                   purifier, device FROM lw)"""
    if part == "narrow":  # the constants come from part="cells"
        firsts = [c for c in firsts if c not in ("purifier", "device")]
        tail = "SELECT w.* EXCLUDE (c, nl) FROM w WHERE w.c = w.nl"
    else:
        tail = f"""SELECT {', '.join(f'lw.{q(c)}' for c in keys)}, {cell} AS cell, '{WORST_OF}' AS attack,
             {label} AS attack_label, lw.ce AS cell_examples, lw.er AS eval_runs,
             w.* EXCLUDE (wid, c, nl), '{{}}' AS cell_json
      FROM w JOIN lw USING (wid) WHERE w.c = w.nl"""
    return f"""(
      WITH {groups},
      cw AS (SELECT pc.cell, lw.wid, lw.nl, list_position(lw.labels, pc.attack_label) AS pos
             FROM pc JOIN (SELECT wid, nl, labels, unnest(cells) AS cell FROM lw) lw USING (cell)),
      -- arg_min(.., pos): the value on the row of the first attack by label (no sort per group);
      -- the prediction: the first attack's that fooled it (fooled rows rank 65536 ahead), else the first's
      w AS (SELECT wid, example, eval_run, count(*) AS c, any_value(nl) AS nl,
                   bool_and(adv_correct) AS adv_correct,
                   arg_min(adv_pred, (NOT coalesce(NOT adv_correct, false))::INT * 65536 + pos) AS adv_pred,
                   bool_or({_NONFINITE_SQL}) AS nonfinite_row,
                   sum(coalesce(grad_nonfinite, 0)) AS grad_nonfinite,
                   sum(grad_evals) AS grad_evals, sum(nfe) AS nfe, sum({_ns('time_s')}) / 1e9 AS time_s,
                   {', '.join(f'arg_min_null({q(c)}, pos) AS {q(c)}' for c in [*firsts, *params])}
            FROM {rows.view} JOIN cw USING (cell) GROUP BY wid, example, eval_run)
      {tail})"""


def with_worst_over_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the worst-of rows of :func:`_worst_sql` appended (attack ``worst-of``, label
    ``worst-of[a | b | ...]``, cells ``worst:<8 hex>+...``, no ``attack.*`` parameters)."""
    rows = as_rows(df)
    sql = _worst_sql(rows)
    if sql is None:
        return df
    worst = rows.df(f"SELECT * FROM {sql}")
    worst = worst[[c for c in worst.columns if c in df.columns or c == ROW_NONFINITE]]
    return pd.concat([df, worst], ignore_index=True)
