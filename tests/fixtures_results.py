"""Hand-written result part files for the analysis tests (shared by test_report and test_validity).

SCHEMA is an older writer's subset of harness.results.SCHEMA (no data_index, grad_evals,
grad_nonfinite or found_by), which the loader must accept; ``perturbation`` is optional here
and left null by rows that do not give it. Rows that give ``data_index`` or ``grad_nonfinite``
are written with NEW_SCHEMA, which adds those two columns (a writer that records non-finite
predictions as -1 and counts non-finite gradients).
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA = pa.schema([
    ("sweep", pa.string()), ("cell", pa.string()), ("shard", pa.int32()), ("rank", pa.int32()),
    ("label", pa.string()), ("dataset", pa.string()), ("classifier", pa.string()),
    ("purifier", pa.string()), ("attack", pa.string()), ("attack_label", pa.string()),
    ("threat", pa.string()), ("eps", pa.float64()), ("cell_examples", pa.int64()),
    ("eval_runs", pa.int32()), ("example", pa.int64()), ("y", pa.int64()),
    ("eval_run", pa.int32()), ("clean_pred", pa.int64()), ("adv_pred", pa.int64()),
    ("clean_correct", pa.bool_()), ("adv_correct", pa.bool_()), ("perturbation", pa.float64()),
    ("seed_purify", pa.int64()), ("seed_attack", pa.int64()), ("nfe", pa.int64()),
    ("time_s", pa.float64()), ("cell_json", pa.string()), ("harness_version", pa.string()),
    ("git_rev", pa.string()), ("torch_version", pa.string()), ("host", pa.string()),
    ("device", pa.string()),
])
NEW_SCHEMA = SCHEMA.append(pa.field("data_index", pa.int64())).append(
    pa.field("grad_nonfinite", pa.int64()))
NONFINITE = -1  # harness.results.NONFINITE_PRED: the prediction of non-finite logits


def row(meta: dict, example: int, eval_run: int, y: int, adv_pred: int,
        clean_pred: int | None = None, nfe: int = 10, time_s: float = 0.5,
        perturbation: float | None = None, data_index: int | None = None,
        grad_nonfinite: int | None = None) -> dict:
    """One result row: ``meta`` holds the cell's constant columns (and may set cell_json).
    ``data_index`` / ``grad_nonfinite``, when given, make the row a NEW_SCHEMA one."""
    clean_pred = y if clean_pred is None else clean_pred
    new = {k: v for k, v in (("data_index", data_index), ("grad_nonfinite", grad_nonfinite))
           if v is not None}
    return dict({"cell_json": "{}", **meta}, **new, shard=0, rank=0, example=example, y=y,
                eval_run=eval_run, clean_pred=clean_pred, adv_pred=adv_pred,
                clean_correct=clean_pred == y, adv_correct=adv_pred == y,
                perturbation=perturbation, seed_purify=example * 100 + eval_run,
                seed_attack=example, nfe=nfe, time_s=time_s, harness_version="0.1.0",
                git_rev="abc1234", torch_version="2.5.1", host="node1", device="cpu")


def write_part(results: Path, rows: list[dict], shard: int = 0, rank: int = 0, part: int = 0,
               name: str | None = None) -> Path:
    """Write rows as one part file at the hive-style location the worker uses."""
    sweep, cell = rows[0]["sweep"], rows[0]["cell"]
    d = results / sweep / f"cell={cell}" / f"shard={shard}"
    d.mkdir(parents=True, exist_ok=True)
    rows = [dict(r, shard=shard, rank=rank) for r in rows]
    path = d / (name or f"rank-{rank}-part-{part}.parquet")
    new = any("data_index" in r or "grad_nonfinite" in r for r in rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=NEW_SCHEMA if new else SCHEMA), path)
    return path
