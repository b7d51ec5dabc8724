"""Attacks respect their budget, use real gradients and get stronger with eps."""
from __future__ import annotations

import pytest
import torch

from harness.attacks import budget, none, pgd
from harness.data.digits import load
from harness.models.bundled import load_classifier, load_denoiser
from harness.purify.pipeline import Defended, Purifier, PurifierConfig
from harness.rng import ExampleNoise, derive_seed


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    ds = load({})
    return ds.x[:40], ds.y[:40]


@pytest.fixture(scope="module")
def bare() -> Defended:
    return Defended(Purifier(PurifierConfig()), load_classifier({}))


def _noise(n: int, tag: str = "a") -> ExampleNoise:
    return ExampleNoise([derive_seed(tag, i) for i in range(n)])


def _params(**kw) -> dict:
    return {"norm": "linf", "eps": 0.2, "steps": 10, "step_size": 0.05, "eot": 1, "random_start": True,
            "gradient": "exact", **kw}


@pytest.mark.parametrize("norm,eps", [("linf", 0.1), ("l2", 1.0)])
@pytest.mark.parametrize("gradient", ["exact", "greybox"])
def test_budget_and_range(bare: Defended, data, norm: str, eps: float, gradient: str) -> None:
    x, y = data
    out = pgd.attack(bare, x, y, _params(norm=norm, eps=eps, step_size=eps / 4, gradient=gradient),
                     _noise(len(y)))
    xa, grads = out.x_adv, out.grad_evals
    assert out.grad_nonfinite == [0] * len(y)
    assert budget.distance(xa, x, norm).max().item() <= eps + 1e-6
    assert xa.min().item() >= 0 and xa.max().item() <= 1
    assert grads == 10


def test_success_grows_with_eps(bare: Defended, data) -> None:
    x, y = data
    accs = []
    for eps in (0.0, 0.1, 0.2, 0.3):
        xa = pgd.attack(bare, x, y, _params(eps=eps, step_size=max(eps, 1e-3) / 4), _noise(len(y))).x_adv
        with torch.no_grad():
            accs.append((bare(xa).argmax(1) == y).float().mean().item())
    assert accs == sorted(accs, reverse=True), accs
    assert accs[0] > 0.9 and accs[-1] < 0.1


def test_zero_step_size_does_nothing_without_random_start(bare: Defended, data) -> None:
    x, y = data
    xa = pgd.attack(bare, x, y, _params(step_size=0.0, random_start=False), _noise(len(y))).x_adv
    assert torch.equal(xa, x)
    out = none.attack(bare, x, y, {}, _noise(len(y)))
    assert out.x_adv is x and out.grad_evals == 0


def test_stop_freezes_each_example_where_it_first_holds_and_ends_the_loop() -> None:
    x = torch.zeros(3, 1, 2, 2)
    calls = []

    def gradient_fn(xa: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(1)
        return torch.ones_like(xa), torch.zeros(len(xa), dtype=torch.long)

    limit = torch.tensor([0.25, 0.45, 10.0])
    stop = lambda xa: xa.flatten(1)[:, 0] >= limit  # noqa: E731
    params = _params(eps=1.0, step_size=0.1, steps=6, random_start=False)
    xa, _ = pgd.run(x, gradient_fn, params, _noise(3), stop=stop)
    assert torch.allclose(xa.flatten(1)[:, 0], torch.tensor([0.3, 0.5, 0.6])), xa.flatten(1)[:, 0]
    assert len(calls) == 6
    calls.clear()
    xa, _ = pgd.run(x, gradient_fn, params, _noise(3), stop=lambda xa: xa.flatten(1)[:, 0] >= 0.15)
    assert len(calls) == 2 and torch.allclose(xa, torch.full_like(x, 0.2))  # all stopped: the loop ends


def test_margin_stop_gives_the_smallest_fooling_perturbation_on_the_path(bare: Defended, data) -> None:
    x, y = data
    x = torch.round(x * 255) / 255
    params = _params(eps=0.25, steps=200, step_size=0.005, random_start=False)
    clf = bare.classifier
    out = pgd.attack(bare, x, y, params, _noise(len(y)), stop=pgd.margin_reached(clf, y, 0.5))
    stopped = out.x_adv
    assert 0 < out.grad_evals < 200  # the steps taken, not the budget
    full = pgd.attack(bare, x, y, params, _noise(len(y))).x_adv
    u8 = torch.round(stopped * 255) / 255
    with torch.no_grad():
        z = clf(u8)
    margin = z.scatter(1, y[:, None], float("-inf")).amax(1) - z.gather(1, y[:, None])[:, 0]
    assert (margin >= 0.5).float().mean() >= 0.95  # the quantised image fools it, with the margin
    d_stop = budget.distance(stopped, x, "linf")
    d_full = budget.distance(full, x, "linf")
    assert (d_stop <= d_full + 1e-6).all() and d_stop.median() < 0.8 * d_full.median(), (d_stop, d_full)


def test_exact_gradient_flows_through_the_purifier(data) -> None:
    """EOT gradient through a LoRID purifier is non-zero and averages EOT draws."""
    x, y = data[0][:4], data[1][:4]
    model = Defended(Purifier(PurifierConfig(rounds=[0.05] * 2, steps=2), load_denoiser("digits-ddpm")),
                     load_classifier({}))
    g1, bad1 = pgd.loss_gradient(model, x, y, "exact", 1, _noise(4, "g"))
    g4, bad4 = pgd.loss_gradient(model, x, y, "exact", 4, _noise(4, "g"))
    assert bad1.tolist() == bad4.tolist() == [0] * 4
    assert g1.abs().sum() > 0 and torch.isfinite(g4).all()
    assert (g1 - g4).norm() > 0.05 * g4.norm()  # four purifications are not one (CE gradients are tiny: compare relatively)
    again, _ = pgd.loss_gradient(model, x, y, "exact", 4, _noise(4, "g"))
    assert torch.equal(g4, again)  # the attack's randomness is seeded per example
