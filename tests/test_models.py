"""The bundled assets: accurate, checksummed, rebuildable, never unpickled."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from harness.data.digits import arrays, load
from harness.errors import AssetError
from harness.models import bundled
from harness.models.digits import UNET_CONFIG
from harness.train import main as train_main


def test_classifier_accuracy_on_held_out_digits() -> None:
    ds = load({})
    assert len(ds) == 450  # the fixed test split, never seen in training
    with torch.no_grad():
        acc = (bundled.load_classifier({})(ds.x).argmax(1) == ds.y).float().mean().item()
    assert acc >= 0.95


def test_split_is_disjoint_and_fixed() -> None:
    xtr, _ = arrays("train")
    xte, _ = arrays("test")
    train_rows = {r.tobytes() for r in xtr.reshape(len(xtr), -1)}
    assert len(xtr) == 1347 and len(xte) == 450
    # sklearn's digits contain a few exact duplicates; the split itself is a permutation
    assert sum(r.tobytes() in train_rows for r in xte.reshape(len(xte), -1)) < 10


def test_denoiser_predicts_noise() -> None:
    """The bundled DDPM's noise prediction beats predicting zeros by a wide margin."""
    from harness.purify.schedule import Schedule

    eps_fn = bundled.load_denoiser("digits-ddpm")
    x0 = load({}).x[:64] * 2 - 1
    s = Schedule.linear()
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=g)
    k = 200
    xt = s.diffuse(x0, k, noise)
    with torch.no_grad():
        err = (eps_fn(xt, torch.full((64,), k)) - noise).pow(2).mean().item()
    assert err < 0.3 * noise.pow(2).mean().item()
    assert sum(p.numel() for p in eps_fn.parameters()) == json.loads(bundled.MANIFEST.read_text())["digits-ddpm"]["parameters"]
    assert UNET_CONFIG["sample_size"] == 8


def test_tampered_checkpoint_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assets = tmp_path / "assets"
    shutil.copytree(bundled.ASSETS, assets)
    data = bytearray((assets / "digits-cnn.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (assets / "digits-cnn.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(bundled, "ASSETS", assets)
    monkeypatch.setattr(bundled, "MANIFEST", assets / "MANIFEST.json")
    with pytest.raises(AssetError, match="sha256"):
        bundled.load_classifier({})
    (assets / "digits-ddpm.safetensors").unlink()
    with pytest.raises(AssetError, match="missing"):
        bundled.load_denoiser("digits-ddpm")


def test_train_command_writes_verified_assets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`harness train` (shortened) writes safetensors and a manifest that the loader accepts."""
    train_main("classifier", tmp_path, cnn_steps=30)
    manifest = json.loads((tmp_path / "MANIFEST.json").read_text())
    assert set(manifest) == {"digits-cnn"}
    monkeypatch.setattr(bundled, "ASSETS", tmp_path)
    monkeypatch.setattr(bundled, "MANIFEST", tmp_path / "MANIFEST.json")
    model = bundled.load_classifier({})
    assert model(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
