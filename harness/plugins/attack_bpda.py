"""Attack `bpda`: BPDA+EOT, full purification forward, straight-through backward, PGD steps."""
from __future__ import annotations

from ..registry import Param, PluginSpec
from ._types import LP_BUDGET, PGD_LOOP, budget_threat

SPECS = (PluginSpec(
    "attack", "bpda", "harness.attacks.bpda:attack",
    params={
        **LP_BUDGET,
        **PGD_LOOP,
        "tucker_backward": Param("str", "identity", choices=("identity", "exact"),
                                 help="identity: the whole purifier is the identity in the backward pass; "
                                      "exact: only the diffusion is, the Tucker step keeps its gradient"),
    },
    capabilities=frozenset({"needs_gradients", "iterative"}),
    threat=budget_threat,
    passes=lambda p: int(p["steps"]) * int(p["eot"]),  # the purifier runs forward only
    eot=lambda p: int(p["eot"]),
    strength=lambda p: {"steps": int(p["steps"]), "eot": int(p["eot"])},
    label=("norm", "eps", "steps", "eot"),
    help="BPDA+EOT (Athalye et al.): full purification forward, straight-through backward; PGD steps",
),)
