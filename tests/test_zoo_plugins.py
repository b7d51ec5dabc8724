"""Checkpoint-backed classifier plugins, as a grid names them."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from harness import registry
from harness.errors import AssetError
from harness.models.bundled import sha256
from harness.models.resnet import resnet18_binary


def test_checkpoint_classifier_plugin_loads_verified_file(tmp_path: Path) -> None:
    net = resnet18_binary()
    path = tmp_path / "eyeglasses.safetensors"
    save_file({k: v.contiguous() for k, v in net.net.state_dict().items()}, str(path))
    spec = registry.get("classifier", "resnet-18-binary")
    params = spec.resolve({"path": str(path), "sha256": sha256(path)}, "g.yaml", "classifier")
    model = spec.load()(params)
    x = torch.rand(2, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
    bad = spec.resolve({"path": str(path), "sha256": "0" * 64}, "g.yaml", "classifier")
    with pytest.raises(AssetError, match="sha256"):
        spec.load()(bad)


def test_checkpoint_path_is_required() -> None:
    from harness.errors import GridError

    with pytest.raises(GridError, match="classifier.path"):
        registry.get("classifier", "wrn-28-10").resolve({}, "g.yaml", "classifier")
