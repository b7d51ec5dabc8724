"""Attack `autoattack`: AutoAttack (Croce & Hein 2020) via pyautoattack, against the defended
model as one module; `standard`, `rand` or a `custom` list of sub-attacks."""
from __future__ import annotations

from typing import Any

from ..errors import GridError
from ..registry import Param, PluginSpec
from ._types import GRADIENT, LP_BUDGET, budget_threat, step_count

SUB_ATTACKS = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")
# Gradient sub-attacks of each version, counted with their target classes (APGD-T and FAB-T
# try 9 targets): an upper bound for the cost, since robust points stop early.
_GRADIENT_RUNS = {"standard": 1 + 9 + 9, "rand": 2}
_RUNS = {"apgd-ce": 1, "apgd-dlr": 1, "apgd-t": 9, "fab": 1, "fab-t": 9}


def _validate(p: dict[str, Any], file: str, key: str) -> None:
    if p["version"] == "custom" and not p["attacks"]:
        raise GridError(file, f"{key}.attacks", f"version 'custom' needs a non-empty list, each one of "
                                                f"{', '.join(SUB_ATTACKS)}")
    if p["version"] != "custom" and p["attacks"]:
        raise GridError(file, f"{key}.attacks", f"only for version 'custom'; version {p['version']!r} "
                                                "runs its own list")


def _eot(p: dict[str, Any]) -> int:
    """0 means the version's own: 20 for rand, else 1."""
    return int(p["eot"]) or (20 if p["version"] == "rand" else 1)


def _passes(p: dict[str, Any]) -> int:
    if p["gradient"] == "greybox":
        return 0
    runs = _GRADIENT_RUNS.get(p["version"]) or sum(_RUNS.get(a, 0) for a in p["attacks"])
    queries = int(p["queries"]) if p["version"] == "standard" or "square" in p["attacks"] else 0
    return int(p["steps"]) * _eot(p) * 2 * runs + queries


def _white_box(p: dict[str, Any]) -> bool:
    if p["gradient"] == "greybox":
        return False
    return p["version"] != "custom" or any(a != "square" for a in p["attacks"])


SPECS = (PluginSpec(
    "attack", "autoattack", "harness.attacks.autoattack:attack",
    params={
        "version": Param("str", "standard", choices=("standard", "rand", "custom"),
                         help="standard: APGD-CE, APGD-T, FAB-T, Square; rand: APGD-CE, APGD-DLR with EOT; "
                              "custom: the `attacks` list"),
        "attacks": Param("list[str]", [], choices=SUB_ATTACKS,
                         help="version custom only: the sub-attacks, in the order run"),
        **LP_BUDGET,
        "steps": step_count(100, "APGD and FAB iterations (AutoAttack: 100)", low=1, high=100000),
        "eot": Param("int", 0, low=0, high=1000,
                     help="purifications averaged per APGD gradient; 0 = the version's own (rand 20, else 1)"),
        "queries": Param("int", 5000, low=1, high=1000000, help="Square's queries per example (AutoAttack: 5000)"),
        "gradient": GRADIENT,
    },
    capabilities=frozenset({"needs_gradients", "unperturbed_on_failure"}),
    validate=_validate, threat=budget_threat, passes=_passes, eot=_eot, white_box=_white_box,
    strength=lambda p: {"steps": int(p["steps"]), "eot": _eot(p), "queries": int(p["queries"])},
    label=("version", "norm", "eps"),
    help="AutoAttack (Croce & Hein 2020) via pyautoattack, against the defended model as one module",
),)
