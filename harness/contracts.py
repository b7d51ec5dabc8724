"""What each plugin kind returns and exposes, as typed Protocols.

Read from the code as it is (the worker, the purifier pipeline, the attacks): a plugin meets
its kind's Protocol structurally, by having the members listed, and meets the invariants in
the Protocol's docstring by how it behaves. `tests/test_every_plugin.py` runs every
registered plugin (`harness.registry.names(kind)`) on a tiny input and checks both: the
runtime-checkable Protocols with `isinstance` (which sees only that the members exist), the
invariants by calling them. A newly registered plugin, built in or arriving through an entry
point, is checked the same way once the test has a tiny input for it.

Nothing here imports torch at run time (only under TYPE_CHECKING), so importing this module
is as cheap as importing the registry.

Conventions shared by every kind:

- Images are float32 tensors N×C×H×W with values in [0, 1] ("x01"); the diffusion model
  works in [-1, 1] ("x_t"). Labels are int64 tensors of shape (N,).
- Randomness comes only from the `harness.rng.ExampleNoise` passed in: per example, a
  counter-based stream (Philox keyed by the example's seed), so the same seeds give the same
  values whatever the batch.
- A non-finite value is never a result: on finite inputs, outputs are finite.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator, Protocol, Sequence, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .rng import ExampleNoise

__all__ = [
    "Dataset", "DatasetLoader",
    "Classifier", "ClassifierLoader",
    "Denoiser",
    "Purifier", "PurifierBuilder", "DefendedModel",
    "AttackOutcome", "Attack",
]


# ---------------------------------------------------------------- datasets

@runtime_checkable
class Dataset(Protocol):
    """What a dataset plugin's loader returns (`harness.data.base.ArrayDataset`,
    `harness.data.images.LazyImageDataset`); the worker uses exactly this:
    `order = selection(len(data), data_seed)`, then `x, y = data.take(order[...])`.

    Invariants:
    - `len(data)` is an int > 0, the number of examples; any index in [0, len) is valid.
    - `take(indices)` accepts a sequence or int64 numpy array of indices (in any order,
      as `harness.data.base.selection` produces them) and returns `(x, y)`:
      x float32, N×C×H×W with N = len(indices), the same C×H×W for every example (H = W =
      the side its `image_side` hook declares, where it declares one), values in [0, 1], finite;
      y int64 of shape (N,), each label in [0, classes).
    - `take` is deterministic: the same indices give the same tensors.
    """

    def __len__(self) -> int: ...

    def take(self, indices: Sequence[int] | "np.ndarray") -> tuple["torch.Tensor", "torch.Tensor"]: ...


@runtime_checkable
class DatasetLoader(Protocol):
    """A dataset plugin's implementation (`spec.load()`): `load(params) -> Dataset`,
    params as `PluginSpec.resolve` filled them (local paths already resolved)."""

    def __call__(self, params: dict[str, Any]) -> Dataset: ...


# ---------------------------------------------------------------- classifiers

@runtime_checkable
class Classifier(Protocol):
    """What a classifier plugin's loader returns: an `nn.Module` (the worker calls
    `.to(device)` and the defended model registers it as a submodule), x01 → logits.

    Invariants:
    - It is a `torch.nn.Module`, in eval mode (it and every submodule: `training` False),
      with no parameter requiring grad (attacks differentiate with respect to x only).
    - `model(x)` for x float32 N×C×H×W in [0, 1] (the shape its data set gives; any
      normalisation and resizing happen inside) returns float logits N×classes, finite.
    - Deterministic: the same x gives the same logits.
    - Differentiable in x: for x requiring grad, the logits carry a graph and the input
      gradient of a loss is finite (exact-gradient attacks rely on it).
    """

    training: bool

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor": ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...

    def eval(self) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator["torch.nn.Parameter"]: ...


@runtime_checkable
class ClassifierLoader(Protocol):
    """A classifier plugin's implementation: `load(params) -> Classifier`."""

    def __call__(self, params: dict[str, Any]) -> Classifier: ...


# ---------------------------------------------------------------- denoisers

@runtime_checkable
class Denoiser(Protocol):
    """A noise predictor (`harness.purify.samplers.EpsFn`): `eps_fn(x_t, t) -> ε̂`.

    Invariants:
    - x_t float N×C×H×W (the diffusion range, about [-1, 1] plus noise), t int64 of shape
      (N,) holding schedule step indices in [0, T).
    - ε̂ has x_t's shape and dtype and is finite for finite inputs.
    - Deterministic in eval mode, no parameter requiring grad, differentiable in x_t.
    A purifier's `nfe` counts its calls per example.
    """

    def __call__(self, x_t: "torch.Tensor", t: "torch.Tensor") -> "torch.Tensor": ...


# ---------------------------------------------------------------- purifiers

@runtime_checkable
class Purifier(Protocol):
    """What a purifier plugin builds (`harness.purify.pipeline.Purifier`): x01 → x01.

    Members and who reads them:
    - `__call__(x01, noise)`: the purified images (the defended model, every attack).
    - `nfe`: denoiser evaluations per example in the last call (cost, telemetry).
    - `stochastic`: whether the output depends on `noise` (validity: EOT, eval runs).
    - `straight_through`: a settable bool; when True each stage keeps its forward value and
      passes the gradient through as the identity (BPDA's `tucker_backward: exact`).
    - `to(device)`: moves it with its denoiser (the worker).

    Invariants:
    - It is a `torch.nn.Module` with no parameter requiring grad.
    - For x01 float32 N×C×H×W in [0, 1] and `ExampleNoise` with N seeds, the output has x01's
      shape and dtype, values in [0, 1], finite.
    - `nfe` is an int >= 0, equal to the number of denoiser calls the last call made (each
      call denoises the whole batch), and to what the plugin's `nfe` hook declares for its
      parameters (the plan's cost); 0 when the plugin has no diffusion.
    - `stochastic` is a bool, True exactly for the plugins declaring the capability
      "stochastic"; a non-stochastic purifier gives the same output for any noise, a
      stochastic one the same output for the same seeds (and may ignore `noise=None` only
      when not stochastic).
    - Setting `straight_through` leaves the forward values unchanged.
    - Differentiable in x01 (exact-gradient attacks): the input gradient of a loss through
      it is finite.
    """

    nfe: int
    straight_through: bool

    @property
    def stochastic(self) -> bool: ...

    def __call__(self, x01: "torch.Tensor", noise: "ExampleNoise | None" = None) -> "torch.Tensor": ...

    def to(self, *args: Any, **kwargs: Any) -> Any: ...


@runtime_checkable
class PurifierBuilder(Protocol):
    """A purifier plugin's implementation: `build(name, params, device, eps_fn=None)`;
    `eps_fn` is the (already loaded) denoiser its `denoiser` parameter names, or None."""

    def __call__(self, name: str, params: dict[str, Any], device: Any = "cpu",
                 eps_fn: Denoiser | None = None) -> Purifier: ...


@runtime_checkable
class DefendedModel(Protocol):
    """What an attack receives (`harness.purify.pipeline.Defended`):
    `model(x01, noise) = model.classifier(model.purifier(x01, noise))`. Grey-box attacks use
    `classifier` alone, BPDA runs `purifier` forward and sets its `straight_through`."""

    purifier: Purifier
    classifier: Classifier

    def __call__(self, x01: "torch.Tensor", noise: "ExampleNoise | None" = None) -> "torch.Tensor": ...


# ---------------------------------------------------------------- attacks

@runtime_checkable
class AttackOutcome(Protocol):
    """What an attack returns (`harness.attacks.AttackResult`), for a batch of n examples.

    Invariants:
    - `x_adv`: x's shape and dtype, values in [0, 1], finite, and inside the threat model the
      plugin's `threat` hook declares: `harness.attacks.budget.distance(x_adv, x, norm) <= eps`
      per example (an attack whose threat is "none" returns x unchanged).
    - `grad_evals`: an int >= 0, gradient evaluations per example; > 0 for an attack declaring
      the capability "needs_gradients" (with steps > 0), else 0.
    - `found_by`: None, or n strings (the sub-attack that fooled each example, "" if none).
    - `grad_nonfinite`: None (read as all zero), or n ints >= 0.
    """

    x_adv: "torch.Tensor"
    grad_evals: int
    found_by: list[str] | None
    grad_nonfinite: list[int] | None


@runtime_checkable
class Attack(Protocol):
    """An attack plugin's implementation: `attack(model, x, y, params, noise) -> AttackOutcome`.

    Invariants besides the outcome's:
    - x and y are left as they were (no in-place change), and so is the model: still in eval
      mode, `purifier.straight_through` restored, no parameter made to require grad.
    - Recomputable: the same inputs and seeds give the same `x_adv`.
    """

    def __call__(self, model: DefendedModel, x: "torch.Tensor", y: "torch.Tensor",
                 params: dict[str, Any], noise: "ExampleNoise") -> AttackOutcome: ...
