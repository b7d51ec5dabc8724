"""DM-layout WideResNet: RobustBench `dm_wide_resnet.py` key names, shapes, counts and forward."""
from __future__ import annotations

import collections
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.errors import AssetError
from harness.models.checkpoints import load_into, robustbench_state
from harness.models.dm_wideresnet import (CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD,
                                          DMWideResNet, dm_wrn, wrn_28_10_dm, wrn_70_16_dm)


def _n(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _widths(depth: int, width: int) -> tuple[int, list[int]]:
    return (depth - 4) // 6, [16, 16 * width, 32 * width, 64 * width]


def _dm_param_count(depth: int, width: int, num_classes: int, in_ch: int = 3) -> int:
    """Parameters of RobustBench's DMWideResNet, from its layer shapes: bias-free 3×3 convs,
    a bias-free 1×1 shortcut on the first block of a group only where widths change,
    two affine batch norms per block, a final batch norm and a biased linear head."""
    n, ch = _widths(depth, width)
    total = in_ch * ch[0] * 9  # init_conv
    for cin, cout in zip(ch[:-1], ch[1:]):
        for i in range(n):
            c = cin if i == 0 else cout
            total += 2 * c + c * cout * 9 + 2 * cout + cout * cout * 9  # bn_0, conv_0, bn_1, conv_1
            total += c * cout if c != cout else 0  # shortcut
    return total + 2 * ch[3] + ch[3] * num_classes + num_classes  # batchnorm, logits


def _dm_state_dict_len(depth: int, width: int) -> int:
    """Entries: 5 per batch norm (weight, bias, running_mean, running_var, num_batches_tracked)."""
    n, ch = _widths(depth, width)
    shortcuts = sum(a != b for a, b in zip(ch[:-1], ch[1:]))
    return 1 + 3 * n * (2 * 5 + 2) + shortcuts + 5 + 2  # init_conv, blocks, batchnorm, logits


@pytest.mark.parametrize("num_classes,dataset,expected", [(10, "cifar10", 266_796_506),
                                                          (100, "cifar100", 266_888_756)])
def test_wrn_70_16_parameter_count_on_meta(num_classes: int, dataset: str, expected: int) -> None:
    m = wrn_70_16_dm(num_classes, dataset, device="meta")
    assert m.init_conv.weight.is_meta and m.mean.is_meta
    assert _n(m) == _dm_param_count(70, 16, num_classes) == expected
    assert len(m.state_dict()) == _dm_state_dict_len(70, 16) == 407
    # mean/std are non-persistent buffers (RobustBench 1.1.1): not parameters, not in the state dict
    assert {name for name, _ in m.named_buffers() if "." not in name} == {"mean", "std"}
    assert not {"mean", "std"} & set(m.state_dict())


def test_wrn_28_10_and_small_counts_match_the_arithmetic() -> None:
    assert _n(wrn_28_10_dm(device="meta")) == _dm_param_count(28, 10, 10) == 36_479_194
    # width 1: the first group keeps 16 channels, so no shortcut there
    for depth, width in ((10, 1), (10, 2), (16, 4)):
        m = dm_wrn(depth, width, 10, device="meta")
        assert _n(m) == _dm_param_count(depth, width, 10)
        assert len(m.state_dict()) == _dm_state_dict_len(depth, width)
    assert "layer.0.block.0.shortcut.weight" not in dm_wrn(10, 1, device="meta").state_dict()


def test_key_names_and_shapes_are_robustbench_dm() -> None:
    sd = wrn_70_16_dm(100, "cifar100", device="meta").state_dict()
    expected = {
        "init_conv.weight": (16, 3, 3, 3),
        "layer.0.block.0.batchnorm_0.weight": (16,),
        "layer.0.block.0.batchnorm_0.running_mean": (16,),
        "layer.0.block.0.batchnorm_0.num_batches_tracked": (),
        "layer.0.block.0.conv_0.weight": (256, 16, 3, 3),
        "layer.0.block.0.batchnorm_1.running_var": (256,),
        "layer.0.block.0.conv_1.weight": (256, 256, 3, 3),
        "layer.0.block.0.shortcut.weight": (256, 16, 1, 1),
        "layer.1.block.0.conv_0.weight": (512, 256, 3, 3),
        "layer.1.block.0.shortcut.weight": (512, 256, 1, 1),
        "layer.2.block.0.shortcut.weight": (1024, 512, 1, 1),
        "layer.2.block.10.batchnorm_0.bias": (1024,),
        "layer.2.block.10.conv_1.weight": (1024, 1024, 3, 3),
        "batchnorm.weight": (1024,), "batchnorm.running_mean": (1024,),
        "batchnorm.num_batches_tracked": (),
        "logits.weight": (100, 1024), "logits.bias": (100,),
    }
    for key, shape in expected.items():
        assert key in sd, key
        assert tuple(sd[key].shape) == shape, key
    assert "layer.0.block.1.shortcut.weight" not in sd  # equal widths: identity shortcut
    assert "layer.2.block.11.conv_0.weight" not in sd  # (70 - 4) / 6 = 11 blocks per group
    assert not any(k.startswith(("conv1", "block1", "fc.", "bn1")) for k in sd)  # not wide_resnet.py's


def _randomise(model: DMWideResNet, seed: int) -> DMWideResNet:
    """Non-trivial batch-norm statistics and affines, so eval-mode checks exercise them."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _reference_forward(sd: dict[str, torch.Tensor], x: torch.Tensor, depth: int,
                       padding: int = 0) -> torch.Tensor:
    """DMWideResNet.forward (eval mode) written out functionally from the original's structure."""
    def bn(t: torch.Tensor, name: str) -> torch.Tensor:
        return F.batch_norm(t, sd[f"{name}.running_mean"], sd[f"{name}.running_var"],
                            sd[f"{name}.weight"], sd[f"{name}.bias"], training=False, eps=1e-5)

    def swish(t: torch.Tensor) -> torch.Tensor:
        return t * torch.sigmoid(t)

    if padding:
        x = F.pad(x, (padding,) * 4)
    out = F.conv2d((x - sd["mean"]) / sd["std"], sd["init_conv.weight"], padding=1)
    for g, group_stride in enumerate((1, 2, 2)):
        for i in range((depth - 4) // 6):
            p = f"layer.{g}.block.{i}."
            stride = group_stride if i == 0 else 1
            act = swish(bn(out, p + "batchnorm_0"))
            same = (1, 1, 1, 1) if stride == 1 else (0, 1, 0, 1)
            h = F.conv2d(F.pad(act, same), sd[p + "conv_0.weight"], stride=stride)
            h = F.conv2d(swish(bn(h, p + "batchnorm_1")), sd[p + "conv_1.weight"], padding=1)
            short = (F.conv2d(act, sd[p + "shortcut.weight"], stride=stride)
                     if p + "shortcut.weight" in sd else out)
            out = short + h
    out = swish(bn(out, "batchnorm"))
    out = F.avg_pool2d(out, 8).view(x.shape[0], -1)
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


@pytest.mark.parametrize("width,padding", [(1, 0), (2, 0), (2, 4)])
def test_forward_matches_the_original_computation(width: int, padding: int) -> None:
    torch.manual_seed(0)
    m = _randomise(dm_wrn(10, width, 10), seed=width)
    m.padding = padding
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        got = m(x)
        want = _reference_forward({**m.state_dict(), "mean": m.mean, "std": m.std}, x, 10, padding)
    assert got.shape == (3, 10)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_normalisation_is_inside_and_uses_the_dataset_constants() -> None:
    torch.manual_seed(0)
    seen: dict[str, torch.Tensor] = {}
    for dataset, mean, std in (("cifar10", CIFAR10_MEAN, CIFAR10_STD),
                               ("cifar100", CIFAR100_MEAN, CIFAR100_STD)):
        m = dm_wrn(10, 1, 100, dataset).eval()
        m.init_conv.register_forward_hook(lambda mod, inp, out: seen.__setitem__("x", inp[0]))
        mu, sigma = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        x = torch.rand(2, 3, 32, 32)
        with torch.no_grad():
            m(x)
            torch.testing.assert_close(seen["x"], (x - mu) / sigma)
            m(mu.expand(2, 3, 32, 32))  # the mean image normalises to exactly zero
            assert torch.equal(seen["x"], torch.zeros(2, 3, 32, 32))


def _robustbench_style(model: DMWideResNet, path: Path, extra: dict | None = None) -> None:
    items = {**model.state_dict(), **(extra or {})}.items()
    sd = collections.OrderedDict(("module." + k, v) for k, v in items)
    torch.save({"state_dict": sd}, path)


@pytest.mark.parametrize("with_norm", [False, True])
def test_robustbench_checkpoint_loads_strictly(tmp_path: Path, with_norm: bool) -> None:
    """Published files hold no mean/std (non-persistent in RobustBench 1.1.1); files that do
    (older versions, earlier harness files) load when the values are the model's own."""
    torch.manual_seed(0)
    src = _randomise(dm_wrn(10, 2, 100, "cifar100"), seed=3)
    path = tmp_path / "Wang2023Better_tiny.pt"
    extra = {"mean": src.mean, "std": src.std} if with_norm else {}
    _robustbench_style(src, path, extra)
    sd = robustbench_state(torch.load(path, weights_only=True), path)
    torch.manual_seed(1)
    fresh = dm_wrn(10, 2, 100, "cifar100")  # other weights
    assert set(sd) == set(fresh.state_dict()) | set(extra)
    load_into(fresh, sd).eval()
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        out = fresh(x)
        assert out.shape == (4, 100) and torch.isfinite(out).all()
        assert torch.equal(out, src(x))


def test_checkpoint_normalisation_must_be_the_models(tmp_path: Path) -> None:
    src = dm_wrn(10, 1, 10, "cifar100")
    sd = {**src.state_dict(), "mean": src.mean, "std": src.std}
    with pytest.raises(AssetError, match="mean: the checkpoint's normalisation .* is not this model's"):
        load_into(dm_wrn(10, 1, 10, "cifar10"), sd)  # the plugin would normalise otherwise
    with pytest.raises(AssetError, match="std: the checkpoint's normalisation \\[1.0, 1.0, 1.0\\]"):
        load_into(dm_wrn(10, 1, 10, "cifar100"), {**sd, "std": torch.ones(3)})  # shape (3,), not (3, 1, 1)


def test_rejects_bad_arguments_and_inputs() -> None:
    with pytest.raises(ValueError, match="dataset"):
        dm_wrn(10, 1, dataset="imagenet", device="meta")
    with pytest.raises(ValueError, match="6n\\+4"):
        dm_wrn(12, 1, device="meta")
    m = dm_wrn(10, 1)
    with pytest.raises(ValueError, match="32×32"):
        m(torch.rand(1, 3, 64, 64))
