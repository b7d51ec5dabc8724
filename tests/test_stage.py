"""`harness stage` and the asset checks of plan/run/submit, on a tiny asset directory built in
the real on-disk formats: a CIFAR-10 test_batch pickle, a RobustBench-wrapped WRN-28-10 `.pt`
and a diffusers UNet2DModel folder, catalogued by a site catalogue ($HARNESS_CATALOG)."""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from conftest import ROOT, harness
from harness.catalog import LOCK, load_catalog
from harness.errors import AssetError
from harness.fsutil import file_digest
from harness.models.denoisers import load_denoiser
from harness.models.wideresnet import wrn, wrn_28_10
from test_datasets import write_cifar

TINY_UNET = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=1,
                 block_out_channels=(16, 32), down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                 up_block_types=("AttnUpBlock2D", "UpBlock2D"), norm_num_groups=8)


def tiny_unet_folder(folder: Path, seed: int = 0) -> int:
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(**TINY_UNET)
    unet.save_pretrained(str(folder), safe_serialization=True)
    return sum(p.numel() for p in unet.parameters())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An asset directory and the site catalogue describing it (built once: the WRN is 146 MB)."""
    base = tmp_path_factory.mktemp("site")
    root = base / "assets"
    batch = root / "cifar10" / "cifar-10-batches-py" / "test_batch"
    write_cifar(batch, 8, {"labels": [3, 1, 4, 1, 5, 9, 2, 6]}, 0, 4)
    torch.manual_seed(0)
    net = wrn_28_10()
    (root / "models").mkdir(parents=True)
    torch.save({"state_dict": {"module." + k: v for k, v in net.net.state_dict().items()}},
               root / "models" / "wrn.pt")
    unet_params = tiny_unet_folder(root / "models" / "tiny-ddpm")
    real = yaml.safe_load((ROOT / "harness" / "assets" / "catalog.yaml").read_text())
    catalog = {
        "architectures": {
            "wrn-28-10": real["architectures"]["wrn-28-10"],
            "tiny-ddpm": {"build": "harness.models.digits:make_unet", "params": unet_params,
                          "input": [3, 32, 32], "gflops": 0.01, "denoiser": True},
        },
        "assets": {
            "cifar10": {"kind": "dataset", "path": "cifar10", "published": "the fixture",
                        "files": {"cifar-10-batches-py/test_batch": {"md5": file_digest(batch, "md5")}}},
            "clf": {"kind": "classifier", "arch": "wrn-28-10", "path": "models/wrn.pt",
                    "published": "https://example.invalid/wrn.pt"},
            "den": {"kind": "denoiser", "arch": "tiny-ddpm", "format": "diffusers",
                    "path": "models/tiny-ddpm", "published": "https://example.invalid/tiny-ddpm"},
        },
    }
    cat_path = base / "site-catalog.yaml"
    cat_path.write_text(yaml.safe_dump(catalog))
    grid = base / "site.yaml"
    grid.write_text(f"""\
sweep: site
assets: {root}
dataset: {{name: cifar10, params: {{root: "asset:cifar10"}}}}
classifier: {{name: wrn-28-10, params: {{path: "asset:clf"}}}}
purifier:
  - none
  - {{name: lorid, params: {{denoiser: "asset:den", t_s: 3, loops: 2}}}}
attack:
  - none
  - {{name: pgd, params: {{norm: linf, eps: 0.03, steps: 1, step_size: 0.03, eot: 1}}}}
examples: 4
batch_size: 4
shard_size: 4
""")
    return {"base": base, "root": root, "catalog": cat_path, "grid": grid, "net": net,
            "env": {**os.environ, "HARNESS_CATALOG": str(cat_path), "OMP_NUM_THREADS": "1"}}


def test_stage_verifies_and_records(site: dict) -> None:
    r = harness("stage", str(site["root"]), cwd=site["base"], env=site["env"])
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.split()[:1] in (["ok"], ["bad"], ["missing"])}
    assert lines["cifar10"].startswith("ok") and lines["den"].startswith("ok")
    assert lines["clf"].startswith("ok") and "36,479,194 parameters, unpinned: sha256 recorded" in lines["clf"]
    lock = json.loads((site["root"] / LOCK).read_text())
    wrn_file = site["root"] / "models" / "wrn.pt"
    assert lock["clf"]["files"][""]["sha256"] == file_digest(wrn_file)
    assert lock["clf"]["files"][""]["size"] == wrn_file.stat().st_size
    assert set(lock["den"]["files"]) == {"config.json", "diffusion_pytorch_model.safetensors"}


def test_run_resolves_assets_and_refuses_a_changed_one(site: dict, tmp_path: Path) -> None:
    env = site["env"]
    assert harness("stage", str(site["root"]), cwd=site["base"], env=env).returncode == 0
    r = harness("run", "--grid", str(site["grid"]), "--jobs", str(tmp_path / "jobs"),
                "--results", str(tmp_path / "results"), cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    from analysis.aggregate import load_results

    df = load_results(tmp_path / "results" / "site")  # rows + each cell's _cell.json (assets)
    assert len(df) == 4 * 4  # 2 purifiers × 2 attacks × 4 examples, one evaluation run
    assert sorted(df["example"].unique()) == [0, 1, 2, 3]
    plan = pd.read_parquet(tmp_path / "jobs" / "site" / "plan.parquet")
    assert set(plan["assets_dir"]) == {str(site["root"])}
    wrn_sha = file_digest(site["root"] / "models" / "wrn.pt")
    assert json.loads(plan["asset_sha256"].iloc[0])["asset:clf"] == {"": wrn_sha}
    # every cell records the sha256 of each catalogued file it used
    used = {p: json.loads(v) for p, v in df.groupby("purifier")["assets"].first().items()}
    assert used["none"]["asset:clf"] == {"": wrn_sha} and "asset:den" not in used["none"]
    assert set(used["lorid"]["asset:den"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    # The checkpoint changes after staging: run and submit stop before writing anything.
    wrn_file = site["root"] / "models" / "wrn.pt"
    before = wrn_file.read_bytes()
    try:
        wrn_file.write_bytes(before + b"\0")
        for cmd in (("run", "--results", str(tmp_path / "results2")), ("submit", "--profile", "local")):
            r = harness(*cmd, "--grid", str(site["grid"]), "--jobs", str(tmp_path / "jobs2"),
                        cwd=tmp_path, env=env)
            assert r.returncode == 2, r.stderr
            assert "asset:clf: changed since `harness stage` verified it" in r.stderr
            assert not (tmp_path / "jobs2").exists() and not (tmp_path / "results2").exists()
    finally:
        wrn_file.write_bytes(before)
        harness("stage", str(site["root"]), cwd=site["base"], env=env)


def test_worker_refuses_a_replaced_unpinned_checkpoint(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same size and mtime, other bytes: only the sha256 recorded at stage time can tell."""
    from harness import registry
    from harness.catalog import resolve_params

    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    assert harness("stage", str(site["root"]), cwd=site["base"], env=site["env"]).returncode == 0
    wrn_file = site["root"] / "models" / "wrn.pt"
    before, st = wrn_file.read_bytes(), wrn_file.stat()
    try:
        torch.manual_seed(1)
        other = wrn_28_10()
        torch.save({"state_dict": {"module." + k: v for k, v in other.net.state_dict().items()}}, wrn_file)
        assert wrn_file.stat().st_size == st.st_size
        os.utime(wrn_file, ns=(st.st_atime_ns, st.st_mtime_ns))
        spec = registry.get("classifier", "wrn-28-10")
        params = resolve_params(spec, {"path": "asset:clf", "sha256": "", "classes": 10}, site["root"])
        assert params["path"] == str(wrn_file) and len(params["sha256"]) == 64
        with pytest.raises(AssetError, match="sha256 mismatch"):
            spec.load()(params)
    finally:
        wrn_file.write_bytes(before)
        os.utime(wrn_file, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_stage_reports_bad_and_missing(site: dict, tmp_path: Path) -> None:
    env = site["env"]
    root = tmp_path / "assets"
    batch = root / "cifar10" / "cifar-10-batches-py" / "test_batch"
    write_cifar(batch, 8, {"labels": [0] * 8}, 1, 4)  # another file than the catalogued one
    (root / "models").mkdir()
    torch.save(wrn(16, 4).net.state_dict(), root / "models" / "wrn.pt")  # wrong architecture
    r = harness("stage", str(root), cwd=tmp_path, env=env)
    assert r.returncode == 2
    out = {ln.split()[1]: ln for ln in r.stdout.splitlines() if ln.split()[:1] in (["ok"], ["bad"], ["missing"])}
    assert out["cifar10"].startswith("bad") and "md5 is not the published" in out["cifar10"]
    assert out["clf"].startswith("bad") and "does not fit wrn-28-10" in out["clf"] and "missing" in out["clf"]
    assert out["den"].startswith("missing") and "published: https://example.invalid/tiny-ddpm" in out["den"]
    lock = json.loads((root / LOCK).read_text())
    assert lock["clf"]["status"] == "bad" and "den" not in lock
    # a grid that needs the bad asset is refused at plan time, naming it
    r = harness("plan", "--grid", str(site["grid"]), "--assets", str(root), "--check-assets",
                "--jobs", str(tmp_path / "jobs"), cwd=tmp_path, env=env)
    assert r.returncode == 2 and "asset:clf: `harness stage` found it bad" in r.stderr
    assert "asset:den: missing" in r.stderr and not (tmp_path / "jobs").exists()


def test_stage_never_touches_the_network(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.staging import stage

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    lines: list[str] = []
    results = stage(site["root"], out=lines.append)
    assert {r.name: r.status for r in results if r.name in ("cifar10", "clf", "den")} == \
        {"cifar10": "ok", "clf": "ok", "den": "ok"}, lines


def test_local_diffusers_folder_denoiser(tmp_path: Path) -> None:
    folder = tmp_path / "unet"
    tiny_unet_folder(folder)
    eps = load_denoiser(str(folder), tmp_path)
    x = torch.randn(2, 3, 32, 32)
    out = eps(x, torch.tensor([5, 5]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not any(p.requires_grad for p in eps.parameters())
    (folder / "scheduler_config.json").write_text(json.dumps({"beta_schedule": "squaredcos_cap_v2",
                                                              "num_train_timesteps": 1000}))
    with pytest.raises(AssetError, match="squaredcos_cap_v2"):
        load_denoiser(str(folder), tmp_path)
    (tmp_path / "other.pt").write_bytes(b"x")
    with pytest.raises(AssetError, match="diffusers UNet2DModel folder"):
        load_denoiser(str(tmp_path / "other.pt"), tmp_path)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "celebahq", "imagenet"])
def test_paper_grid_plans_and_submit_names_missing_assets(name: str, tmp_path: Path) -> None:
    grid = ROOT / "grids" / f"{name}.yaml"
    empty = tmp_path / "no-assets"
    empty.mkdir()
    r = harness("plan", "--grid", str(grid), "--assets", str(empty), "--jobs", str(tmp_path / "jobs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "GPU-hours" in r.stdout and "gh200" in r.stdout
    total = next(ln for ln in r.stdout.splitlines() if ln.startswith("all "))
    assert float(total.split()[-1].replace(",", "")) > 0
    expected = sorted(n for n in load_catalog().assets if f'"asset:{n}"' in grid.read_text())
    r = harness("submit", "--grid", str(grid), "--assets", str(empty), "--jobs", str(tmp_path / "jobs2"), cwd=tmp_path)
    assert r.returncode == 2
    named = sorted(ln.split(":")[1] for ln in r.stderr.splitlines() if ln.strip().startswith("asset:"))
    assert named == expected and f"{len(expected)} asset problem(s)" in r.stderr
    assert "published:" in r.stderr
    assert not (tmp_path / "jobs2").exists()


def test_guided_diffusion_checkpoint_purifies(tmp_path: Path) -> None:
    """A guided-diffusion checkpoint (tiny configuration, original key layout) loads through the
    denoiser loader with its sha256 checked and drives a real purification round."""
    from harness.models.bundled import sha256
    from harness.models.denoisers import load_guided
    from harness.models.guided_unet import GuidedUNetConfig, guided_unet
    from harness.purify.pipeline import Purifier, PurifierConfig
    from harness.rng import ExampleNoise

    cfg = GuidedUNetConfig(image_size=16, num_channels=32, num_res_blocks=1, channel_mult=(1, 2),
                           attention_resolutions=(8,), num_head_channels=8)
    torch.manual_seed(0)
    net = guided_unet(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.05)
    path = tmp_path / "guided.pt"
    torch.save(net.state_dict(), path)
    eps = load_guided(path, sha256(path), config=cfg)
    x = torch.rand(2, 3, 16, 16)
    out = eps(x * 2 - 1, torch.tensor([4, 4]))
    assert out.shape == x.shape
    assert torch.allclose(out, net(x * 2 - 1, torch.tensor([4, 4]))[:, :3])
    purifier = Purifier(PurifierConfig(rounds=[4, 4]), eps)
    with torch.no_grad():
        y = purifier(x, ExampleNoise([1, 2]))
    assert y.shape == x.shape and purifier.nfe == 8 and 0 <= float(y.min()) and float(y.max()) <= 1
    assert not torch.equal(y, x)
    with pytest.raises(AssetError, match="sha256"):
        load_guided(path, "0" * 64, config=cfg)


def test_present_but_unstaged_is_refused(site: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.catalog import needs, problems
    from harness.grid import load_grid

    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    root = tmp_path / "assets"
    write_cifar(root / "cifar10" / "cifar-10-batches-py" / "test_batch", 8, {"labels": [0] * 8}, 0, 4)
    bad = problems(needs(load_grid(site["grid"]).cells), root)
    assert bad[0].startswith("asset:cifar10: present but not verified yet: run `harness stage")
    assert [b.split(":")[1] for b in bad[1:]] == ["clf", "den"] and all("missing" in b for b in bad[1:])


def test_google_ddpm_cifar10_folder_as_published(tmp_path: Path) -> None:
    """google/ddpm-cifar10-32's folder (config.json, scheduler_config.json and weights as the hub
    publishes them) loads strictly into a 35,746,307-parameter noise predictor."""
    from safetensors.torch import save_file

    from harness.models.ddpm_cifar10 import DDPM_CIFAR10_CONFIG, ddpm_cifar10_unet

    folder = tmp_path / "ddpm-cifar10-32"
    folder.mkdir()
    config = {"_class_name": "UNet2DModel", "_diffusers_version": "0.0.4",
              **{k: list(v) if isinstance(v, tuple) else v for k, v in DDPM_CIFAR10_CONFIG.items()}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "scheduler_config.json").write_text(json.dumps(
        {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
         "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_small"}))
    torch.manual_seed(0)
    unet = ddpm_cifar10_unet().eval()
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    eps = load_denoiser(str(folder), tmp_path)
    assert sum(p.numel() for p in eps.parameters()) == 35_746_307
    x, t = torch.randn(1, 3, 32, 32), torch.tensor([10])
    with torch.no_grad():
        assert torch.equal(eps(x, t), unet(x, t).sample)


def test_unstaged_catalogued_asset_is_never_loaded(site: dict, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Loaders refuse a catalogued asset `harness stage` never verified (the sbatch route runs no
    submission checks), and hold a planned asset to the plan's sha256 even after a re-stage."""
    import shutil

    from harness import registry
    from harness.catalog import pins, resolve_params
    from harness.grid import load_grid

    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    root = tmp_path / "assets"
    shutil.copytree(site["root"] / "models" / "tiny-ddpm", root / "models" / "tiny-ddpm")
    with pytest.raises(AssetError, match="not verified yet"):
        load_denoiser("asset:den", root)
    shutil.copytree(site["root"] / "cifar10", root / "cifar10")
    (root / "models" / "wrn.pt").write_bytes((site["root"] / "models" / "wrn.pt").read_bytes())
    lines: list[str] = []
    from harness.staging import stage

    stage(root, out=lines.append)
    planned = pins(load_grid(site["grid"]).cells, root)
    assert load_denoiser("asset:den", root, planned) is not None
    # the checkpoint is replaced and re-staged mid-sweep: the plan's record still rules
    torch.manual_seed(3)
    torch.save({"state_dict": {"module." + k: v for k, v in wrn_28_10().net.state_dict().items()}},
               root / "models" / "wrn.pt")
    stage(root, out=lines.append)
    spec = registry.get("classifier", "wrn-28-10")
    params = resolve_params(spec, {"path": "asset:clf", "sha256": "", "classes": 10}, root, planned)
    with pytest.raises(AssetError, match="sha256 mismatch"):
        spec.load()(params)
    fresh = resolve_params(spec, {"path": "asset:clf", "sha256": "", "classes": 10}, root)
    assert spec.load()(fresh) is not None  # a new plan takes the re-staged file


def test_stage_selection_schedule_and_broken_lock(site: dict, tmp_path: Path) -> None:
    env = site["env"]
    root = tmp_path / "assets"
    (root / "models").mkdir(parents=True)
    tiny_unet_folder(root / "models" / "tiny-ddpm")
    (root / LOCK).write_text("{not json")
    r = harness("stage", str(root), "--only", "den", "--only", "clf", cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stdout  # clf was asked for by name and is missing
    assert "warning:" in r.stdout and "starting a new record" in r.stdout
    assert [ln.split()[:2] for ln in r.stdout.splitlines() if ln.split()[:1] in (["ok"], ["missing"])] == \
        [["ok", "den"], ["missing", "clf"]]
    assert json.loads((root / LOCK).read_text())["den"]["status"] == "ok"
    # a grid naming no catalogued asset stages nothing; its missing local path fails the stage
    grid = tmp_path / "local.yaml"
    grid.write_text("sweep: l\ndataset: {name: cifar10, params: {root: /nonexistent/cifar}}\n"
                    "classifier: digits-cnn\npurifier: none\nattack: none\nexamples: 2\n")
    r = harness("stage", str(root), "--grid", str(grid), cwd=tmp_path, env=env)
    assert r.returncode == 2 and "/nonexistent/cifar: missing" in r.stdout
    assert "0 ok, 0 missing, 0 bad" in r.stdout
    # a backbone trained with another schedule: stage refuses what every load would refuse
    (root / "models" / "tiny-ddpm" / "scheduler_config.json").write_text(
        json.dumps({"beta_schedule": "squaredcos_cap_v2"}))
    r = harness("stage", str(root), "--only", "den", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "squaredcos_cap_v2" in r.stdout


def test_old_plan_rows_without_asset_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.worker import Assets

    monkeypatch.setenv("HARNESS_ASSETS", str(tmp_path))
    a = Assets.for_plan_row({"row": 0, "cell": "x"})
    assert a.root == tmp_path and a.pinned == {}


def test_site_catalogue_adds_to_the_bundled_one(site: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.grid import load_grid

    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    cat = load_catalog()
    assert {"clf", "den", "wrn-28-10-cifar10", "guided-diffusion-256-uncond"} <= set(cat.assets)
    assert len(load_grid(ROOT / "grids" / "cifar10.yaml").cells) > 100


def test_imagenet_layout_files_are_recorded_and_held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ImageNet's optional classes.txt decides the labels: absent is fine, present is recorded
    by the stage, and a later edit (or a file that appears after staging) is refused at load."""
    from harness import registry
    from harness.catalog import resolve_params
    from harness.staging import stage
    from test_datasets import imagenet_folders

    real = yaml.safe_load((ROOT / "harness" / "assets" / "catalog.yaml").read_text())
    inet = {**real["assets"]["imagenet"], "images": {"under": "val", "count": 4}}
    (tmp_path / "cat.yaml").write_text(yaml.safe_dump({"architectures": {}, "assets": {"imagenet": inet}}))
    monkeypatch.setenv("HARNESS_CATALOG", str(tmp_path / "cat.yaml"))
    root = tmp_path / "assets"
    imagenet_folders(root / "imagenet", ["n01443537", "n01440764"], 2)
    spec = registry.get("dataset", "imagenet")
    params = {"root": "asset:imagenet", "size": 32}

    def staged_ok() -> bool:
        return [r.status for r in stage(root, ["imagenet"], out=lambda _: None)] == ["ok"]

    assert staged_ok()
    assert len(spec.load()(resolve_params(spec, params, root))) == 4  # no classes.txt: fine
    (root / "imagenet" / "classes.txt").write_text("n01443537\nn01440764\n")
    with pytest.raises(AssetError, match="recorded no classes.txt"):
        resolve_params(spec, params, root)
    assert staged_ok()
    assert len(spec.load()(resolve_params(spec, params, root))) == 4
    (root / "imagenet" / "classes.txt").write_text("n01440764\nn01443537\n")  # labels swapped
    with pytest.raises(AssetError, match="changed since it was verified"):
        resolve_params(spec, params, root)


@pytest.mark.parametrize("variant", ["robustbench-model-prefix", "no-num-batches-tracked", "extra-key"])
def test_classifier_stage_ok_exactly_when_the_run_loads(variant: str, site: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stage builds the classifier through the run's plugin (`zoo.build_classifier`) and reads
    the file as the run does, so "ok" means the run loads it, and a refusal means it would not."""
    from harness import registry
    from harness.catalog import resolve_params
    from harness.staging import stage

    monkeypatch.setenv("HARNESS_CATALOG", str(site["catalog"]))
    state = dict(site["net"].net.state_dict())
    if variant == "robustbench-model-prefix":  # as RobustBench's own files hold it, unwrapped by its loader
        state = {"model." + k: v for k, v in state.items()}
    elif variant == "no-num-batches-tracked":  # torch's strict load accepts it (BatchNorm's old version)
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    else:
        state["fc.extra"] = torch.zeros(1)
    root = tmp_path / "assets"
    (root / "models").mkdir(parents=True)
    torch.save({"state_dict": state}, root / "models" / "wrn.pt")
    staged = stage(root, ["clf"], out=lambda _: None)[0]
    spec = registry.get("classifier", "wrn-28-10")
    if variant == "extra-key":
        assert staged.status == "bad" and "unexpected 1: fc.extra" in staged.detail, staged.detail
        params = resolve_params(spec, {"path": str(root / "models" / "wrn.pt"), "sha256": "", "classes": 10}, root)
        with pytest.raises(AssetError, match="unexpected 1: fc.extra"):
            spec.load()(params)
        return
    assert staged.status == "ok", staged.detail
    params = resolve_params(spec, {"path": "asset:clf", "sha256": "", "classes": 10}, root)
    model = spec.load()(params)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), site["net"].eval()(x))
