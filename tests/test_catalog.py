"""The asset catalogue: architectures with their published sizes, asset references in grids,
and the plan's cost estimate built from them."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from harness import registry
from harness.catalog import classifier_arch, load_catalog, needs, problems
from harness.errors import GridError
from harness.grid import load_grid
from harness.plan import cost_table, make_plan
from harness.staging import build_on_meta, count_params

from conftest import ROOT

CAT = load_catalog()

# The numbers the issue and the papers state, independent of the catalogue file.
PUBLISHED = {"ddpm-cifar10-32": 35_746_307, "wrn-28-10": 36_479_194, "resnet-50": 25_557_032,
             "guided-256-uncond": 552_814_086, "wrn-70-16-dm": 266_796_506}


@pytest.mark.parametrize("name", sorted(CAT.archs))
def test_architecture_size_and_flops(name: str) -> None:
    """Built on the meta device (no memory), each architecture has the catalogued parameter
    count and forward FLOPs, which the plan's GPU-hour estimate reads."""
    arch = CAT.archs[name]
    model = build_on_meta(arch)
    assert next(model.parameters()).device.type == "meta"
    assert count_params(model) == arch.params
    assert PUBLISHED.get(name, arch.params) == arch.params
    with torch.device("meta"):
        x = torch.zeros((1, *arch.input))
        with FlopCounterMode(display=False) as fc:
            model(x, torch.zeros(1, dtype=torch.long)) if arch.denoiser else model(x)
    assert fc.get_total_flops() / 1e9 == pytest.approx(arch.gflops, rel=0.01)


def test_design_doc_macs() -> None:
    # shared/design/lorid-method.md: 6.22 GMAC (DDPM CIFAR-10), 1,120 GMAC (guided-diffusion 256)
    assert CAT.archs["ddpm-cifar10-32"].gflops / 2 == pytest.approx(6.22, rel=0.01)
    assert CAT.archs["guided-256-uncond"].gflops / 2 == pytest.approx(1120, rel=0.01)


def test_catalogue_is_coherent() -> None:
    for name, asset in CAT.assets.items():
        assert asset.published, name
        if asset.kind == "classifier":
            arch = CAT.archs[asset.arch]
            spec = registry.get("classifier", arch.plugin)  # the plugin exists
            assert set(arch.plugin_params) <= set(spec.params), name
        if asset.kind == "denoiser":
            assert CAT.archs[asset.arch].denoiser, name
    # torchvision's file name carries the first 8 hex digits of the file's sha256
    r50 = CAT.assets["resnet-50-imagenet"]
    assert r50.sha256_prefix and r50.sha256_prefix in r50.path


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "g.yaml"
    p.write_text(text)
    return p


BASE = """\
sweep: refs
dataset: {name: cifar10, params: {root: "asset:cifar10"}}
classifier: {name: wrn-28-10, params: {path: "asset:wrn-28-10-cifar10"}}
purifier: {name: lorid, params: {denoiser: "asset:ddpm-cifar10-32", t_s: 0.1, loops: 3}}
attack: none
examples: 8
"""


def test_asset_references_validate(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, BASE))
    kinds = [(n.kind, n.value) for n in needs(grid.cells)]
    assert kinds == [("dataset", "asset:cifar10"), ("classifier", "asset:wrn-28-10-cifar10"),
                     ("denoiser", "asset:ddpm-cifar10-32")]
    cases = {
        '"asset:cifar10"}}\nclassifier': ('"asset:cifar-10"}}\nclassifier', "dataset.params.root"),
        '"asset:wrn-28-10-cifar10"': ('"asset:cifar10"', "classifier.params.path"),
        '"asset:ddpm-cifar10-32"': ('"asset:guided-diffusion-25"', "purifier.params.denoiser"),
    }
    for old, (new, key) in cases.items():
        with pytest.raises(GridError) as e:
            load_grid(write(tmp_path, BASE.replace(old, new)))
        assert e.value.key == key and "allowed: asset:" in e.value.message


def test_classifier_asset_must_fit_the_plugin(tmp_path: Path) -> None:
    text = BASE.replace('"asset:wrn-28-10-cifar10"', '"asset:wrn-70-16-cifar10-linf"')
    with pytest.raises(GridError, match="wrn-70-16-dm checkpoint: it needs classifier 'wrn-70-16'"):
        load_grid(write(tmp_path, text))
    c100 = BASE.replace('"asset:wrn-28-10-cifar10"', '"asset:wrn-28-10-cifar100"')
    with pytest.raises(GridError, match="with {'classes': 100}"):
        load_grid(write(tmp_path, c100))
    load_grid(write(tmp_path, c100.replace('"asset:wrn-28-10-cifar100"}',
                                           '"asset:wrn-28-10-cifar100", classes: 100}')))


def test_local_paths_are_needs_too(tmp_path: Path) -> None:
    text = BASE.replace('"asset:wrn-28-10-cifar10"', str(tmp_path / "mine.pt"))
    grid = load_grid(write(tmp_path, text))
    bad = problems(needs(grid.cells), tmp_path / "assets")
    assert len(bad) == 3
    assert any(str(tmp_path / "mine.pt") in b and "no such file" in b for b in bad)
    assert any("asset:cifar10: missing" in b and "cs.toronto.edu" in b for b in bad)


def test_cost_estimate_from_the_catalogue(tmp_path: Path) -> None:
    grid = load_grid(write(tmp_path, BASE.replace("attack: none", "attack: [none, {name: pgd, params: "
                                                  "{eps: 0.03, steps: 10, step_size: 0.01, eot: 2}}]")))
    plan = make_plan(grid, tmp_path)
    assert set(plan["assets_dir"]) == {str(tmp_path)}
    den, cls = CAT.archs["ddpm-cifar10-32"].gflops, CAT.archs["wrn-28-10"].gflops
    per_pass = 300 * den + cls  # t_s 0.1 of T=1000 → 100 steps × 3 loops
    passes = {"none": 1 * 2, "pgd": 1 * 2 + 10 * 2 * 2}  # eval runs ×2, + steps × eot × 2
    for _, row in plan.iterrows():
        assert row["gflop_total"] == pytest.approx(per_pass * 8 * passes[row["attack"]])
    table = cost_table(plan, gpu_tflops=100)
    hours = plan["gflop_total"].sum() / 1e3 / 100 / 3600
    assert f"{hours:,.1f}" in table.splitlines()[-1]
    # an architecture the catalogue does not know (a local diffusers folder) gives "?", not 0
    local = load_grid(write(tmp_path, BASE.replace('"asset:ddpm-cifar10-32"', str(tmp_path))))
    lp = make_plan(local)
    assert math.isnan(lp["gflop_total"].iloc[0])
    assert cost_table(lp, 100).splitlines()[-1].split()[-2:] == ["?", "?"]


def test_classifier_arch_matches_the_most_specific() -> None:
    assert classifier_arch({"name": "wrn-28-10", "params": {"classes": 100}}).name == "wrn-28-10-c100"
    assert classifier_arch({"name": "wrn-28-10", "params": {"classes": 10}}).name == "wrn-28-10"
    assert classifier_arch({"name": "digits-cnn", "params": {}}).name == "digits-cnn"


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "celebahq", "imagenet"])
def test_paper_grid_loads(name: str) -> None:
    grid = load_grid(ROOT / "grids" / f"{name}.yaml")
    assert grid.examples == 512 and grid.seeds == [0, 1, 2] and grid.profile == "gh200"
    purifiers = {c["purifier"]["name"] for c in grid.cells}
    assert {"none", "tucker", "diffpure", "multistep", "lorid"} <= purifiers
    attacks = {(c["attack"]["name"], c["attack"]["params"].get("version"),
                c["attack"]["params"].get("gradient")) for c in grid.cells}
    assert {("autoattack", "standard", "exact"), ("autoattack", "rand", "exact"), ("pgd", None, "exact"),
            ("pgd", None, "greybox"), ("bpda", None, None), ("square", None, None), ("none", None, None)} <= attacks
    lorid = {(c["purifier"]["params"]["t_s"], c["purifier"]["params"]["loops"], c["purifier"]["params"]["tucker"],
              c["purifier"]["params"]["tucker_rank"]) for c in grid.cells if c["purifier"]["name"] == "lorid"}
    assert len({x[0] for x in lorid}) >= 2 and len({x[1] for x in lorid}) >= 2
    assert {"none", "pre", "every_loop"} <= {x[2] for x in lorid} and len({x[3] for x in lorid}) >= 2
    eps = {c["attack"]["params"]["eps"] for c in grid.cells if c["attack"]["params"].get("norm") == "linf"}
    assert eps == {{"imagenet": 4 / 255, "celebahq": 16 / 255}.get(name, 8 / 255)}
    # every named asset is catalogued and needed
    assert all(n.value.startswith("asset:") for n in needs(grid.cells))


def test_cell_consistency_with_the_catalogue(tmp_path: Path) -> None:
    """Plan-time: class count, the data set a root is laid out for, the denoiser's resolution."""
    cases = [
        (BASE.replace('"asset:wrn-28-10-cifar10"}', '"asset:wrn-28-10-cifar10", classes: 100}'),
         "wrn-28-10 checkpoint: it needs classifier 'wrn-28-10' with {'classes': 10}"),
        (BASE.replace("name: cifar10, params: {root:", "name: cifar100, params: {root:"),
         "laid out for dataset 'cifar10', not 'cifar100'"),
        (BASE.replace('"asset:ddpm-cifar10-32"', '"asset:guided-diffusion-256-uncond"'),
         "works on 256x256 images; dataset 'cifar10' gives 32x32"),
    ]
    for text, message in cases:
        with pytest.raises(GridError) as e:
            load_grid(write(tmp_path, text))
        assert message in e.value.message


def test_report_warns_when_a_cell_mixes_asset_files(tmp_path: Path) -> None:
    import pandas as pd

    from analysis.report import describe

    df = pd.DataFrame({"cell": ["a", "a", "b"], "sweep": "s", "source_file": ["f1", "f2", "f3"],
                       "assets": ['{"asset:x": {"": "1"}}', '{"asset:x": {"": "2"}}', '{}']})
    summary = pd.DataFrame({"complete": [True, True]})
    text = describe(df, summary, tmp_path)
    assert "WARNING: 1 cell(s) mix rows computed from different asset files" in text and ": a" in text
    assert "WARNING" not in describe(df[df.cell == "b"], summary, tmp_path)


# A site catalogue with one misspelt or unknown key where each kind of mapping can hold one.
_SITE_ASSET = {"kind": "classifier", "arch": "wrn-28-10", "path": "models/mine.pt", "published": "mine"}
_BAD_KEYS = {
    "asset": ({"assets": {"mine": {**_SITE_ASSET, "sha265": "0" * 64}}}, "assets.mine", "sha265"),
    "arch": ({"architectures": {"mine": {"build": "m:f", "params": 1, "input": [1], "gflops": 1.0,
                                         "parms": 2}}}, "architectures.mine", "parms"),
    "file": ({"assets": {"ds": {"kind": "dataset", "path": "ds", "published": "x",
                                "files": {"a/b.txt": {"md5": "0" * 32, "shaa256": "1"}}}}},
             "assets.ds.files.a/b.txt", "shaa256"),
    "images": ({"assets": {"ds": {"kind": "dataset", "path": "ds", "published": "x",
                                  "images": {"under": "val", "cont": 3}}}}, "assets.ds.images", "cont"),
    "top": ({"asset": {"mine": _SITE_ASSET}}, "top level", "asset"),
}


@pytest.mark.parametrize("case", sorted(_BAD_KEYS))
def test_unknown_catalogue_keys_are_refused(case: str, tmp_path: Path) -> None:
    """`sha265:` for `sha256:` would leave the asset unpinned and trusted: every command that reads
    the catalogue refuses it (exit 2), naming the file, the entry, the key and the allowed keys."""
    import os

    import yaml

    from conftest import TINY_GRID, harness

    raw, entry, key = _BAD_KEYS[case]
    site = tmp_path / "site-catalog.yaml"
    site.write_text(yaml.safe_dump(raw))
    env = {**os.environ, "HARNESS_CATALOG": str(site)}
    (tmp_path / "tiny.yaml").write_text(TINY_GRID)
    for cmd in (("stage", "--list"), ("plan", "--grid", "tiny.yaml", "--jobs", str(tmp_path / "jobs"))):
        r = harness(*cmd, cwd=tmp_path, env=env)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        assert f"{site}: {entry}: unknown key(s) '{key}'; allowed: " in r.stderr, (cmd, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "jobs").exists()
    if case == "asset":
        assert "allowed: kind, path, published, arch, format, files, images, md5, sha256, sha256_prefix, plugin" \
            in r.stderr


def test_catalogue_values_checked_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A misspelt format, or a classifier architecture no plugin builds, is refused as well."""
    import yaml

    from harness.errors import UsageError

    site = tmp_path / "site.yaml"
    monkeypatch.setenv("HARNESS_CATALOG", str(site))
    for asset, message in (({**_SITE_ASSET, "format": "difusers"}, "assets.mine.format: 'difusers'"),
                           ({**_SITE_ASSET, "arch": "guided-256-uncond"}, "names no classifier `plugin`")):
        site.write_text(yaml.safe_dump({"assets": {"mine": asset}}))
        with pytest.raises(UsageError, match=message):
            load_catalog()
    site.write_text(yaml.safe_dump({"assets": {"mine": _SITE_ASSET}}))
    assert load_catalog().assets["mine"].arch == "wrn-28-10"
