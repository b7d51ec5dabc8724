"""Parameter types and hooks shared by several plugins (torch-free).

The shared types: a diffusion time (one rule, harness.difftime), an Lp budget, a step count,
an asset reference (a checkpoint, a data set root, a denoiser).
"""
from __future__ import annotations

from typing import Any

from .. import difftime
from ..registry import Param


def diffusion_time(default: Any, help: str) -> Param:
    """A diffusion time: an integer step in [1, T] or a fraction of T in (0, 1)."""
    return Param("number", default, low=0.0, high=float(difftime.T), help=help, check_value=difftime.problem)


def diffusion_times(help: str) -> Param:
    """A flat list of diffusion times (a list of lists is then a grid axis)."""
    return Param("list[number]", low=0.0, high=float(difftime.T), help=help, check_value=difftime.problem)


MAX_STEPS = 1_000_000  # iterations of any loop a worker runs
MAX_EOT = 10_000  # purifications averaged per gradient (each is a copy of the batch in memory)
MAX_EPS = 1e6  # an Lp budget (or a step size) on [0, 1] images: anything above is "unbounded"


def step_count(default: Any, help: str, low: int = 0, high: int = MAX_STEPS) -> Param:
    return Param("int", default, low=low, high=high, help=help)


#: An Lp budget on [0, 1] images: `norm` and `eps`.
LP_BUDGET = {
    "norm": Param("str", "linf", choices=("linf", "l2"), help="threat model"),
    "eps": Param("float", low=0.0, high=MAX_EPS, help="budget on [0,1] images"),
}


def budget_threat(params: dict[str, Any]) -> tuple[str, float]:
    """(norm, eps) of an attack declaring LP_BUDGET: the result rows' threat columns."""
    return str(params["norm"]), float(params["eps"])


# ---------------------------------------------------------------- asset references
DATASET_ROOT = Param("str", asset="dataset",
                     help="local directory holding the data set in its official layout (never "
                          "downloaded), or asset:<name> under the asset directory")
CHECKPOINT = {
    "path": Param("str", asset="classifier",
                  help="local checkpoint (.safetensors, or .pt/.pth loaded with weights_only), "
                       "or asset:<name> under the asset directory"),
    "sha256": Param("str", "", help="expected sha256 of the file; empty = the catalogue's or "
                                    "`harness stage`'s record for an asset, else not checked"),
}
DENOISER = Param("str", "digits-ddpm", choices=("digits-ddpm",), asset="denoiser",
                 help="diffusion backbone: the bundled digits-ddpm, asset:<name> (a catalogued "
                      "backbone), or a local diffusers UNet2DModel folder")

# ---------------------------------------------------------------- purifiers
SAMPLER = {
    "sampler": Param("str", "ddpm", choices=("ddpm", "ddim"), help="reverse sampler"),
    "steps": step_count(0, "reverse steps per round (respacing); 0 = every step", high=difftime.T),
}
TUCKER = {
    "tucker_patch": Param("int", 4, low=1, high=64, pixels=True,
                          help="patch side (at most the image side)"),
    "tucker_stride": Param("int", 2, low=1, high=64, pixels=True,
                           help="patch stride (at most the image side)"),
    "tucker_rank": Param("float", 0.5, low=0.0, high=1e6,
                         help="cross-patch rank: >= 1 absolute, < 1 fraction"),
    "tucker_per": Param("str", "image", choices=("image", "batch"), help="one decomposition per image or per batch"),
}
TUCKER_PLACES = ("none", "pre", "noisy", "every_loop")


def tucker_config(params: dict[str, Any]) -> dict[str, Any]:
    return {k: params[k] for k in TUCKER if k in params}


def diffusion_config(params: dict[str, Any], rounds: list[Any]) -> dict[str, Any]:
    """The purifier configuration of a diffusion purifier: its rounds, sampler and backbone."""
    return {"rounds": list(rounds), **{k: params[k] for k in ("sampler", "steps", "denoiser") if k in params}}


def looped_rounds(params: dict[str, Any]) -> list[Any]:
    """`loops` rounds at the same time `t_s` (LoRID's and GDMP's loop)."""
    return [params["t_s"]] * int(params["loops"])


def rounds_nfe(params: dict[str, Any], rounds: list[Any]) -> int:
    """Denoiser evaluations of one purification: the reverse steps of every round."""
    return sum(difftime.reverse_steps(t, int(params.get("steps", 0))) for t in rounds)


# ---------------------------------------------------------------- attacks
PGD_LOOP = {  # PGD's projected-ascent loop, shared by every attack that runs it
    "steps": step_count(20, "iterations"),
    "step_size": Param("float", low=0.0, high=MAX_EPS, help="step size (Linf: per-pixel; L2: norm)"),
    "eot": step_count(1, "purifications averaged per gradient (EOT)", low=1, high=MAX_EOT),
    "random_start": Param("bool", True, help="start from a random point in the ball"),
}
GRADIENT = Param("str", "exact", choices=("exact", "greybox"),
                 help="exact: through the whole defended model (every purification step); "
                      "greybox: the classifier alone, then purify")
