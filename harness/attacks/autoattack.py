"""AutoAttack (Croce & Hein 2020) through the `pyautoattack` package: the one adapter.

pyautoattack 0.2 carries the original attack files with a changed wrapper API
(keyword-only `AutoAttack(model, norm=, eps=, version=, device=, seed=, attacks=)`,
`run_standard_evaluation(x, y, batch_size=)` returning `(x_adv, y_adv)`). Everything
that touches that API is in this module; `square.py` reuses it.

Versions: `standard` (APGD-CE, APGD-T, FAB-T, Square), `rand` (APGD-CE, APGD-DLR with
EOT 20) and `custom` (the `attacks` list, in that order).

EOT is upstream's: APGD averages the gradients of its `eot_iter` samples in a Python loop,
one forward and backward each (so `rand` costs 20 sequential passes per step). It is not
batched here: the gradient of the expected loss is the mean of the per-sample gradients,
each taken at that sample's own logits, and a batched stand-in (one forward over the
copies, one loss) would change the attack's arithmetic and its step-size rule's inputs;
keeping upstream's loop keeps the numbers AutoAttack's users compare against.

What is attacked: the whole defended model as ONE nn.Module (`Target`), logits =
classifier(purifier(x)); with gradient="greybox" the classifier alone (the worker then
purifies the result). For a stochastic purifier every forward call draws fresh noise
from the attack's ExampleNoise: AutoAttack subsets and reorders its batches internally,
so row j of a call draws from example j mod n's stream; each call advances the streams, so
no two calls share a draw, and the draws are a function of the attack's seeds and the
call sequence. AutoAttack's own randomness (random starts, Square's proposals, target
choice) comes from torch's global generator, which it seeds through its `seed=`
argument; we pass a seed derived from the attack's per-example seeds, so a batch is
recomputable, and restore the global generator afterwards. Unlike PGD, the result of
an example depends on the batch it was attacked in (AutoAttack draws batch-wide).

Per-sub-attack outcomes: the sub-attacks run one at a time, each on the examples still
robust (AutoAttack's own cascade, via `attacks_to_run`); for a deterministic model
this gives exactly what one call with all the attacks gives. `run` returns, and
`attack` returns as a third value, which sub-attack fooled each example (the worker
records it in the `found_by` column).
Like upstream AutoAttack, an example that no sub-attack fools is returned unperturbed,
and on a stochastic model "fooled" means fooled on the draw AutoAttack evaluated.
"""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..plugins.attack_autoattack import SUB_ATTACKS  # declared once, with the plugin
from ..rng import ExampleNoise, derive_seed
from . import AttackResult
from .budget import project
from .finite import sanitize

VERSIONS = ("standard", "rand", "custom")
_NORMS = {"linf": "Linf", "l2": "L2"}

CLEAN = "clean"  # found_by for an example misclassified with no perturbation


@dataclass
class Outcomes:
    """What one AutoAttack run found, per example of the batch."""

    attacks: list[str]  # the sub-attacks, in the order run
    found_by: list[str]  # per example: the sub-attack whose point fooled the model, CLEAN, or "" (robust)
    robust_after: dict[str, float] = field(default_factory=dict)  # robust accuracy after each sub-attack
    grad_evals: int = 0  # gradient evaluations per example (measured; rounded up)
    grad_nonfinite: list[int] = field(default_factory=list)  # per example (attacks.finite)

    @property
    def robust(self) -> list[bool]:
        return [f == "" for f in self.found_by]


class _Sanitize(torch.autograd.Function):
    """Identity forward; backward zeroes the non-finite rows of the input gradient (the
    gradient AutoAttack then sees) and counts them on the Target (attacks.finite)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, target: "Target") -> torch.Tensor:  # type: ignore[override]
        ctx.target = target
        ctx.save_for_backward(x)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad, bad = sanitize(grad)
        if bad.any():
            (x,) = ctx.saved_tensors
            ctx.target.count_nonfinite(x[bad])
        return grad, None


class Target(nn.Module):
    """The model AutoAttack sees: forward(x) = logits of the defended model (or of its
    classifier alone for greybox), with fresh per-call noise; counts the example-gradients
    that flow back through it, and the non-finite ones per example of `reference` (the
    batch being attacked), zeroing those before AutoAttack sees them."""

    def __init__(self, model: nn.Module, noise: ExampleNoise, greybox: bool = False,
                 reference: torch.Tensor | None = None):
        super().__init__()
        self.model = model
        self.noise = noise
        self.greybox = greybox
        self.backward_rows = 0
        self.reference = reference
        n = len(noise) if reference is None else reference.shape[0]
        self.nonfinite = torch.zeros(n, dtype=torch.long)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.requires_grad:
            x = _Sanitize.apply(x, self)
        if self.greybox:
            out = self.model.classifier(x)
        else:
            rows = torch.arange(x.shape[0]) % len(self.noise)
            out = self.model(x, self.noise.subset(rows))
        if out.requires_grad:
            out.register_hook(self._count)
        return out

    def _count(self, grad: torch.Tensor) -> None:
        self.backward_rows += grad.shape[0]

    def count_nonfinite(self, rows: torch.Tensor) -> None:
        """AutoAttack subsets and reorders its batches, so a row is attributed to the example
        it lies nearest to (in L∞): the one whose eps-ball holds it."""
        if self.reference is None:
            self.nonfinite[: rows.shape[0]] += 1
            return
        ref = self.reference.to(rows.device, rows.dtype).flatten(1)
        d = (rows.detach().flatten(1).unsqueeze(1) - ref.unsqueeze(0)).abs().amax(-1)
        for i in d.argmin(1).tolist():
            self.nonfinite[i] += 1


def _autoattack_class() -> type:
    try:
        from pyautoattack import AutoAttack
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the autoattack and square attacks need the pyautoattack package: "
                          "pip install pyautoattack  (or: pip install 'lorid-harness[autoattack]')") from e
    return AutoAttack


def _set_apgd_iterations(apgd: Any, n: int) -> None:
    """APGD derives its step-size checkpoints from n_iter in its constructor; redo that for n."""
    apgd.n_iter = apgd.n_iter_orig = n
    apgd.n_iter_2 = max(int(0.22 * n), 1)
    apgd.n_iter_min = max(int(0.06 * n), 1)
    apgd.size_decr = max(int(0.03 * n), 1)


def build(target: nn.Module, *, version: str, attacks: list[str] | None, norm: str, eps: float,
          steps: int, eot: int, queries: int, seed: int, device: torch.device) -> Any:
    """A configured pyautoattack.AutoAttack. steps: APGD/FAB iterations; eot: EOT samples per
    APGD gradient, 0 = the version's own (rand 20, otherwise 1); queries: Square's budget."""
    if version not in VERSIONS:
        raise ValueError(f"autoattack version must be one of {VERSIONS}, not {version!r}")
    if norm not in _NORMS:
        raise ValueError(f"autoattack norm must be one of {tuple(_NORMS)}, not {norm!r}")
    if version == "custom":
        if not attacks:
            raise ValueError("autoattack version 'custom' needs a non-empty `attacks` list, "
                             f"each one of {SUB_ATTACKS}")
        bad = [a for a in attacks if a not in SUB_ATTACKS]
        if bad:
            raise ValueError(f"unknown AutoAttack sub-attack {bad[0]!r}; allowed: {', '.join(SUB_ATTACKS)}")
    elif attacks:
        raise ValueError(f"autoattack `attacks` is only for version 'custom'; version {version!r} "
                         "runs its own list")
    aa = _autoattack_class()(target, norm=_NORMS[norm], eps=eps, version=version, device=device,
                             seed=seed, attacks=list(attacks) if version == "custom" else None)
    aa.verbose = False  # its log is debug-level; the checks still warn through logging
    for apgd in (aa.apgd, aa.apgd_targeted):
        _set_apgd_iterations(apgd, steps)
        if eot:
            apgd.eot_iter = eot
    aa.fab.n_iter = steps
    aa.square.n_queries = queries
    return aa


def run(model: nn.Module, x: torch.Tensor, y: torch.Tensor, noise: ExampleNoise, *,
        version: str = "standard", attacks: list[str] | None = None, norm: str = "linf",
        eps: float, steps: int = 100, eot: int = 0, queries: int = 5000,
        gradient: str = "exact") -> tuple[torch.Tensor, Outcomes]:
    """AutoAttack on the defended `model` (harness.purify.pipeline.Defended), one sub-attack
    at a time on the examples still robust. Returns (x_adv, outcomes)."""
    if gradient not in ("exact", "greybox"):
        raise ValueError(f"gradient must be 'exact' or 'greybox', not {gradient!r}")
    target = Target(model, noise, greybox=gradient == "greybox", reference=x.detach())
    seed = derive_seed("autoattack", *noise.seeds)
    aa = build(target, version=version, attacks=attacks, norm=norm, eps=eps, steps=steps, eot=eot,
               queries=queries, seed=seed, device=x.device)
    order = list(aa.attacks_to_run)
    n = x.shape[0]
    x_adv = x.detach().clone()
    robust = torch.ones(n, dtype=torch.bool, device=x.device)
    found_by = [""] * n
    robust_after: dict[str, float] = {}
    cuda = [x.device.index or 0] if x.device.type == "cuda" else []
    trace = sys.gettrace()  # AutoAttack's dynamic-defence check resets the trace function
    try:
        with torch.random.fork_rng(devices=cuda):
            for name in order:
                idx = robust.nonzero().flatten()
                if idx.numel() == 0:
                    break
                aa.attacks_to_run = [name]
                xs, ys = x[idx].detach().clone(), y[idx].detach().clone()
                xa, ya = aa.run_standard_evaluation(xs, ys, batch_size=len(idx))
                fooled = ya.to(y.device) != ys
                unchanged = (xa == xs).flatten(1).all(1)
                for i in fooled.nonzero().flatten().tolist():
                    found_by[int(idx[i])] = CLEAN if bool(unchanged[i]) else name
                x_adv[idx[fooled]] = xa[fooled].to(x_adv.dtype)
                robust[idx[fooled]] = False
                robust_after[name] = robust.float().mean().item()
    finally:
        sys.settrace(trace)
    # AutoAttack keeps its points in the ball up to rounding; make the budget a guarantee.
    x_adv = project(x_adv, x.detach(), norm, eps)
    grads = math.ceil(target.backward_rows / max(1, n))
    return x_adv, Outcomes(order, found_by, robust_after, grads, target.nonfinite.tolist())


def attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, params: dict[str, Any],
           noise: ExampleNoise) -> AttackResult:
    """The `autoattack` plugin."""
    x_adv, outcomes = run(model, x, y, noise, version=params["version"], attacks=params.get("attacks") or None,
                          norm=params["norm"], eps=params["eps"], steps=params["steps"], eot=params["eot"],
                          queries=params["queries"], gradient=params["gradient"])
    return AttackResult(x_adv, outcomes.grad_evals, outcomes.found_by, outcomes.grad_nonfinite)
