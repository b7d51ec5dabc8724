"""Fuzzing `harness plan` with malformed grids derived from grids/smoke.yaml (issue 11).

Every malformed grid must be refused at plan time: exit 2 within 5 s, a short message
(<= 20 lines, <= 4 kB on stderr), no traceback, nothing written under jobs/. The grids come
from a fixed RNG: wrong types and unknown keys at every level, out-of-range values for every
declared parameter of every registered plugin (read through harness.registry), YAML syntax
errors, alias bombs, deep nesting, huge integers, non-UTF-8 bytes, a directory, an empty file.
Most run through `harness.cli.main` in this process (an import per call would cost ~1 s);
a sample runs through the real console entry point. A few grids at the edges of the declared
bounds must plan, and `harness run` on them must finish without a traceback.
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import random
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from conftest import harness
from harness import registry
from harness.cli import main
from harness.registry import REQUIRED, Param

REPO = Path(__file__).resolve().parents[1]
SMOKE_TEXT = (REPO / "grids" / "smoke.yaml").read_text()
SMOKE: dict[str, Any] = yaml.safe_load(SMOKE_TEXT)
RNG_SEED = 11
MAX_SECONDS, MAX_LINES, MAX_BYTES = 5.0, 20, 4096

# A minimal valid grid: one plugin per kind, so a plugin under test is the only thing changed.
MINIMAL: dict[str, Any] = {"sweep": "fuzz", "dataset": "digits", "classifier": "digits-cnn",
                           "purifier": "none", "attack": "none", "examples": 4}


def _dump(raw: Any) -> bytes:
    return yaml.safe_dump(raw, sort_keys=False, width=10_000).encode()


def _valid_value(p: Param) -> Any:
    """A value the parameter accepts (for required parameters of the plugin under test)."""
    if p.default is not REQUIRED:
        return p.default
    if p.asset:
        return "/nonexistent/fuzz-asset"  # a local path: plan reports it missing, exit 0
    if p.is_list:
        return [p.choices[0]] if p.choices else ([0.1] if p.type == "list[number]" else ["x"])
    if p.choices:
        return p.choices[0]
    if p.type == "bool":
        return True
    if p.type == "str":
        return "Smiling"
    low = p.low if p.low is not None else 0
    return 0.1 if p.type == "number" and low <= 0.1 else (int(low) if p.type == "int" else float(low) + 0.01)


def _bad_values(p: Param) -> list[Any]:
    """Values the declaration refuses: out of range, not a choice, the wrong type."""
    out: list[Any] = [{"a": 1}]  # a mapping is never a parameter value
    scalar = p.type[5:-1] if p.is_list else p.type
    wrap = (lambda v: [v]) if p.is_list else (lambda v: v)
    if scalar in ("int", "float", "number"):
        out.append(wrap("ten"))
        step = 1 if scalar == "int" else 0.5
        if p.low is not None:
            out.append(wrap(type(step)(p.low) - step if scalar == "int" else float(p.low) - step))
        if p.high is not None:
            out.append(wrap(int(p.high) * 2 + 1 if scalar == "int" else float(p.high) * 2 + 1))
        if scalar != "int":
            out.append(wrap(math.inf))
    elif scalar == "bool":
        out.append(wrap("yes please"))
    elif scalar == "str" and p.choices and not p.asset:
        out.append(wrap("not-a-choice"))
    if p.is_list:
        out.append([])
    return out


def _plugin_grid(kind: str, name: str, params: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw[kind] = {"name": name, "params": params}
    return raw


def _plugin_cases() -> tuple[list[tuple[str, bytes]], list[str]]:
    """Out-of-range cases for every declared parameter of every registered plugin, and the
    plugins skipped because no valid base could be built for them."""
    cases, skipped = [], []
    for kind in registry.KINDS:
        for name in registry.names(kind):
            spec = registry.get(kind, name)
            base = {p: _valid_value(param) for p, param in spec.params.items()
                    if param.default is REQUIRED}
            try:  # the filled base must plan, or the case would not test the parameter
                from harness.grid import expand
                expand(_plugin_grid(kind, name, base), "base.yaml")
            except Exception:  # noqa: BLE001
                skipped.append(f"{kind} {name}")
                continue
            for pname, param in spec.params.items():
                for i, bad in enumerate(_bad_values(param)):
                    cases.append((f"{kind}-{name}-{pname}-{i}",
                                  _dump(_plugin_grid(kind, name, {**base, pname: bad}))))
            cases.append((f"{kind}-{name}-unknown-param", _dump(_plugin_grid(kind, name, {**base, "nope": 1}))))
    return cases, skipped


def _smoke_cases(rng: random.Random) -> list[tuple[str, bytes]]:
    cases: list[tuple[str, bytes]] = []

    def add(name: str, raw: Any) -> None:
        cases.append((name, raw if isinstance(raw, bytes) else _dump(raw)))

    def smoke(**over: Any) -> dict[str, Any]:
        raw = copy.deepcopy(SMOKE)
        raw.update(over)
        return raw

    # wrong types for every top-level key
    wrong = {"sweep": [None, 1, 1.5, True, [], {}, ["a"]],
             "dataset": [None, 1, 1.5, True, [], {}, [[]], "cifar11"],
             "classifier": [None, 2, 0.5, False, [], {}, "digits"],
             "purifier": [None, 3, 2.5, True, [], {}, [None], [[1]], "lorid2"],
             "attack": [None, 4, 3.5, True, [], {}, [1], "fgsm"],
             "examples": [None, "100", 1.5, True, [], {}, [100], 0, -1, 451, 10 ** 9, 1e30],
             "batch_size": [None, "50", 2.5, False, [], {}, 0, -5, 100_001],
             "shard_size": [None, "x", 3.5, True, [1], {}, 0, 10 ** 8],
             "seeds": [None, "0", 1.5, True, [], {}, [0, -1], ["a"], [[0]], -3],
             "eval_runs": [None, "3", 1e9, True, [], {}, 0, 1001, 10 ** 9],
             "data_seed": [None, "0", 0.5, True, [0], {}, -1, 2 ** 32, 2 ** 40],
             "zip": ["x", 1, {}, [["purifier", "nope"]], [[]], ["purifier"], [[1]]],
             "exclude": ["x", 1, {}, [{}], [1], [{"nope.path": 1}], [{"purifier.name": "nonesuch"}],
                         [{"seed": "zero"}], [{"purifier.name": []}]],
             "profile": [1, "", [], {}],
             "assets": [2, "", [], {}]}
    for key, values in wrong.items():
        for i, v in enumerate(values):
            add(f"type-{key}-{i}", smoke(**{key: v}))
    # unknown keys at every level
    add("unknown-top", smoke(colour="blue"))
    for kind in ("purifier", "attack"):
        for i, entry in enumerate(SMOKE[kind]):
            if isinstance(entry, dict):
                raw = smoke()
                raw[kind][i] = {**entry, "colour": 1}
                add(f"unknown-entry-{kind}-{i}", raw)
                raw = smoke()
                raw[kind][i] = {**entry, "params": {**entry["params"], "colour": 1}}
                add(f"unknown-param-{kind}-{i}", raw)
                raw = smoke()
                raw[kind][i] = {**entry, "zip": [["colour"]]}
                add(f"unknown-zip-{kind}-{i}", raw)
    for i in range(len(SMOKE["exclude"])):
        raw = smoke()
        raw["exclude"][i] = {**raw["exclude"][i], "purifier.params.colour": 1}
        add(f"unknown-exclude-{i}", raw)
    # missing required keys
    for key in ("sweep", "dataset", "classifier", "purifier", "attack", "examples"):
        add(f"missing-{key}", {k: v for k, v in SMOKE.items() if k != key})
    # sweep names
    for i, name in enumerate(["a" * 300, "a" * 65, "_x", ".x", "-x", "a/b", "", ".", "..", "a b", "é"]):
        add(f"sweep-name-{i}", smoke(sweep=name))
    # YAML syntax errors: cut before the required `examples`, unbalanced brackets, tabs, bad indents
    cut_limit = SMOKE_TEXT.index("examples:")
    for i in range(12):
        add(f"truncated-{i}", SMOKE_TEXT[:rng.randrange(0, cut_limit)].encode())
    lines = SMOKE_TEXT.splitlines()
    for i, junk in enumerate(["purifier: [none", "attack: {name: pgd", "\t- none", "  bad: : :",
                              "examples: [1, 2", "- list at top", "'unterminated", "&a *b",
                              "key: \"\\xZZ\"", "{", "]", "? ? ?", "!!python/object:os.system x",
                              "examples: !!binary AAAA", "@at: 1", "%YAML 9.9"]):
        pos = rng.randrange(0, len(lines))
        add(f"syntax-{i}", "\n".join(lines[:pos] + [junk] + lines[pos:]).encode() + b"\n")
    add("duplicate-key", (SMOKE_TEXT + "examples: 5\n").encode())
    add("top-list", b"- sweep: x\n")
    add("top-scalar", b"42\n")
    add("unhashable-key", b"? [a, b]\n: 1\n" + SMOKE_TEXT.encode())
    add("mapping-key", SMOKE_TEXT.encode() + b"? {a: 1}\n: 2\n")
    add("int-key", SMOKE_TEXT.encode() + b"12: x\n")
    add("null-key", SMOKE_TEXT.encode() + b"~: x\n")
    # alias expansion
    for width, levels in ((9, 9), (10, 6), (30, 4), (2, 40), (100, 3)):
        text = "a0: &a0 [x]\n" + "".join(
            f"a{j + 1}: &a{j + 1} [{', '.join(['*a%d' % j] * width)}]\n" for j in range(min(levels, 30)))
        add(f"alias-bomb-{width}-{levels}", (text + f"sweep: *a{min(levels, 30)}\n").encode())
    bomb = "b0: &b0 {k: v}\n" + "".join(
        f"b{j + 1}: &b{j + 1} {{{', '.join(f'k{i}: *b{j}' for i in range(10))}}}\n" for j in range(7))
    add("alias-bomb-mappings", (SMOKE_TEXT.replace("sweep: smoke", "sweep: smoke\nzip: *b7") + bomb).encode())
    add("alias-in-params", SMOKE_TEXT.replace("params: {t_s: 0.2, sampler: ddpm, steps: 4}",
                                              "params: &p {t_s: 0.2, sampler: ddpm, steps: *p}").encode())
    add("alias-recursive", b"a: &a [*a]\n" + SMOKE_TEXT.encode())
    add("alias-recursive-map", b"a: &a {b: *a}\n")
    add("alias-undefined", SMOKE_TEXT.replace("examples: 100", "examples: *nope").encode())
    # deep nesting, in several places
    for depth in (33, 100, 1000, 2000, 5000):
        add(f"deep-flow-{depth}", SMOKE_TEXT.replace("sweep: smoke", "sweep: " + "[" * depth + "]" * depth).encode())
        add(f"deep-map-{depth}", SMOKE_TEXT.replace("seeds: [0]", "seeds: " + "{a: " * depth + "1" + "}" * depth).encode())
    block = "".join("  " * i + f"k{i}:\n" for i in range(40)) + "  " * 40 + "v: 1\n"
    add("deep-block", (SMOKE_TEXT + "extra:\n" + "".join("  " + ln + "\n" for ln in block.splitlines())).encode())
    # huge integers
    for i, n in enumerate([str(2 ** 63), str(-(2 ** 63) - 1), "1" + "0" * 30, "9" * 5000, str(2 ** 64)]):
        for key in ("examples", "seeds", "data_seed", "eval_runs"):
            add(f"huge-int-{key}-{i}", SMOKE_TEXT.replace("seeds: [0]", "seeds: [0]\n" if key != "seeds" else "")
                .replace("examples: 100", "examples: 100" if key != "examples" else "")
                .replace("eval_runs: 3", "eval_runs: 3" if key != "eval_runs" else "").encode()
                + f"{key}: {n}\n".encode())
    add("huge-int-in-params", SMOKE_TEXT.replace("eot: 2", "eot: " + "7" * 400).encode())
    add("huge-float", SMOKE_TEXT.replace("eps: 0.25, steps: 10", "eps: 1e999, steps: 10").encode())
    add("nan-float", SMOKE_TEXT.replace("eps: 0.25, steps: 10", "eps: .nan, steps: 10").encode())
    add("sexagesimal", SMOKE_TEXT.replace("examples: 100", "examples: 1:0:0:0:0:0:0:0:0:0:0:0").encode())
    # non-UTF-8
    raw_bytes = SMOKE_TEXT.encode()
    for i, junk in enumerate([b"\xff", b"\xfe\xff", b"\xc3", b"\x80\x80", b"\xed\xa0\x80"]):
        pos = rng.randrange(0, len(raw_bytes))
        add(f"non-utf8-{i}", raw_bytes[:pos] + junk + raw_bytes[pos:])
    add("utf16", SMOKE_TEXT.encode("utf-16"))
    add("nul-bytes", raw_bytes.replace(b"sweep: smoke", b"sweep: sm\x00oke"))
    # empty and blank files
    add("empty", b"")
    add("blank", b"   \n\n  \n")
    add("comments-only", b"# nothing here\n")
    add("null-doc", b"~\n")
    # values no worker survives, on the smoke grid itself
    add("eot-1e12", SMOKE_TEXT.replace("eot: 2", "eot: 1000000000000").encode())
    add("eot-float", SMOKE_TEXT.replace("eot: 2", "eot: 1e12").encode())
    add("tucker-patch-1e9", SMOKE_TEXT.replace("tucker_patch: 4", "tucker_patch: 1000000000").encode())
    add("tucker-patch-9", SMOKE_TEXT.replace("tucker_patch: 4", "tucker_patch: 9").encode())
    add("eps-1e308", SMOKE_TEXT.replace("eps: 0.25, steps: 10", "eps: 1e308, steps: 10").encode())
    add("steps-huge", SMOKE_TEXT.replace("steps: 10,", "steps: 2000000,").encode())
    add("axes-explode", smoke(purifier=[{"name": "lorid", "params": {
        "t_s": list(range(1, 101)), "loops": list(range(1, 101)), "steps": list(range(1, 101))}}]))
    add("rows-explode", smoke(examples=450, shard_size=1, seeds=list(range(200))))
    # random mutations: a random path of the smoke grid set to a random junk value
    junk = [None, -1, 0, 10 ** 18, -0.5, 1e300, "", "x" * 500, [], {}, [[[]]], True]
    paths = _paths(SMOKE)
    while len([c for c in cases if c[0].startswith("random-")]) < 60:
        path = rng.choice(paths)
        value = rng.choice(junk)
        raw = copy.deepcopy(SMOKE)
        _set(raw, path, value)
        if raw == SMOKE:
            continue
        from harness.errors import GridError
        from harness.grid import expand
        try:  # keep only mutations the grid refuses (some junk is a valid value somewhere)
            expand(copy.deepcopy(raw), "m.yaml")
        except GridError:
            add(f"random-{len(cases)}", raw)
    return cases


def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _paths(v, prefix + (i,))
    return out


def _set(obj: Any, path: tuple, value: Any) -> None:
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def all_cases() -> tuple[list[tuple[str, bytes]], list[str]]:
    rng = random.Random(RNG_SEED)
    plugin_cases, skipped = _plugin_cases()
    return _smoke_cases(rng) + plugin_cases, skipped


def _plan_in_process(grid: Path, jobs: Path) -> tuple[Any, str, float]:
    err, out = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc: Any = main(["plan", "--grid", str(grid), "--jobs", str(jobs)])
        except SystemExit as exc:
            rc = exc.code
        except BaseException as exc:  # noqa: BLE001 - a crash is what this test looks for
            import traceback
            rc = f"raised {type(exc).__name__}"
            err.write("Traceback (most recent call last):\n" + traceback.format_exc()[-2000:])
    return rc, err.getvalue(), time.monotonic() - t0


def _problems(name: str, rc: Any, stderr: str, seconds: float, jobs: Path) -> list[str]:
    out = []
    if rc != 2:
        out.append(f"exit {rc}")
    if seconds > MAX_SECONDS:
        out.append(f"{seconds:.1f} s")
    if stderr.count("\n") > MAX_LINES or len(stderr.encode()) > MAX_BYTES:
        out.append(f"stderr {stderr.count(chr(10))} lines, {len(stderr.encode())} bytes")
    if "Traceback" in stderr:
        out.append("traceback")
    if jobs.exists() and any(jobs.rglob("*")):
        out.append("wrote under jobs/")
    return [f"{name}: {p}: {stderr[-300:]!r}" for p in out]


def test_fuzz_plan_refuses_every_malformed_grid(tmp_path: Path) -> None:
    cases, skipped = all_cases()
    builtin_skipped = [s for s in skipped if registry.source(*s.split(" ", 1)).startswith("harness.plugins")]
    assert not builtin_skipped, f"no valid base for built-in plugins: {builtin_skipped}"
    assert len(cases) >= 300, len(cases)
    assert len({n for n, _ in cases}) == len(cases)
    failures, times, sizes = [], [], []
    for i, (name, content) in enumerate(cases):
        grid = tmp_path / f"g{i}.yaml"
        grid.write_bytes(content)
        jobs = tmp_path / f"jobs{i}"
        rc, stderr, seconds = _plan_in_process(grid, jobs)
        times.append(seconds)
        sizes.append(len(stderr.encode()))
        failures += _problems(name, rc, stderr, seconds, jobs)
        grid.unlink()
    # special inputs: a directory as the grid, a missing file
    for name, path in (("directory", tmp_path / "a-dir"), ("missing", tmp_path / "nope.yaml")):
        if name == "directory":
            path.mkdir()
        rc, stderr, seconds = _plan_in_process(path, tmp_path / "jobs-special")
        failures += _problems(name, rc, stderr, seconds, tmp_path / "jobs-special")
    print(f"fuzz: {len(cases) + 2} grids, max {max(times):.2f} s, max stderr {max(sizes)} bytes")
    assert not failures, "\n".join(failures[:30]) + f"\n({len(failures)} failures of {len(cases) + 2})"


SUBPROCESS_SAMPLE = ("alias-bomb-9-9", "deep-flow-2000", "huge-int-examples-3", "non-utf8-0", "empty",
                     "unhashable-key", "sweep-name-0", "eot-1e12", "type-examples-11", "syntax-0",
                     "tucker-patch-9")


def test_fuzz_sample_through_real_cli(tmp_path: Path) -> None:
    cases = dict(all_cases()[0])
    failures = []
    for name in (*SUBPROCESS_SAMPLE, "directory"):
        grid = tmp_path / "a-dir" if name == "directory" else tmp_path / f"{name}.yaml"
        if name == "directory":
            grid.mkdir()
        else:
            grid.write_bytes(cases[name])
        t0 = time.monotonic()
        r = harness("plan", "--grid", str(grid), "--jobs", "jobs", cwd=tmp_path, timeout=60)
        # the import of the CLI costs ~1 s here; the check itself gets the same 5 s
        failures += _problems(name, r.returncode, r.stderr, time.monotonic() - t0 - 3.0,
                              tmp_path / "jobs")
        assert r.stdout == "", (name, r.stdout[:300])
    assert not failures, "\n".join(failures)


# Grids at the edges of the declared bounds: they plan, and a tiny run ends without a traceback.
EDGES: dict[str, dict[str, Any]] = {
    "top-level-max": {"purifier": "none", "attack": "none", "examples": 450, "batch_size": 100_000,
                      "shard_size": 10_000_000, "data_seed": 2 ** 32 - 1, "seeds": [2 ** 63 - 1],
                      "eval_runs": 1},
    "tucker-max": {"purifier": {"name": "tucker", "params": {"tucker_patch": 8, "tucker_stride": 8,
                                                             "tucker_rank": 1e6}},
                   "attack": {"name": "pgd", "params": {"eps": 1e6, "step_size": 1e6, "steps": 1, "eot": 1}}},
    "lorid-edges": {"purifier": {"name": "lorid", "params": {"t_s": 1000, "loops": 1, "steps": 1,
                                                             "sampler": "ddim", "tucker": "every_loop",
                                                             "tucker_patch": 1, "tucker_stride": 1,
                                                             "tucker_rank": 0.0}},
                    "attack": "none", "eval_runs": 2},
    "diffpure-min": {"purifier": {"name": "diffpure", "params": {"t_s": 1, "steps": 1000}},
                     "attack": {"name": "square", "params": {"eps": 0.0, "queries": 1}}},
    "gdmp-max-guidance": {"purifier": {"name": "gdmp", "params": {"t_s": 1, "loops": 1, "steps": 1,
                                                                  "guidance_scale": 1e6}},
                          "attack": {"name": "bpda", "params": {"eps": 0.0, "step_size": 0.0,
                                                                "steps": 1, "eot": 1}},
                          "data_seed": 0, "seeds": [0]},
}


@pytest.mark.parametrize("name", sorted(EDGES))
def test_edge_values_plan_and_run(name: str, tmp_path: Path) -> None:
    raw = {**MINIMAL, "sweep": f"edge-{name}", "examples": 2, "batch_size": 2, "shard_size": 2,
           **EDGES[name]}
    grid = tmp_path / "edge.yaml"
    grid.write_bytes(_dump(raw))
    rc, stderr, _ = _plan_in_process(grid, tmp_path / "jobs-plan")
    assert rc == 0, stderr
    r = harness("run", "--grid", str(grid), "--jobs", "jobs", "--results", "results", cwd=tmp_path,
                timeout=300)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.returncode == 0, r.stderr[-3000:]


@pytest.mark.parametrize("device", ["cuda:99", "gpu", "cpu:0"])
def test_run_device_checked_before_anything_runs(device: str, tmp_path: Path) -> None:
    grid = tmp_path / "g.yaml"
    grid.write_bytes(_dump({**MINIMAL, "examples": 2}))
    r = harness("run", "--grid", str(grid), "--jobs", "jobs", "--results", "results", "--device", device,
                cwd=tmp_path, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and "--device" in r.stderr and "cpu" in r.stderr, r.stderr
    assert not (tmp_path / "jobs").exists() and not (tmp_path / "results").exists()
