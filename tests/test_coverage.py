"""The report's 95 % interval for robust_mean covers the truth at least 93 % of the time on
realistic pooled data, with 1 seed and with 3 seeds (evaluation protocol, "Intervals").

Model: image i has a latent robustness p_i ~ Beta(a, b) (bimodal, as real defences are: most
images are robust in every run or in none); a seed s attacks it once, which gives a
per-(image, seed) probability q_is ~ Beta(kappa p_i, kappa (1 - p_i)) (the seed's
adversarial input, shared by its runs: seed-level correlation); each of 3 evaluation runs is
Bernoulli(q_is). The estimand is the population robust accuracy E[p] = a / (a + b). Each
replicate is summarised exactly as :func:`analysis.aggregate.summarise` does: one value per
(cell, example), the mean over its runs, and the interval over all pooled values with the
image as the cluster. The old interval (the same values taken as independent) is run on the
same replicates and must fail at 3 seeds, so this test can fail.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from analysis.aggregate import summarise
from analysis.stats import clustered_interval, mean_accuracy_interval

RUNS, REPS, KAPPA = 3, 2000, 4.0


def simulate(rng: np.random.Generator, images: int, seeds: int, a: float, b: float) -> np.ndarray:
    """(REPS, images, seeds, RUNS) adv_correct outcomes."""
    p = np.clip(rng.beta(a, b, size=(REPS, images, 1)), 1e-6, 1 - 1e-6)
    q = rng.beta(KAPPA * p, KAPPA * (1 - p), size=(REPS, images, seeds))
    return rng.random((REPS, images, seeds, RUNS)) < q[..., None]


def coverage(correct: np.ndarray, truth: float) -> tuple[float, float]:
    """(clustered, old unclustered) coverage of ``truth`` over the replicates."""
    _, images, seeds, _ = correct.shape
    values = correct.mean(axis=-1).reshape(REPS, -1)      # per (cell, example): mean over runs
    image = np.repeat(np.arange(images), seeds)            # the cluster of each value
    new = old = 0
    for v in values:
        lo, hi = clustered_interval(v, image, 1.96)
        new += lo <= truth <= hi
        lo, hi = mean_accuracy_interval(v, 1.96)
        old += lo <= truth <= hi
    return new / REPS, old / REPS


def as_rows(correct: np.ndarray) -> pd.DataFrame:
    """One replicate as result rows (seed s = cell s), for summarise."""
    images, seeds, runs = correct.shape
    i, s, r = (a.reshape(-1) for a in np.meshgrid(np.arange(images), np.arange(seeds), np.arange(runs),
                                                     indexing="ij"))
    ok = correct.reshape(-1)
    return pd.DataFrame({
        "sweep": "sim", "cell": [f"seed{k}" for k in s], "dataset": "sim", "threat": "linf",
        "eps": 0.03, "attack_label": "pgd", "classifier": "c", "label": "defence",
        "cell_examples": images, "eval_runs": runs, "example": i, "data_index": 1000 + i, "y": 1,
        "eval_run": r, "clean_pred": 1, "clean_correct": True, "adv_pred": np.where(ok, 1, 0),
        "adv_correct": ok, "nfe": 1, "time_s": 0.0, "grad_nonfinite": 0})


CASES = [  # (images, seeds, a, b): mean robustness 44 % and 17 %
    (300, 1, 0.4, 0.5),
    (300, 3, 0.4, 0.5),
    (100, 3, 0.3, 1.5),
]


@pytest.mark.parametrize("images, seeds, a, b", CASES)
def test_interval_coverage(images: int, seeds: int, a: float, b: float) -> None:
    rng = np.random.default_rng(20240 + 10 * images + seeds)
    correct = simulate(rng, images, seeds, a, b)
    new, old = coverage(correct, a / (a + b))
    print(f"{images} images x {seeds} seed(s), Beta({a}, {b}): coverage clustered {new:.3f}, "
          f"unclustered {old:.3f}")
    assert new >= 0.93
    if seeds == 1:
        assert old == new  # one value per image: the clustered interval is the old one
    else:
        assert old < 0.88  # pooling seeds as independent examples: far too narrow

    # the report computes exactly this interval for the pooled rows of the replicate
    (row,) = [r for _, r in summarise(as_rows(correct[0])).iterrows()]
    values = correct[0].mean(axis=-1).reshape(-1)
    expect = clustered_interval(values, np.repeat(np.arange(images), seeds), 1.96)
    assert (row["ci_lo"], row["ci_hi"]) == pytest.approx(expect, abs=1e-12)
    assert row["robust_mean"] == pytest.approx(values.mean())
    assert (row["n"], row["cell_n"], row["cells"]) == (images, images * seeds, seeds)
