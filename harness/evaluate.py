"""The per-batch loop shared by every attack and purifier.

One batch: attack once (its own randomness, seeded per example), then N evaluation runs
that purify and classify the clean and the adversarial inputs with fresh, per-example
seeds. One row per (example, evaluation run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .attacks.budget import distance
from .purify.pipeline import Defended
from .rng import ExampleNoise, derive_seed

# An attack returns (x_adv, gradient evaluations per example) and, optionally, per example
# which sub-attack fooled it ("" if none did), recorded in the `found_by` column.
AttackFn = Callable[..., tuple]


@dataclass
class Batch:
    examples: list[int]  # example positions within the cell
    data_index: list[int]  # indices into the data set
    x: torch.Tensor
    y: torch.Tensor


def evaluate_batch(model: Defended, batch: Batch, *, cell: str, attack_fn: AttackFn,
                   attack_params: dict[str, Any], eval_runs: int, seed: int = 0) -> list[dict[str, Any]]:
    """Rows (without the cell's constant columns) for one batch."""
    device = batch.x.device
    t0 = time.perf_counter()
    attack_seeds = [derive_seed(cell, seed, ex, "attack") for ex in batch.examples]
    x_adv, grad_evals, *extra = attack_fn(model, batch.x, batch.y, attack_params,
                                          ExampleNoise(attack_seeds, device))
    found_by = extra[0] if extra else [None] * len(batch.examples)
    x_adv = x_adv.detach()
    attacked = x_adv is not batch.x
    norm = attack_params.get("norm", "linf")
    pert = distance(x_adv, batch.x, norm).tolist()
    rows: list[dict[str, Any]] = []
    y = batch.y.tolist()
    for run in range(eval_runs):
        run_seeds = [derive_seed(cell, seed, ex, "eval", run) for ex in batch.examples]
        with torch.no_grad():
            clean_pred = model(batch.x, ExampleNoise(run_seeds, device)).argmax(1).tolist()
            nfe = model.purifier.nfe
            adv_pred = (model(x_adv, ExampleNoise(run_seeds, device)).argmax(1).tolist()
                        if attacked else clean_pred)
        for i, ex in enumerate(batch.examples):
            rows.append({
                "example": ex, "data_index": batch.data_index[i], "y": y[i], "eval_run": run,
                "clean_pred": clean_pred[i], "adv_pred": adv_pred[i],
                "clean_correct": clean_pred[i] == y[i], "adv_correct": adv_pred[i] == y[i],
                "perturbation": pert[i], "grad_evals": grad_evals, "found_by": found_by[i],
                "seed_purify": run_seeds[i], "seed_attack": attack_seeds[i], "nfe": nfe,
            })
    per_row = (time.perf_counter() - t0) / max(1, len(rows))
    for r in rows:
        r["time_s"] = per_row
    return rows
