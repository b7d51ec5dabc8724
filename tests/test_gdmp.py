"""GDMP-style guided purification: the shared purifier with each reverse step pulled toward the input."""
from __future__ import annotations

import pytest
import torch

from harness.data.digits import arrays
from harness.grid import cell_label, expand
from harness.models.bundled import load_denoiser
from harness.plan import nfe_per_purification
from harness.purify.guidance import distance, distance_grad, ssim
from harness.purify.pipeline import Purifier, PurifierConfig, build
from harness.rng import ExampleNoise, derive_seed
from test_purifier import gradcheck_purifier



def _digits(n: int) -> torch.Tensor:
    x, _ = arrays("test")
    return torch.from_numpy(x[:n])


def _noise(n: int) -> ExampleNoise:
    return ExampleNoise([derive_seed("gdmp-test", i) for i in range(n)])


def _gdmp(**over) -> dict:
    params = {"t_s": 0.1, "loops": 2, "steps": 4, "sampler": "ddpm", "guidance": "mse", "guidance_scale": 1.0}
    params.update(over)
    return params


@pytest.mark.parametrize("guidance", ["mse", "ssim"])
def test_scale_zero_is_the_unguided_purifier_bit_for_bit(guidance: str) -> None:
    eps = load_denoiser("digits-ddpm")
    x = _digits(16)
    guided = Purifier(PurifierConfig.from_plugin("gdmp", _gdmp(guidance=guidance, guidance_scale=0.0)), eps)
    plain = Purifier(PurifierConfig.from_plugin("lorid", {**_gdmp(), "tucker": "none"}), eps)
    with torch.no_grad():
        assert torch.equal(guided(x, _noise(16)), plain(x, _noise(16)))


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_mse_guidance_keeps_the_output_closer_to_the_input(sampler: str) -> None:
    eps = load_denoiser("digits-ddpm")
    x = _digits(32)
    dist = {}
    for scale in (0.0, 1.0):
        p = Purifier(PurifierConfig.from_plugin("gdmp", _gdmp(sampler=sampler, guidance_scale=scale)), eps)
        with torch.no_grad():
            dist[scale] = ((p(x, _noise(32)) - x) ** 2).mean().item()
    assert dist[1.0] < 0.9 * dist[0.0]


@pytest.mark.parametrize("guidance", ["mse", "ssim"])
def test_input_gradient_through_guidance_matches_finite_differences(guidance: str) -> None:
    """The attack differentiates the guidance term too (ssim: create_graph inside the step)."""
    assert gradcheck_purifier(PurifierConfig(rounds=[8, 8], steps=3, guidance=guidance, guidance_scale=2.0))


def test_guided_attack_gradient_is_finite_on_digits() -> None:
    p = build("gdmp", _gdmp(guidance="ssim"))
    x = _digits(4).requires_grad_(True)
    p(x, _noise(4)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_distances() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    ref = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3, dtype=torch.float64))
    assert (ssim(x, ref) < 0.9).all()
    # mse's analytic gradient is autograd's; ssim's is per example (no cross-batch terms)
    xg = x.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(distance("mse", xg, ref).sum(), xg)
    assert torch.allclose(distance_grad("mse", x, ref), auto)
    assert torch.allclose(distance_grad("ssim", x, ref)[:1], distance_grad("ssim", x[:1], ref[:1]))
    with torch.no_grad():  # evaluation: ssim's gradient is still computed, locally
        assert torch.isfinite(distance_grad("ssim", x, ref)).all()


def test_grid_with_gdmp_plans() -> None:
    raw = {"sweep": "g", "dataset": "digits", "classifier": "digits-cnn",
           "purifier": [{"name": "gdmp", "params": {"t_s": 0.05, "loops": 3, "steps": 5,
                                                    "guidance": ["mse", "ssim"]}}],
           "attack": "none", "examples": 10, "eval_runs": 3}
    cells = expand(raw, "g.yaml")
    assert [c["purifier"]["params"]["guidance"] for c in cells] == ["mse", "ssim"]
    p = cells[0]["purifier"]
    assert p["params"]["guidance_scale"] == 1.0 and p["params"]["sampler"] == "ddpm"
    assert nfe_per_purification(p) == 15 and cells[0]["eval_runs"] == 3
    assert cell_label(cells[0]) == "gdmp(t_s=0.05,loops=3,steps=5,guidance=mse,guidance_scale=1.0)"
    cfg = PurifierConfig.from_plugin("gdmp", p["params"])
    assert cfg.rounds == [0.05] * 3 and cfg.guidance == "mse" and cfg.steps == 5
