"""Cluster profiles: YAML files under slurm/profiles/ that say how one array task is run.

A profile is data, validated like a grid: an unknown key or a bad value is a UsageError
naming the file, the key and the allowed values (exit 2, nothing submitted). Every value
that reaches the batch script is either a scheduler token of restricted characters or is
quoted with shlex.quote; only `setup.commands` is shell, verbatim, by design (it is the
cluster admin's `module load ...`, written by whoever writes the profile).

    partition: gpu            # scheduler names: letters, digits and _ . , - (checked)
    account: my-project
    qos: normal
    constraint: gh200         # Slurm --constraint expression
    arch: aarch64             # the nodes' CPU architecture (x86_64 | aarch64)
    gpus_per_node: 4
    tasks_per_node: 4         # one rank per GPU: must equal gpus_per_node when there are GPUs
    cpus_per_task: 16
    mem_gb: 400
    time_min: 240
    signal_delay_s: 300       # pre-timeout signal: the task is checkpointed and requeued
    max_requeues: 3           # requeues after a timeout or preemption
    array_parallelism: 32     # at most this many array tasks at once (`--array=...%N`)
    max_array_size: 1000      # optional: rows per array job (default: the cluster's MaxArraySize)
    python: [python3]         # the interpreter as argv words (default: the submitting one; python3 in a container)
    device: cuda              # what a task needs (default: cuda with gpus_per_node, else cpu): a task
                              # needing CUDA that finds none stops at once, naming why
    container: /shared/images/harness.sif   # run each task inside this Apptainer image
    container_args: [--bind, /scratch]      # extra `apptainer exec` arguments, one word each
    gpu_tflops: 100           # sustained TFLOP/s one GPU is assumed to reach: `harness plan`'s GPU-hours
    srun_args: [--mpi=pmix]   # extra srun arguments, one word each
    setup:
      modules: [cuda/12.4]    # → module load 'cuda/12.4'
      venv: /opt/venvs/harness   # → source '/opt/venvs/harness/bin/activate'
      env: {OMP_NUM_THREADS: "16"}  # → export OMP_NUM_THREADS='16'
      commands: []            # raw shell lines, verbatim, after the above
"""
from __future__ import annotations

import os
import platform
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..errors import UsageError

REPO_PROFILES = Path(__file__).resolve().parent.parent.parent / "slurm" / "profiles"
ARCHES = ("x86_64", "aarch64")
DEVICES = ("cuda", "cpu")
_NAME_RE = re.compile(r"[A-Za-z0-9_.,-]+")               # partition, account, qos
_CONSTRAINT_RE = re.compile(r"[A-Za-z0-9_.,&|!*:\[\]()-]+")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MODULE_RE = re.compile(r"[A-Za-z0-9_.+/@:-]+")
_MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class ProfileError(UsageError):
    """A profile problem, located by file and key."""

    def __init__(self, file: str, key: str, message: str):
        self.file, self.key, self.message = file, key, message
        super().__init__(f"{file}: {key}: {message}")


@dataclass(frozen=True)
class Setup:
    modules: tuple[str, ...] = ()
    venv: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    commands: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        """Shell lines for the batch script; every value but `commands` is quoted."""
        out = []
        if self.modules:
            out.append("module load " + " ".join(shlex.quote(m) for m in self.modules))
        if self.venv:
            out.append(f"source {shlex.quote(str(Path(self.venv) / 'bin' / 'activate'))}")
        out += [f"export {k}={shlex.quote(v)}" for k, v in self.env]
        out += list(self.commands)
        return out


@dataclass(frozen=True)
class Profile:
    """A validated cluster profile (see the module docstring for the keys)."""

    path: Path
    name: str
    description: str = ""
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    arch: str | None = None
    gpus_per_node: int = 0
    tasks_per_node: int = 1
    cpus_per_task: int = 1
    mem_gb: float | None = None
    time_min: int = 60
    signal_delay_s: int = 120
    max_requeues: int = 3
    array_parallelism: int = 64
    max_array_size: int | None = None
    python: tuple[str, ...] | None = None
    srun_args: tuple[str, ...] = ()
    gpu_tflops: float | None = None
    setup: Setup = field(default_factory=Setup)
    device: str = "cpu"
    container: str | None = None
    container_args: tuple[str, ...] = ()

    def sbatch_parameters(self, job_name: str) -> dict[str, Any]:
        """Keyword arguments of submitit's SlurmExecutor.update_parameters."""
        p: dict[str, Any] = {"job_name": job_name, "time": self.time_min, "nodes": 1,
                             "ntasks_per_node": self.tasks_per_node, "cpus_per_task": self.cpus_per_task,
                             "signal_delay_s": self.signal_delay_s,
                             "array_parallelism": self.array_parallelism, "stderr_to_stdout": True}
        for key in ("partition", "account", "qos", "constraint"):
            if getattr(self, key):
                p[key] = getattr(self, key)
        if self.gpus_per_node:
            p["gpus_per_node"] = self.gpus_per_node
        if self.mem_gb is not None:
            p["mem"] = f"{int(self.mem_gb)}GB" if self.mem_gb == int(self.mem_gb) else f"{int(self.mem_gb * 1024)}MB"
        if self.srun_args:
            p["srun_args"] = list(self.srun_args)
        return p

    def python_command(self, default: str) -> str:
        """The interpreter as one shell-safe string (each argv word quoted); with a container,
        run inside it (`apptainer exec`, `--nv` where the task needs CUDA), where the submitting
        machine's interpreter means nothing: python3 unless `python` names another."""
        if self.container:
            words = ["apptainer", "exec", *(["--nv"] if self.device == "cuda" else []), *self.container_args,
                     self.container, *(self.python or ("python3",))]
        else:
            words = list(self.python) if self.python else [default]
        return " ".join(shlex.quote(w) for w in words)

    def env_lines(self) -> list[str]:
        """What the batch script exports for the task: its device requirement (harness.devices)."""
        return [f"export HARNESS_NEEDS={shlex.quote(self.device)}"] if self.device == "cuda" else []

    def group_key(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """Rows with the same key share one array job (same resources). One group for now;
        a per-row resource attribute (e.g. GPU memory by dataset) would extend this key."""
        return (self.gpus_per_node, self.tasks_per_node, self.cpus_per_task, self.mem_gb, self.time_min)

    def check_arch(self, python_given: bool) -> None:
        """Refuse to send this machine's interpreter to nodes of another architecture."""
        here = _MACHINE_ALIASES.get(platform.machine(), platform.machine())
        if self.arch and self.arch != here and not python_given:
            raise ProfileError(str(self.path), "python",
                               f"the nodes are {self.arch} but this machine is {here}, so its "
                               "interpreter cannot run there; set `python:` (and `setup.venv:`) "
                               f"to an {self.arch} environment")


# ---------------------------------------------------------------- validation

def _str(pattern: re.Pattern[str] | None, what: str) -> Callable[[str, str, Any], str]:
    def check(file: str, key: str, v: Any) -> str:
        if not isinstance(v, str) or not v or (pattern and not pattern.fullmatch(v)):
            raise ProfileError(file, key, f"{v!r} is not allowed; expected {what}")
        return v
    return check


def _int(low: int, high: int | None = None) -> Callable[[str, str, Any], int]:
    def check(file: str, key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < low or (high is not None and v > high):
            rng = f"{low}..{high}" if high is not None else f">= {low}"
            raise ProfileError(file, key, f"{v!r} is not allowed; expected an integer {rng}")
        return v
    return check


def _positive_number(file: str, key: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
        raise ProfileError(file, key, f"{v!r} is not allowed; expected a number > 0")
    return float(v)


def _choice(options: tuple[str, ...]) -> Callable[[str, str, Any], str]:
    def check(file: str, key: str, v: Any) -> str:
        if v not in options:
            raise ProfileError(file, key, f"{v!r} is not allowed; allowed: {', '.join(options)}")
        return v
    return check


def _words(file: str, key: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list) or not all(isinstance(w, str) and w for w in v):
        raise ProfileError(file, key, f"{v!r} is not allowed; expected a list of non-empty strings "
                                      "(one argv word each, quoted for you)")
    return tuple(v)


def _no_newline(file: str, key: str, v: str) -> str:
    if "\n" in v or "\r" in v or "\0" in v:
        raise ProfileError(file, key, f"{v!r} is not allowed; expected a single line")
    return v


def _setup(file: str, key: str, v: Any) -> Setup:
    allowed = ("modules", "venv", "env", "commands")
    if v is None:
        return Setup()
    if not isinstance(v, dict):
        raise ProfileError(file, key, f"{v!r} is not allowed; expected a mapping with keys: "
                                      f"{', '.join(allowed)}")
    for k in v:
        if k not in allowed:
            raise ProfileError(file, f"{key}.{k}", f"unknown key; allowed: {', '.join(allowed)}")
    modules = _words(file, f"{key}.modules", v.get("modules", []))
    for m in modules:
        _str(_MODULE_RE, "a module name (letters, digits and _ . + / @ : -)")(file, f"{key}.modules", m)
    venv = v.get("venv")
    if venv is not None:
        venv = _no_newline(file, f"{key}.venv", _str(None, "a directory path")(file, f"{key}.venv", venv))
    env = v.get("env", {}) or {}
    if not isinstance(env, dict):
        raise ProfileError(file, f"{key}.env", f"{env!r} is not allowed; expected a mapping NAME: value")
    pairs = []
    for name, value in env.items():
        if not isinstance(name, str) or not _ENV_RE.fullmatch(name):
            raise ProfileError(file, f"{key}.env", f"{name!r} is not allowed; expected an "
                                                   "environment variable name ([A-Za-z_][A-Za-z0-9_]*)")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ProfileError(file, f"{key}.env.{name}", f"{value!r} is not allowed; expected a string or number")
        pairs.append((name, _no_newline(file, f"{key}.env.{name}", str(value))))
    commands = _words(file, f"{key}.commands", v.get("commands", []) or [])
    for c in commands:
        _no_newline(file, f"{key}.commands", c)
    return Setup(modules, venv, tuple(pairs), commands)


def _image(file: str, key: str, v: Any) -> str:
    v = _no_newline(file, key, _str(None, "an image file path")(file, key, v))
    if not os.path.isabs(os.path.expanduser(v)):
        raise ProfileError(file, key, f"{v!r} is not allowed; expected an absolute path (the nodes resolve it)")
    return os.path.expanduser(v)


_NAME = _str(_NAME_RE, "a scheduler name (letters, digits and _ . , -)")
KEYS: dict[str, Callable[[str, str, Any], Any]] = {
    "description": _str(None, "a string"),
    "partition": _NAME, "account": _NAME, "qos": _NAME,
    "constraint": _str(_CONSTRAINT_RE, "a Slurm constraint expression (letters, digits and _ . , & | ! * : [ ] ( ) -)"),
    "arch": _choice(ARCHES),
    "gpus_per_node": _int(0, 64), "tasks_per_node": _int(1, 256), "cpus_per_task": _int(1, 1024),
    "mem_gb": _positive_number, "time_min": _int(1), "signal_delay_s": _int(0, 65535),
    "max_requeues": _int(0, 100), "array_parallelism": _int(1), "max_array_size": _int(1),
    "python": _words, "srun_args": _words, "setup": _setup, "gpu_tflops": _positive_number,
    "device": _choice(DEVICES), "container": _image, "container_args": _words,
}


def parse_profile(raw: Any, path: Path) -> Profile:
    file = str(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ProfileError(file, "<root>", f"top level is {type(raw).__name__}, not a mapping; "
                                           f"allowed keys: {', '.join(KEYS)}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in KEYS:
            raise ProfileError(file, str(key), f"unknown key; allowed: {', '.join(KEYS)}")
        if value is None and key != "setup":
            continue  # an explicit null means the scheduler's default
        values[key] = KEYS[key](file, key, value)
    for key in ("python", "srun_args", "container_args"):
        for w in values.get(key, ()):
            _no_newline(file, key, w)
    gpus = values.get("gpus_per_node", 0)
    values.setdefault("tasks_per_node", max(1, gpus))
    values.setdefault("device", "cuda" if gpus else "cpu")
    if gpus and values["tasks_per_node"] != gpus:
        raise ProfileError(file, "tasks_per_node", f"{values['tasks_per_node']} is not allowed; one "
                                                    f"rank per GPU: expected {gpus} (= gpus_per_node)")
    time_s = values.get("time_min", Profile.time_min) * 60
    if "signal_delay_s" not in values:
        values["signal_delay_s"] = min(Profile.signal_delay_s, time_s // 2)
    elif values["signal_delay_s"] >= time_s:
        raise ProfileError(file, "signal_delay_s", f"{values['signal_delay_s']} is not allowed; "
                                                   f"expected less than time_min × 60 = {time_s}")
    return Profile(path=path, name=path.stem, **values)


def load_profile(path: str | Path) -> Profile:
    """Read and validate a profile file (yaml.safe_load)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ProfileError(str(path), "<root>", f"cannot read profile: {exc.strerror}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ProfileError(str(path), "<root>", "not valid YAML (" + " ".join(str(exc).split()) + ")") from None
    return parse_profile(raw, path)


def available(where: tuple[Path, ...] | None = None) -> list[str]:
    dirs = where or (Path("slurm/profiles"), REPO_PROFILES)
    return sorted({p.stem for d in dirs if d.is_dir() for p in d.glob("*.yaml")})


def resolve(name_or_path: str | None, grid_file: str | Path | None = None) -> Path:
    """A profile file from a path, or a name looked up in ./slurm/profiles then the repository's."""
    if not name_or_path:
        raise UsageError("no cluster profile: pass --profile NAME|FILE or set `profile:` in the grid; "
                         f"available: {', '.join(available()) or '(none found)'}")
    p = Path(os.path.expanduser(name_or_path))
    looks_like_path = p.suffix in (".yaml", ".yml") or os.sep in name_or_path
    if looks_like_path:
        candidates = [p] + ([Path(grid_file).parent / p] if grid_file and not p.is_absolute() else [])
    else:
        candidates = [Path("slurm/profiles") / f"{name_or_path}.yaml", REPO_PROFILES / f"{name_or_path}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    raise UsageError(f"profile {name_or_path!r}: not found (looked at {', '.join(map(str, candidates))}); "
                     f"available: {', '.join(available()) or '(none found)'}")


def load_named(name_or_path: str | None, grid_file: str | Path | None = None) -> Profile | None:
    """The profile a name or path stands for (resolve, then load_profile); None without one."""
    return load_profile(resolve(name_or_path, grid_file)) if name_or_path else None
