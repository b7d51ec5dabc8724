"""Plugin registries: every plugin declares, in one file, its parameters, capabilities and
the hooks the core calls.

Nothing here imports torch: the grid validator, the cost estimate and the report read these
declarations on a login node; a plugin's implementation is named as "module:attr" and
imported on first use. The core never names a plugin: it reads capabilities and calls hooks.

Where plugins come from: every module of the `harness.plugins` package that defines `SPECS`
(the built-ins), then every entry point of the group `lorid_harness.plugins` (a site package
adds plugins without editing this repository); an entry point names a PluginSpec or an
iterable of them. Asset references are checked by a validator the catalogue installs
(`set_asset_validator`), so this module does not import the catalogue.
"""
from __future__ import annotations

import importlib
import math
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from .errors import GridError

ENTRY_POINT_GROUP = "lorid_harness.plugins"
KINDS = ("dataset", "classifier", "purifier", "attack")
REQUIRED = object()

_TYPES = ("int", "float", "number", "bool", "str", "list[number]", "list[str]")
INT64_MIN, INT64_MAX = -(2 ** 63), 2 ** 63 - 1  # what a plan's and a result's integer columns hold
SHOWN_CHARS = 80
MAX_LIST = 10_000  # elements of one list-typed value (a schedule)


def shown(value: Any, limit: int = SHOWN_CHARS) -> str:
    """A user value for an error message: its repr, cut to `limit` characters.

    Every message that echoes a grid value goes through here, so a huge or deeply shared
    value (a YAML alias bomb) can never make a huge message. Never raises."""
    try:
        if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 200:
            return f"<an integer of {value.bit_length()} bits>"
        if isinstance(value, (list, tuple, dict, set)) and _too_big(value, 2 * limit):
            text = f"<a {type(value).__name__} of {len(value)} entries>"
        else:
            text = repr(value)
    except Exception:  # noqa: BLE001 - a message must never fail
        text = f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 5] + "[...]"


def shown_key(key: Any, limit: int = 40) -> str:
    """A user-written mapping key inside a key path, cut to `limit` characters."""
    text = key if isinstance(key, str) else shown(key, limit)
    return text if len(text) <= limit else text[:limit - 5] + "[...]"


def _too_big(value: Any, budget: int) -> bool:
    """True when a container has more than `budget` nodes (counted with a budget: cheap on bombs)."""
    stack, seen = [value], 0
    while stack:
        v = stack.pop()
        seen += 1
        if seen > budget:
            return True
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set)):
            stack.extend(v)
    return False

#: Capabilities some code reads, and where. A plugin declaring another one is refused.
CAPABILITIES: dict[str, str] = {
    "stochastic": "purifier: random draws per call (validity: no-eot)",
    "no_defence": "purifier: leaves the input as it is, the bare classifier (validity: attack-weak)",
    "clean": "attack: returns its input, clean accuracy (validity and worst-of skip it)",
    "needs_gradients": "attack: computes gradients through its target (validity: white-box, no-eot)",
    "black_box": "attack: queries only (validity: bb-stronger)",
    "iterative": "attack: returns its last iterate, fooled or not (validity: attack-null, small-perturbation)",
    "unperturbed_on_failure": "attack: returns an example it fails on unperturbed (validity: attack-null)",
}

# Validates a value of an asset parameter: (value, asset kind, file, key) -> None or GridError.
AssetValidator = Callable[[Any, str, str, str], None]
_asset_validator: AssetValidator | None = None


def set_asset_validator(fn: AssetValidator) -> None:
    """Install the check of asset references (the catalogue installs its own on import)."""
    global _asset_validator
    _asset_validator = fn


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
    # A further check of one value (a scalar, or each element of a list): the problem, or None.
    check_value: Callable[[Any], str | None] | None = None
    # A length in pixels (a patch side, a stride): at most the data set's image side, checked
    # per cell through the data set plugin's `image_side` hook (harness.catalog.check_cells).
    pixels: bool = False

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
        bad = GridError(file, key, f"{shown(value)} is not allowed; expected {self.allowed()}")
        if self.is_list:
            if not isinstance(value, list) or not value:
                raise bad
            if len(value) > MAX_LIST:
                raise GridError(file, key, f"a list of {len(value)} values is not allowed; expected "
                                           f"at most {MAX_LIST}, each {self.allowed()}")
            out = [self._scalar(self.type[5:-1], v, bad) for v in value]
            for v in out:
                problem = self.check_value(v) if self.check_value is not None else None
                if problem:
                    raise GridError(file, key, f"{shown(value)} is not allowed: {shown(v)}: "
                                               f"{shown(problem, 200)}")
            return out
        value = self._scalar(self.type, value, bad)
        if self.asset and _asset_validator is not None:
            _asset_validator(value, self.asset, file, key)
        if self.check_value is not None:
            problem = self.check_value(value)
            if problem:
                raise GridError(file, key, f"{shown(value)} is not allowed: {shown(problem, 200)}")
        return value

    def _scalar(self, typ: str, value: Any, bad: GridError) -> Any:
        if typ == "bool":
            if not isinstance(value, bool):
                raise bad
        elif typ == "str":
            if not isinstance(value, str):
                raise bad
        elif typ == "int":
            if isinstance(value, bool) or not isinstance(value, int) or not INT64_MIN <= value <= INT64_MAX:
                raise bad
        elif typ in ("float", "number"):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise bad
            if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
                raise bad
            if typ == "float":
                value = float(value)
            if not math.isfinite(value):  # NaN, inf: nothing runs on them, JSON cannot hash them
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


def _zero(params: dict[str, Any]) -> int:
    return 0


@dataclass(frozen=True)
class PluginSpec:
    """A plugin: kind, name, declared parameters, capabilities, lazy implementation, and the
    hooks the core calls (each a torch-free function of the resolved parameters).

    - validate(params, file, key): cross-parameter checks; raise GridError naming the key.
    - purifier: `configure(params)` -> the purifier's configuration (harness.purify.pipeline
      PurifierConfig fields); `nfe(params)` -> denoiser evaluations per purification.
    - attack: `threat(params)` -> (norm, eps) for the result columns ("none", 0.0 when the
      attack has no budget); `passes(params)` -> purifier passes per example it adds (a
      backward pass counted as one more); `eot(params)` -> purifications averaged per
      gradient; `white_box(params)` -> whether this configuration differentiates through the
      defence (default: capability needs_gradients and `gradient` not "greybox");
      `strength(params)` -> {name: value} whose increase makes the attack stronger (steps,
      EOT, queries), for the not-converged check.
    - dataset: `image_side(params)` -> the side of the images it gives, None if unknown;
      `size(params)` -> the number of examples its test split holds (the most a grid's
      `examples` may ask for), None if unknown.
    """

    kind: str
    name: str
    impl: str  # "package.module:attribute", imported on first use
    params: dict[str, Param] = field(default_factory=dict)
    capabilities: frozenset[str] = frozenset()
    help: str = ""
    label: tuple[str, ...] = ()  # parameters every table label shows, even at their default
    validate: Callable[[dict[str, Any], str, str], None] | None = None
    configure: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    nfe: Callable[[dict[str, Any]], int] = _zero
    threat: Callable[[dict[str, Any]], tuple[str, float]] = lambda p: ("none", 0.0)
    passes: Callable[[dict[str, Any]], int] = _zero
    eot: Callable[[dict[str, Any]], int] = lambda p: 1
    white_box: Callable[[dict[str, Any]], bool] | None = None
    strength: Callable[[dict[str, Any]], dict[str, int]] = lambda p: {}
    image_side: Callable[[dict[str, Any]], int | None] = lambda p: None
    size: Callable[[dict[str, Any]], int | None] = lambda p: None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"plugin {self.name!r}: unknown kind {self.kind!r}; one of {KINDS}")
        unknown = sorted(self.capabilities - set(CAPABILITIES))
        if unknown:
            raise ValueError(f"plugin {self.kind} {self.name!r}: unknown capability {unknown[0]!r}; "
                             f"declared ones are read by some code: {', '.join(CAPABILITIES)}")
        if self.kind == "purifier" and self.configure is None:
            raise ValueError(f"purifier {self.name!r} declares no configure hook")

    def is_white_box(self, params: dict[str, Any]) -> bool:
        if self.white_box is not None:
            return bool(self.white_box(params))
        return "needs_gradients" in self.capabilities and params.get("gradient", "exact") != "greybox"

    def resolve(self, params: dict[str, Any] | None, file: str, key: str) -> dict[str, Any]:
        """Validate given parameters and fill defaults; unknown or missing keys are errors."""
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.params), key=str)
        if unknown:
            allowed = ", ".join(sorted(self.params)) or "(none)"
            raise GridError(file, f"{key}.{shown_key(unknown[0])}",
                            f"unknown parameter of {self.kind} {self.name!r}; allowed: {allowed}")
        out: dict[str, Any] = {}
        for pname, p in self.params.items():
            if pname in params:
                out[pname] = p.check(params[pname], file, f"{key}.{pname}")
            elif p.default is REQUIRED:
                raise GridError(file, f"{key}.{pname}", f"required; expected {p.allowed()}")
            else:
                out[pname] = p.default
        if self.validate is not None:
            self.validate(out, file, key)
        return out

    def load(self) -> Callable[..., Any]:
        module, _, attr = self.impl.partition(":")
        return getattr(importlib.import_module(module), attr)


_REGISTRY: dict[str, dict[str, PluginSpec]] = {k: {} for k in KINDS}
_SOURCES: dict[tuple[str, str], str] = {}  # (kind, name) -> where it was declared
_loaded = False


def register(spec: PluginSpec, source: str = "") -> PluginSpec:
    """Add a plugin; a second plugin of the same kind and name from elsewhere is an error."""
    key = (spec.kind, spec.name)
    if key in _SOURCES and _SOURCES[key] != source:
        raise ValueError(f"{spec.kind} {spec.name!r} is declared twice: in {_SOURCES[key]} and in {source}")
    _REGISTRY[spec.kind][spec.name] = spec
    _SOURCES[key] = source
    return spec


def _register_all(obj: Any, source: str) -> None:
    specs = [obj] if isinstance(obj, PluginSpec) else list(obj)
    for spec in specs:
        if not isinstance(spec, PluginSpec):
            raise TypeError(f"{source}: {spec!r} is not a harness.registry.PluginSpec")
        register(spec, source)


def _builtin_modules() -> Iterable[str]:
    package = importlib.import_module(__package__ + ".plugins")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            yield f"{package.__name__}.{info.name}"


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name)


def load_plugins() -> None:
    """Register the built-in plugins and those of installed packages (once per process)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _builtin_modules():
        specs = getattr(importlib.import_module(module), "SPECS", None)
        if specs is not None:
            _register_all(specs, module)
    for ep in _entry_points():
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken site plugin must say which one
            raise ImportError(f"plugin entry point {ep.name!r} ({ep.value}) of group "
                              f"{ENTRY_POINT_GROUP!r} failed to load: {exc}") from exc
        _register_all(obj, f"entry point {ep.name} = {ep.value}")


def names(kind: str) -> list[str]:
    load_plugins()
    return sorted(_REGISTRY[kind])


def get(kind: str, name: Any, file: str = "<grid>", key: str = "") -> PluginSpec:
    """The plugin of that kind and name, or a GridError listing the allowed names."""
    load_plugins()
    key = key or f"{kind}.name"
    if not isinstance(name, str) or name not in _REGISTRY[kind]:
        raise GridError(file, key, f"unknown {kind} {shown(name)}; allowed: {', '.join(names(kind))}")
    return _REGISTRY[kind][name]


def source(kind: str, name: str) -> str:
    """Where a plugin was declared (a module, or an entry point)."""
    load_plugins()
    return _SOURCES.get((kind, name), "")
