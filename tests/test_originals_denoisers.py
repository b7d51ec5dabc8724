"""diffusers folders as the hub published them load as diffusers loads them: a UNet2DModel saved
with the 0.0.x-era attention key names (`query`/`key`/`value`/`proj_attn`, which diffusers'
`ModelMixin._fix_state_dict_keys_on_load` converts to `to_q`/`to_k`/`to_v`/`to_out.0`) loads
through `harness stage` and through the run's loader with the original outputs, offline, and
stage and run refuse the same files (strictness after the conversion, sha256, parameter count)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from conftest import harness
from harness.catalog import LOCK, load_catalog
from harness.errors import AssetError
from harness.models.ddpm_cifar10 import DDPM_CIFAR10_CONFIG
from harness.models.denoisers import load_catalogued, load_denoiser

# google/ddpm-cifar10-32's configuration (attention at 16×16 and in the middle block), shrunk
TINY = dict(DDPM_CIFAR10_CONFIG, block_out_channels=(16, 32, 32, 32), norm_num_groups=8, layers_per_block=1)
# the names diffusers converts (modeling_utils.ModelMixin._fix_state_dict_keys_on_load), new → old
OLD_NAMES = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
WEIGHTS = "diffusion_pytorch_model.safetensors"
TOL = 1e-5


def _old_key(key: str) -> str:
    if ".attentions." in key:
        for new, old in OLD_NAMES.items():
            if f".{new}." in key:
                return key.replace(f".{new}.", f".{old}.")
    return key


def old_ddpm_folder(folder: Path, seed: int = 0) -> torch.nn.Module:
    """A UNet2DModel folder as a 0.0.4-era hub folder holds it; returns the model it was saved from."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY).eval()
    with torch.no_grad():  # zero-initialised output layers would make every output 0
        for p in unet.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    unet.save_pretrained(str(folder), safe_serialization=True)
    state = load_file(str(folder / WEIGHTS))
    save_file({_old_key(k): v for k, v in state.items()}, str(folder / WEIGHTS))
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "_diffusers_version": "0.0.4"}))
    (folder / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "_diffusers_version": "0.0.4", "beta_schedule": "linear",
         "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000}))
    return unet


def max_diff(eps: torch.nn.Module, unet: torch.nn.Module) -> float:
    torch.manual_seed(1)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 700])
    with torch.no_grad():
        return float((eps(x, t) - unet(x, t).sample).abs().max())


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def site(base: Path, folder: Path, params: int) -> dict[str, str]:
    cat = {"architectures": {"tiny-ddpm": {"build": "harness.models.ddpm_cifar10:ddpm_cifar10_unet",
                                           "params": params, "input": [3, 32, 32], "gflops": 0.01,
                                           "denoiser": True}},
           "assets": {"old": {"kind": "denoiser", "arch": "tiny-ddpm", "format": "diffusers",
                              "path": str(folder.relative_to(base / "assets")),
                              "published": "https://example.invalid/old"}}}
    (base / "cat.yaml").write_text(yaml.safe_dump(cat))
    return {**os.environ, "HARNESS_CATALOG": str(base / "cat.yaml"), "OMP_NUM_THREADS": "1"}


def test_the_folder_really_holds_the_old_names(tmp_path: Path) -> None:
    old_ddpm_folder(tmp_path / "f")
    keys = set(load_file(str(tmp_path / "f" / WEIGHTS)))
    assert {"down_blocks.1.attentions.0.query.weight", "mid_block.attentions.0.proj_attn.bias",
            "up_blocks.2.attentions.1.value.weight"} <= keys
    assert not any(".to_q." in k or ".to_out.0." in k for k in keys)


def test_old_key_names_load_through_the_run_loader(tmp_path: Path, no_network: None) -> None:
    unet = old_ddpm_folder(tmp_path / "f")
    eps = load_denoiser(str(tmp_path / "f"), tmp_path)
    d = max_diff(eps, unet)
    print(f"old-key folder via load_denoiser: max |diff| = {d:.3g}")
    assert d <= TOL
    assert not any(p.requires_grad for p in eps.parameters())


def test_old_key_names_stage_and_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_network: None) -> None:
    from harness.staging import stage

    folder = tmp_path / "assets" / "models" / "old"
    unet = old_ddpm_folder(folder)
    n = sum(p.numel() for p in unet.parameters())
    env = site(tmp_path, folder, n)
    monkeypatch.setenv("HARNESS_CATALOG", env["HARNESS_CATALOG"])
    lines: list[str] = []
    res = {r.name: r for r in stage(tmp_path / "assets", ["old"], out=lines.append)}
    assert res["old"].status == "ok" and res["old"].params == n, lines
    assert set(res["old"].files) == {"config.json", WEIGHTS}
    eps = load_denoiser("asset:old", tmp_path / "assets")
    d = max_diff(eps, unet)
    print(f"old-key folder staged, via load_denoiser('asset:old'): max |diff| = {d:.3g}")
    assert d <= TOL
    # and as a planned run holds it: to the plan's record of both files
    planned = {"asset:old": {rel: rec["sha256"] for rel, rec in res["old"].files.items()}}
    assert max_diff(load_denoiser("asset:old", tmp_path / "assets", planned), unet) <= TOL


def test_old_key_names_through_the_cli(tmp_path: Path) -> None:
    folder = tmp_path / "assets" / "models" / "old"
    unet = old_ddpm_folder(folder)
    env = site(tmp_path, folder, sum(p.numel() for p in unet.parameters()))
    r = harness("stage", str(tmp_path / "assets"), "--only", "old", cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(ln.split()[:2] == ["ok", "old"] for ln in r.stdout.splitlines()), r.stdout
    assert json.loads((tmp_path / "assets" / LOCK).read_text())["old"]["status"] == "ok"


def _rewrite(folder: Path, change) -> None:
    state = load_file(str(folder / WEIGHTS))
    change(state)
    save_file(state, str(folder / WEIGHTS))


@pytest.mark.parametrize("case", ["unexpected", "missing", "not-an-attention-key", "shape", "params"])
def test_stage_and_run_refuse_the_same_folders(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Strict after diffusers' conversion (which renames only attention blocks' old names) and
    held to the catalogued parameter count: what the run refuses, the stage refuses, naming why."""
    from harness.staging import stage

    folder = tmp_path / "assets" / "models" / "old"
    unet = old_ddpm_folder(folder)
    n = sum(p.numel() for p in unet.parameters())
    changes = {
        "unexpected": lambda s: s.__setitem__("conv_in.extra", torch.zeros(1)),
        "missing": lambda s: s.pop("conv_out.bias"),
        "not-an-attention-key": lambda s: s.__setitem__("conv_in.query.weight", s.pop("conv_in.weight")),
        "shape": lambda s: s.__setitem__("conv_out.bias", torch.zeros(4)),
        "params": lambda s: None,
    }
    _rewrite(folder, changes[case])
    monkeypatch.setenv("HARNESS_CATALOG", site(tmp_path, folder, n + (1 if case == "params" else 0))["HARNESS_CATALOG"])
    want = {"unexpected": "unexpected 1: conv_in.extra", "missing": "missing 1: conv_out.bias",
            "not-an-attention-key": "unexpected 1: conv_in.query.weight",
            "shape": "size mismatch for conv_out.bias",
            "params": f"not the catalogued {n + 1:,}"}[case]
    cat = load_catalog()
    with pytest.raises(AssetError) as run_err:  # the run's loader of a catalogued backbone
        load_catalogued(cat.assets["old"], cat.archs["tiny-ddpm"], folder)
    assert want in str(run_err.value)
    res = stage(tmp_path / "assets", ["old"], out=lambda _: None)[0]
    assert res.status == "bad" and want in res.detail, res.detail
    if case == "not-an-attention-key":  # both halves: the renamed key unexpected, the original missing
        assert "missing 1: conv_in.weight" in res.detail


def test_held_to_the_recorded_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """After staging, the weights and the config (which decides the architecture) are held to
    their recorded sha256, even at an unchanged size and mtime."""
    from harness.staging import stage

    folder = tmp_path / "assets" / "models" / "old"
    unet = old_ddpm_folder(folder)
    monkeypatch.setenv("HARNESS_CATALOG", site(tmp_path, folder, sum(p.numel() for p in unet.parameters()))
                       ["HARNESS_CATALOG"])
    assert stage(tmp_path / "assets", ["old"], out=lambda _: None)[0].status == "ok"
    config = folder / "config.json"
    text = config.read_text()
    config.write_text(text.replace('"flip_sin_to_cos": false', '"flip_sin_to_cos": true '))
    assert len(config.read_text()) == len(text)
    with pytest.raises(AssetError, match="config.json: sha256 .* is not the expected"):
        load_denoiser("asset:old", tmp_path / "assets")
    config.write_text(text)
    _rewrite(folder, lambda s: s["conv_out.bias"].add_(1))
    with pytest.raises(AssetError, match=f"{WEIGHTS}: sha256 .* is not the expected"):
        load_denoiser("asset:old", tmp_path / "assets")


def test_bin_weights(tmp_path: Path) -> None:
    """A `.bin` folder loads (diffusers reads it with weights_only=True, and so do we first); a
    `.bin` holding anything but tensors is refused by our safe read, with torch's whole reason."""
    folder = tmp_path / "f"
    unet = old_ddpm_folder(folder)
    state = load_file(str(folder / WEIGHTS))
    (folder / WEIGHTS).unlink()
    torch.save(state, folder / "diffusion_pytorch_model.bin")
    assert max_diff(load_denoiser(str(folder), tmp_path), unet) <= TOL
    torch.save({**state, "evil": Path("/")}, folder / "diffusion_pytorch_model.bin")
    with pytest.raises(AssetError, match="weights_only=True") as e:
        load_denoiser(str(folder), tmp_path)
    assert "PosixPath" in str(e.value)  # torch's reason, not cut to its first line


def test_sharded_folders_are_refused(tmp_path: Path) -> None:
    folder = tmp_path / "f"
    old_ddpm_folder(folder)
    (folder / f"{WEIGHTS}.index.json").write_text("{}")
    with pytest.raises(AssetError, match="sharded weights"):
        load_denoiser(str(folder), tmp_path)


def test_bundled_catalogue_diffusers_entries_use_this_loader() -> None:
    cat = load_catalog()
    assert {n for n, a in cat.assets.items() if a.format == "diffusers"} >= {"ddpm-cifar10-32", "ddpm-celebahq-256"}


def test_loaded_weights_do_not_follow_the_file(tmp_path: Path) -> None:
    """The weights are read into memory, not left mapped from the file (diffusers' default): a
    file rewritten in place after its sha256 was checked must not change a loaded model."""
    from safetensors.torch import save

    folder = tmp_path / "f"
    unet = old_ddpm_folder(folder)
    eps = load_denoiser(str(folder), tmp_path)
    before = {k: v.clone() for k, v in eps.state_dict().items()}
    data = (folder / WEIGHTS).read_bytes()
    other = save({k: v + 1 for k, v in load_file(str(folder / WEIGHTS)).items()})
    assert len(other) == len(data)
    with open(folder / WEIGHTS, "r+b") as fh:
        fh.write(other)
    assert all(torch.equal(before[k], v) for k, v in eps.state_dict().items())
    assert max_diff(eps, unet) == 0.0
