"""guided-diffusion's UNetModel: the 256×256 checkpoint's exact key layout, and a tiny model that runs.

Expected names and shapes are worked out by hand from the original's construction
(openai/guided-diffusion unet.py + script_util.create_model with the README's 256×256
unconditional flags), not read back from this module.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.models.guided_unet import (
    GUIDED_256_UNCOND, AttentionBlock, GuidedEps, GuidedUNetConfig, guided_unet, timestep_embedding)

TINY = GuidedUNetConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                        attention_resolutions=(8,), num_head_channels=8)


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def big_sd() -> dict[str, torch.Tensor]:
    return guided_unet(GUIDED_256_UNCOND, device="meta").state_dict()


def test_256_uncond_parameter_count_on_meta() -> None:
    model = guided_unet(device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert _n(model) == 552_814_086  # the published count of 256x256_diffusion_uncond.pt
    assert not list(model.buffers())  # GroupNorm keeps no running statistics: the state dict is parameters


def test_256_uncond_key_names_and_shapes(big_sd: dict[str, torch.Tensor]) -> None:
    # Widths per level: 256,256,512,512,1024,1024; attention at ds 8,16,32 (levels 3-5), 64 channels a head;
    # time embedding 4·256 = 1024; scale-shift norm doubles emb_layers' output.
    expected = {
        "time_embed.0.weight": (1024, 256),
        "time_embed.2.weight": (1024, 1024),
        "input_blocks.0.0.weight": (256, 3, 3, 3),
        "input_blocks.1.0.in_layers.0.weight": (256,),
        "input_blocks.1.0.emb_layers.1.weight": (512, 1024),
        "input_blocks.1.0.out_layers.3.weight": (256, 256, 3, 3),  # Dropout keeps slot 2
        "input_blocks.3.0.in_layers.2.weight": (256, 256, 3, 3),  # resblock_updown: level 0's down block
        "input_blocks.7.0.skip_connection.weight": (512, 256, 1, 1),  # width 256 → 512
        "input_blocks.10.1.qkv.weight": (1536, 512, 1),  # first attention: level 3, ds 8
        "input_blocks.10.1.proj_out.weight": (512, 512, 1),
        "input_blocks.12.0.emb_layers.1.bias": (1024,),  # level 3's down block
        "input_blocks.17.1.qkv.bias": (3072,),
        "middle_block.0.in_layers.2.weight": (1024, 1024, 3, 3),
        "middle_block.1.qkv.weight": (3072, 1024, 1),
        "middle_block.1.norm.weight": (1024,),
        "middle_block.2.out_layers.3.bias": (1024,),
        "output_blocks.0.0.skip_connection.weight": (1024, 2048, 1, 1),
        "output_blocks.2.2.in_layers.2.weight": (1024, 1024, 3, 3),  # up block after attention
        "output_blocks.5.0.in_layers.0.weight": (1536,),  # 1024 + the 512-wide level-3 down block
        "output_blocks.5.1.proj_out.weight": (1024, 1024, 1),
        "output_blocks.8.1.qkv.weight": (1536, 512, 1),
        "output_blocks.11.0.skip_connection.weight": (512, 768, 1, 1),
        "output_blocks.11.1.emb_layers.1.weight": (1024, 1024),  # up block, no attention at ds 4
        "output_blocks.17.0.in_layers.2.weight": (256, 512, 3, 3),
        "out.0.weight": (256,),
        "out.2.weight": (6, 256, 3, 3),
        "out.2.bias": (6,),
    }
    got = {k: tuple(big_sd[k].shape) for k in expected if k in big_sd}
    assert got == expected


def test_256_uncond_key_count_and_absent_keys(big_sd: dict[str, torch.Tensor]) -> None:
    # 42 ResBlocks × 10 (17 in the encoder, 2 middle, 23 decoder), 20 of them with a 1×1 skip (+2),
    # 16 attention blocks × 6, time_embed 4, the stem 2, out 4: 420 + 40 + 96 + 10.
    assert len(big_sd) == 566
    blocks = {int(k.split(".")[1]) for k in big_sd if k.startswith("input_blocks.")}
    assert blocks == set(range(18))
    blocks = {int(k.split(".")[1]) for k in big_sd if k.startswith("output_blocks.")}
    assert blocks == set(range(18))
    top = {"time_embed", "input_blocks", "middle_block", "output_blocks", "out"}
    assert {k.split(".")[0] for k in big_sd} == top
    assert "input_blocks.1.0.skip_connection.weight" not in big_sd  # equal widths: identity skip
    assert "input_blocks.9.1.qkv.weight" not in big_sd  # ds 4: no attention
    assert not any("label_emb" in k or k.startswith("out.1") for k in big_sd)
    # Up blocks: third layer behind attention (levels 5, 4, 3), second where there is none (levels 2, 1).
    ups = {".".join(k.split(".")[1:3]) for k in big_sd if k.startswith("output_blocks.") and ".in_layers.2." in k
           and k.split(".")[2] != "0"}
    assert ups == {"2.2", "5.2", "8.2", "11.1", "14.1"}


def test_timestep_embedding_is_cos_then_sin() -> None:
    e = timestep_embedding(torch.tensor([0, 7]), 8)
    assert torch.equal(e[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = [math.exp(-math.log(10000) * i / 4) for i in range(4)]
    want = [math.cos(7 * f) for f in freqs] + [math.sin(7 * f) for f in freqs]
    assert torch.allclose(e[1], torch.tensor(want), atol=1e-5)
    assert timestep_embedding(torch.tensor([3]), 5).shape == (1, 5)


def test_attention_uses_the_checkpoints_legacy_head_layout() -> None:
    # Legacy order: qkv's channels are grouped by head, each head's group holding its q, k, v.
    torch.manual_seed(0)
    c, heads, d = 32, 4, 8
    blk = AttentionBlock(c, num_head_channels=d).double()
    for p in blk.parameters():
        p.data.normal_()
    x = torch.randn(2, c, 3, 5, dtype=torch.float64)
    xf = x.reshape(2, c, -1)
    qkv = blk.qkv(blk.norm(xf))
    outs = []
    for h in range(heads):
        q, k, v = (qkv[:, h * 3 * d + j * d: h * 3 * d + (j + 1) * d] for j in range(3))
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        outs.append(torch.einsum("bts,bcs->bct", w, v))
    want = (xf + blk.proj_out(torch.cat(outs, dim=1))).reshape(x.shape)
    assert torch.allclose(blk(x), want, atol=1e-10)


@pytest.fixture(scope="module")
def tiny() -> torch.nn.Module:
    torch.manual_seed(0)
    model = guided_unet(TINY)
    # The zero-initialised output layers would make every output 0; random weights make checks bite.
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model.eval()


def test_tiny_forward_eps_and_gradient(tiny: torch.nn.Module) -> None:
    torch.manual_seed(1)
    x = (torch.rand(2, 3, 16, 16) * 2 - 1).requires_grad_(True)
    t = torch.tensor([10, 900])
    out = tiny(x, t)
    assert out.shape == (2, 6, 16, 16) and torch.isfinite(out).all()
    eps = GuidedEps(tiny)(x, t)
    assert eps.shape == (2, 3, 16, 16)
    assert torch.equal(eps, out[:, :3])
    assert not torch.allclose(out[0], tiny(x, torch.tensor([11, 900]))[0])  # the timestep matters
    eps.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_guided_eps_broadcasts_a_scalar_timestep(tiny: torch.nn.Module) -> None:
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        assert torch.equal(GuidedEps(tiny)(x, torch.tensor(5)), GuidedEps(tiny)(x, torch.tensor([5, 5])))


def test_tiny_state_dict_round_trip_strict(tiny: torch.nn.Module, tmp_path: Path) -> None:
    path = tmp_path / "tiny.pt"
    torch.save(tiny.state_dict(), path)
    fresh = guided_unet(TINY).eval()
    result = fresh.load_state_dict(torch.load(path, weights_only=True), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([3, 500])
    with torch.no_grad():
        assert torch.equal(fresh(x, t), tiny(x, t))


def test_other_options_build_and_run() -> None:
    # Strided-conv resampling, additive conditioning, the new attention order, class labels, no sigma.
    cfg = GuidedUNetConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                           attention_resolutions=(8,), num_head_channels=-1, num_heads=2, learn_sigma=False,
                           class_cond=True, resblock_updown=False, use_scale_shift_norm=False,
                           use_new_attention_order=True)
    model = guided_unet(cfg)
    sd = model.state_dict()
    assert {"input_blocks.2.0.op.weight", "output_blocks.1.2.conv.weight", "label_emb.weight"} <= set(sd)
    assert sd["input_blocks.1.0.emb_layers.1.weight"].shape == (32, 128)
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert model(x, torch.tensor([1, 2]), torch.tensor([0, 999])).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="class"):
        model(x, torch.tensor([1, 2]))


def test_stage_checks_with_the_runs_loader_on_meta(tiny: torch.nn.Module, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The 552 M backbone is checked on the meta device by the run's own loader: a tiny file
    fits the tiny configuration there exactly as in a real load, and the catalogued one refuses it."""
    import yaml

    from harness.errors import AssetError
    from harness.models.denoisers import load_guided
    from harness.staging import stage

    path = tmp_path / "assets" / "guided.pt"
    path.parent.mkdir()
    torch.save(tiny.state_dict(), path)
    assert next(load_guided(path, config=TINY, meta=True).parameters()).is_meta
    real = load_guided(path, config=TINY).eval()
    x, t = torch.rand(2, 3, 16, 16) * 2 - 1, torch.tensor([3, 500])
    with torch.no_grad():
        assert torch.equal(real(x, t), GuidedEps(tiny)(x, t))
    with pytest.raises(AssetError, match="does not fit GuidedUNet: missing"):
        load_guided(path, meta=True)  # the 256 configuration, on meta: no memory
    cat = {"assets": {"g": {"kind": "denoiser", "arch": "guided-256-uncond", "path": "guided.pt",
                            "published": "x"}}}
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump(cat))
    monkeypatch.setenv("HARNESS_CATALOG", str(tmp_path / "cat.yaml"))
    res = stage(tmp_path / "assets", ["g"], out=lambda _: None)[0]
    assert res.status == "bad" and "does not fit GuidedUNet" in res.detail, res.detail
