"""Classifier checkpoints load exactly as their original code loads them (issue 9).

Each original architecture is built from its ORIGINAL code where the package installs beside
CPU torch (scripts/setup.sh --test): RobustBench 1.1.1's `dm_wide_resnet.py` and
`wide_resnet.py` (loaded by path: the package's own import pulls timm, not needed), its
`load_model` preprocessing (`rm_substr_from_state_dict`, `_safe_load_state_dict`, taken from
its utils.py by name), and pyautoattack's `examples/resnet.py` with `examples/model_test.pt`.
Random weights are saved in each original format, loaded through our plugin loader
(`harness.models.zoo`), and the outputs compared with the original module (eval mode).
torchvision does not install beside CPU torch 2.13 (its wheel's CUDA extension fails at
import), so its ResNets are checked against tests/golden/torchvision_resnet.json (key list +
outputs derived once from torchvision 0.28.0's own code; see derive_torchvision_resnet.py).
"""
from __future__ import annotations

import ast
import collections
import importlib.util
import json
import math
import types
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from torch import nn

from harness.errors import AssetError
from harness.models import zoo
from harness.models.checkpoints import fit_problem, load_into
from harness.models.dm_wideresnet import dm_wrn
from harness.models.wideresnet import wrn

GOLDEN = Path(__file__).parent / "golden" / "torchvision_resnet.json"
TOL = 1e-5
SETUP = "install the originals with `bash scripts/setup.sh --test`"


# ------------------------------------------------------------ the originals
def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{name} is not installed; {SETUP}")
    return Path(list(spec.submodule_search_locations)[0])


def _by_path(name: str, file: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, file)
    assert spec and spec.loader, file
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _functions(file: Path, names: set[str], env: dict[str, Any]) -> dict[str, Any]:
    """The named top-level functions of a source file, executed alone (its imports are not)."""
    tree = ast.parse(file.read_text())
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    assert {n.name for n in body} == names, file
    exec(compile(ast.Module(body=body, type_ignores=[]), str(file), "exec"), env)  # noqa: S102
    return {n: env[n] for n in names}


@pytest.fixture(scope="module")
def rb() -> types.SimpleNamespace:
    root = _package_dir("robustbench")
    arch = root / "model_zoo" / "architectures"
    imagenet = types.SimpleNamespace(imagenet="imagenet")
    fns = _functions(root / "utils.py", {"rm_substr_from_state_dict", "_safe_load_state_dict"},
                     {"OrderedDict": collections.OrderedDict, "BenchmarkDataset": imagenet,
                      "Dict": dict, "nn": nn, "torch": torch})
    return types.SimpleNamespace(dm=_by_path("rb_dm_wide_resnet", arch / "dm_wide_resnet.py"),
                                 wrn=_by_path("rb_wide_resnet", arch / "wide_resnet.py"), **fns)


@pytest.fixture(scope="module")
def aa() -> types.SimpleNamespace:
    root = _package_dir("pyautoattack") / "examples"
    return types.SimpleNamespace(resnet=_by_path("aa_resnet", root / "resnet.py"),
                                 checkpoint=root / "model_test.pt")


def robustbench_load(rb: types.SimpleNamespace, model: nn.Module, path: Path, name: str) -> nn.Module:
    """RobustBench 1.1.1 `load_model`'s steps after the download, for a CIFAR-10 entry."""
    checkpoint = torch.load(path, map_location=torch.device("cpu"))
    try:
        state_dict = rb.rm_substr_from_state_dict(checkpoint["state_dict"], "module.")
        state_dict = rb.rm_substr_from_state_dict(state_dict, "model.")
    except Exception:  # noqa: BLE001 - their bare `except:`
        state_dict = rb.rm_substr_from_state_dict(checkpoint, "module.")
        state_dict = rb.rm_substr_from_state_dict(state_dict, "model.")
    return rb._safe_load_state_dict(model, name, state_dict, "cifar10").eval()


def autoattack_load(model: nn.Module, path: Path) -> nn.Module:
    """AutoAttack examples/eval.py: `model.load_state_dict(torch.load(args.model))`."""
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.eval()


# ------------------------------------------------------------ weights and files
def seeded_state(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Deterministic random weights for a {key: shape} layout, in key order (also used by
    tests/golden/derive_torchvision_resnet.py): fan-in-scaled convs/linears, batch norms near
    identity with non-trivial running statistics."""
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {}
    for k, shape in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif k.endswith("running_var"):
            out[k] = 0.5 + torch.rand(shape, generator=g)
        elif len(shape) == 1:  # batch-norm weight/bias, running mean, linear bias
            out[k] = (1.0 if k.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=g)
        else:
            out[k] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    return out


def _shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    model.load_state_dict(seeded_state(_shapes(model), seed))
    return model.eval()


def _no_nbt(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}


def _max_diff(a: nn.Module, b: nn.Module, x: torch.Tensor) -> float:
    with torch.no_grad():
        return (a(x) - b(x)).abs().max().item()


def _with_builder(monkeypatch: pytest.MonkeyPatch, plugin: str, make: Callable[[dict[str, Any]], nn.Module]) -> None:
    """The plugin's real loader, with a small network of the same layout (keys are the point)."""
    monkeypatch.setitem(zoo._PLUGINS, plugin, (make, zoo._PLUGINS[plugin][1]))


def _stage_agrees(plugin: str, params: dict[str, Any], path: Path, accepted: bool) -> None:
    """`harness stage`'s check (network on meta, the same file reading) decides as the run does."""
    with torch.device("meta"):
        model = zoo.build_classifier(plugin, params)
    problem = fit_problem(model, zoo.read_classifier_state(plugin, path))
    assert (problem is None) == accepted, problem


# ------------------------------------------------------------ RobustBench DMWideResNet
def _dm_formats(sd: dict[str, torch.Tensor], mean: tuple, std: tuple) -> dict[str, Any]:
    norm = {"mean": torch.tensor(mean).view(3, 1, 1), "std": torch.tensor(std).view(3, 1, 1)}
    return {
        "plain": dict(sd),  # as published (Wang2023Better_WRN-70-16): no mean/std
        "wrapped-module": {"state_dict": collections.OrderedDict(("module." + k, v) for k, v in sd.items())},
        "no-num-batches-tracked": _no_nbt(sd),
        "with-mean-std": {**sd, **norm},  # a RobustBench version with persistent buffers wrote these
    }


@pytest.mark.parametrize("classes,activation", [(10, "silu"), (100, "silu"), (10, "swish")])
def test_dm_wrn_files_load_like_robustbench(rb: types.SimpleNamespace, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch, classes: int,
                                            activation: str) -> None:
    ds = "cifar100" if classes == 100 else "cifar10"
    mean, std = (rb.dm.CIFAR100_MEAN, rb.dm.CIFAR100_STD) if classes == 100 else (rb.dm.CIFAR10_MEAN, rb.dm.CIFAR10_STD)
    act = nn.SiLU if activation == "silu" else rb.dm.Swish  # Wang2023Better vs Rebuffi2021Fixing
    original = _randomise(rb.dm.DMWideResNet(classes, 16, 2, act, mean, std), seed=classes)
    _with_builder(monkeypatch, "wrn-70-16", lambda p: dm_wrn(16, 2, p.get("classes", 10), ds,
                                                             device=torch.get_default_device()))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for fmt, obj in _dm_formats(original.state_dict(), mean, std).items():
        path = tmp_path / f"{fmt}.pt"
        torch.save(obj, path)
        ours = zoo.load_wrn_70_16({"path": str(path), "sha256": "", "classes": classes})
        assert _max_diff(ours, original, x) <= TOL, fmt
        _stage_agrees("wrn-70-16", {"classes": classes}, path, accepted=True)
        fresh = rb.dm.DMWideResNet(classes, 16, 2, act, mean, std)
        if fmt == "with-mean-std":  # RobustBench 1.1.1 itself refuses these: we accept equal values
            with pytest.raises(RuntimeError, match='Unexpected key.*"mean", "std"'):
                robustbench_load(rb, fresh, path, "Wang2023Better_WRN-70-16")
        else:
            assert _max_diff(robustbench_load(rb, fresh, path, "Wang2023Better_WRN-70-16"), ours, x) <= TOL


def test_dm_wrn_other_normalisation_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               rb: types.SimpleNamespace) -> None:
    sd = _randomise(rb.dm.DMWideResNet(10, 16, 2, nn.SiLU)).state_dict()
    path = tmp_path / "c100-norm.pt"
    torch.save({**sd, "mean": torch.tensor(rb.dm.CIFAR100_MEAN).view(3, 1, 1),
                "std": torch.tensor(rb.dm.CIFAR100_STD).view(3, 1, 1)}, path)
    _with_builder(monkeypatch, "wrn-70-16", lambda p: dm_wrn(16, 2, 10, device=torch.get_default_device()))
    with pytest.raises(AssetError, match="mean: the checkpoint's normalisation .* is not this model's"):
        zoo.load_wrn_70_16({"path": str(path), "sha256": ""})
    _stage_agrees("wrn-70-16", {}, path, accepted=False)


def test_wrn_70_16_full_size_key_layout_on_meta(rb: types.SimpleNamespace) -> None:
    """The published WRN-70-16 layout (RobustBench's own module, on meta) fits our plugin's
    network exactly, with or without mean/std; 10 and 100 classes."""
    for classes in (10, 100):
        with torch.device("meta"):
            original = rb.dm.DMWideResNet(classes, 70, 16, nn.SiLU)
            ours = zoo.build_classifier("wrn-70-16", {"classes": classes})
        state = original.state_dict()
        assert _shapes(ours) == {k: tuple(v.shape) for k, v in state.items()}
        assert len(state) == 407 and "mean" not in state
        assert fit_problem(ours, state) is None
        norm = {"mean": ours.mean, "std": ours.std}  # meta: shapes only, values unknowable
        assert fit_problem(ours, {**state, **norm}) is None
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in original.parameters())


# ------------------------------------------------------------ RobustBench WideResNet (wrn-28-10 plugin)
def test_wrn_files_load_like_robustbench(rb: types.SimpleNamespace, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    original = _randomise(rb.wrn.WideResNet(depth=16, widen_factor=2, num_classes=10), seed=3)
    sd = original.state_dict()
    _with_builder(monkeypatch, "wrn-28-10", lambda p: wrn(16, 2, p.get("classes", 10)))
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    formats = {"plain": dict(sd), "no-num-batches-tracked": _no_nbt(sd),
               "wrapped-module": {"state_dict": {"module." + k: v for k, v in sd.items()}},  # Carmon2019
               "model-prefix": {"state_dict": {"model." + k: v for k, v in sd.items()}}}  # Chen2020Efficient
    for fmt, obj in formats.items():
        path = tmp_path / f"{fmt}.pt"
        torch.save(obj, path)
        ours = zoo.load_wrn_28_10({"path": str(path), "sha256": "", "classes": 10})
        assert _max_diff(ours, original, x) <= TOL, fmt
        fresh = rb.wrn.WideResNet(depth=16, widen_factor=2, num_classes=10)
        assert _max_diff(robustbench_load(rb, fresh, path, "Standard"), ours, x) <= TOL, fmt
        _stage_agrees("wrn-28-10", {"classes": 10}, path, accepted=True)
    # what RobustBench refuses, we refuse: a head of the wrong size, a missing tensor
    for fmt, obj in {"c100-head": {**sd, "fc.weight": torch.zeros(100, 128), "fc.bias": torch.zeros(100)},
                     "missing-conv": {k: v for k, v in sd.items() if k != "conv1.weight"}}.items():
        path = tmp_path / f"{fmt}.pt"
        torch.save(obj, path)
        with pytest.raises(RuntimeError):
            robustbench_load(rb, rb.wrn.WideResNet(depth=16, widen_factor=2), path, "Standard")
        with pytest.raises(AssetError, match="fc.weight \\(100, 128\\) vs \\(10, 128\\)|missing 1: conv1.weight"):
            zoo.load_wrn_28_10({"path": str(path), "sha256": "", "classes": 10})
        _stage_agrees("wrn-28-10", {"classes": 10}, path, accepted=False)


# ------------------------------------------------------------ AutoAttack's CIFAR ResNet-18
def test_autoattack_model_test_pt_loads_and_matches(aa: types.SimpleNamespace) -> None:
    original = autoattack_load(aa.resnet.ResNet18(), aa.checkpoint)
    ours = zoo.load_resnet18_cifar({"path": str(aa.checkpoint), "sha256": ""})
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    assert _max_diff(ours, original, x) <= TOL
    assert _shapes(ours) == _shapes(original) and list(ours.state_dict()) == list(original.state_dict())
    _stage_agrees("resnet-18-cifar", {}, aa.checkpoint, accepted=True)


def test_autoattack_layout_num_batches_tracked_as_the_original(aa: types.SimpleNamespace, tmp_path: Path) -> None:
    """Without num_batches_tracked: a plain dict (an old file, no module versions) loads; a
    state_dict() that says BatchNorm version 2 but lacks them is refused, by both."""
    original = _randomise(aa.resnet.ResNet18(), seed=5)
    sd = original.state_dict()
    old = tmp_path / "old.pt"
    torch.save(_no_nbt(sd), old)
    versioned = collections.OrderedDict(_no_nbt(sd))
    versioned._metadata = sd._metadata  # type: ignore[attr-defined]
    cut = tmp_path / "cut.pt"
    torch.save(versioned, cut)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    ours = zoo.load_resnet18_cifar({"path": str(old), "sha256": ""})
    assert _max_diff(ours, autoattack_load(aa.resnet.ResNet18(), old), x) <= TOL
    assert _max_diff(ours, original, x) <= TOL
    _stage_agrees("resnet-18-cifar", {}, old, accepted=True)
    with pytest.raises(RuntimeError, match="num_batches_tracked"):
        autoattack_load(aa.resnet.ResNet18(), cut)
    with pytest.raises(AssetError, match="missing 20: bn1.num_batches_tracked") as e:
        zoo.load_resnet18_cifar({"path": str(cut), "sha256": ""})
    assert isinstance(e.value.__cause__, RuntimeError)  # torch's whole message, untruncated
    assert "layer4.1.bn2.num_batches_tracked" in str(e.value.__cause__)
    _stage_agrees("resnet-18-cifar", {}, cut, accepted=False)


# ------------------------------------------------------------ torchvision ResNets (golden)
@pytest.fixture(scope="module")
def golden() -> dict[str, Any]:
    return json.loads(GOLDEN.read_text())


@pytest.mark.parametrize("plugin", ["resnet-50", "resnet-18-binary"])
def test_torchvision_resnets_match_golden(golden: dict[str, Any], plugin: str, tmp_path: Path) -> None:
    g = golden[plugin]
    shapes = {k: tuple(s) for k, s in g["shapes"]}
    with torch.device("meta"):
        ours_meta = zoo.build_classifier(plugin, {})
    assert list(_shapes(ours_meta.net).items()) == list(shapes.items())  # torchvision's keys, in order
    sd = seeded_state(shapes, g["seed"])
    versioned = collections.OrderedDict(_no_nbt(sd))
    versioned._metadata = ours_meta.net.state_dict()._metadata  # type: ignore[attr-defined]
    x = torch.rand(g["input"], dtype=torch.float64, generator=torch.Generator().manual_seed(g["input_seed"]))
    want = torch.tensor(g["logits"], dtype=torch.float64)
    for fmt, obj, ok in (("all", sd, True), ("old-no-num-batches-tracked", _no_nbt(sd), True),
                         ("versioned-no-num-batches-tracked", versioned, False)):
        path = tmp_path / f"{fmt}.pth"
        torch.save(obj, path)
        _stage_agrees(plugin, {}, path, accepted=ok)
        load = zoo.load_resnet50 if plugin == "resnet-50" else zoo.load_resnet18_binary
        if not ok:  # torch's strict load into torchvision's module refuses it the same way
            with pytest.raises(AssetError, match="missing"):
                load({"path": str(path), "sha256": ""})
            continue
        ours = load({"path": str(path), "sha256": ""}).double()
        with torch.no_grad():
            assert (ours(x) - want).abs().max().item() <= TOL, fmt


# ------------------------------------------------------------ load_into under PyTorch's rules
def test_load_into_uses_pytorch_rules_on_meta_and_real() -> None:
    from harness.models.resnet_cifar import resnet18_cifar

    real = resnet18_cifar()
    sd = _no_nbt(real.state_dict())  # plain dict: no versions, so BatchNorm fills them in
    with torch.device("meta"):
        meta = resnet18_cifar()
    assert fit_problem(meta, sd) is None and fit_problem(real, sd) is None
    assert load_into(resnet18_cifar(), sd) is not None
    bad = {**sd, "linear.weight": torch.zeros(100, 512)}
    assert fit_problem(real, bad) == "wrong shape (checkpoint vs model) 1: linear.weight (100, 512) vs (10, 512)"
