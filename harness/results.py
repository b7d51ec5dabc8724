"""The per-example result schema and the shard writer/reader.

Layout: <results>/<sweep>/cell=<hash>/shard=<k>/rank-<r>-part-<first example>.parquet.
A part file holds every row of one batch (all its examples × evaluation runs) and appears
by an atomic rename, so a batch is either wholly there or not at all; resume reads which
examples a shard already has and computes only the rest.

Every resolved plugin parameter is a typed column ``<kind>.<param>`` (``purifier.t_s``,
``attack.eps``, ...; null where the cell's plugin lacks it). Their (name, type) list is the
union over the sweep's cells, computed at plan time (:func:`param_fields`), so every part
file of a sweep has the same schema. Per-cell constants (the cell JSON and the sha256 of the
catalogued files it used) are not on the rows: they are written once per cell, as
<results>/<sweep>/cell=<hash>/_cell.json (:func:`write_cell_file`).
"""
from __future__ import annotations

import functools
import json
import os
import platform
import re
import subprocess
import sys
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError
from .fsutil import atomic_write, file_lock, lock_holder, temporary_name

#: clean_pred / adv_pred of an example whose logits held a NaN or an infinity: never a class.
NONFINITE_PRED = -1

SCHEMA = pa.schema([
    ("sweep", pa.string()), ("cell", pa.string()), ("shard", pa.int32()), ("rank", pa.int32()),
    ("label", pa.string()), ("dataset", pa.string()), ("classifier", pa.string()),
    ("purifier", pa.string()), ("attack", pa.string()), ("attack_label", pa.string()),
    ("threat", pa.string()), ("eps", pa.float64()), ("seed", pa.int64()), ("data_seed", pa.int64()),
    ("cell_examples", pa.int64()), ("eval_runs", pa.int32()),
    ("example", pa.int64()), ("data_index", pa.int64()), ("y", pa.int64()), ("eval_run", pa.int32()),
    ("clean_pred", pa.int64()), ("adv_pred", pa.int64()),
    ("clean_correct", pa.bool_()), ("adv_correct", pa.bool_()),
    ("perturbation", pa.float64()), ("grad_evals", pa.int64()),
    ("grad_nonfinite", pa.int64()),  # the attack's non-finite (zeroed) gradient evaluations, per example
    ("found_by", pa.string()),  # AutoAttack / Square: the sub-attack that fooled it, "" if none; else null
    ("seed_purify", pa.int64()), ("seed_attack", pa.int64()), ("nfe", pa.int64()), ("time_s", pa.float64()),
    ("harness_version", pa.string()), ("git_rev", pa.string()),
    ("torch_version", pa.string()), ("host", pa.string()), ("device", pa.string()),
    ("precision", pa.string()),  # the networks' precision: fp32 | bf16 (harness.precision)
    # whether the purifier's activations were recomputed in the backward pass (chosen per batch:
    # on where they did not fit in device memory, and on CPU)
    ("grad_checkpoint", pa.bool_()),
])  # + the cell's parameter columns (row_schema); cell_json and assets: in _cell.json

#: Columns this writer adds that earlier ones did not write: a part without them is still
#: valid (its rows are as good; recomputing finished work for a new record would waste it).
LATER_COLUMNS = ("grad_checkpoint",)
#: What a part file must have to count: SCHEMA less LATER_COLUMNS.
REQUIRED_COLUMNS = tuple(n for n in SCHEMA.names if n not in LATER_COLUMNS)

#: Per-cell constants, once per cell beside its shard directories (ignored by result readers).
CELL_FILE = "_cell.json"
#: Columns older writers put on every row, now in CELL_FILE.
CELL_COLUMNS = ("cell_json", "assets")

# ---------------------------------------------------------------- parameter columns

#: Declared parameter type (harness.registry.Param.type) → column type name. "number" (an int
#: diffusion step or a float fraction of T) is float64: both fit, and 50 and 50.0 mean the same.
PARAM_TYPES = {"int": "int64", "float": "float64", "number": "float64", "bool": "bool",
               "str": "string", "list[number]": "list<float64>", "list[str]": "list<string>"}
ARROW_TYPES = {"int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(), "string": pa.string(),
               "list<float64>": pa.list_(pa.float64()), "list<string>": pa.list_(pa.string())}


def _inferred_type(value: Any) -> str:
    """Column type of a value whose plugin is not registered here (e.g. old third-party rows)."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int64"
    if isinstance(value, float):
        return "float64"
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return "list<string>"
    if (isinstance(value, list) and value
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return "list<float64>"
    return "string"


def _merge_type(a: str, b: str) -> str:
    """Two plugins of one kind declaring the same parameter name with different types:
    int and float give float64; anything else the value's JSON text (string)."""
    if a == b:
        return a
    return "float64" if {a, b} == {"int64", "float64"} else "string"


def param_fields(cells: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """[(``<kind>.<param>``, column type name), ...] over the cells' plugins, in kind then name order."""
    from .registry import KINDS, get

    found: dict[str, str] = {}
    for cell in cells:
        for kind in KINDS:
            entry = cell.get(kind) or {}
            try:
                declared = get(kind, entry.get("name")).params
            except Exception:  # noqa: BLE001 (a plugin not registered here: types from the values)
                declared = {}
            for p, v in (entry.get("params") or {}).items():
                typ = PARAM_TYPES[declared[p].type] if p in declared else _inferred_type(v)
                name = f"{kind}.{p}"
                found[name] = _merge_type(found[name], typ) if name in found else typ
    order = {k: i for i, k in enumerate(KINDS)}
    return sorted(found.items(), key=lambda kv: (order[kv[0].split(".", 1)[0]], kv[0]))


def _column_value(value: Any, typ: str) -> Any:
    if value is None:
        return None
    if typ == "float64":
        return float(value)
    if typ == "list<float64>":
        return [float(v) for v in value]
    if typ == "string" and not isinstance(value, str):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def param_values(cell: dict[str, Any], fields: list[tuple[str, str]]) -> dict[str, Any]:
    """The cell's value for each parameter column (None where its plugin has no such parameter)."""
    out = {}
    for name, typ in fields:
        kind, _, p = name.partition(".")
        out[name] = _column_value(((cell.get(kind) or {}).get("params") or {}).get(p), typ)
    return out


def row_schema(fields: list[tuple[str, str]]) -> pa.Schema:
    """SCHEMA followed by the parameter columns."""
    return pa.schema([*SCHEMA, *(pa.field(n, ARROW_TYPES[t]) for n, t in fields)])


def shard_dir(results_dir: str | Path, sweep: str, cell: str, shard: int) -> Path:
    return Path(results_dir) / sweep / f"cell={cell}" / f"shard={shard}"


def part_path(directory: Path, rank: int, first_example: int) -> Path:
    return directory / f"rank-{rank}-part-{first_example:07d}.parquet"


# ---------------------------------------------------------------- validating parts

#: A shard's completion marker: the part files it covers, written once when every example is there.
COMPLETE = "_COMPLETE.json"
#: Where bad part files and untrusted markers are moved (beside the parts; ignored by readers).
BAD_DIR = "_bad"
#: Lock files in a shard directory: one per rank (held while it computes its slice) and one
#: for the shard's short critical sections (moving bad files aside, writing the marker).
SHARD_LOCK = ".lock-shard"
#: check_marker's verdict on a marker of an older writer (no part list): not trusted, not damage.
OLDER_MARKER = "lists no part files (an older marker)"
_PART_RE = re.compile(r"^rank-(\d+)-part-(\d+)\.parquet$")


def _kind(t: pa.DataType) -> str:
    """Coarse column type: what a reader relies on (older writers used narrower integers)."""
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "string"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return f"list<{_kind(t.value_type)}>"
    return str(t)


@dataclass(frozen=True)
class PartCheck:
    """What :func:`check_part` found: ``reason`` None for a valid part, else why not and a
    short ``tag`` (the suffix the file gets under _bad/)."""

    path: Path
    reason: str | None = None
    tag: str = ""
    examples: frozenset[int] = frozenset()
    rows: int = 0
    size: int = 0
    #: check_header(constants=...): each asked column's one value in the file (None: absent or
    #: all null), as its footer statistics prove; None when they prove it for some column not.
    constants: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_header(path: str | os.PathLike[str], required: Iterable[str] | None = None,
                 fields: list[tuple[str, str]] | None = None,
                 constants: Iterable[str] = ()) -> tuple[pa.Schema | None, PartCheck]:
    """The checks of :func:`read_part` that need only the file's footer (it is there, non-empty,
    readable, with the ``required`` columns of the written types): (its schema or None, the
    verdict). Cheap enough to run on every part of a 10 M-row sweep before a columnar scan;
    the file is closed again (55,000 parts must not hold 55,000 descriptors). ``constants``:
    columns whose single value the verdict's ``constants`` gives where the footer's statistics
    prove one (every row group: min == max and no null, or all null)."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, PartCheck(path, f"missing ({exc.strerror})", "missing")
    if size == 0:
        return None, PartCheck(path, "zero bytes", "empty", size=size)
    try:
        with pq.ParquetFile(path) as pf:
            schema, rows = pf.schema_arrow, pf.metadata.num_rows
            values = _footer_constants(pf.metadata, schema, constants) if constants else None
    except Exception as exc:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ...)
        return None, PartCheck(path, f"unreadable ({_first_line(exc)})", "unreadable", size=size)
    problem = _schema_problem(schema, tuple(REQUIRED_COLUMNS if required is None else required),
                              tuple(fields or ()))
    if problem:
        return None, PartCheck(path, problem, "schema", size=size, rows=rows)
    return schema, PartCheck(path, size=size, rows=rows, constants=values)


@functools.lru_cache(maxsize=256)  # a sweep's thousands of parts share a handful of schemas
def _schema_problem(schema: pa.Schema, required: tuple[str, ...],
                    fields: tuple[tuple[str, str], ...]) -> str | None:
    """Why a file of this schema is refused (a required column missing or of another type)."""
    names = set(schema.names)
    missing = [c for c in required if c not in names]
    if missing:
        return f"missing result column(s) {', '.join(missing)}"
    want = {f.name: f.type for f in SCHEMA}
    want.update({n: ARROW_TYPES[t] for n, t in fields if t in ARROW_TYPES})
    for f in schema:
        if f.name in want and _kind(f.type) != _kind(want[f.name]):
            return f"column {f.name!r} is {f.type}, not {want[f.name]}"
    return None


_LEAVES: dict[tuple[str, ...], dict[str, int]] = {}  # column name -> leaf index, per schema


def _footer_constants(md: Any, schema: pa.Schema, names: Iterable[str]) -> dict[str, Any] | None:
    """Each of ``names``' single value in the file, from the footer's per-row-group statistics
    (None for a column the file lacks or holds only nulls in); None when some column is not
    proven constant (values differ, some nulls, statistics absent, a nested column)."""
    key = tuple(schema.names)
    leaves = _LEAVES.get(key)
    if leaves is None:
        paths = [md.schema.column(j).path for j in range(md.num_columns)]
        leaves = _LEAVES[key] = {p: j for j, p in enumerate(paths)}
    out: dict[str, Any] = {}
    for name in names:
        if name not in key:
            out[name] = None
            continue
        j = leaves.get(name)
        if j is None:
            return None
        seen: list[Any] = []
        for g in range(md.num_row_groups):
            rg = md.row_group(g)
            st = rg.column(j).statistics
            if st is None or not st.has_null_count:
                return None
            if st.null_count == rg.num_rows:
                seen.append(None)
            elif st.null_count == 0 and st.has_min_max and st.min == st.max:
                seen.append(st.min)
            else:
                return None
        if any(v != seen[0] for v in seen[1:]):
            return None
        out[name] = seen[0] if seen else None
    return out


def read_part(path: str | os.PathLike[str], required: Iterable[str] | None = None,
              eval_runs: int | None = None, fields: list[tuple[str, str]] | None = None,
              ) -> tuple[pa.Table | None, PartCheck]:
    """Read and validate one part file: (its table or None, the verdict).

    Valid means: it reads; it has the ``required`` columns (default: REQUIRED_COLUMNS);
    each column of SCHEMA (and of ``fields``, the plan's parameter columns) it has is of the
    written type (any integer width for an integer, as older writers used); and, for a file of
    this writer (every REQUIRED_COLUMNS column present) or when ``eval_runs`` is given, it holds exactly
    its examples × eval runs: each (example, eval_run) once, eval_run in 0..eval_runs-1, one
    eval_runs value, and the first example the one its name says."""
    schema, head = check_header(path, required, fields)
    if schema is None:
        return None, head
    path, size = head.path, head.size
    try:
        # ParquetFile reads the file alone; read_table() would add hive columns from the path.
        with pq.ParquetFile(path) as pf:
            table = pf.read()
    except Exception as exc:  # noqa: BLE001 (pyarrow raises ArrowInvalid, OSError, ...)
        return None, PartCheck(path, f"unreadable ({_first_line(exc)})", "unreadable", size=size)
    bad = lambda reason, tag: (None, PartCheck(path, reason, tag, size=size, rows=table.num_rows))  # noqa: E731
    names = set(table.column_names)
    if eval_runs is None and not set(REQUIRED_COLUMNS) <= names:
        # an older writer's file (hand-written, or rows split over parts): no row invariant
        return table, PartCheck(path, size=size, rows=table.num_rows,
                                examples=frozenset(table.column("example").to_pylist()
                                                   if "example" in names else ()))
    ex = table.column("example").to_pylist()
    runs = table.column("eval_run").to_pylist()
    declared = set(table.column("eval_runs").to_pylist()) if "eval_runs" in names else set()
    if table.num_rows == 0:
        return bad("no rows", "rows")
    if None in ex or None in runs or None in declared or len(declared) > 1:
        return bad("null example/eval_run or several eval_runs values", "rows")
    n_runs = eval_runs if eval_runs is not None else int(next(iter(declared)))
    if declared and int(next(iter(declared))) != n_runs:
        return bad(f"eval_runs is {next(iter(declared))}, the plan says {n_runs}", "rows")
    keys = list(zip(ex, runs))
    if len(set(keys)) != len(keys):
        return bad(f"{len(keys) - len(set(keys))} duplicated (example, eval_run) row(s)", "duplicate-rows")
    outside = [k for k in keys if not 0 <= k[1] < n_runs]
    if outside:
        return bad(f"eval_run {outside[0][1]} outside 0..{n_runs - 1}", "rows")
    examples = sorted(set(ex))
    if len(keys) != len(examples) * n_runs:
        have = set(keys)
        gap = next((e, r) for e in examples for r in range(n_runs) if (e, r) not in have)
        return bad(f"{len(examples) * n_runs - len(keys)} of {len(examples) * n_runs} rows missing "
                   f"(examples × eval_runs), e.g. example {gap[0]} eval_run {gap[1]}", "missing-rows")
    m = _PART_RE.match(path.name)
    if m and int(m.group(2)) != examples[0]:
        return bad(f"first example is {examples[0]}, its name says {int(m.group(2))}", "missing-rows")
    return table, PartCheck(path, examples=frozenset(examples), rows=table.num_rows, size=size)


def check_part(path: str | os.PathLike[str], required: Iterable[str] | None = None,
               eval_runs: int | None = None, fields: list[tuple[str, str]] | None = None) -> PartCheck:
    """The verdict of :func:`read_part` alone: why a part file is not valid, or ok."""
    return read_part(path, required, eval_runs, fields)[1]


@dataclass
class ShardScan:
    """The part files of one shard directory: valid ones, bad ones (moved aside if asked)."""

    directory: Path
    good: list[PartCheck] = field(default_factory=list)
    bad: list[PartCheck] = field(default_factory=list)
    moved: list[Path] = field(default_factory=list)

    @property
    def done(self) -> set[int]:
        return {e for c in self.good for e in c.examples}


def _scan(directory: Path, eval_runs: int | None, fields: list[tuple[str, str]] | None) -> ShardScan:
    scan = ShardScan(directory)
    seen: dict[int, str] = {}
    for f in sorted(directory.glob("rank-*-part-*.parquet")):
        c = check_part(f, eval_runs=eval_runs, fields=fields)
        if c.ok:
            clash = sorted(e for e in c.examples if e in seen)
            if clash:  # two valid parts with the same rows: keep the first, the second is extra
                c = PartCheck(f, f"example(s) {clash[:5]} also in {seen[clash[0]]}", "overlap",
                              rows=c.rows, size=c.size)
            else:
                seen.update({e: f.name for e in c.examples})
        (scan.good if c.ok else scan.bad).append(c)
    return scan


def move_aside(path: Path, tag: str) -> Path | None:
    """Move a bad file to <its directory>/_bad/<name>.<tag> (never deleted: evidence); a name
    already taken gets .1, .2, ...; None if the file is gone (another process moved it)."""
    bad_dir = path.parent / BAD_DIR
    bad_dir.mkdir(exist_ok=True)
    for i in range(1000):
        dest = bad_dir / (f"{path.name}.{tag}" + (f".{i}" if i else ""))
        try:
            os.link(path, dest)  # fails if dest exists: no evidence is overwritten
        except FileExistsError:
            continue
        except FileNotFoundError:
            return None
        except OSError:  # no hard links here
            if dest.exists():
                continue
            try:
                os.replace(path, dest)
            except FileNotFoundError:
                return None
            return dest
        path.unlink(missing_ok=True)
        return dest
    raise OSError(f"{bad_dir}: too many copies of {path.name}")


def scan_shard(directory: str | os.PathLike[str], eval_runs: int | None = None,
               fields: list[tuple[str, str]] | None = None, repair: bool = False) -> ShardScan:
    """Validate every part file of a shard directory (:func:`check_part`).

    ``repair``: move each bad one aside to _bad/ (under the shard lock, re-checked there, so a
    part that another process has just replaced is never taken); its examples are then missing
    and the next run computes them again."""
    directory = Path(directory)
    if not directory.is_dir():
        return ShardScan(directory)
    scan = _scan(directory, eval_runs, fields)
    if repair and scan.bad:
        with file_lock(directory / SHARD_LOCK) as state:
            scan = _scan(directory, eval_runs, fields)
            for c in scan.bad:
                dest = move_aside(c.path, c.tag) if state != "busy" else None
                if dest:
                    scan.moved.append(dest)
                    print(f"harness: {c.path}: {c.reason}; moved to {dest} and its examples "
                          "will be computed again", file=sys.stderr)
    return scan


def done_examples(directory: Path, eval_runs: int | None = None, repair: bool = False) -> set[int]:
    """Examples that have all their rows in a valid part file of this shard (finished files only)."""
    return scan_shard(directory, eval_runs, repair=repair).done


# ---------------------------------------------------------------- the completion marker

def marker_parts(directory: Path) -> list[dict[str, Any]] | str:
    """The part entries ({name, rows, size}) the shard's _COMPLETE.json lists, or why there are
    none: "absent", "unreadable (...)", or OLDER_MARKER."""
    try:
        doc = json.loads((directory / COMPLETE).read_text())
    except FileNotFoundError:
        return "absent"
    except (OSError, ValueError) as exc:
        return f"unreadable ({exc})"
    parts = doc.get("parts") if isinstance(doc, dict) else None
    if not isinstance(parts, list):
        return OLDER_MARKER
    return [p if isinstance(p, dict) else {} for p in parts]


def check_marker(directory: str | os.PathLike[str], start: int, stop: int,
                 scan: ShardScan | None = None, eval_runs: int | None = None) -> str | None:
    """Why the shard's _COMPLETE.json is not to be trusted ("absent" if there is none), or None:
    it lists its part files (name, rows, size), each is there with that size and valid, and
    together they hold every example start..stop-1."""
    directory = Path(directory)
    parts = marker_parts(directory)
    if isinstance(parts, str):
        return parts
    scan = scan if scan is not None else scan_shard(directory, eval_runs)
    good = {c.path.name: c for c in scan.good}
    covered: set[int] = set()
    for p in parts:
        name = p.get("name", "?")
        if not (directory / name).is_file():
            return f"lists {name}, which is missing"
        c = good.get(name)
        if c is None:
            return f"lists {name}, which is not valid"
        if p.get("rows") != c.rows or p.get("size", c.size) != c.size:
            return f"lists {name} with {p.get('rows')} rows / {p.get('size')} bytes, not {c.rows} / {c.size}"
        covered |= c.examples
    lacking = set(range(start, stop)) - covered
    if lacking:
        return f"its parts lack {len(lacking)} example(s), e.g. {min(lacking)}"
    return None


def write_marker(directory: Path, start: int, stop: int, info: dict[str, Any],
                 eval_runs: int | None = None) -> tuple[bool, str]:
    """Write the shard's _COMPLETE.json if every example start..stop-1 is in a valid part and no
    trusted marker is there: (written by this call, why not). Any number of ranks and processes
    may call it at once, with or without a communicator: under the shard lock, and linked into
    place (fails if present), exactly one writes it. An untrusted marker is moved to _bad/."""
    directory = Path(directory)
    if not directory.is_dir():
        return False, "no results"
    with file_lock(directory / SHARD_LOCK) as state:
        if state == "held":  # every marker writer holds this lock: any temporary is a dead one's
            for f in directory.glob(f".{COMPLETE}.*.tmp"):
                f.unlink(missing_ok=True)
        scan = scan_shard(directory, eval_runs)
        why = check_marker(directory, start, stop, scan)
        if why is None:
            return False, "already marked"
        lacking = set(range(start, stop)) - scan.done
        if lacking:
            return False, f"{len(lacking)} example(s) not there yet"
        if why != "absent":
            if state != "held":
                return False, f"untrusted marker ({why}) and no lock to replace it"
            dest = move_aside(directory / COMPLETE, "older" if why == OLDER_MARKER else "untrusted")
            print(f"harness: {directory / COMPLETE}: not trusted ({why}); moved to {dest}", file=sys.stderr)
        parts = [{"name": c.path.name, "rows": c.rows, "size": c.size}
                 for c in sorted(scan.good, key=lambda c: c.path.name) if c.examples & set(range(start, stop))]
        doc = {**info, "examples": stop - start, "rows": sum(p["rows"] for p in parts), "parts": parts}
        tmp = temporary_name(directory / COMPLETE)
        try:
            with open(tmp, "w") as f:
                f.write(json.dumps(doc, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, directory / COMPLETE)
            except FileExistsError:
                return False, "another process marked it"
            except OSError:  # no hard links: O_EXCL-free rename, safe under the lock
                if state != "held" or (directory / COMPLETE).exists():
                    return False, "another process marked it"
                os.replace(tmp, directory / COMPLETE)
        finally:
            tmp.unlink(missing_ok=True)
    return True, "written"


# ---------------------------------------------------------------- temporaries

@contextmanager
def rank_lock(directory: Path, rank: int, wait: bool = False) -> Iterator[str]:
    """The lock a rank holds while it computes its slice of a shard (see fsutil.file_lock):
    a second process on the same (shard, rank) gets "busy" (or waits, ``wait=True``)."""
    directory.mkdir(parents=True, exist_ok=True)
    with file_lock(directory / f".lock-rank-{rank}", wait=wait) as state:
        yield state


def rank_lock_holder(directory: Path, rank: int) -> str:
    return lock_holder(directory / f".lock-rank-{rank}")


def remove_stale_temporaries(directory: Path, rank: int) -> int:
    """Delete this rank's temporaries left by a killed writer: its part files, its copy of the
    cell's _cell.json and its telemetry. Call only while holding :func:`rank_lock` for this
    rank: every writer of those names holds it, so none is a live process's (the marker's
    temporaries are cleared under the shard lock, by :func:`write_marker`)."""
    if not directory.is_dir():
        return 0
    patterns = [f".rank-{rank}-part-*.tmp", f".rank-{rank}-{CELL_FILE}.*.tmp", f"._telemetry-rank-{rank}-*.tmp"]
    stale = [f for p in patterns for f in directory.glob(p)]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def write_part(rows: list[dict[str, Any]], path: Path, schema: pa.Schema = SCHEMA) -> Path:
    """Write one batch's rows as a Parquet part file, atomically (schema: see row_schema)."""
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    return atomic_write(path, buf.getvalue().to_pybytes())


# ---------------------------------------------------------------- per-cell constants

class CellFileConflict(UsageError):
    """A cell's _cell.json says something else than this writer would: one hash, two contents."""


def cell_file_bytes(sweep: str, cell: str, cell_json: str, assets: str, label: str = "",
                    attack_label: str = "") -> bytes:
    """The content of a cell's _cell.json: a function of the plan row alone (identical from every
    rank and task). ``config`` is the cell as planned, ``assets`` {asset: {file: sha256}}, the
    labels those of the report's tables."""
    doc = {"format": 1, "sweep": sweep, "cell": cell, "label": label, "attack_label": attack_label,
           "config": json.loads(cell_json), "assets": json.loads(assets)}
    return (json.dumps(doc, indent=1, sort_keys=True, allow_nan=False) + "\n").encode()


def read_cell_file(path: Path) -> dict[str, str]:
    """{"cell", "label", "attack_label", "cell_json", "assets"} from a _cell.json, the two JSON
    strings exactly as older writers put them on every row (canonical cell JSON; assets with
    sorted keys)."""
    from .grid import canonical_json

    doc = json.loads(Path(path).read_text())
    return {"cell": doc["cell"], "label": doc.get("label", ""), "attack_label": doc.get("attack_label", ""),
            "cell_json": canonical_json(doc["config"]), "assets": json.dumps(doc["assets"], sort_keys=True)}


def write_cell_file(shard_directory: Path, rank: int, data: bytes) -> Path:
    """Write the cell's _cell.json (the parent of ``shard_directory``) once; any number of ranks
    and tasks may do so at the same time with the same content.

    Written to a uniquely named temporary of this rank in its shard directory (so that
    remove_stale_temporaries clears one a killed writer left), then linked into place (fails if
    another writer was first) or, where the file system has no hard links, renamed. A file
    already there with other content is refused: one content hash must mean one configuration."""
    shard_directory = Path(shard_directory)
    path = shard_directory.parent / CELL_FILE
    if not path.exists():
        shard_directory.mkdir(parents=True, exist_ok=True)
        tmp = shard_directory / f".rank-{rank}-{CELL_FILE}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # no hard links here: rename (every writer has the same bytes)
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    have = path.read_bytes()
    if have != data:
        raise CellFileConflict(f"{path} exists with other content than this plan row gives "
                               "(the same cell hash with another configuration or other asset "
                               "files); move that cell's results away or re-plan under a new sweep")
    return path


#: The grid's `report:` section beside a sweep's results (analysis.report reads it).
REPORT_SPEC = "_report_spec.json"


#: A copy of the reference numbers the `report:` section names, beside it.
REPORT_REFERENCE = "_reference.yaml"


def write_report_spec(results_dir: str | Path, sweep: str, spec: dict[str, Any]) -> Path | None:
    """Leave the grid's validated `report:` section in <results>/<sweep>/ for `harness report`
    (removing a stale one when the grid no longer has it). The reference file it names is
    copied beside it, so the report reads the same numbers on another machine or directory."""
    out = Path(results_dir) / sweep
    path = out / REPORT_SPEC
    if not spec:
        path.unlink(missing_ok=True)
        return None
    out.mkdir(parents=True, exist_ok=True)
    spec = dict(spec)
    if spec.get("reference"):
        atomic_write(out / REPORT_REFERENCE, Path(spec["reference"]).read_bytes())
        spec["reference"] = REPORT_REFERENCE  # relative to the spec's own directory
    return atomic_write(path, json.dumps(spec, indent=1, sort_keys=True) + "\n")


@lru_cache(maxsize=1)
def provenance() -> dict[str, str]:
    """Version, git revision, torch version and host, recorded on every row."""
    from . import __version__

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:  # pragma: no cover
        torch_version = "absent"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        rev = "unknown"
    return {"harness_version": __version__, "git_rev": rev, "torch_version": torch_version,
            "host": platform.node()}
