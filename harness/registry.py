"""Plugin registries: every plugin declares its parameters and capabilities.

The grid validator reads these declarations, so nothing here imports torch:
a plugin's implementation is named as "module:attr" and imported on first use.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import GridError

KINDS = ("dataset", "classifier", "purifier", "attack")
REQUIRED = object()

_TYPES = ("int", "float", "number", "bool", "str", "list[number]", "list[str]")


@dataclass(frozen=True)
class Param:
    """One declared parameter: its type, bounds or choices, and default.

    type "number" takes an int (a diffusion step) or a float (a fraction of T);
    "list[number]" and "list[str]" take a flat list, so only a list of lists is a grid axis;
    a list parameter's choices constrain each element.
    """

    type: str
    default: Any = REQUIRED
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    help: str = ""
    # The kind of local asset the value names ("dataset", "classifier", "denoiser"): a path,
    # or `asset:<name>` from the catalogue (checked here, resolved by the worker).
    asset: str | None = None

    def __post_init__(self) -> None:
        if self.type not in _TYPES:
            raise ValueError(f"unknown parameter type {self.type!r}")

    @property
    def is_list(self) -> bool:
        return self.type.startswith("list[")

    def allowed(self) -> str:
        if self.asset:
            bundled = "".join(f"{c!r}, " for c in self.choices or ())
            return f"{bundled}asset:<name> of a catalogued {self.asset} (`harness stage --list`), or a local path"
        if self.choices is not None:
            one_of = "one of " + ", ".join(repr(c) for c in self.choices)
            return f"a non-empty list, each {one_of}" if self.is_list else one_of
        what = {"int": "an integer", "float": "a number", "number": "an integer step or a fraction",
                "bool": "true or false", "str": "a string",
                "list[number]": "a non-empty list of numbers",
                "list[str]": "a non-empty list of strings"}[self.type]
        if self.low is not None and self.high is not None:
            what += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            what += f" >= {self.low}"
        elif self.high is not None:
            what += f" <= {self.high}"
        return what

    def check(self, value: Any, file: str, key: str) -> Any:
        """Return the normalised value or raise GridError naming file and key."""
        bad = GridError(file, key, f"{value!r} is not allowed; expected {self.allowed()}")
        if self.is_list:
            if not isinstance(value, list) or not value:
                raise bad
            return [self._scalar(self.type[5:-1], v, bad) for v in value]
        value = self._scalar(self.type, value, bad)
        if self.asset:
            from .catalog import check_ref

            check_ref(value, self.asset, file, key)
        return value

    def _scalar(self, typ: str, value: Any, bad: GridError) -> Any:
        if typ == "bool":
            if not isinstance(value, bool):
                raise bad
        elif typ == "str":
            if not isinstance(value, str):
                raise bad
        elif typ == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise bad
        elif typ in ("float", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            if typ == "float":
                value = float(value)
            if value != value:  # NaN
                raise bad
        if self.choices is not None and value not in self.choices and not (
                self.asset and isinstance(value, str) and value):
            # an asset parameter's choices are its bundled names; any other value is a path
            raise bad
        if self.low is not None and value < self.low:
            raise bad
        if self.high is not None and value > self.high:
            raise bad
        return value


@dataclass(frozen=True)
class PluginSpec:
    """A plugin: kind, name, declared parameters, capabilities, lazy implementation."""

    kind: str
    name: str
    impl: str  # "package.module:attribute", imported on first use
    params: dict[str, Param] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    help: str = ""
    label: tuple[str, ...] = ()  # parameters every table label shows, even at their default

    def resolve(self, params: dict[str, Any] | None, file: str, key: str) -> dict[str, Any]:
        """Validate given parameters and fill defaults; unknown or missing keys are errors."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "(none)"
            raise GridError(file, f"{key}.{unknown[0]}",
                            f"unknown parameter of {self.kind} {self.name!r}; allowed: {allowed}")
        out: dict[str, Any] = {}
        for pname, p in self.params.items():
            if pname in params:
                out[pname] = p.check(params[pname], file, f"{key}.{pname}")
            elif p.default is REQUIRED:
                raise GridError(file, f"{key}.{pname}", f"required; expected {p.allowed()}")
            else:
                out[pname] = p.default
        return out

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, dict[str, PluginSpec]] = {k: {} for k in KINDS}


def register(spec: PluginSpec) -> PluginSpec:
    if spec.kind not in _REGISTRY:
        raise ValueError(f"unknown plugin kind {spec.kind!r}")
    _REGISTRY[spec.kind][spec.name] = spec
    return spec


def names(kind: str) -> list[str]:
    _ensure_builtins()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: Any, file: str = "<grid>", key: str = "") -> PluginSpec:
    """The plugin of that kind and name, or a GridError listing the allowed names."""
    _ensure_builtins()
    key = key or f"{kind}.name"
    if not isinstance(name, str) or name not in _REGISTRY[kind]:
        raise GridError(file, key, f"unknown {kind} {name!r}; allowed: {', '.join(names(kind))}")
    return _REGISTRY[kind][name]


def _ensure_builtins() -> None:
    from . import plugins  # noqa: F401  (registers the built-in plugins on import)
