"""AutoAttack (pyautoattack adapter), BPDA+EOT and Square: budgets, strength, gradients."""
from __future__ import annotations

import pytest
import torch

from harness import registry
from harness.attacks import autoattack, bpda, budget, pgd, square
from harness.data.digits import load
from harness.models.bundled import load_classifier, load_denoiser
from harness.purify.pipeline import Defended, Purifier, PurifierConfig
from harness.rng import ExampleNoise, derive_seed

pytest.importorskip("pyautoattack")

N = 20


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load({})
    return ds.x[:N], ds.y[:N]


@pytest.fixture(scope="module")
def bare() -> Defended:
    return Defended(Purifier(PurifierConfig()), load_classifier({}))


def _tiny(**kw) -> Defended:
    """A two-round LoRID-style purifier with two respaced steps per round: cheap but stochastic."""
    return Defended(Purifier(PurifierConfig(rounds=[0.05] * 2, steps=2, **kw), load_denoiser("digits-ddpm")),
                    load_classifier({}))


def _noise(n: int, tag: str = "a") -> ExampleNoise:
    return ExampleNoise([derive_seed(tag, i) for i in range(n)])


def _params(name: str, **kw) -> dict:
    """The plugin's declared defaults (as the grid would resolve them), then small budgets."""
    small = {"autoattack": {"steps": 10, "queries": 100}, "square": {"queries": 200},
             "bpda": {"steps": 10, "step_size": kw.get("eps", 0.1) / 4}}[name]
    return registry.get("attack", name).resolve({"eps": 0.1, **small, **kw}, "<test>", name)


ATTACKS = {"autoattack": autoattack.attack, "bpda": bpda.attack, "square": square.attack}


def _acc(model: Defended, x: torch.Tensor, y: torch.Tensor, noise: ExampleNoise | None = None) -> float:
    with torch.no_grad():
        return (model(x, noise).argmax(1) == y).float().mean().item()


# ---------------------------------------------------------------- budgets

@pytest.mark.parametrize("norm,eps", [("linf", 0.05), ("l2", 0.5)])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_budget_and_range(bare: Defended, data, name: str, norm: str, eps: float) -> None:
    x, y = data
    extra = ({"version": "custom", "attacks": list(autoattack.SUB_ATTACKS), "steps": 5, "queries": 50}
             if name == "autoattack" else {})
    res = ATTACKS[name](bare, x, y, _params(name, norm=norm, eps=eps, **extra), _noise(N))
    xa, grads = res.x_adv, res.grad_evals
    assert xa.shape == x.shape
    assert budget.distance(xa, x, norm).max().item() <= eps + 1e-6
    assert xa.min().item() >= 0 and xa.max().item() <= 1
    if name == "square":
        assert grads == 0
    else:
        assert grads > 0


def test_autoattack_rand_on_a_stochastic_purifier(data) -> None:
    """rand version (APGD-CE, APGD-DLR with EOT) through a diffusion purifier: in budget,
    every example accounted for, gradients counted, and the batch recomputable from its seeds."""
    x, y = data[0][:6], data[1][:6]
    model = _tiny()
    p = dict(version="rand", norm="linf", eps=0.1, steps=2, eot=2)
    xa, out = autoattack.run(model, x, y, _noise(6, "r"), **p)
    assert budget.distance(xa, x, "linf").max().item() <= 0.1 + 1e-6
    assert xa.min().item() >= 0 and xa.max().item() <= 1
    assert out.attacks == ["apgd-ce", "apgd-dlr"] and len(out.found_by) == 6
    assert set(out.found_by) <= {"", autoattack.CLEAN, "apgd-ce", "apgd-dlr"}
    assert out.grad_evals >= (2 + 1) * 2  # at least one EOT-averaged APGD run over every example
    again, out2 = autoattack.run(model, x, y, _noise(6, "r"), **p)
    assert torch.equal(xa, again) and out2.found_by == out.found_by


def test_autoattack_greybox_never_runs_the_purifier(data) -> None:
    x, y = data[0][:8], data[1][:8]
    model = _tiny()
    out = autoattack.attack(model, x, y, _params("autoattack", version="custom", attacks=["apgd-ce"],
                                                 gradient="greybox", eps=0.2), _noise(8))
    xa, grads = out.x_adv, out.grad_evals
    assert model.purifier.nfe == 0 and grads > 0
    assert budget.distance(xa, x, "linf").max().item() <= 0.2 + 1e-6


# ---------------------------------------------------------------- strength

@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_success_does_not_fall_as_eps_grows(bare: Defended, data, name: str) -> None:
    x, y = data
    extra = {"version": "custom", "attacks": ["apgd-ce", "apgd-t"]} if name == "autoattack" else {}
    accs = []
    for eps in (0.1, 0.2, 0.3):
        xa = ATTACKS[name](bare, x, y, _params(name, eps=eps, **extra), _noise(N)).x_adv
        accs.append(_acc(bare, xa, y))
    assert accs == sorted(accs, reverse=True), accs
    assert accs[-1] < 0.5, accs  # every one of them breaks the bare classifier at 0.3


def test_autoattack_standard_breaks_the_bare_classifier(bare: Defended, data) -> None:
    """The full standard version at Linf 0.3 (measured: 0 of 20 robust)."""
    x, y = data
    assert _acc(bare, x, y) == 1.0
    res = autoattack.attack(bare, x, y, _params("autoattack", eps=0.3, steps=100, queries=5000), _noise(N))
    xa, grads, found_by = res.x_adv, res.grad_evals, res.found_by
    assert res.grad_nonfinite == [0] * N
    xb, out = autoattack.run(bare, x, y, _noise(N), eps=0.3, steps=100, queries=5000)
    assert torch.equal(xa, xb) and found_by == out.found_by  # the plugin is `run`, seeded the same
    assert _acc(bare, xa, y) <= 0.05
    assert out is not None and out.attacks == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert sum(out.robust) <= 0.05 * N
    assert set(out.found_by) <= {"", autoattack.CLEAN, *out.attacks}
    assert grads >= 100  # APGD-CE's 100 iterations over every example


def test_cascade_equals_one_autoattack_call(bare: Defended, data) -> None:
    """Running the sub-attacks one at a time (for per-attack outcomes) changes nothing on a
    deterministic model: same points as one upstream call with all of them."""
    x, y = data
    kw = dict(version="standard", attacks=None, norm="linf", eps=0.15, steps=5, eot=0, queries=50)
    xa, out = autoattack.run(bare, x, y, _noise(N), **kw)
    seed = derive_seed("autoattack", *_noise(N).seeds)
    aa = autoattack.build(autoattack.Target(bare, _noise(N)), seed=seed, device=x.device, **kw)
    with torch.random.fork_rng(devices=[]):
        xu, yu = aa.run_standard_evaluation(x, y, batch_size=N)
    assert torch.equal(budget.project(xu, x, "linf", 0.15), xa)
    assert out.robust == (yu == y).tolist()
    assert 0 < sum(out.robust) < N  # the cascade went past its first sub-attack


def test_autoattack_rejects_inconsistent_attack_lists(bare: Defended, data) -> None:
    x, y = data
    with pytest.raises(ValueError, match="custom"):
        autoattack.run(bare, x, y, _noise(N), version="custom", eps=0.1)
    with pytest.raises(ValueError, match="only for version 'custom'"):
        autoattack.run(bare, x, y, _noise(N), version="standard", attacks=["apgd-ce"], eps=0.1)


# ---------------------------------------------------------------- BPDA

def test_bpda_gradient_is_exact_without_a_purifier(bare: Defended, data) -> None:
    x, y = data
    exact, _ = pgd.loss_gradient(bare, x, y, "exact", 1, _noise(N))
    for tb in bpda.TUCKER_BACKWARD:
        assert torch.allclose(bpda.loss_gradient(bare, x, y, 1, _noise(N), tb)[0], exact, atol=1e-7, rtol=1e-5)


def test_bpda_gradient_differs_through_a_diffusion_purifier(data) -> None:
    x, y = data[0][:8], data[1][:8]
    model = _tiny()
    exact, _ = pgd.loss_gradient(model, x, y, "exact", 2, _noise(8, "g"))
    approx, _ = bpda.loss_gradient(model, x, y, 2, _noise(8, "g"))
    assert approx.abs().sum() > 0 and torch.isfinite(approx).all()
    assert (approx - exact).norm() > 0.05 * exact.norm()
    # no Tucker step: keeping its exact backward changes nothing
    assert torch.allclose(bpda.loss_gradient(model, x, y, 2, _noise(8, "g"), "exact")[0], approx,
                          atol=1e-7, rtol=1e-5)


def test_bpda_tucker_backward(data) -> None:
    """Straight-through keeps the forward values exact; the Tucker step keeps its gradient."""
    x, y = data[0][:4], data[1][:4]
    model = _tiny(tucker="pre", tucker_patch=4, tucker_stride=2, tucker_rank=0.5)
    with torch.no_grad():
        plain = model(x, _noise(4, "t"))
    st = bpda.logits(model, x, _noise(4, "t"), "exact")
    assert torch.equal(st.detach(), plain) and not model.purifier.straight_through
    through_tucker, _ = bpda.loss_gradient(model, x, y, 1, _noise(4, "t"), "exact")
    identity, _ = bpda.loss_gradient(model, x, y, 1, _noise(4, "t"), "identity")
    assert torch.isfinite(through_tucker).all()
    assert (through_tucker - identity).norm() > 0.05 * identity.norm()


# ---------------------------------------------------------------- Square

class _Spy(torch.nn.Module):
    """A classifier that records whether any call could have built a graph."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.calls, self.graph_calls = inner, 0, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.graph_calls += int(torch.is_grad_enabled() or x.requires_grad)
        return self.inner(x)


def test_square_uses_no_gradients(data) -> None:
    x, y = data[0][:8], data[1][:8]
    spy = _Spy(load_classifier({}))
    model = Defended(_tiny().purifier, spy)
    res = square.attack(model, x, y, _params("square", eps=0.2, queries=30), _noise(8))
    xa, grads, found_by = res.x_adv, res.grad_evals, res.found_by
    assert grads == 0 and len(found_by) == 8
    assert spy.calls > 30 and spy.graph_calls == 0
    assert all(p.grad is None for p in model.parameters())
    assert budget.distance(xa, x, "linf").max().item() <= 0.2 + 1e-6


# ---------------------------------------------------------------- declarations

def test_declarations() -> None:
    specs = {n: registry.get("attack", n) for n in ("autoattack", "bpda", "square")}
    # only capabilities some code reads (registry.CAPABILITIES); EOT is the `eot` hook
    assert specs["autoattack"].capabilities == {"needs_gradients", "unperturbed_on_failure"}
    assert specs["bpda"].capabilities == {"needs_gradients", "iterative"}
    assert specs["square"].capabilities == {"black_box", "unperturbed_on_failure"}
    assert specs["autoattack"].eot({"version": "rand", "eot": 0}) == 20
    assert specs["bpda"].eot({"eot": 4}) == 4
    for s in specs.values():
        assert set(s.label) <= set(s.params) and {"norm", "eps"} <= set(s.label)
    for shared in ("norm", "eps", "steps", "step_size", "eot", "random_start"):
        assert specs["bpda"].params[shared] == registry.get("attack", "pgd").params[shared]
    with pytest.raises(Exception, match="apgd-x"):
        specs["autoattack"].resolve({"eps": 0.1, "version": "custom", "attacks": ["apgd-x"]}, "g", "a")
