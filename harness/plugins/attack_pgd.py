"""Attack `pgd`: PGD with EOT; `gradient: exact` differentiates through every purification step."""
from __future__ import annotations

from typing import Any

from ..registry import PluginSpec
from ._types import GRADIENT, LP_BUDGET, PGD_LOOP, budget_threat


def _eot(p: dict[str, Any]) -> int:
    return 1 if p["gradient"] == "greybox" else int(p["eot"])


def _passes(p: dict[str, Any]) -> int:
    # greybox gradients skip the purifier: only the final evaluation pays for it
    return 0 if p["gradient"] == "greybox" else int(p["steps"]) * int(p["eot"]) * 2


SPECS = (PluginSpec(
    "attack", "pgd", "harness.attacks.pgd:attack",
    params={**LP_BUDGET, **PGD_LOOP, "gradient": GRADIENT},
    capabilities=frozenset({"needs_gradients", "iterative"}),
    threat=budget_threat, passes=_passes, eot=_eot,
    strength=lambda p: {"steps": int(p["steps"]), "eot": _eot(p)},
    label=("norm", "eps", "steps", "eot"),
    help="projected gradient descent (Madry et al.) with expectation over transformation",
),)
