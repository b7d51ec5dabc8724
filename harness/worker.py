"""One plan row (a cell × a shard of examples): what an array task or `harness run` executes.

The worker receives only (plan path, row index): the cell's parameters come from the plan,
assets from local files. Already finished examples are skipped, so running a row twice,
or after a kill, completes it without duplicating a row.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import registry
from .batching import FitRecord, gauge_for, run_batches, start_fit
from .catalog import assets_dir, is_ref, needs, resolve_params, stage_record
from .results import (cell_file_bytes, param_fields, param_values, part_path, provenance, rank_lock,
                      rank_lock_holder, remove_stale_temporaries, row_schema, scan_shard, shard_dir,
                      write_cell_file, write_part)


@dataclass
class Assets:
    """Loaded data sets and models, cached across the rows one process runs.

    `root` is the asset directory that `asset:<name>` parameter values resolve against; `pinned`
    the plan's {asset: {file: sha256}}, which the loaders hold the files to."""

    device: str = "cpu"
    root: Path = field(default_factory=assets_dir)
    pinned: dict[str, dict[str, str]] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_plan_row(cls, row: dict[str, Any], device: str = "cpu") -> "Assets":
        """Assets as the plan row says: its asset directory and sha256 records (older plans
        have neither column: the default directory and the stage records serve)."""
        root = row.get("assets_dir")
        return cls(device=device, root=Path(root) if root else assets_dir(),
                   pinned=json.loads(row.get("asset_sha256") or "{}"))

    def record(self, cell: dict[str, Any]) -> str:
        """The sha256 of every catalogued file the cell uses, as JSON, for the result rows."""
        return json.dumps({n.value: self.pinned.get(n.value) or stage_record(n.value, self.root)["files"]
                           for n in needs([cell]) if is_ref(n.value)}, sort_keys=True)

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        if key not in self.cache:
            self.cache[key] = make()
        return self.cache[key]

    def _plugin(self, kind: str, entry: dict[str, Any], *args: Any) -> Any:
        spec = registry.get(kind, entry["name"])
        return self.get(f"{kind}:{json.dumps(entry, sort_keys=True)}",
                        lambda: spec.load()(*args, resolve_params(spec, entry["params"], self.root, self.pinned)))

    def dataset(self, entry: dict[str, Any]) -> Any:
        return self._plugin("dataset", entry)

    def defended(self, cell: dict[str, Any]) -> Any:
        """classifier(purifier(x)) for the cell, its networks at the cell's precision (see
        harness.precision: bf16 autocast on CUDA unless the grid asks for fp32)."""
        from .purify.pipeline import Defended

        precision = self.precision(cell)
        return Defended(self.purifier(cell["purifier"], precision), self.classifier(cell["classifier"], precision))

    def classifier(self, entry: dict[str, Any], precision: str) -> Any:
        """A classifier entry's network on this device at `precision` (cached)."""
        from .precision import Network

        return self.get(f"network:{precision}:{json.dumps(entry, sort_keys=True)}",
                        lambda: Network(self._plugin("classifier", entry).to(self.device), precision, self.device))

    def purifier(self, p: dict[str, Any], precision: str) -> Any:
        """A purifier entry built on its denoiser's network at `precision` (cached)."""
        from .models.denoisers import load_denoiser
        from .precision import Network

        value = p["params"].get("denoiser")
        eps_fn = (self.get(f"denoiser:{precision}:{value}", lambda: Network(
            load_denoiser(value, self.root, self.pinned).to(self.device), precision, self.device))
            if value else None)
        return self.get(f"purifier:{precision}:{json.dumps(p, sort_keys=True)}",
                        lambda: registry.get("purifier", p["name"]).load()(
                            p["name"], p["params"], self.device, eps_fn=eps_fn))

    def precision(self, cell: dict[str, Any]) -> str:
        """The cell's precision on this device (its `precision`, "auto" when it has none)."""
        from .precision import resolve

        return resolve(cell.get("precision"), self.device)


def _threat(attack: dict[str, Any]) -> tuple[str, float]:
    """The (norm, eps) result columns, from the attack plugin's own `threat` hook."""
    norm, eps = registry.get("attack", attack["name"]).threat(attack["params"])
    return str(norm), float(eps)


def plan_fields(plan_row: dict[str, Any]) -> list[tuple[str, str]]:
    """The sweep's parameter columns as the plan says (an older plan: this cell's own)."""
    if plan_row.get("param_columns"):
        return [tuple(f) for f in json.loads(plan_row["param_columns"])]  # type: ignore[misc]
    return param_fields([json.loads(plan_row["cell_json"])])


def pending(plan_row: dict[str, Any], results_dir: Path, rank: int = 0, world: int = 1) -> list[int]:
    """This rank's examples of the row that have no valid rows yet (disjoint across ranks).

    A part file that does not read, lacks a column or has the wrong type, or does not hold
    exactly its examples × eval runs counts for nothing and is moved to the shard's _bad/."""
    out_dir = shard_dir(results_dir, plan_row["sweep"], plan_row["cell"], plan_row["shard"])
    done = scan_shard(out_dir, int(json.loads(plan_row["cell_json"])["eval_runs"]), plan_fields(plan_row),
                      repair=True).done
    mine = range(plan_row["start"] + rank, plan_row["stop"], world)
    return [e for e in mine if e not in done]


def run_row(plan_row: dict[str, Any], results_dir: str | Path, assets: Assets, *, rank: int = 0,
            world: int = 1, cell_examples: int | None = None,
            on_batch: Callable[[int], None] | None = None, wait: bool = False) -> int:
    """Compute and write every missing example of the row for this rank; returns rows written.

    Holds the (shard, rank) lock meanwhile: another process already computing this rank's
    slice of the shard makes this call skip it (returns 0; ``wait=True``: wait for it, then
    compute what is still missing). Temporaries of a killed writer are removed under it."""
    results_dir = Path(results_dir)
    out_dir = shard_dir(results_dir, plan_row["sweep"], plan_row["cell"], plan_row["shard"])
    with rank_lock(out_dir, rank, wait) as state:
        if state == "busy":
            print(f"harness: {out_dir} rank {rank}: another process is computing it "
                  f"({rank_lock_holder(out_dir, rank) or 'holder unknown'}); skipped, run again to check",
                  file=sys.stderr)
            return 0
        if state == "held":
            remove_stale_temporaries(out_dir, rank)
        return _run_locked(plan_row, results_dir, out_dir, assets, rank, world, cell_examples, on_batch)


def _run_locked(plan_row: dict[str, Any], results_dir: Path, out_dir: Path, assets: Assets, rank: int,
                world: int, cell_examples: int | None, on_batch: Callable[[int], None] | None) -> int:
    from .data.base import selection
    from .evaluate import Batch, evaluate_batch
    from .precision import configure_backends, to_device

    cell = json.loads(plan_row["cell_json"])
    todo = pending(plan_row, results_dir, rank, world)
    if not todo:
        return 0
    data = assets.dataset(cell["dataset"])
    order = selection(len(data), cell["data_seed"])
    if plan_row["stop"] > len(order):
        from .errors import UsageError

        raise UsageError(f"cell {plan_row['cell']}: {plan_row['stop']} examples asked, "
                         f"but data set {cell['dataset']['name']!r} has {len(order)}")
    # Per-cell constants once per cell; parameter columns as the plan says for the whole sweep
    # (an older plan has no param_columns: this cell's own parameters).
    write_cell_file(out_dir, rank, cell_file_bytes(plan_row["sweep"], plan_row["cell"], plan_row["cell_json"],
                                                    assets.record(cell), plan_row["label"],
                                                    plan_row["attack_label"]))
    fields = plan_fields(plan_row)
    schema = row_schema(fields)
    model = assets.defended(cell)
    precision = assets.precision(cell)
    configure_backends(assets.device, precision)
    attack = cell["attack"]
    attack_fn = registry.get("attack", attack["name"]).load()
    constant = {
        "sweep": plan_row["sweep"], "cell": plan_row["cell"], "shard": int(plan_row["shard"]), "rank": rank,
        "label": plan_row["label"], "attack_label": plan_row["attack_label"],
        **{k: cell[k]["name"] for k in ("dataset", "classifier", "purifier", "attack")},
        **dict(zip(("threat", "eps"), _threat(attack))),
        "seed": cell["seed"], "data_seed": cell["data_seed"],
        "cell_examples": int(cell_examples or plan_row["stop"]), "eval_runs": cell["eval_runs"],
        "device": str(assets.device), "precision": precision, **provenance(), **param_values(cell, fields),
    }
    written = 0

    def step(examples: list[int]) -> None:
        nonlocal written
        idx = order[np.asarray(examples)]
        x, y = data.take(idx)
        batch = Batch(examples, idx.tolist(), to_device(x, assets.device), to_device(y, assets.device))
        rows = evaluate_batch(model, batch, cell=plan_row["cell"], attack_fn=attack_fn,
                              attack_params=attack["params"], eval_runs=cell["eval_runs"], seed=cell["seed"])
        write_part([{**constant, **r, "grad_checkpoint": bool(model.purifier.checkpoint)} for r in rows],
                   part_path(out_dir, rank, examples[0]), schema)
        written += len(rows)
        if on_batch:
            on_batch(len(examples))

    # The batch: found as it runs, kept per process and per device type (harness.batching).
    record = FitRecord(results_dir / plan_row["sweep"], assets.device)
    gauge = gauge_for(assets.device)
    fit = start_fit(record, cell, int(plan_row["batch_size"]), gauge, str(assets.device), assets.cache)
    model.purifier.checkpoint = fit.checkpoint
    run_batches(todo, step, fit, gauge=gauge, record=record, cell=cell, device=str(assets.device),
                on_checkpoint=lambda on: setattr(model.purifier, "checkpoint", on))
    return written
