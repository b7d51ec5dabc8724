"""The plan: one row per (cell, shard), written once per sweep as Parquet.

An array task receives only (plan path, row index), so the row carries everything a worker
needs: the cell as canonical JSON, its hash, the example range and the cell's example count.
The cost columns are estimates of denoiser evaluations, for sizing jobs before anything is
submitted.

At scale (a million rows) the plan is built a row group at a time from the grid's CellTable:
the plugins' hooks run once per variant, not once per row, and no row exists as a Python
object. The file holds row groups of ROW_GROUP_ROWS rows, so a task decodes one group to
read its row (load_plan_row), never the whole plan.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from . import registry
from .difftime import T  # noqa: F401  (re-exported: plan costs are in steps of T)
from .errors import UsageError
from .fsutil import atomic_write
from .grid import HASH_SALT, MAX_ROWS, Grid, cell_label, salted_hashes
from .registry import KINDS

if TYPE_CHECKING:  # pandas and pyarrow load on use: a task reading its row needs no pandas
    import pandas as pd
    import pyarrow as pa

COLUMNS = ("row", "sweep", "cell", "shard", "start", "stop", "cell_json", "label", "attack_label",
           "dataset", "classifier", "purifier", "attack", "seed", "batch_size",
           "nfe_per_example", "nfe_total", "gflop_total", "assets_dir", "asset_sha256", "param_columns",
           "cell_examples", "denoiser")
_INT_COLUMNS = ("row", "shard", "start", "stop", "seed", "batch_size", "nfe_per_example",
                "nfe_total", "cell_examples")
_FLOAT_COLUMNS = ("gflop_total",)
#: What summary() and cost_table() read of a plan.
SUMMARY_COLUMNS = ("cell", "purifier", "start", "stop", "nfe_total", "gflop_total", "denoiser")
#: Rows per Parquet row group: what a task decodes to read its row. Smaller groups make the
#: footer (read whole by every task) larger; benchmarks/plan_scale.py measured the choice.
ROW_GROUP_ROWS = 4096


# ---------------------------------------------------------------- cost estimate
# The plugins' own hooks (harness.registry.PluginSpec): the plan names no plugin.

def nfe_per_purification(purifier: dict[str, Any]) -> int:
    """Estimated denoiser evaluations to purify one example once (the purifier's `nfe` hook)."""
    return int(registry.get("purifier", purifier["name"]).nfe(purifier["params"]))


def attack_passes(attack: dict[str, Any]) -> int:
    """Purifier passes per example an attack adds, a backward pass counting as one more (the
    attack's `passes` hook): greybox gradients skip the purifier, BPDA runs it forward only,
    a query attack pays one forward per query."""
    return int(registry.get("attack", attack["name"]).passes(attack["params"]))


def passes_per_example(cell: dict[str, Any]) -> int:
    """Purify-and-classify passes per example: clean and adversarial evaluation runs, plus the attack's."""
    return cell["eval_runs"] * 2 + attack_passes(cell["attack"])


def nfe_row(cell: dict[str, Any], n_examples: int) -> int:
    """Estimated denoiser evaluations of one row: clean and adversarial evaluations plus attack."""
    return nfe_per_purification(cell["purifier"]) * n_examples * passes_per_example(cell)


def gflop_per_pass(cell: dict[str, Any]) -> float:
    """Estimated GFLOPs of one purify-and-classify pass of one example (the cell's purifier and
    classifier are all it reads); NaN when an architecture is not in the catalogue."""
    from .catalog import arch_of, classifier_arch

    nfe = nfe_per_purification(cell["purifier"])
    denoiser = arch_of("denoiser", cell["purifier"]["params"].get("denoiser")) if nfe else None
    classifier = classifier_arch(cell["classifier"])
    if classifier is None or (nfe and denoiser is None):
        return float("nan")
    return nfe * (denoiser.gflops if denoiser else 0.0) + classifier.gflops


def gflop_row(cell: dict[str, Any], n_examples: int) -> float:
    """Estimated GFLOPs of one row (denoiser and classifier forwards; a backward pass counted
    as one more forward, like the NFE); NaN when an architecture is not in the catalogue."""
    return gflop_per_pass(cell) * n_examples * passes_per_example(cell)


# ---------------------------------------------------------------- plan

def param_columns(cells: list[dict[str, Any]]) -> str:
    """The result rows' parameter columns, [["<kind>.<param>", type], ...] as JSON: the union over
    the sweep's cells, so that every part file of the sweep has the same schema."""
    import json

    from .results import param_fields

    return json.dumps([list(f) for f in param_fields(cells)], separators=(",", ":"))


def shard_ranges(examples: int, shard_size: int) -> list[tuple[int, int]]:
    """[start, stop) of each shard; the last one may be short."""
    return [(k, min(examples, k + shard_size)) for k in range(0, examples, shard_size)]


def plan_schema() -> pa.Schema:
    """The plan's columns as written and read back: int64, float64 (gflop_total) and strings."""
    import pyarrow as pa

    return pa.schema([(c, pa.int64() if c in _INT_COLUMNS else pa.float64() if c in _FLOAT_COLUMNS
                       else pa.string()) for c in COLUMNS])


#: Columns with a few distinct values (per sweep or per variant): built and written as
#: dictionaries, so a million rows cost indices, not a million strings to hash and compress.
_DICTIONARY_COLUMNS = ("sweep", "label", "attack_label", *KINDS, "assets_dir", "asset_sha256", "param_columns",
                       "denoiser")


def _batch_schema() -> pa.Schema:
    """plan_schema with _DICTIONARY_COLUMNS as dictionaries: what plan_batches yields."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.dictionary(pa.int32(), f.type)) if f.name in _DICTIONARY_COLUMNS
                      else f for f in plan_schema()])


def _used(index: Any, n: int) -> Any:
    """Which of n values an index array uses, as a boolean mask (O(len + n), no sort)."""
    import numpy as np

    mask = np.zeros(n, dtype=bool)
    mask[index] = True
    return mask


def _per_value(grid: Grid, axis: str, fn: Callable[[Any], Any], unused: Any = None) -> list[Any]:
    """fn of each value of a CellTable axis that some cell has (`unused` for the others: an
    excluded variant's hooks never run, as they never did)."""
    values = grid.table.values[axis]
    used = _used(grid.table.index[axis], len(values))
    return [fn(v) if u else unused for v, u in zip(values, used.tolist())]


def _coded(values: list[Any]) -> tuple[Any, pa.Array]:
    """(code of each value, the distinct values): a dictionary's values must be distinct, or
    the Parquet writer's output depends on more than the data (two PGD variants share a name)."""
    import numpy as np
    import pyarrow as pa

    distinct: dict[Any, int] = {}
    codes = [distinct.setdefault(v, len(distinct)) for v in values]
    return np.array(codes, dtype=np.int64), pa.array(list(distinct), pa.string())


def _dictionary(codes: Any, values: pa.Array) -> tuple[pa.Array, pa.Array]:
    """(indices, dictionary) of values[codes] over the values a batch uses only, so that a row
    group's dictionary page holds its own variants, not every variant of the sweep."""
    import numpy as np
    import pyarrow as pa

    used = np.flatnonzero(_used(codes, len(values)))
    renumber = np.zeros(len(values), dtype=np.int32)
    renumber[used] = np.arange(len(used), dtype=np.int32)
    return pa.array(renumber[codes]), values.take(pa.array(used))


@dataclass(frozen=True)
class ShardSizing:
    """How long one array task may run and the rates that turn a cell's work into time.

    Each cell's shards are the longest that end within `budget_s` (never longer than the grid's
    shard_size; whole batches where a batch fits), from the denoiser evaluations per second
    measured for its denoiser (`harness calibrate`), else from its estimated GFLOPs at the
    assumed `tflops`; a cell neither covers keeps the grid's shard_size. The ranks of a task
    split its shard, so a shard's time is divided by `ranks`. Time in the classifier is not
    counted where a denoiser rate is measured (the denoiser's evaluations dominate).

    `keep`: cell → its shard size in the sweep's earlier plan. Results live in one directory
    per (cell, shard index), so re-sizing a planned cell (a new calibration) would make an index
    mean other examples; a planned cell keeps its size."""

    budget_s: float
    ranks: int = 1
    rates: Mapping[str, float] = field(default_factory=dict)
    tflops: float | None = None
    where: str = "the profile"
    keep: Mapping[str, int] = field(default_factory=dict)

    def seconds_per_example(self, nfe: Any, passes: Any, per_pass: Any, denoisers: list[str],
                            denoiser_of_cell: Any) -> Any:
        """Estimated seconds of one example of each cell on one task (NaN: nothing to go by)."""
        import numpy as np

        rate = np.array([self.rates.get(d, np.nan) if d else np.nan for d in denoisers] or [np.nan],
                        dtype=np.float64)[denoiser_of_cell]
        with np.errstate(divide="ignore", invalid="ignore"):
            measured = nfe * passes / rate
            assumed = per_pass * passes / (self.tflops * 1e3) if self.tflops else np.full(len(nfe), np.nan)
        return np.where(np.isfinite(measured), measured, assumed) / max(1, self.ranks)

    def shard_sizes(self, grid: Grid, seconds: Any, cell_texts: Callable[[int, int], tuple[Any, list[str]]]) -> Any:
        """Each cell's shard size (int64); UsageError if one example alone exceeds the budget."""
        import json

        import numpy as np

        with np.errstate(divide="ignore", invalid="ignore"):
            fit = np.floor(self.budget_s / seconds)  # inf where free, NaN where unknown
        cut = fit < grid.shard_size  # only a shard the budget shortens changes (NaN: no estimate)
        whole = np.where(fit >= grid.batch_size, fit // grid.batch_size * grid.batch_size, fit)
        size = np.where(cut, whole, grid.shard_size).astype(np.int64)
        if self.keep:
            for lo in range(0, len(size), ROW_GROUP_ROWS):
                hashes = cell_texts(lo, min(len(size), lo + ROW_GROUP_ROWS))[1]
                kept = np.array([self.keep.get(h, 0) for h in hashes], dtype=np.int64)
                size[lo:lo + len(kept)] = np.where(kept > 0, kept, size[lo:lo + len(kept)])
        if (size < 1).any():
            i = int(np.flatnonzero(size < 1)[0])
            cell = json.loads(cell_texts(i, i + 1)[0][0].as_py())
            raise UsageError(
                f"{grid.path}: one example of cell {cell_label(cell, 'purifier')} × "
                f"{cell_label(cell, 'attack')} needs ~{seconds[i]:,.0f} s on {self.where}, more than a "
                f"task's budget of {self.budget_s:,.0f} s; raise the profile's time_min, or lower the "
                "attack's steps, eot or queries")
        return size


def plan_batches(grid: Grid, assets: str | Path | None = None,
                 sizing: ShardSizing | None = None) -> Iterator[pa.RecordBatch]:
    """The plan's rows in order, ROW_GROUP_ROWS at a time (the last batch may be short): one row
    per (cell, shard), in cell order then shard order; `row` is the array index. Columns as
    _batch_schema (plan_frame makes them plain).

    `assets_dir` is where the workers resolve `asset:<name>` values (see harness.catalog).
    `sizing`: each cell's shards no longer than its time budget allows (shard_sizes); without
    it every cell has the grid's shard_size."""
    import json

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from .catalog import assets_dir, pins

    table = grid.table
    root = assets_dir(str(assets) if assets else None, grid.assets)
    cells = grid.representative_cells  # every variant and pair the two columns below look at
    # The sha256 of every catalogued file as staged now: the workers hold the files to it.
    fixed = {"sweep": grid.sweep, "assets_dir": str(root),
             "asset_sha256": json.dumps(pins(cells, root), sort_keys=True), "param_columns": param_columns(cells)}
    # Per variant (the hooks run once each), then per cell by index.
    per_value = {k: (k, *_coded(_per_value(grid, k, lambda v: v["name"], ""))) for k in KINDS}
    for column, kind in (("label", "purifier"), ("attack_label", "attack")):
        per_value[column] = (kind, *_coded(_per_value(grid, kind, lambda v: cell_label({kind: v}, kind), "")))
    # the network a calibration's rate is measured for ("" for a purifier without one)
    per_value["denoiser"] = ("purifier", *_coded(_per_value(
        grid, "purifier", lambda v: str(v["params"].get("denoiser") or "") if nfe_per_purification(v) else "", "")))
    ip, ic, ia = (table.index[k] for k in ("purifier", "classifier", "attack"))
    nfe = np.array(_per_value(grid, "purifier", nfe_per_purification, 0), dtype=np.int64)[ip]
    eval_runs = table.settings["eval_runs"]
    passes = np.array(_per_value(grid, "attack", lambda v: passes_per_example({"eval_runs": eval_runs, "attack": v}),
                                 0), dtype=np.int64)[ia]
    n_cls = len(table.values["classifier"])
    pairs, pair_of_cell = np.unique(ip * n_cls + ic, return_inverse=True)
    per_pass = np.array([gflop_per_pass({"purifier": table.values["purifier"][int(c) // n_cls],
                                         "classifier": table.values["classifier"][int(c) % n_cls]})
                         for c in pairs], dtype=np.float64)[pair_of_cell.reshape(-1)]
    literals, axes = table.json_pieces()
    value_json = {a: pa.array(table.value_json(a), pa.string()) for a in set(axes)}

    def cell_texts(lo: int, hi: int) -> tuple[Any, list[str]]:
        """Cells lo..hi-1: canonical JSON joined from their values' JSON (CellTable.json_pieces), and hashes."""
        pieces: list[Any] = [literals[0]]
        for a, literal in zip(axes, literals[1:]):
            pieces += [value_json[a].take(pa.array(table.index[a][lo:hi])), literal]
        texts = pc.binary_join_element_wise(*pieces, "")
        return texts, salted_hashes(pc.binary_join_element_wise(HASH_SALT, texts, "").cast(pa.binary()).to_pylist())

    size_of = np.full(len(table), grid.shard_size, dtype=np.int64)  # each cell's shard size
    if sizing is not None:
        dn_kind, dn_codes, dn_values = per_value["denoiser"]
        seconds = sizing.seconds_per_example(nfe, passes, per_pass, dn_values.to_pylist(),
                                             dn_codes[table.index[dn_kind]])
        size_of = sizing.shard_sizes(grid, seconds, cell_texts)
    counts = -(-grid.examples // size_of)
    ends = np.cumsum(counts)  # row r belongs to the cell whose [end - count, end) holds it
    if sizing is not None and len(ends) and int(ends[-1]) > MAX_ROWS:
        raise UsageError(f"{grid.path}: sized so each task ends within {sizing.budget_s / 60:,.0f} min on "
                         f"{sizing.where}, the plan has {int(ends[-1]):,} rows, more than {MAX_ROWS:,}; raise "
                         "the profile's time_min, or narrow the grid or lower its attacks' steps, eot or queries")
    if float((nfe.astype(np.float64) * passes).max()) * float(size_of.max()) >= 2.0 ** 63:
        raise UsageError(f"{grid.path}: a row's estimated denoiser evaluations exceed 2^63; "
                         "lower the attack's steps, eot or queries, or the shard size")
    seeds = np.array(table.values["seeds"], dtype=np.int64)[table.index["seeds"]]
    schema = _batch_schema()
    n_rows = int(ends[-1]) if len(ends) else 0
    for first in range(0, n_rows, ROW_GROUP_ROWS):
        rows = np.arange(first, min(n_rows, first + ROW_GROUP_ROWS), dtype=np.int64)
        n = len(rows)
        cell = np.searchsorted(ends, rows, side="right")
        shard = rows - (ends[cell] - counts[cell])
        lo, hi = int(cell[0]), int(cell[-1]) + 1
        local = pa.array(cell - lo)
        texts, hashes = cell_texts(lo, hi)  # hashed once per cell
        start = shard * size_of[cell]
        stop = np.minimum(grid.examples, start + size_of[cell])
        size = stop - start
        zeros = pa.array(np.zeros(n, np.int32))
        cols: dict[str, Any] = {
            **{k: pa.DictionaryArray.from_arrays(zeros, pa.array([v], pa.string())) for k, v in fixed.items()},
            **{k: pa.DictionaryArray.from_arrays(*_dictionary(codes[table.index[kind][cell]], values))
               for k, (kind, codes, values) in per_value.items()},
            "row": rows, "cell": pa.array(hashes, pa.string()).take(local),
            "shard": shard, "start": start, "stop": stop,
            "cell_json": texts.take(local), "seed": seeds[cell], "batch_size": np.full(n, grid.batch_size),
            "nfe_per_example": nfe[cell], "nfe_total": nfe[cell] * size * passes[cell],
            "gflop_total": per_pass[cell] * size * passes[cell], "cell_examples": np.full(n, grid.examples),
        }
        yield pa.RecordBatch.from_arrays([cols[c] if isinstance(cols[c], pa.Array) else pa.array(cols[c], pa.int64()
                                          if c in _INT_COLUMNS else pa.float64()) for c in COLUMNS], schema=schema)


def plan_table(grid: Grid, assets: str | Path | None = None, sizing: ShardSizing | None = None) -> pa.Table:
    """The whole plan as one Arrow table of plan_batches (write_plan(plan=) writes it as is)."""
    import pyarrow as pa

    return pa.Table.from_batches(list(plan_batches(grid, assets, sizing)), schema=_batch_schema())


def plan_frame(table: pa.Table) -> pd.DataFrame:
    """A plan_table as the DataFrame load_plan reads back from the file (plain columns)."""
    return table.cast(plan_schema()).to_pandas()


def make_plan(grid: Grid, assets: str | Path | None = None, sizing: ShardSizing | None = None) -> pd.DataFrame:
    """The whole plan as a DataFrame (what load_plan reads back from write_plan's file)."""
    return plan_frame(plan_table(grid, assets, sizing))


def _plan_file(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no plan here; run `harness plan <grid.yaml>` first")
    return path


def load_plan(path: str | Path, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """A plan written by write_plan, whole or only `columns` (e.g. SUMMARY_COLUMNS)."""
    import pandas as pd

    return pd.read_parquet(_plan_file(path), columns=list(columns) if columns else None)


def load_plan_row(path: str | Path, index: int) -> dict[str, Any]:
    """Row `index` of a plan, as a dict of plain Python values, decoding only its row group (at
    a million rows: the footer and one group, ~0.02 s and ~25 MB over the imports, instead of
    the whole plan; benchmarks/plan_scale.py).

    A plan written before the `cell_examples` column existed gets it computed (the largest
    `stop` of the cell's rows, from those two columns only)."""
    import pyarrow.parquet as pq

    path = _plan_file(path)
    # Repeated strings stay dictionaries until the one row is taken: 4096 copies of the sweep's
    # parameter columns are not made to read one.
    # (Only the columns the file has: older plans lack some, e.g. param_columns or denoiser.)
    meta = pq.read_metadata(path)
    names = set(meta.schema.names)
    plan = pq.ParquetFile(path, metadata=meta, read_dictionary=[c for c in _DICTIONARY_COLUMNS if c in names])
    if not 0 <= index < meta.num_rows:
        raise IndexError(f"{path}: row {index} out of range 0..{meta.num_rows - 1}")
    first = 0
    for group in range(meta.num_row_groups):
        n = meta.row_group(group).num_rows
        if index < first + n:
            break
        first += n
    row = plan.read_row_group(group, use_threads=False).slice(index - first, 1).to_pylist()[0]
    if "cell_examples" not in row:
        import pyarrow.compute as pc

        t = plan.read(columns=["cell", "stop"])
        row["cell_examples"] = pc.max(pc.filter(t["stop"], pc.equal(t["cell"], row["cell"]))).as_py()
    return row


def _write_parquet(batches: Iterator[pa.RecordBatch], path: Path) -> None:
    """Write the batches to `path`, one row group each, and fsync. The writer (compression in
    C++, without the GIL) runs in a thread while the next batch is built (hashing, which holds
    it): on two cores the plan costs the larger of the two, not their sum."""
    import queue
    import threading

    import pyarrow.parquet as pq

    todo: queue.Queue[pa.RecordBatch | None] = queue.Queue(maxsize=2)
    failed: list[BaseException] = []
    with open(path, "wb") as f:
        # Without the Arrow schema in the file the dictionary columns read back as plain strings.
        with pq.ParquetWriter(f, _batch_schema(), compression="zstd", compression_level=1, write_statistics=False,
                              use_dictionary=list(_DICTIONARY_COLUMNS), store_schema=False) as writer:
            def write() -> None:
                while (batch := todo.get()) is not None:
                    try:
                        if not failed:
                            writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
                    except BaseException as exc:  # noqa: BLE001 (re-raised by the builder below)
                        failed.append(exc)

            thread = threading.Thread(target=write, name="plan-writer", daemon=True)
            thread.start()
            try:
                for batch in batches:
                    if failed:
                        break
                    todo.put(batch)
            finally:
                todo.put(None)
                thread.join()
            if failed:
                raise failed[0]
        f.flush()
        os.fsync(f.fileno())


def planned_shard_sizes(jobs_dir: str | Path, sweep: str) -> dict[str, int]:
    """cell → the size of its shards in the sweep's plan under jobs_dir ({} where none is)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    path = Path(jobs_dir) / sweep / "plan.parquet"
    if not path.is_file():
        return {}
    try:
        t = pq.read_table(path, columns=["cell", "shard", "start", "stop"], filters=[("shard", "=", 0)])
    except Exception as exc:  # noqa: BLE001 (an unreadable plan is refused the same way as by write_plan)
        raise UsageError(f"{path}: existing plan is unreadable ({exc}); remove it to plan again") from None
    sizes = pc.subtract(t["stop"], t["start"]).to_pylist()
    return dict(zip(t["cell"].cast("string").to_pylist(), sizes))


def _cells(path: Path) -> pa.Array:
    """The distinct cells of a plan file, read from its `cell` column only."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=["cell"]).column("cell").cast(pa.string()).unique()


def _same_cells(path: Path, new: Path) -> bool:
    import pyarrow.compute as pc

    try:
        old = _cells(path)
    except Exception as exc:  # noqa: BLE001 (any unreadable plan is treated the same way)
        raise UsageError(f"{path}: existing plan is unreadable ({exc}); "
                         "pass overwrite=True to replace it") from None
    cells = _cells(new)
    return len(old) == len(cells) and bool(pc.all(pc.is_in(cells, value_set=old)).as_py())


def write_plan(grid: Grid, jobs_dir: str | Path = "jobs", overwrite: bool = False,
               assets: str | Path | None = None, plan: pa.Table | None = None,
               sizing: ShardSizing | None = None) -> Path:
    """Write jobs/<sweep>/plan.parquet and grid.yaml (the source bytes); return the plan path.

    The plan is streamed from plan_batches (a million rows never held at once), or taken from
    `plan`, the grid's plan_table where the caller built it already. An identical plan is left
    untouched. The same cells with other sizes (e.g. more examples) replace it, since results
    are keyed by cell hash and example index. Other cells under the same sweep name are
    refused unless overwrite=True.
    """
    import filecmp

    from .fsutil import file_lock, remove_temporaries, temporary_name

    out = Path(jobs_dir) / grid.sweep
    plan_path, grid_path = out / "plan.parquet", out / "grid.yaml"
    out.mkdir(parents=True, exist_ok=True)
    # Every writer of the plan holds this lock (beside the sweep's directory, which holds only
    # the plan and grid), so under it any temporary of theirs is a killed `harness plan`'s.
    with file_lock(out.parent / f".{grid.sweep}.plan.lock") as state:
        if state == "held":
            remove_temporaries(out, plan_path.name, grid_path.name)
        tmp = temporary_name(plan_path)  # as atomic_write's, but written in row groups
        try:
            batches = plan.to_batches(ROW_GROUP_ROWS) if plan is not None else plan_batches(grid, assets, sizing)
            _write_parquet(batches, tmp)
            if plan_path.exists():
                if not overwrite and not _same_cells(plan_path, tmp):
                    raise UsageError(f"{plan_path}: sweep name {grid.sweep!r} is taken by a different "
                                     "grid; choose another `sweep:` name or pass overwrite=True")
                if (filecmp.cmp(tmp, plan_path, shallow=False) and grid_path.is_file()
                        and grid_path.read_bytes() == grid.source):
                    return plan_path
            atomic_write(grid_path, grid.source)  # the plan last: its presence marks a complete write
            os.replace(tmp, plan_path)
        finally:
            tmp.unlink(missing_ok=True)
    return plan_path


# ---------------------------------------------------------------- summary

def human(n: float) -> str:
    """1234567 → '1.2 M'."""
    for div, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n:.0f}" if n == int(n) or abs(n) >= 100 else f"{n:.3g}"  # 0.0434, not 0


def summary(plan_df: pd.DataFrame) -> str:
    """One line: cells, shards, examples and estimated denoiser evaluations."""
    cells = plan_df["cell"].nunique()
    examples = int((plan_df["stop"] - plan_df["start"]).sum())
    per_cell = int(plan_df["stop"].max()) if len(plan_df) else 0
    nfe = int(plan_df["nfe_total"].sum())
    return (f"{cells} cells × {per_cell} examples = {examples} cell-examples in "
            f"{len(plan_df)} shards; ~{human(nfe)} denoiser evaluations (estimate)")


def cost_table(plan_df: pd.DataFrame, gpu_tflops: float | None = None,
               rates: dict[str, float] | None = None) -> str:
    """Per purifier, and in all: denoiser evaluations, TFLOPs and, given a sustained TFLOP/s
    rate per GPU (the profile's `gpu_tflops`), the estimated GPU-hours; and, given measured
    denoiser evaluations per second per denoiser (`harness calibrate`), the GPU-hours those
    rates give, with the rows no rate covers named."""
    if not len(plan_df):
        return ""
    if rates and "denoiser" in plan_df.columns:
        return _measured_cost(plan_df, rates)
    groups = plan_df.groupby("purifier", sort=False).agg(
        cells=("cell", "nunique"), nfe=("nfe_total", "sum"),
        gflop=("gflop_total", lambda v: v.sum(min_count=len(v))))
    groups.loc["all"] = [plan_df["cell"].nunique(), plan_df["nfe_total"].sum(),
                         plan_df["gflop_total"].sum(min_count=len(plan_df))]
    lines = [f"{'purifier':<12} {'cells':>6} {'denoiser evals':>15} {'TFLOP':>10} {'GPU-hours':>10}"]
    for name, g in groups.iterrows():
        known = g["gflop"] == g["gflop"]
        tflop = human(g["gflop"] / 1e3) if known else "?"
        hours = f"{g['gflop'] / 1e3 / gpu_tflops / 3600:,.1f}" if known and gpu_tflops else "?"
        lines.append(f"{str(name):<12} {int(g['cells']):>6} {human(g['nfe']):>15} {tflop:>10} {hours:>10}")
    return "\n".join(lines)


def _measured_cost(plan_df: pd.DataFrame, rates: dict[str, float]) -> str:
    """GPU-hours per denoiser from measured rates (nfe_total / rate); a denoiser without one is
    listed as not measured, and one without denoiser evaluations costs none."""
    lines = [f"{'denoiser':<28} {'cells':>6} {'denoiser evals':>15} {'evals/s':>10} {'GPU-hours':>10}"]
    total, missing = 0.0, []
    for name, g in plan_df.groupby("denoiser", sort=True):
        nfe = float(g["nfe_total"].sum())
        rate = rates.get(str(name)) if name else None
        if name and rate:
            total += nfe / rate / 3600
        elif name:
            missing.append(str(name))
        hours = f"{nfe / rate / 3600:,.2f}" if rate else ("0" if not name else "not measured")
        lines.append(f"{str(name) or '(none)':<28} {g['cell'].nunique():>6} {human(nfe):>15} "
                     f"{(f'{rate:,.0f}' if rate else '-'):>10} {hours:>10}")
    lines.append(f"{'all':<28} {plan_df['cell'].nunique():>6} {human(float(plan_df['nfe_total'].sum())):>15} "
                 f"{'':>10} {total:>10,.2f}" + (f" (+ {', '.join(missing)}: not measured)" if missing else ""))
    return "\n".join(lines)
