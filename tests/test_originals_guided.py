"""guided-diffusion checkpoints load exactly as OpenAI's original code builds the model.

The original is `guided_diffusion` (openai/guided-diffusion, packaged on PyPI as
guided-diffusion-sdk 1.0.0, installed --no-deps by `bash scripts/setup.sh --test`; its
`unet` and `script_util` modules need only torch). Its `script_util.create_model` builds the
UNet from the README's command-line flags, as for the published checkpoints: the 256×256
unconditional model is compared key for key and shape for shape on the meta device, and a tiny
model of the same family is saved with random weights in the published format
(`torch.save(model.state_dict())`), loaded through our `load_guided`, and compared output for
output (eval mode, float32).
"""
from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from types import ModuleType

import pytest
import torch

from harness.models.denoisers import load_guided
from harness.models.guided_unet import GUIDED_256_UNCOND, GuidedEps, GuidedUNetConfig, guided_unet

SETUP = "install the originals with `bash scripts/setup.sh --test`"
TOL = 1e-5

# The README's flags of 256x256_diffusion_uncond.pt, as create_model takes them.
FLAGS_256_UNCOND = dict(
    image_size=256, num_channels=256, num_res_blocks=2, channel_mult="", learn_sigma=True, class_cond=False,
    use_checkpoint=False, attention_resolutions="32,16,8", num_heads=4, num_head_channels=64,
    num_heads_upsample=-1, use_scale_shift_norm=True, dropout=0.0, resblock_updown=True, use_fp16=False,
    use_new_attention_order=False)
# The same family, shrunk: two levels, attention at 16×16 (ds 2) and in the middle block.
FLAGS_TINY = dict(FLAGS_256_UNCOND, image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                  attention_resolutions="16", num_head_channels=16)
TINY = GuidedUNetConfig(image_size=32, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                        attention_resolutions=(16,), num_heads=4, num_head_channels=16)


@pytest.fixture(scope="module")
def script_util() -> ModuleType:
    if importlib.util.find_spec("guided_diffusion") is None:
        pytest.fail(f"guided_diffusion is not installed; {SETUP}")
    with warnings.catch_warnings():  # nn.py's torch.cuda.amp.custom_fwd decorators are deprecated
        warnings.simplefilter("ignore", FutureWarning)
        from guided_diffusion import script_util as su
    return su


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_256_uncond_keys_and_shapes_equal_the_originals(script_util: ModuleType) -> None:
    with torch.device("meta"):
        original = script_util.create_model(**FLAGS_256_UNCOND)
    assert type(original).__module__ == "guided_diffusion.unet"
    theirs = {k: tuple(v.shape) for k, v in original.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in guided_unet(GUIDED_256_UNCOND, device="meta").state_dict().items()}
    assert sorted(ours) == sorted(theirs)  # names first: a diff of names reads better than one of shapes
    assert ours == theirs
    assert _n(original) == 552_814_086


def test_tiny_checkpoint_loads_through_load_guided_with_the_originals_outputs(
        script_util: ModuleType, tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = script_util.create_model(**FLAGS_TINY).float().eval()
    # zero_module'd layers (each residual branch's last conv, attention's proj_out, the output conv)
    # would make those paths vanish: give every parameter a non-trivial random value.
    with torch.no_grad():
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    assert _n(original) == _n(guided_unet(TINY, device="meta"))
    path = tmp_path / "tiny_guided.pt"
    torch.save(original.state_dict(), path)  # the published file's format: a bare state dict

    ours = load_guided(path, config=TINY).eval()
    assert isinstance(ours, GuidedEps)

    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(3, 3, 32, 32, generator=g)
    t = torch.tensor([0, 417, 999])
    with torch.no_grad():
        want = original(x_t, t)
        got = ours(x_t, t)
    assert want.shape == (3, 6, 32, 32)  # learn_sigma: ε̂ then the variance interpolation
    assert got.shape == x_t.shape
    assert want[:, :3].abs().mean() > 1e-2  # the comparison is not between near-zero outputs
    diff = (got - want[:, :3]).abs().max().item()
    print(f"max-abs difference: {diff:.3e}")
    assert diff <= TOL
