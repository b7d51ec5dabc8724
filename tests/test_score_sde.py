"""Score-SDE NCSN++ (DDPM++ deep continuous VP, DiffPure's CIFAR-10 backbone): the checkpoint's exact
key layout, DiffPure's EMA weight selection, the DDPM-step → continuous-time mapping, and a tiny
model that runs.

Expected names, shapes and counts are worked out by hand from the original's construction
(yang-song/score_sde_pytorch models/ncsnpp.py, layerspp.py, layers.py with
configs/vp/cifar10_ddpmpp_deep_continuous.py = DiffPure's configs/cifar10.yml), not read back
from this module.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness.errors import AssetError
from harness.models.checkpoints import load_into
from harness.models.score_sde import (
    SCORE_SDE_CIFAR10, AttnBlockpp, ScoreSdeConfig, ScoreSdeEps, continuous_time, load_score_sde_checkpoint,
    score_sde_cifar10, score_sde_state_dict, timestep_embedding)

TINY = ScoreSdeConfig(image_size=8, nf=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))
PARAMS = 106_632_579  # nf 128, ch_mult (1,2,2,2), 8 blocks a level: the "106.6 M" of the design doc


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def big() -> torch.nn.Module:
    return score_sde_cifar10("meta")


def _hand_count() -> int:
    """The parameter count from the original's construction, block by block."""
    nf, temb = 128, 512

    def gn(c: int) -> int:
        return 2 * c

    def conv(i: int, o: int, k: int) -> int:
        return i * o * k * k + o

    def res(i: int, o: int | None = None, resample: bool = False) -> int:
        o = o or i
        skip = conv(i, o, 1) if (i != o or resample) else 0
        return gn(i) + conv(i, o, 3) + temb * o + o + gn(o) + conv(o, o, 3) + skip

    def attn(c: int) -> int:
        return gn(c) + 4 * (c * c + c)

    n = (nf * temb + temb) + (temb * temb + temb) + conv(3, nf, 3)
    n += res(128, 128) * 8 + res(128, resample=True)                       # 32×32
    n += res(128, 256) + res(256) * 7 + attn(256) * 8 + res(256, resample=True)  # 16×16
    n += (res(256) * 8 + res(256, resample=True)) + res(256) * 8               # 8×8, 4×4
    n += res(256) * 2 + attn(256)                                              # middle
    n += (res(512, 256) * 9 + res(256, resample=True)) * 2                     # up 4×4, 8×8: 256 + 256 skips
    n += res(512, 256) * 8 + res(384, 256) + attn(256) + res(256, resample=True)  # 16×16; last skip 128
    n += res(384, 128) + res(256, 128) * 8                                     # 32×32
    return n + gn(128) + conv(128, 3, 3)


def test_cifar10_parameter_count_on_meta(big: torch.nn.Module) -> None:
    assert all(p.is_meta for p in big.parameters())
    assert _n(big) == PARAMS == _hand_count()
    buffers = dict(big.named_buffers())
    assert list(buffers) == ["sigmas"]  # the only buffer: float64 SMLD σ's, 1000 of them
    assert buffers["sigmas"].is_meta and buffers["sigmas"].dtype == torch.float64
    assert buffers["sigmas"].shape == (1000,)


def test_cifar10_key_names_and_shapes(big: torch.nn.Module) -> None:
    # all_modules: 0-1 time Linears, 2 stem; 32×32: 3-10 blocks, 11 down; 16×16: block/attention pairs
    # 12-27, 28 down; 8×8: 29-36, 37 down; 4×4: 38-45; middle 46-48; up 4×4: 49-57, 58 up;
    # 8×8: 59-67, 68 up; 16×16: 69-77, 78 attention, 79 up; 32×32: 80-88; 89 GroupNorm, 90 conv.
    expected = {
        "sigmas": (1000,),
        "all_modules.0.weight": (512, 128),
        "all_modules.0.bias": (512,),
        "all_modules.1.weight": (512, 512),
        "all_modules.2.weight": (128, 3, 3, 3),
        "all_modules.2.bias": (128,),
        "all_modules.3.GroupNorm_0.weight": (128,),
        "all_modules.3.Conv_0.weight": (128, 128, 3, 3),
        "all_modules.3.Dense_0.weight": (128, 512),
        "all_modules.3.GroupNorm_1.bias": (128,),
        "all_modules.3.Conv_1.weight": (128, 128, 3, 3),
        "all_modules.11.Conv_2.weight": (128, 128, 1, 1),  # down block: 1×1 skip though widths match
        "all_modules.12.Conv_2.weight": (256, 128, 1, 1),  # first 256-wide block
        "all_modules.13.GroupNorm_0.weight": (256,),
        "all_modules.13.NIN_0.W": (256, 256),  # NIN keeps W as (in, out)
        "all_modules.13.NIN_3.b": (256,),
        "all_modules.27.NIN_2.W": (256, 256),
        "all_modules.28.Conv_2.bias": (256,),
        "all_modules.45.Conv_1.weight": (256, 256, 3, 3),
        "all_modules.47.NIN_1.W": (256, 256),  # middle attention (at 4×4)
        "all_modules.49.GroupNorm_0.weight": (512,),
        "all_modules.49.Conv_0.weight": (256, 512, 3, 3),
        "all_modules.49.Conv_2.weight": (256, 512, 1, 1),
        "all_modules.58.Conv_2.weight": (256, 256, 1, 1),  # up block
        "all_modules.77.Conv_0.weight": (256, 384, 3, 3),  # the 128-wide 32×32 down block's skip
        "all_modules.78.NIN_3.W": (256, 256),  # the decoder's single 16×16 attention
        "all_modules.80.Conv_0.weight": (128, 384, 3, 3),
        "all_modules.80.Dense_0.bias": (128,),
        "all_modules.88.Conv_2.weight": (128, 256, 1, 1),  # + the stem's 128
        "all_modules.89.weight": (128,),
        "all_modules.89.bias": (128,),
        "all_modules.90.weight": (3, 128, 3, 3),
        "all_modules.90.bias": (3,),
    }
    sd = big.state_dict()
    assert {k: tuple(sd[k].shape) for k in expected if k in sd} == expected
    # 76 res blocks × 10 keys, 43 of them with Conv_2 (+2), 10 attention blocks × 10,
    # time Linears 4, stem 2, output GroupNorm + conv 4, sigmas 1.
    assert len(sd) == 760 + 86 + 100 + 4 + 2 + 4 + 1 == 957
    assert len(big.all_modules) == 91
    attn = {int(k.split(".")[1]) for k in sd if ".NIN_0.W" in k}
    assert attn == set(range(13, 28, 2)) | {47, 78}
    skips = {int(k.split(".")[1]) for k in sd if ".Conv_2.weight" in k}
    assert len(skips) == 43 and {11, 12, 28, 37, 58, 68, 79} <= skips and not skips & {3, 10, 14, 29, 46, 48}
    assert list(sd)[:3] == ["sigmas", "all_modules.0.weight", "all_modules.0.bias"]  # state-dict order


def test_cifar10_macs_on_meta(big: torch.nn.Module) -> None:
    from torch.utils.flop_counter import FlopCounterMode

    x, labels = torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1, device="meta")
    with FlopCounterMode(display=False) as counter:
        big(x, labels)
    gmac = counter.get_total_flops() / 2e9  # convolutions, Linears, NINs and attention matmuls
    assert 18.5 < gmac < 18.6


def test_timestep_embedding_is_sin_then_cos() -> None:
    e = timestep_embedding(torch.tensor([0.0, 7.5]), 8)
    assert torch.equal(e[0], torch.tensor([0.0] * 4 + [1.0] * 4))
    freqs = [math.exp(-math.log(10000) * i / 3) for i in range(4)]  # / (half − 1)
    want = [math.sin(7.5 * f) for f in freqs] + [math.cos(7.5 * f) for f in freqs]
    assert torch.allclose(e[1], torch.tensor(want), atol=1e-5)


def test_attention_matches_the_originals_einsum_form() -> None:
    torch.manual_seed(0)
    c = 16
    blk = AttnBlockpp(c, skip_rescale=True).double()
    for p in blk.parameters():
        p.data.normal_()
    x = torch.randn(2, c, 3, 5, dtype=torch.float64)
    h = blk.GroupNorm_0(x)
    q, k, v = (torch.einsum("bchw,co->bohw", h, m.W) + m.b[:, None, None]
               for m in (blk.NIN_0, blk.NIN_1, blk.NIN_2))
    w = torch.einsum("bchw,bcij->bhwij", q, k) * c ** -0.5
    w = torch.softmax(w.reshape(2, 3, 5, 15), dim=-1).reshape(2, 3, 5, 3, 5)
    h = torch.einsum("bhwij,bcij->bchw", w, v)
    h = torch.einsum("bchw,co->bohw", h, blk.NIN_3.W) + blk.NIN_3.b[:, None, None]
    assert torch.allclose(blk(x), (x + h) / math.sqrt(2), atol=1e-10)


def _randomised(config: ScoreSdeConfig, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = score_sde_cifar10(config=config)
    # The near-zero initialised last layers would make every output ~0; random weights make checks bite.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    return _randomised(TINY, 0)


def test_tiny_forward_eps_and_gradient(tiny: torch.nn.Module) -> None:
    torch.manual_seed(1)
    x = (torch.rand(2, 3, 8, 8) * 2 - 1).requires_grad_(True)
    t = torch.tensor([10, 900])
    out = tiny(x, torch.tensor([11 * 0.999, 901 * 0.999]))
    assert out.shape == (2, 3, 8, 8) and torch.isfinite(out).all()
    eps = ScoreSdeEps(tiny)(x, t)
    assert eps.shape == (2, 3, 8, 8)
    assert torch.allclose(eps, out, atol=1e-6)
    assert not torch.allclose(eps[0], ScoreSdeEps(tiny)(x, torch.tensor([11, 900]))[0])  # the step matters
    eps.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with torch.no_grad():
        assert torch.equal(ScoreSdeEps(tiny)(x, torch.tensor(5)), ScoreSdeEps(tiny)(x, torch.tensor([5, 5])))
    with pytest.raises(ValueError, match="built for"):
        tiny(torch.zeros(1, 3, 16, 16), torch.zeros(1))


def test_uncentred_model_gets_zero_one_inputs(tiny: torch.nn.Module) -> None:
    # data.centered False: the network maps [0, 1] to [-1, 1] itself, so ScoreSdeEps hands it [0, 1].
    uncentred = score_sde_cifar10(config=replace(TINY, centered=False)).eval()
    uncentred.load_state_dict(tiny.state_dict(), strict=True)
    x, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([3, 700])
    with torch.no_grad():
        assert torch.allclose(ScoreSdeEps(uncentred)(x, t), ScoreSdeEps(tiny)(x, t), atol=1e-5)


def _training_checkpoint(model: torch.nn.Module) -> dict:
    """A checkpoint in score_sde_pytorch's layout: DataParallel keys, raw weights ≠ EMA weights."""
    ema = [p.detach().clone() for p in model.parameters()]
    raw = OrderedDict((f"module.{k}", v + 1 if k != "sigmas" else v) for k, v in model.state_dict().items())
    params = [torch.nn.Parameter(p.clone()) for p in model.parameters()]
    opt = torch.optim.Adam(params, lr=2e-4, eps=1e-8)
    sum(p.sum() for p in params).backward()
    opt.step()  # real Adam state: ints/floats/tuples/lists alongside tensors
    return {"optimizer": opt.state_dict(), "model": raw,
            "ema": {"decay": 0.9999, "num_updates": 5, "shadow_params": ema}, "step": 5}


def test_checkpoint_round_trip_picks_ema_weights(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_8.pth"
    torch.save(_training_checkpoint(tiny), path)
    state = score_sde_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    assert not any(k.startswith("module.") for k in state)
    fresh = load_into(score_sde_cifar10(config=TINY).eval(), state, name="score_sde")
    x, t = torch.rand(2, 3, 8, 8) * 2 - 1, torch.tensor([0, 999])
    with torch.no_grad():
        assert torch.equal(ScoreSdeEps(fresh)(x, t), ScoreSdeEps(tiny)(x, t))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), tiny.state_dict().values()))
    via_file = load_score_sde_checkpoint(path)
    assert via_file.keys() == state.keys() and all(torch.equal(via_file[k], state[k]) for k in state)
    raw = load_score_sde_checkpoint(path, ema=False)  # the training weights, here EMA + 1
    assert torch.equal(raw["all_modules.0.weight"], state["all_modules.0.weight"] + 1)


def test_checkpoint_refusals(tiny: torch.nn.Module, tmp_path: Path) -> None:
    ckpt = _training_checkpoint(tiny)
    short = {**ckpt, "ema": {**ckpt["ema"], "shadow_params": ckpt["ema"]["shadow_params"][:-1]}}
    with pytest.raises(AssetError, match="EMA parameters for"):
        score_sde_state_dict(short)
    shuffled = list(ckpt["ema"]["shadow_params"])
    shuffled[0], shuffled[2] = shuffled[2], shuffled[0]  # a (512,128)-vs-(512,512)-style mix-up
    with pytest.raises(AssetError, match="EMA parameter for"):
        score_sde_state_dict({**ckpt, "ema": {**ckpt["ema"], "shadow_params": shuffled}})
    with pytest.raises(AssetError, match="no 'ema'"):
        score_sde_state_dict({"model": ckpt["model"]})
    with pytest.raises(AssetError, match="no 'model'"):
        score_sde_state_dict({"ema": ckpt["ema"]})
    bad = tmp_path / "bad.pth"
    torch.save({**ckpt, "config": Path("x")}, bad)  # a custom object is never unpickled
    with pytest.raises(AssetError, match="refused"):
        load_score_sde_checkpoint(bad)
    with pytest.raises(AssetError, match="sha256"):
        load_score_sde_checkpoint(bad, expected_sha256="0" * 64)


def _alpha_bar_continuous(t: torch.Tensor) -> torch.Tensor:
    # VPSDE.marginal_prob: mean coefficient exp(−¼t²(β₁−β₀) − ½tβ₀), squared.
    return torch.exp(-0.5 * t ** 2 * (20.0 - 0.1) - 0.1 * t)


def test_step_to_time_mapping_matches_the_discrete_schedule() -> None:
    k = torch.arange(1000)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)  # DDPM's linear schedule
    alpha_bar = torch.cumprod(1 - betas, 0)
    t = continuous_time(k).double()
    assert t[0].item() == pytest.approx(1e-3) and t[-1].item() == pytest.approx(1.0)
    err = (_alpha_bar_continuous(t) - alpha_bar).abs()
    assert err.max() < 1e-3
    for step in (0, 499, 999):
        assert abs(_alpha_bar_continuous(t[step]) - alpha_bar[step]) < 1e-3
    # The check bites: score_sde's other discretisation, t = k/(N−1), misses by more.
    assert (_alpha_bar_continuous(k.double() / 999) - alpha_bar).abs().max() > 1e-3


def test_eps_wrapper_feeds_labels_999_t(tiny: torch.nn.Module) -> None:
    x = torch.rand(3, 3, 8, 8) * 2 - 1
    with torch.no_grad():
        got = ScoreSdeEps(tiny)(x, torch.tensor([0, 499, 999]))
        want = tiny(x, torch.tensor([0.999, 499.5, 999.0]))
    assert torch.allclose(got, want, atol=1e-5)


def test_denoiser_loader_purifies_with_the_ema_weights(tiny: torch.nn.Module, tmp_path: Path) -> None:
    """The harness's loader (sha256 checked) gives the EMA model as the purifier's ε̂ predictor."""
    from harness.models.bundled import sha256
    from harness.models.denoisers import load_score_sde
    from harness.purify.pipeline import Purifier, PurifierConfig
    from harness.rng import ExampleNoise

    path = tmp_path / "checkpoint_8.pth"
    torch.save(_training_checkpoint(tiny), path)
    eps = load_score_sde(path, sha256(path), config=TINY).eval()
    x = torch.rand(2, 3, 8, 8)
    k = torch.tensor([3, 3])
    with torch.no_grad():
        assert torch.allclose(eps(x, k), ScoreSdeEps(tiny)(x, k), atol=1e-6)  # EMA, not the raw +1 weights
        y = Purifier(PurifierConfig(rounds=[3]), eps)(x, ExampleNoise([0, 1]))
    assert y.shape == x.shape and torch.isfinite(y).all()
    with pytest.raises(AssetError, match="sha256"):
        load_score_sde(path, "0" * 64, config=TINY)


def test_stage_and_run_check_the_same_way(tiny: torch.nn.Module, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness stage` runs the run's loader on the meta device: a file fits there exactly when
    the real load takes it; the catalogued (full-size) architecture refuses a tiny checkpoint."""
    import yaml

    from harness.models.denoisers import load_score_sde
    from harness.staging import stage

    path = tmp_path / "assets" / "checkpoint_8.pth"
    path.parent.mkdir()
    torch.save(_training_checkpoint(tiny), path)
    on_meta = load_score_sde(path, config=TINY, meta=True)
    assert next(on_meta.parameters()).is_meta and _n(on_meta) == _n(tiny)
    assert not next(load_score_sde(path, config=TINY).parameters()).is_meta
    errors = []
    for meta in (True, False):  # a network of another width than the file's
        with pytest.raises(AssetError) as e:
            load_score_sde(path, config=replace(TINY, nf=32), meta=meta)
        errors.append(str(e.value))
    assert errors[0] == errors[1] and "does not fit NCSNpp: wrong shape" in errors[0], errors
    cat = {"assets": {"sde": {"kind": "denoiser", "arch": "score-sde-cifar10", "format": "score-sde",
                              "path": "checkpoint_8.pth", "published": "x"}}}
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump(cat))
    monkeypatch.setenv("HARNESS_CATALOG", str(tmp_path / "cat.yaml"))
    res = stage(tmp_path / "assets", ["sde"], out=lambda _: None)[0]
    assert res.status == "bad" and "does not fit NCSNpp" in res.detail and "wrong shape" in res.detail, res.detail
