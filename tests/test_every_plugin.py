"""Every registered plugin, run on a tiny input, against its kind's contract (harness/contracts.py).

The parametrisation is read from the registry at collection time, so a plugin registered
later (built in or through an entry point) is checked without editing this file, except to
give it a tiny input: a plugin with none FAILS, naming the table to add it to.

Tiny inputs: datasets in their official layouts under tmp (the fixtures of test_datasets.py);
classifiers with random weights saved to tmp and loaded through the plugin (WRN-70-16: its
266 M-parameter network is checked on the meta device, and its loader end to end on the same
DMWideResNet class at depth 10, width 1); purifiers over the bundled digits-ddpm on 8×8
digits; attacks on the bundled digits CNN behind a cheap LoRID purifier.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest
import torch
from torch import nn

from harness import contracts, registry
from harness.rng import ExampleNoise

from test_datasets import celeba_fixture, imagenet_folders, write_cifar

SEEDS = [11, 12, 13, 14]
OTHER_SEEDS = [21, 22, 23, 24]


def tiny_input(table: dict[str, Any], kind: str, name: str) -> Any:
    if name not in table:
        pytest.fail(f"add a tiny input for {kind} {name} in tests/test_every_plugin.py", pytrace=False)
    return table[name]


def resolve(kind: str, name: str, params: dict[str, Any]) -> tuple[registry.PluginSpec, dict[str, Any]]:
    spec = registry.get(kind, name)
    return spec, spec.resolve(params, "<test>", kind)


def hook(spec: registry.PluginSpec, name: str) -> Callable[[dict[str, Any]], Any] | None:
    """The spec's declared hook `name` (`nfe`, `threat`, `image_side`: what the plan and the
    report read instead of running the plugin), or None where the registry has no such hook.
    Where there is one, the plugin's measured behaviour must agree with it."""
    fn = getattr(spec, name, None)
    return fn if callable(fn) else None


def finite(t: torch.Tensor) -> bool:
    return bool(torch.isfinite(t).all())


def in01(t: torch.Tensor) -> bool:
    return float(t.min()) >= 0.0 and float(t.max()) <= 1.0


def trainable(module: nn.Module) -> list[str]:
    return [n for n, p in module.named_parameters() if p.requires_grad]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread. On a shared 2-core machine two OpenMP threads wait on
    each other (a UNet call on 4 digits: 5 ms with one, 0.2-1 s with two under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """Four held-out digits, as the worker takes them."""
    from harness.data.base import selection

    data = registry.get("dataset", "digits").load()({})
    return data.take(selection(len(data), 0)[:4])


@pytest.fixture(scope="module")
def denoiser() -> nn.Module:
    from harness.models.bundled import load_denoiser

    return load_denoiser("digits-ddpm")


@pytest.fixture(scope="module")
def digits_cnn() -> nn.Module:
    spec, resolved = resolve("classifier", "digits-cnn", {})
    return spec.load()(resolved)


# ================================================================ datasets
# name -> make(tmp_path) -> (params, C×H×W of every image, classes)

def _cifar10(tmp: Path) -> tuple[dict, tuple, int]:
    write_cifar(tmp / "cifar-10-batches-py" / "test_batch", 6, {"labels": [3, 1, 4, 1, 5, 9]}, 0, 4)
    return {"root": str(tmp)}, (3, 32, 32), 10


def _cifar100(tmp: Path) -> tuple[dict, tuple, int]:
    write_cifar(tmp / "cifar-100-python" / "test", 6,
                {"fine_labels": [10, 99, 0, 42, 7, 13], "coarse_labels": [1, 19, 0, 5, 2, 3]}, 1, 2)
    return {"root": str(tmp)}, (3, 32, 32), 100


def _imagenet(tmp: Path) -> tuple[dict, tuple, int]:
    imagenet_folders(tmp, ["n01443537", "n01440764"], 3)
    return {"root": str(tmp), "size": 16}, (3, 16, 16), 1000


def _celebahq(tmp: Path) -> tuple[dict, tuple, int]:
    celeba_fixture(tmp)
    return {"root": str(tmp), "attribute": "Smiling", "size": 16}, (3, 16, 16), 2


DATASETS: dict[str, Callable[[Path], tuple[dict, tuple, int]]] = {
    "digits": lambda tmp: ({}, (1, 8, 8), 10),
    "cifar10": _cifar10,
    "cifar100": _cifar100,
    "imagenet": _imagenet,
    "celebahq": _celebahq,
}


@pytest.mark.parametrize("name", registry.names("dataset"))
def test_dataset(name: str, tmp_path: Path) -> None:
    """contracts.Dataset, used as the worker uses it."""
    from harness.data.base import selection

    params, chw, classes = tiny_input(DATASETS, "dataset", name)(tmp_path)
    spec, resolved = resolve("dataset", name, params)
    load = spec.load()
    assert isinstance(load, contracts.DatasetLoader)
    data = load(resolved)
    assert isinstance(data, contracts.Dataset), f"{type(data).__name__} lacks len() or take()"
    n = len(data)
    assert isinstance(n, int) and n > 0
    idx = selection(n, 0)[:3]  # int64 numpy, out of order, as the worker passes them
    x, y = data.take(idx)
    assert isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)
    assert x.dtype == torch.float32 and tuple(x.shape) == (len(idx), *chw), (x.dtype, x.shape)
    side = hook(spec, "image_side")
    if side is not None and side(resolved) is not None:
        assert x.shape[-2:] == (side(resolved),) * 2, f"declared image side {side(resolved)}, got {x.shape}"
    assert finite(x) and in01(x), (float(x.min()), float(x.max()))
    assert y.dtype == torch.int64 and tuple(y.shape) == (len(idx),), (y.dtype, y.shape)
    assert int(y.min()) >= 0 and int(y.max()) < classes, y.tolist()
    x2, y2 = data.take(idx)
    assert torch.equal(x, x2) and torch.equal(y, y2), "take() is not deterministic"
    # a list of ints works too, and the last index is valid
    x3, y3 = data.take([int(i) for i in idx[:1]] + [n - 1])
    assert torch.equal(x3[0], x[0]) and torch.equal(y3[0], y[0]) and x3.shape[0] == 2


# ================================================================ classifiers
# name -> make(tmp_path, monkeypatch) -> (params, C×H×W of the input, classes)

def _random_weights(name: str, params: dict[str, Any], tmp: Path) -> dict[str, Any]:
    """The plugin's network with random weights, saved where its `path` parameter points, in
    its published key layout (a `Normalized` wrapper's inner network, as the files hold it)."""
    from harness.models.checkpoints import target_module
    from harness.models.zoo import build_classifier

    torch.manual_seed(0)
    path = tmp / f"{name}.pt"
    torch.save(target_module(build_classifier(name, params)).state_dict(), path)
    return {**params, "path": str(path)}


def _wrn_70_16(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, tuple, int]:
    """266 M parameters is too big to write, read and run here: the real network on the meta
    device (parameter count, logits shape), then the plugin's own loader (RobustBench file
    handling, strict load) end to end on the same class, DMWideResNet, at depth 10, width 1."""
    from harness.models import dm_wideresnet
    from harness.models.zoo import build_classifier

    with torch.device("meta"):
        real = build_classifier("wrn-70-16", {"classes": 10})
        assert sum(p.numel() for p in real.parameters()) == 266_796_506
        assert tuple(real.eval()(torch.empty(2, 3, 32, 32)).shape) == (2, 10)
    del real
    monkeypatch.setattr(dm_wideresnet, "wrn_70_16_dm",
                        lambda num_classes=10, dataset="cifar10", device="cpu":
                        dm_wideresnet.dm_wrn(10, 1, num_classes, dataset, device))
    small = build_classifier("wrn-70-16", {"classes": 10})  # the stand-in took (not 1 GB to write)
    assert isinstance(small, dm_wideresnet.DMWideResNet) and sum(p.numel() for p in small.parameters()) < 10**6
    return _random_weights("wrn-70-16", {"classes": 10}, tmp), (3, 32, 32), 10


CLASSIFIERS: dict[str, Callable[[Path, pytest.MonkeyPatch], tuple[dict, tuple, int]]] = {
    "digits-cnn": lambda tmp, mp: ({}, (1, 8, 8), 10),
    "wrn-28-10": lambda tmp, mp: (_random_weights("wrn-28-10", {"classes": 100}, tmp), (3, 32, 32), 100),
    "wrn-70-16": _wrn_70_16,
    "resnet-50": lambda tmp, mp: (_random_weights("resnet-50", {}, tmp), (3, 64, 64), 1000),
    "resnet-18-binary": lambda tmp, mp: (_random_weights("resnet-18-binary", {}, tmp), (3, 64, 64), 2),
    "resnet-18-cifar": lambda tmp, mp: (_random_weights("resnet-18-cifar", {}, tmp), (3, 32, 32), 10),
}


@pytest.mark.parametrize("name", registry.names("classifier"))
def test_classifier(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """contracts.Classifier: frozen nn.Module in eval mode, x01 -> finite logits N×classes."""
    params, chw, classes = tiny_input(CLASSIFIERS, "classifier", name)(tmp_path, monkeypatch)
    spec, resolved = resolve("classifier", name, params)
    load = spec.load()
    assert isinstance(load, contracts.ClassifierLoader)
    model = load(resolved)
    assert isinstance(model, contracts.Classifier) and isinstance(model, nn.Module), type(model)
    assert not any(m.training for m in model.modules()), "not in eval mode"
    assert not trainable(model), f"parameters requiring grad: {trainable(model)[:3]}"
    x = torch.rand(2, *chw, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)
    assert logits.dtype == torch.float32 and tuple(logits.shape) == (2, classes), (logits.dtype, logits.shape)
    assert finite(logits)
    xg = x.clone().requires_grad_(True)
    again = model(xg)
    assert torch.allclose(again.detach(), logits, rtol=1e-5, atol=1e-5), "not deterministic"
    (grad,) = torch.autograd.grad(torch.nn.functional.cross_entropy(again, torch.tensor([0, 1])), xg)
    assert grad.shape == x.shape and finite(grad)


# ================================================================ denoisers and purifiers

class CheckedDenoiser(nn.Module):
    """Wraps a noise predictor: counts its calls and records every breach of contracts.Denoiser."""

    def __init__(self, inner: nn.Module, T: int):
        super().__init__()
        self.inner = inner
        self.T = T
        self.calls = 0
        self.problems: list[str] = []

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if t.dtype != torch.int64 or tuple(t.shape) != (x_t.shape[0],):
            self.problems.append(f"t {t.dtype} {tuple(t.shape)} for a batch of {x_t.shape[0]}")
        elif int(t.min()) < 0 or int(t.max()) >= self.T:
            self.problems.append(f"t outside [0, {self.T}): {t.tolist()}")
        eps = self.inner(x_t, t)
        if eps.shape != x_t.shape or eps.dtype != x_t.dtype:
            self.problems.append(f"ε̂ {eps.dtype} {tuple(eps.shape)} for x_t {x_t.dtype} {tuple(x_t.shape)}")
        if not finite(eps.detach()):
            self.problems.append("non-finite ε̂")
        return eps


def test_bundled_denoiser(denoiser: nn.Module) -> None:
    """contracts.Denoiser for the noise predictor every purifier below runs on."""
    assert isinstance(denoiser, contracts.Denoiser) and not trainable(denoiser)
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(3, 1, 8, 8, generator=g).requires_grad_(True)
    t = torch.tensor([0, 10, 50], dtype=torch.long)
    eps = denoiser(x_t, t)
    assert eps.shape == x_t.shape and eps.dtype == x_t.dtype and finite(eps.detach())
    with torch.no_grad():
        assert torch.equal(eps.detach(), denoiser(x_t, t))
    (grad,) = torch.autograd.grad(eps.square().sum(), x_t)
    assert finite(grad)


# name -> purifier params (small steps/loops/t_s over the bundled digits-ddpm)
PURIFIERS: dict[str, dict[str, Any]] = {
    "none": {},
    "tucker": {"tucker_patch": 4, "tucker_stride": 2, "tucker_rank": 0.5},
    "lorid": {"t_s": 0.05, "loops": 2, "steps": 2, "tucker": "noisy"},
    "diffpure": {"t_s": 0.05, "steps": 2, "sampler": "ddim"},
    "gdmp": {"t_s": 0.05, "loops": 2, "steps": 2},
    "multistep": {"schedule": [0.03, 0.06], "steps": 2},
}


def build_purifier(name: str, params: dict[str, Any],
                   eps_fn: nn.Module) -> tuple[Any, registry.PluginSpec, dict[str, Any]]:
    spec, resolved = resolve("purifier", name, params)
    build = spec.load()
    assert isinstance(build, contracts.PurifierBuilder)
    return build(name, resolved, "cpu", eps_fn=eps_fn), spec, resolved


@pytest.mark.parametrize("name", registry.names("purifier"))
def test_purifier(name: str, digits: tuple[torch.Tensor, torch.Tensor], denoiser: nn.Module,
                  digits_cnn: nn.Module) -> None:
    """contracts.Purifier, and contracts.Denoiser on every call it makes."""
    from harness.purify.pipeline import Defended
    from harness.purify.schedule import Schedule

    params = tiny_input(PURIFIERS, "purifier", name)
    eps_fn = CheckedDenoiser(denoiser, Schedule.linear().T)
    p, spec, resolved = build_purifier(name, params, eps_fn)
    assert isinstance(p, contracts.Purifier) and isinstance(p, nn.Module), type(p)
    assert not trainable(p), f"parameters requiring grad: {trainable(p)[:3]}"
    assert isinstance(p.stochastic, bool) and p.stochastic == ("stochastic" in spec.capabilities), \
        (p.stochastic, sorted(spec.capabilities))
    assert p.straight_through is False
    x, _ = digits

    def run(seeds: list[int] | None) -> tuple[torch.Tensor, int]:
        eps_fn.calls = 0
        with torch.no_grad():
            out = p(x, None if seeds is None else ExampleNoise(seeds))
        assert isinstance(p.nfe, int) and p.nfe == eps_fn.calls, (p.nfe, eps_fn.calls)
        return out, p.nfe

    out, nfe = run(SEEDS)
    assert out.dtype == x.dtype and out.shape == x.shape, (out.dtype, out.shape)
    assert finite(out) and in01(out), (float(out.min()), float(out.max()))
    assert (nfe > 0) == p.stochastic, f"nfe {nfe} for a {'' if p.stochastic else 'non-'}stochastic purifier"
    declared = hook(spec, "nfe")
    if declared is not None:
        assert declared(resolved) == nfe, \
            f"the plan's cost hook says {declared(resolved)} NFE per purification, the purifier made {nfe}"
    assert torch.equal(run(SEEDS)[0], out), "same seeds, different output"
    if p.stochastic:
        assert not torch.equal(run(OTHER_SEEDS)[0], out), "a stochastic purifier ignored its noise"
    else:
        assert torch.equal(run(OTHER_SEEDS)[0], out) and torch.equal(run(None)[0], out)
    # BPDA's switch: same forward values
    p.straight_through = True
    try:
        assert torch.allclose(run(SEEDS)[0], out, rtol=0, atol=1e-6), "straight_through changed the forward"
    finally:
        p.straight_through = False
    # the defended model an attack receives, and exact gradients through it
    defended = Defended(p, digits_cnn)
    assert isinstance(defended, contracts.DefendedModel)
    xg = x.clone().requires_grad_(True)
    logits = defended(xg, ExampleNoise(SEEDS))
    assert logits.shape == (4, 10) and finite(logits.detach())
    (grad,) = torch.autograd.grad(logits.logsumexp(1).sum() - logits[:, 0].sum(), xg)
    assert finite(grad) and grad.abs().sum() > 0, "no finite, non-zero input gradient through the purifier"
    assert not eps_fn.problems, eps_fn.problems[:3]


# ================================================================ attacks
# name -> attack params (tiny steps/queries; both norms covered)
ATTACKS: dict[str, dict[str, Any]] = {
    "none": {},
    "pgd": {"norm": "linf", "eps": 0.1, "steps": 2, "step_size": 0.05, "eot": 2},
    "bpda": {"norm": "l2", "eps": 0.5, "steps": 2, "step_size": 0.25, "eot": 2, "tucker_backward": "exact"},
    "autoattack": {"version": "standard", "norm": "linf", "eps": 0.1, "steps": 2, "queries": 8},
    "square": {"norm": "l2", "eps": 0.5, "queries": 8},
}


@pytest.fixture(scope="module")
def defended(denoiser: nn.Module, digits_cnn: nn.Module) -> nn.Module:
    """The digits CNN behind the cheapest stochastic LoRID: Tucker first, then one round of one
    diffusion step and one denoising step (1 denoiser evaluation per call)."""
    from harness.purify.pipeline import Defended

    p, _, _ = build_purifier("lorid", {"t_s": 1, "loops": 1, "tucker": "pre"}, denoiser)
    assert p.stochastic
    return Defended(p, digits_cnn)


@pytest.mark.parametrize("name", registry.names("attack"))
def test_attack(name: str, digits: tuple[torch.Tensor, torch.Tensor], defended: nn.Module) -> None:
    """contracts.Attack and contracts.AttackOutcome: x_adv in [0,1] inside the budget,
    per-example lists of the batch's length, model and inputs untouched, recomputable."""
    from harness.attacks.budget import distance

    params = tiny_input(ATTACKS, "attack", name)
    spec, resolved = resolve("attack", name, params)
    attack = spec.load()
    assert isinstance(attack, contracts.Attack)
    x, y = digits
    x0, y0 = x.clone(), y.clone()
    modes = [m.training for m in defended.modules()]
    result = attack(defended, x, y, resolved, ExampleNoise(SEEDS))
    assert isinstance(result, contracts.AttackOutcome), type(result)
    x_adv = result.x_adv
    assert isinstance(x_adv, torch.Tensor) and x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert finite(x_adv) and in01(x_adv), (float(x_adv.min()), float(x_adv.max()))
    threat = hook(spec, "threat")
    norm, eps = (threat(resolved) if threat is not None
                 else (resolved.get("norm", "none"), resolved.get("eps", 0.0)))
    if norm == "none":
        assert torch.equal(x_adv, x), "an attack without a budget changed its input"
    else:
        d = distance(x_adv, x, norm)
        assert float(d.max()) <= eps * (1 + 1e-5) + 1e-6, f"{norm} distance {d.tolist()} > eps {eps}"
    assert isinstance(result.grad_evals, int) and result.grad_evals >= 0
    if "needs_gradients" in spec.capabilities:
        assert result.grad_evals > 0
    else:
        assert result.grad_evals == 0, "an attack that takes no gradient counted gradients"
    n = x.shape[0]
    if result.found_by is not None:
        assert len(result.found_by) == n and all(isinstance(f, str) for f in result.found_by), result.found_by
    if result.grad_nonfinite is not None:
        nf = result.grad_nonfinite
        assert len(nf) == n and all(isinstance(v, int) and v >= 0 for v in nf), nf
        assert sum(nf) == 0, f"non-finite gradients on a finite model: {nf}"
    # inputs and model untouched
    assert torch.equal(x, x0) and torch.equal(y, y0), "the attack changed x or y in place"
    assert [m.training for m in defended.modules()] == modes, "the attack changed train/eval modes"
    assert not any(m.training for m in defended.classifier.modules()), "the classifier left eval mode"
    assert defended.purifier.straight_through is False and not trainable(defended)
    # recomputable from the seeds
    again = attack(defended, x, y, resolved, ExampleNoise(SEEDS))
    assert torch.equal(again.x_adv, x_adv), "same seeds, different x_adv"
    assert np.array_equal(np.asarray(again.grad_nonfinite or []), np.asarray(result.grad_nonfinite or []))
