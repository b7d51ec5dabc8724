"""The purifier's mathematics, checked with exact and tiny noise predictors."""
from __future__ import annotations

import pytest
import torch

from harness.purify.pipeline import Purifier, PurifierConfig
from harness.purify.samplers import reverse, timesteps
from harness.purify.schedule import Schedule
from harness.purify.tucker import cross_patch_rank, tucker_denoise
from harness.rng import ExampleNoise, derive_seed

SIGMA = 0.5


def exact_eps(sched: Schedule):
    """E[ε | x_t] for data x_0 ~ N(0, σ² I): the exact noise predictor, as a plain callable."""
    ab = sched.alphas_bar

    def eps_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        a = ab[t].to(x_t.dtype).view(-1, *([1] * (x_t.dim() - 1)))
        return (1 - a).sqrt() * x_t / (a * SIGMA**2 + 1 - a)

    return eps_fn


def rho(sched: Schedule, k: int) -> float:
    a = float(sched.alphas_bar[k])
    return a * SIGMA**2 / (a * SIGMA**2 + 1 - a)


@pytest.mark.parametrize("loops,steps", [(1, 0), (3, 0), (3, 25)])
def test_gaussian_kernel_of_loops(loops: int, steps: int) -> None:
    """L rounds at t_s shrink the mean by ρ(t_s)^L and leave variance σ²(1−ρ^{2L})."""
    sched = Schedule.linear()
    t_s = 150
    n = 1500
    purifier = Purifier(PurifierConfig(rounds=[t_s] * loops, steps=steps), exact_eps(sched), sched,
                        checkpoint=False, clip_denoised=False)
    x = torch.full((n, 1, 1, 1), 0.8, dtype=torch.float64)
    noise = ExampleNoise([derive_seed("gauss", i) for i in range(n)])
    out = purifier.run_rounds(x, noise).flatten()
    r = rho(sched, sched.step_of(t_s)) ** loops
    assert out.mean().item() == pytest.approx(r * 0.8, abs=0.03)
    assert out.var().item() == pytest.approx(SIGMA**2 * (1 - r**2), rel=0.12)
    assert purifier.nfe == loops * len(timesteps(sched.step_of(t_s), steps))


def test_loops_equal_one_round_at_effective_time() -> None:
    """ρ(t_s)^L = ρ(t_eff): L short rounds and one deep round give the same kernel."""
    sched = Schedule.linear()
    k = sched.step_of(100)
    target = rho(sched, k) ** 2
    k_eff = min(range(sched.T), key=lambda j: abs(rho(sched, j) - target))
    n = 1500
    x = torch.full((n, 1, 1, 1), -0.6, dtype=torch.float64)
    outs = []
    for rounds in ([100, 100], [k_eff + 1]):
        p = Purifier(PurifierConfig(rounds=rounds, steps=20), exact_eps(sched), sched,
                     checkpoint=False, clip_denoised=False)
        outs.append(p.run_rounds(x, ExampleNoise([derive_seed("eff", i) for i in range(n)])).flatten())
    assert outs[0].mean().item() == pytest.approx(outs[1].mean().item(), abs=0.04)
    assert outs[0].std().item() == pytest.approx(outs[1].std().item(), rel=0.1)


def test_ddim_is_deterministic_given_x_t() -> None:
    sched = Schedule.linear()
    x_t = torch.randn(4, 1, 3, 3, dtype=torch.float64)
    a, n1 = reverse(exact_eps(sched), x_t, 200, sched, steps=10, sampler="ddim", clip=False)
    b, _ = reverse(exact_eps(sched), x_t, 200, sched, steps=10, sampler="ddim", clip=False)
    assert torch.equal(a, b) and n1 == 10


def test_timesteps_respacing() -> None:
    assert timesteps(9, 0) == list(range(9, -1, -1))
    ts = timesteps(299, 5)
    assert ts[0] == 299 and ts[-1] == 0 and len(ts) == 5
    assert ts == sorted(ts, reverse=True)


def test_schedule_step_of() -> None:
    s = Schedule.linear()
    assert s.step_of(100) == 99 and s.step_of(0.1) == 99 and s.step_of(1000) == 999
    for bad in (0, 1001, 1.5, -0.2):
        with pytest.raises(ValueError):
            s.step_of(bad)


class TinyEps(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(1, 1, 3, padding=1).double()

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 0.1 * torch.tanh(self.conv(x)) * (1 + t.view(-1, 1, 1, 1).double() / 1000)


@pytest.mark.parametrize("tucker", ["none", "pre", "every_loop"])
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_input_gradient_matches_finite_differences(tucker: str, sampler: str) -> None:
    """The exact gradient through loops, sampler steps and Tucker, noise held fixed."""
    assert gradcheck_purifier(PurifierConfig(rounds=[8, 8], steps=3, sampler=sampler, tucker=tucker,
                                             tucker_patch=2, tucker_stride=1, tucker_rank=3))


def gradcheck_purifier(config: PurifierConfig) -> bool:
    """Input gradient of a tiny float64 purifier (checkpointed, noise fixed) vs finite differences."""
    p = Purifier(config, TinyEps(), Schedule.linear(), checkpoint=True)
    w = torch.linspace(-1, 1, 16, dtype=torch.float64).view(1, 1, 4, 4)
    x = (0.5 + 0.1 * torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))).double()

    def f(inp: torch.Tensor) -> torch.Tensor:
        return (p(inp, ExampleNoise([11])) * w).sum()

    return torch.autograd.gradcheck(f, (x.requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-4)


def test_tucker_full_rank_is_identity_and_low_rank_is_not() -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64)
    full = tucker_denoise(x, patch=4, stride=2, rank=9)
    assert torch.allclose(full, x, atol=1e-8)
    low = tucker_denoise(x, patch=4, stride=2, rank=1)
    assert low.shape == x.shape and not torch.allclose(low, x, atol=1e-3)
    # odd sizes are padded to fit, then cropped back
    assert tucker_denoise(torch.rand(1, 1, 7, 9), patch=4, stride=2, rank=0.5, per="batch").shape == (1, 1, 7, 9)


def test_cross_patch_rank() -> None:
    assert cross_patch_rank(0.5, 9) == 4 or cross_patch_rank(0.5, 9) == 5
    assert cross_patch_rank(3, 9) == 3 and cross_patch_rank(100, 9) == 9 and cross_patch_rank(0.01, 9) == 1


def test_noise_is_per_example() -> None:
    """An example's draws do not depend on which other examples share its batch."""
    a = ExampleNoise([1, 2, 3]).randn((2, 2))
    b = ExampleNoise([3, 9]).randn((2, 2))
    assert torch.equal(a[2], b[0]) and not torch.equal(a[0], a[1])


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_batched_truncated_tucker_equals_tensorly_hooi(rank: int) -> None:
    """The batched SVD projection is tensorly's Tucker with ranks (r, C, p, p)."""
    from harness.purify.tucker import low_rank, tensorly_low_rank

    t = torch.randn(3, 9, 2, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(rank))
    ours = low_rank(t, rank)
    ref = torch.stack([tensorly_low_rank(x, rank) for x in t])
    assert torch.allclose(ours, ref, atol=1e-8)
