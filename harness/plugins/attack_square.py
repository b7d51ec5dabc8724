"""Attack `square`: Square (Andriushchenko et al.), query-based black box on the whole pipeline."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import LP_BUDGET, budget_threat

SPECS = (PluginSpec(
    "attack", "square", "harness.attacks.square:attack",
    params={
        **LP_BUDGET,
        "queries": Param("int", 5000, low=1, high=1000000, help="model evaluations per example"),
    },
    capabilities=frozenset({"black_box", "unperturbed_on_failure"}),
    threat=budget_threat,
    passes=lambda p: int(p["queries"]),  # one purified forward per query
    strength=lambda p: {"queries": int(p["queries"])},
    label=("norm", "eps", "queries"),
    help="Square attack (Andriushchenko et al.): query-based black box on the whole pipeline, no gradients",
),)
