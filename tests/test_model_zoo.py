"""The classifier zoo: published parameter counts and key layouts, and safe checkpoint loading."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness.errors import AssetError
from harness.models.bundled import sha256
from harness.models.checkpoints import fit_problem, load_checkpoint, load_into
from harness.models.resnet import Normalized, resnet18, resnet18_binary, resnet50
from harness.models.wideresnet import WideResNet, wrn_28_10, wrn_70_16


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def wrn() -> Normalized:
    torch.manual_seed(0)
    return wrn_28_10().eval()  # real, on CPU: ~0.6 s to build


@pytest.fixture(scope="module")
def r50() -> Normalized:
    torch.manual_seed(0)
    return resnet50().eval()


def test_wrn_28_10_parameter_count_and_forward(wrn: Normalized) -> None:
    assert _n(wrn) == 36_479_194
    with torch.no_grad():
        out = wrn(torch.rand(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_big_and_small_counts_on_meta() -> None:
    with torch.device("meta"):
        assert _n(wrn_70_16()) == 266_796_506  # ≈ 266.8 M
        assert _n(resnet18()) == 11_689_512
        assert _n(resnet18_binary()) == 11_177_538


def test_resnet50_parameter_count(r50: Normalized) -> None:
    assert _n(r50) == 25_557_032


def test_wrn_key_layout_is_robustbench() -> None:
    with torch.device("meta"):
        keys = set(WideResNet(28, 10).state_dict())
    assert {"conv1.weight", "bn1.running_var", "fc.weight", "fc.bias",
            "block1.layer.0.convShortcut.weight", "block2.layer.0.convShortcut.weight",
            "block3.layer.3.conv2.weight", "block1.layer.1.bn2.num_batches_tracked"} <= keys
    assert "block1.layer.1.convShortcut.weight" not in keys  # equal widths: identity shortcut
    assert not any("mean" in k and "running" not in k for k in keys)  # normalisation not in the state dict


def test_resnet50_key_layout_is_torchvision() -> None:
    with torch.device("meta"):
        keys = set(resnet50().net.state_dict())
    assert {"conv1.weight", "bn1.bias", "layer1.0.conv3.weight", "layer1.0.downsample.0.weight",
            "layer1.0.downsample.1.running_mean", "layer4.2.bn3.weight", "fc.weight"} <= keys
    assert len(keys) == 320  # torchvision's resnet50 state dict has 320 entries


def test_normalized_wrapper_resizes_and_normalises() -> None:
    seen = {}

    class Probe(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen["x"] = x
            return x.mean((2, 3))

    m = Normalized(Probe(), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), size=224)
    m(torch.full((1, 3, 256, 256), 0.75))
    assert seen["x"].shape == (1, 3, 224, 224)
    assert torch.allclose(seen["x"], torch.ones(1, 3, 224, 224))
    assert not m.state_dict()  # mean/std are never saved with weights


def _robustbench_style(model: Normalized, path: Path) -> None:
    sd = collections.OrderedDict(("module." + k, v) for k, v in model.net.state_dict().items())
    torch.save({"state_dict": sd}, path)


def test_wrapped_prefixed_pt_loads_strictly(wrn: Normalized, tmp_path: Path) -> None:
    path = tmp_path / "wrn.pt"
    _robustbench_style(wrn, path)
    sd = load_checkpoint(path, expected_sha256=sha256(path))
    assert set(sd) == set(wrn.net.state_dict())
    torch.manual_seed(1)
    fresh = wrn_28_10().eval()
    load_into(fresh, sd)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), wrn(x))


def test_resnet50_model_state_dict_wrapper_loads(r50: Normalized, tmp_path: Path) -> None:
    path = tmp_path / "r50.pth"
    torch.save({"model_state_dict": {"module." + k: v for k, v in r50.net.state_dict().items()}}, path)
    sd = load_checkpoint(path)
    with torch.device("meta"):
        target = resnet50()
    own = target.net.state_dict()
    assert set(sd) == set(own) and all(sd[k].shape == own[k].shape for k in own)


def test_safetensors_loads(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = resnet18_binary()
    path = tmp_path / "celebahq.safetensors"
    save_file({k: v.contiguous() for k, v in m.net.state_dict().items()}, str(path))
    other = resnet18_binary()
    load_into(other, load_checkpoint(path, sha256(path)))
    for k, v in m.net.state_dict().items():
        assert torch.equal(other.net.state_dict()[k], v)


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    wrong = "0" * 64
    with pytest.raises(AssetError) as e:
        load_checkpoint(path, expected_sha256=wrong)
    msg = str(e.value)
    assert str(path) in msg and wrong in msg and sha256(path) in msg


class Payload:
    """A custom class whose unpickling would leave a marker file: it must never run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_custom_object_is_refused(tmp_path: Path) -> None:
    import pickle

    marker = tmp_path / "unpickled"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}, path)
    assert not marker.exists()
    with pytest.raises(AssetError, match="refused") as e:
        load_checkpoint(path)
    assert isinstance(e.value.__cause__, pickle.UnpicklingError)
    assert not marker.exists()  # the payload never ran
    # the whole multi-line reason, down to the refused global, not only its first line
    assert "Unsupported global" in str(e.value) and "getattr" in str(e.value)
    assert "\x1b[" not in str(e.value)


def test_non_tensor_entries_and_unknown_suffix_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "odd.pt"
    torch.save({"w": torch.zeros(1), "epoch": 3}, path)
    with pytest.raises(AssetError, match="epoch"):
        load_checkpoint(path)
    other = tmp_path / "w.ckpt"
    other.write_bytes(b"x")
    with pytest.raises(AssetError, match="unknown checkpoint type"):
        load_checkpoint(other)
    with pytest.raises(AssetError, match="missing"):
        load_checkpoint(tmp_path / "absent.pt")


def test_load_into_lists_missing_and_unexpected_keys() -> None:
    m = resnet18_binary()
    sd = dict(m.net.state_dict())
    del sd["fc.weight"]
    sd["sub_block1.layer.0.conv1.weight"] = torch.zeros(1)
    sd["fc.bias"] = torch.zeros(1000)
    with pytest.raises(AssetError) as e:
        load_into(m, sd)
    msg = str(e.value)
    assert "missing 1: fc.weight" in msg
    assert "unexpected 1: sub_block1.layer.0.conv1.weight" in msg
    assert "fc.bias (1000,) vs (2,)" in msg


def test_resnet_state_dict_without_num_batches_tracked_loads(tmp_path: Path) -> None:
    """As torch's strict load: an old torchvision file (no module versions) lacks them; a
    state_dict() saying BatchNorm version 2 without them is refused, by torch and by us."""
    torch.manual_seed(0)
    src = resnet18_binary().eval()
    sd = src.net.state_dict()
    old = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pth")
    m = load_into(resnet18_binary(), load_checkpoint(tmp_path / "old.pth")).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), src(x))
    cut = collections.OrderedDict(old)
    cut._metadata = sd._metadata
    torch.save(cut, tmp_path / "cut.pth")
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        resnet18_binary().net.load_state_dict(torch.load(tmp_path / "cut.pth"))
    with pytest.raises(AssetError, match="missing 20: bn1.num_batches_tracked"):
        load_into(resnet18_binary(), load_checkpoint(tmp_path / "cut.pth"))
    assert fit_problem(resnet18_binary(), load_checkpoint(tmp_path / "old.pth")) is None


def test_ddpm_cifar10_unet_parameter_count() -> None:
    from harness.models.ddpm_cifar10 import ddpm_cifar10_unet

    with torch.device("meta"):
        unet = ddpm_cifar10_unet()
    assert _n(unet) == 35_746_307
    assert unet.config.block_out_channels == (128, 256, 256, 256)
