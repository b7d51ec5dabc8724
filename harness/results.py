"""The per-example result schema and the shard writer/reader.

Layout: <results>/<sweep>/cell=<hash>/shard=<k>/rank-<r>-part-<first example>.parquet.
A part file holds every row of one batch (all its examples × evaluation runs) and appears
by an atomic rename, so a batch is either wholly there or not at all; resume reads which
examples a shard already has and computes only the rest.
"""
from __future__ import annotations

import platform
import subprocess
from functools import lru_cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .fsutil import atomic_write

#: clean_pred / adv_pred of an example whose logits held a NaN or an infinity: never a class.
NONFINITE_PRED = -1

SCHEMA = pa.schema([
    ("sweep", pa.string()), ("cell", pa.string()), ("shard", pa.int32()), ("rank", pa.int32()),
    ("label", pa.string()), ("dataset", pa.string()), ("classifier", pa.string()),
    ("purifier", pa.string()), ("attack", pa.string()), ("attack_label", pa.string()),
    ("threat", pa.string()), ("eps", pa.float64()), ("seed", pa.int64()),
    ("cell_examples", pa.int64()), ("eval_runs", pa.int32()),
    ("example", pa.int64()), ("data_index", pa.int64()), ("y", pa.int64()), ("eval_run", pa.int32()),
    ("clean_pred", pa.int64()), ("adv_pred", pa.int64()),
    ("clean_correct", pa.bool_()), ("adv_correct", pa.bool_()),
    ("perturbation", pa.float64()), ("grad_evals", pa.int64()),
    ("grad_nonfinite", pa.int64()),  # the attack's non-finite (zeroed) gradient evaluations, per example
    ("found_by", pa.string()),  # AutoAttack / Square: the sub-attack that fooled it, "" if none; else null
    ("seed_purify", pa.int64()), ("seed_attack", pa.int64()), ("nfe", pa.int64()), ("time_s", pa.float64()),
    ("cell_json", pa.string()), ("harness_version", pa.string()), ("git_rev", pa.string()),
    ("torch_version", pa.string()), ("host", pa.string()), ("device", pa.string()),
    ("assets", pa.string()),  # JSON {asset: {file: sha256}} of the catalogued files the cell used
])


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
    its part files and telemetry, and for rank 0 the shard's completion marker."""
    if not directory.is_dir():
        return 0
    patterns = [f".rank-{rank}-part-*.tmp", f"._telemetry-rank-{rank}-*.tmp"]
    if rank == 0:
        patterns.append("._COMPLETE.json.*.tmp")
    stale = [f for p in patterns for f in directory.glob(p)]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)


def write_part(rows: list[dict[str, Any]], path: Path) -> Path:
    """Write one batch's rows as a Parquet part file, atomically."""
    buf = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), buf)
    return atomic_write(path, buf.getvalue().to_pybytes())


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
