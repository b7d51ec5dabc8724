"""Load local checkpoints safely: safetensors, or torch.load with weights_only=True.

No checkpoint is ever unpickled into arbitrary objects: a `.pt`/`.pth` holding anything but
tensors and plain containers is refused with AssetError. When an expected sha256 is given
the file is refused unless it matches (checked before anything is parsed).

Two ways from a file's object to a state dict, as the original loaders do it:
- `load_checkpoint` (torchvision/diffusers-style files): a dict holding the weights under
  "state_dict" or "model_state_dict" is unwrapped and a "module." prefix (DataParallel) is
  stripped; the state dict's `_metadata` (module versions) is kept, as `torch.load` keeps it.
- `robustbench_state`: RobustBench 1.1.1 `load_model`'s own preprocessing.

Whether a state dict fits a model is decided by PyTorch itself (`fit_problem`): a real
`load_state_dict(strict=True)` into a meta-device twin, so its rules hold (BatchNorm's
versioned `num_batches_tracked`, non-persistent buffers, a module's own load hooks).
"""
from __future__ import annotations

import copy
import re
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from ..errors import AssetError
from ..fsutil import file_digest

WRAPPER_KEYS = ("state_dict", "model_state_dict")
PREFIX = "module."
_SHOW = 5  # how many keys of each kind an error message lists (the counts are always whole)


def _tensors_only(obj: dict[Any, Any], path: Path) -> None:
    for k, v in obj.items():
        if not isinstance(v, torch.Tensor):
            raise AssetError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")


def unwrap_state(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state dict in a file's object: wrappers and `module.` undone, `_metadata` kept."""
    for _ in range(len(WRAPPER_KEYS) + 1):  # nested wrappers, bounded
        if isinstance(obj, dict):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
            if inner is not None:
                obj = inner
                continue
        break
    if not isinstance(obj, dict):
        raise AssetError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    _tensors_only(obj, path)
    state: OrderedDict[str, torch.Tensor] = OrderedDict((str(k), v) for k, v in obj.items())
    if hasattr(obj, "_metadata"):  # BatchNorm reads its version from here (num_batches_tracked)
        state._metadata = copy.deepcopy(obj._metadata)  # type: ignore[attr-defined]
    while any(k.startswith(PREFIX) for k in state):
        plain = [k[len(PREFIX):] if k.startswith(PREFIX) else k for k in state]
        dup = next((k for k in plain if plain.count(k) > 1), None)
        if dup is not None:
            raise AssetError(f"{path}: key {dup!r} appears twice once {PREFIX!r} is stripped")
        consume_prefix_in_state_dict_if_present(state, PREFIX)  # keys and _metadata alike
    return state


def robustbench_state(obj: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict RobustBench 1.1.1's `load_model` hands to its strict load, from a file's object.

    As its code does: `obj["state_dict"]` when there is one, else `obj`; then its
    `rm_substr_from_state_dict` for "module." and then "model.": a key *containing* the
    substring loses that many leading characters, once. The result is a fresh dict without
    `_metadata`, as theirs (so BatchNorm treats a missing `num_batches_tracked` as an old
    version). Deviation: two keys that collapse into one are refused (theirs keeps the last)."""
    path = Path(path)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise AssetError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    _tensors_only(obj, path)
    keys = [str(k) for k in obj]
    for sub in ("module.", "model."):
        keys = [k[len(sub):] if sub in k else k for k in keys]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise AssetError(f"{path}: key {dup!r} appears twice once 'module.'/'model.' are stripped")
    return dict(zip(keys, obj.values()))


def read_checkpoint(path: str | Path, expected_sha256: str | None = None) -> Any:
    """The object a `.safetensors`, `.pt`, `.pth` or `.bin` file holds, checksum first, never
    unpickling anything but tensors and plain containers; AssetError if refused."""
    path = Path(path)
    if not path.is_file():
        raise AssetError(f"{path}: missing checkpoint")
    if expected_sha256 is not None:
        got = file_digest(path, "sha256")
        if got.lower() != expected_sha256.strip().lower():
            raise AssetError(f"{path}: sha256 mismatch: expected {expected_sha256}, got {got}; "
                             "the file is corrupt or was replaced")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad asset
            raise AssetError(f"{path}: not a readable safetensors file ({e})") from e
    if suffix not in (".pt", ".pth", ".bin"):
        raise AssetError(f"{path}: unknown checkpoint type {suffix!r} (want .safetensors, .pt, .pth or .bin)")
    try:
        try:  # memory-mapped: a 2 GB backbone is not read twice into memory
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy format
    except Exception as e:  # noqa: BLE001 - UnpicklingError for refused globals, or corrupt
        # the whole reason: torch's message is several lines and names the refused global
        cause = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip() or type(e).__name__  # no terminal bold
        raise AssetError(f"{path}: refused: not a plain tensor checkpoint (loaded with "
                         f"weights_only=True; arbitrary objects are never unpickled): {cause}") from e


def load_checkpoint(path: str | Path, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """A CPU state dict from a checkpoint file (wrappers and `module.` undone, `_metadata` kept)."""
    return unwrap_state(read_checkpoint(path, expected_sha256), Path(path))


def target_module(model: nn.Module) -> nn.Module:
    """The module whose state dict a checkpoint holds (the network inside a Normalized wrapper)."""
    from .resnet import Normalized

    return model.net if isinstance(model, Normalized) else model


def _meta_twin(module: nn.Module) -> nn.Module:
    """A copy of `module` whose parameters and buffers live on the meta device (no memory)."""
    memo: dict[int, Any] = {}
    for p in module.parameters():
        memo[id(p)] = nn.Parameter(torch.empty_like(p, device="meta"), requires_grad=p.requires_grad)
    for b in module.buffers():
        memo[id(b)] = torch.empty_like(b, device="meta")
    return copy.deepcopy(module, memo)


def _few(keys: list[str]) -> str:
    more = f" (+{len(keys) - _SHOW} more)" if len(keys) > _SHOW else ""
    return ", ".join(keys[:_SHOW]) + more


_COVERED = ("Missing key(s) in state_dict", "Unexpected key(s) in state_dict", "size mismatch for")


def _dry_run(target: nn.Module, state: dict[str, torch.Tensor]) -> tuple[str | None, RuntimeError | None]:
    """PyTorch's strict load into a meta twin of `target`: (readable problem, torch's error)."""
    twin = _meta_twin(target)
    seen: dict[str, list[str]] = {"missing": [], "unexpected": []}

    def record(_: nn.Module, incompatible: Any) -> None:
        seen["missing"], seen["unexpected"] = list(incompatible.missing_keys), list(incompatible.unexpected_keys)

    twin.register_load_state_dict_post_hook(record)
    try:
        with warnings.catch_warnings():  # "copying into a meta parameter is a no-op": intended
            warnings.simplefilter("ignore", UserWarning)
            twin.load_state_dict(state, strict=True)
    except RuntimeError as e:
        own = {k: tuple(v.shape) for k, v in twin.state_dict().items()}
        shapes = [f"{k} {tuple(v.shape)} vs {own[k]}" for k, v in state.items()
                  if k in own and tuple(v.shape) != own[k]]
        parts = [f"{label} {len(keys)}: {_few(keys)}"
                 for label, keys in (("missing", seen["missing"]), ("unexpected", seen["unexpected"]),
                                     ("wrong shape (checkpoint vs model)", shapes)) if keys]
        # anything else torch refused (a module's own load hook, a failed copy), word for word
        lines = str(e).split("\n\t")[1:] or [str(e)]
        parts += [m.strip() for m in lines if not m.startswith(_COVERED)]
        return "; ".join(parts) or str(e), e
    return None, None


def fit_problem(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Why `state` does not load into `model` (into `.net` of a `Normalized`), or None exactly
    when `load_into(model, state)` succeeds. Works on a meta-device model; allocates nothing."""
    return _dry_run(target_module(model), state)[0]


def load_into(model: nn.Module, state_dict: dict[str, torch.Tensor], name: str = "checkpoint") -> nn.Module:
    """Strictly load `state_dict` into `model` (into `.net` for a `Normalized` wrapper), under
    PyTorch's own strict rules; AssetError listing the missing, unexpected and wrong-shaped
    keys, with torch's whole message as the cause."""
    target = target_module(model)
    problem, cause = _dry_run(target, state_dict)
    if problem:
        raise AssetError(f"{name} does not fit {type(target).__name__}: {problem}") from cause
    target.load_state_dict(state_dict, strict=True)  # on a meta model a no-op, as in torch
    return model

