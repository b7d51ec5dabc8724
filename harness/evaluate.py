"""The per-batch loop shared by every attack and purifier.

One batch: attack once (its own randomness, seeded per example), then N evaluation runs
that purify and classify the clean and the adversarial inputs together (one batch) with
fresh, per-example seeds. One row per (example, evaluation run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .attacks import AttackResult
from .attacks.budget import distance
from .purify.pipeline import Defended
from .results import NONFINITE_PRED
from .rng import ExampleNoise, derive_seed

AttackFn = Callable[..., AttackResult]


def predict(logits: torch.Tensor) -> list[int]:
    """The predicted class per row; NONFINITE_PRED where a logit is NaN or infinite.

    argmax of all-NaN logits is class 0: scored as a class, a NaN-producing model would be
    "correct" on every example labelled 0. A non-finite prediction is a failure instead."""
    pred = logits.argmax(1)
    bad = ~torch.isfinite(logits).all(1)
    return torch.where(bad, torch.full_like(pred, NONFINITE_PRED), pred).tolist()


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
    result = attack_fn(model, batch.x, batch.y, attack_params, ExampleNoise(attack_seeds, device))
    n = len(batch.examples)
    found_by = result.found_by or [None] * n
    nonfinite = result.grad_nonfinite or [0] * n
    x_adv = result.x_adv.detach()
    attacked = x_adv is not batch.x
    norm = attack_params.get("norm", "linf")
    pert = distance(x_adv, batch.x, norm).tolist()
    rows: list[dict[str, Any]] = []
    y = batch.y.tolist()
    # Clean and adversarial inputs are purified as ONE batch per run (one pass of the reverse
    # loop, twice the batch): both halves draw example i's run noise from its own seed, as
    # two separate calls would (common random numbers: the pair differs only by the attack).
    both = torch.cat([batch.x, x_adv]) if attacked else batch.x
    for run in range(eval_runs):
        run_seeds = [derive_seed(cell, seed, ex, "eval", run) for ex in batch.examples]
        with torch.inference_mode():
            pred = predict(model(both, ExampleNoise(run_seeds * (2 if attacked else 1), device)))
            nfe = model.purifier.nfe
        clean_pred, adv_pred = (pred[:n], pred[n:]) if attacked else (pred, pred)
        for i, ex in enumerate(batch.examples):
            rows.append({
                "example": ex, "data_index": batch.data_index[i], "y": y[i], "eval_run": run,
                "clean_pred": clean_pred[i], "adv_pred": adv_pred[i],
                "clean_correct": clean_pred[i] == y[i], "adv_correct": adv_pred[i] == y[i],
                "perturbation": pert[i], "grad_evals": result.grad_evals, "found_by": found_by[i],
                "grad_nonfinite": int(nonfinite[i]),
                "seed_purify": run_seeds[i], "seed_attack": attack_seeds[i], "nfe": nfe,
            })
    per_row = (time.perf_counter() - t0) / max(1, len(rows))
    for r in rows:
        r["time_s"] = per_row
    return rows
