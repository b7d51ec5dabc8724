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

import json
import os
import platform
import subprocess
import uuid
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import UsageError
from .fsutil import atomic_write

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
])  # + the cell's parameter columns (row_schema); cell_json and assets: in _cell.json

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


def done_examples(directory: Path) -> set[int]:
    """Examples that already have their rows in this shard (finished files only)."""
    if not directory.is_dir():
        return set()
    done: set[int] = set()
    for f in directory.glob("rank-*-part-*.parquet"):
        done.update(pq.read_table(f, columns=["example"]).column("example").to_pylist())
    return done


def remove_stale_temporaries(directory: Path, rank: int) -> int:
    """Delete this rank's temporaries left by a killed writer (only this rank writes them):
    its part files, its copy of the cell's _cell.json and telemetry, and for rank 0 the shard's
    completion marker."""
    if not directory.is_dir():
        return 0
    patterns = [f".rank-{rank}-part-*.tmp", f".rank-{rank}-{CELL_FILE}.*.tmp", f"._telemetry-rank-{rank}-*.tmp"]
    if rank == 0:
        patterns.append("._COMPLETE.json.*.tmp")
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
