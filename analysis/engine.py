"""Result rows as a DuckDB view: the report's aggregations run out of core over the part files.

Why DuckDB: measured on the synthetic 10 M-row sweep of ``benchmarks/report_scale.py``
(benchmarks/RESULTS.md), its Parquet scan + hash aggregation reads only the columns a query
names, streams row groups, spills to disk past ``memory_limit``, and ran the report's core
aggregation fastest at the smallest peak memory of the engines tried (polars' streaming engine,
pyarrow's dataset scanner). SQL also lets one text of each statistic serve both inputs: the
part files of a results directory (``harness report``) and an in-memory DataFrame (the tests,
:func:`analysis.aggregate.summarise` on rows built by hand).

:class:`Rows` is a connection plus the name of a view with the normalised row columns
(:data:`ROW_TYPES`; optional ones NULL where the writer had none) and a per-cell table
(``cells``: cell JSON, assets, parameter values) that is small: one row per cell.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

#: Normalised row columns and their SQL types; those in REQUIRED must be in every part file.
ROW_TYPES: dict[str, str] = {
    "sweep": "VARCHAR", "cell": "VARCHAR", "dataset": "VARCHAR", "threat": "VARCHAR",
    "eps": "DOUBLE", "attack_label": "VARCHAR", "classifier": "VARCHAR", "label": "VARCHAR",
    "cell_examples": "BIGINT", "eval_runs": "BIGINT", "example": "BIGINT", "y": "BIGINT",
    "eval_run": "BIGINT", "clean_correct": "BOOLEAN", "adv_pred": "BIGINT",
    "adv_correct": "BOOLEAN", "nfe": "BIGINT", "time_s": "DOUBLE",
    # optional: absent in older writers' files
    "data_index": "BIGINT", "clean_pred": "BIGINT", "perturbation": "DOUBLE", "found_by": "VARCHAR",
    "grad_evals": "BIGINT", "grad_nonfinite": "BIGINT", "seed": "BIGINT", "data_seed": "BIGINT",
    "purifier": "VARCHAR", "attack": "VARCHAR", "harness_version": "VARCHAR", "git_rev": "VARCHAR",
    "torch_version": "VARCHAR", "host": "VARCHAR", "device": "VARCHAR", "precision": "VARCHAR",
    "grad_checkpoint": "BOOLEAN",
    "nonfinite_row": "BOOLEAN",  # carried by worst-of rows (analysis.aggregate)
    "cell_json": "VARCHAR", "assets": "VARCHAR",  # on every row in files before _cell.json
    "source_file": "VARCHAR",
}

#: Columns a part file of this writer holds one value of (one cell's rows, written by one
#: process): proven from the footer's statistics, they are stored once per file, not per row.
FILE_CONSTANT: tuple[str, ...] = (
    "sweep", "cell", "dataset", "threat", "eps", "attack_label", "classifier", "label",
    "cell_examples", "eval_runs", "seed", "data_seed", "purifier", "attack", "harness_version",
    "git_rev", "torch_version", "host", "device", "precision", "cell_json", "assets")

#: DuckDB working memory; past it, aggregations spill to a temporary directory. With the
#: Python process and Arrow buffers this keeps `harness report` within ~2 GB at 10 M rows.
MEMORY_LIMIT = os.environ.get("HARNESS_REPORT_MEMORY", "1GB")


def q(name: str) -> str:
    """A quoted SQL identifier (parameter columns hold dots: ``"purifier.t_s"``)."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """A quoted SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def connect(on_disk: bool = False) -> Any:
    """A private DuckDB with bounded memory and its own spill directory (removed when the
    connection is garbage-collected). ``on_disk``: its tables live in a database file there,
    compressed, so a 10 M-row copy of the columns the report reads costs disk, not memory."""
    import duckdb

    spill = tempfile.mkdtemp(prefix="harness-report-")
    database = os.path.join(spill, "rows.duckdb") if on_disk else ":memory:"
    con = duckdb.connect(database, config={
        "memory_limit": MEMORY_LIMIT, "temp_directory": spill,
        "preserve_insertion_order": False,
    })
    con.execute("SET enable_progress_bar = false")
    weakref.finalize(con, shutil.rmtree, spill, True)
    return con


@dataclass
class Rows:
    """Result rows behind a view ``view`` of connection ``con`` (columns: ROW_TYPES plus the
    parameter columns ``params``); ``cells`` holds per-cell constants, one row per cell.
    ``consts_view``: a relation with the FILE_CONSTANT columns, ``source_file`` and ``n`` (the
    rows each of its rows stands for), one row per file where the files prove them constant:
    what a query that reads only constants scans instead of every row."""

    con: Any
    view: str
    params: list[tuple[str, str]] = field(default_factory=list)
    cells: pd.DataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    consts_view: str | None = None

    @property
    def consts(self) -> str:
        if self.consts_view is not None:
            return self.consts_view
        cols = ", ".join(q(c) for c in (*FILE_CONSTANT, "source_file"))
        return f"(SELECT {cols}, 1 AS n FROM {self.view})"

    def sql(self, query: str) -> Any:
        return self.con.sql(query)

    def df(self, query: str) -> pd.DataFrame:
        return self.con.sql(query).df()


def normalised_select(available: dict[str, str], source: str,
                      params: list[tuple[str, str]] = (), only: tuple[str, ...] | None = None,
                      extra: str = "") -> str:
    """``SELECT`` of every ROW_TYPES column (``only``: of these) (cast; NULL when ``available``
    lacks it), of the ``params`` columns present and of ``extra`` (SQL), from ``source``."""
    parts = []
    for name, typ in ROW_TYPES.items():
        if only is not None and name not in only:
            continue
        parts.append(f"CAST({q(name)} AS {typ}) AS {q(name)}" if name in available
                     else f"CAST(NULL AS {typ}) AS {q(name)}")
    for name, typ in params:
        if name in available:
            parts.append(f"CAST({q(name)} AS {sql_type(typ)}) AS {q(name)}")
    return "SELECT " + ", ".join([*parts, *([extra] if extra else [])]) + f" FROM {source}"


#: Parameter column type (harness.results.PARAM_TYPES values) → SQL type.
SQL_TYPES = {"int64": "BIGINT", "float64": "DOUBLE", "bool": "BOOLEAN", "string": "VARCHAR",
             "list<float64>": "DOUBLE[]", "list<string>": "VARCHAR[]"}


def sql_type(typ: str) -> str:
    return SQL_TYPES.get(typ, "VARCHAR")


def from_frame(df: pd.DataFrame, con: Any | None = None, name: str = "rows") -> Rows:
    """Rows over an in-memory DataFrame (categoricals read as strings)."""
    con = con or connect()
    frame = df.copy(deep=False)
    for c in frame.columns:
        if isinstance(frame[c].dtype, pd.CategoricalDtype):
            frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    raw = f"{name}_frame"
    con.register(raw, frame)
    params = [(c, _frame_param_type(frame[c])) for c in frame.columns if "." in c]
    available = {c: "" for c in frame.columns}
    con.execute(f"CREATE OR REPLACE VIEW {name} AS {normalised_select(available, raw, params)}")
    return Rows(con, name, params, extra={"frame": frame})  # the view reads this frame: keep it alive


def _frame_param_type(s: pd.Series) -> str:
    if pd.api.types.is_bool_dtype(s):
        return "bool"
    if pd.api.types.is_integer_dtype(s):
        return "int64"
    if pd.api.types.is_float_dtype(s):
        return "float64"
    sample = s.dropna()
    first = sample.iloc[0] if len(sample) else None
    if isinstance(first, (list, tuple)) or hasattr(first, "tolist") and not isinstance(first, str):
        values = list(first)
        return "list<string>" if values and isinstance(values[0], str) else "list<float64>"
    return "string"
