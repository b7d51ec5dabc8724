"""Grid parsing, expansion, hashing and every error a grid can raise."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from harness.errors import GridError
from harness.grid import HASH_SALT, cell_hash, cell_label, expand, flatten, load_grid
from harness.plan import write_plan

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "grids" / "smoke.yaml"

BASE: dict[str, Any] = {
    "sweep": "t",
    "dataset": "digits",
    "classifier": "digits-cnn",
    "purifier": "none",
    "attack": "none",
    "examples": 10,
}


def grid(**over: Any) -> dict[str, Any]:
    raw = copy.deepcopy(BASE)
    raw.update(over)
    return raw


def cells(**over: Any) -> list[dict[str, Any]]:
    return expand(grid(**over), "g.yaml")


# ---------------------------------------------------------------- expansion

def test_smoke_grid_counts() -> None:
    # purifier: none, tucker, diffpure, lorid × tucker[none, pre] = 5 variants;
    # attack: none, pgd × gradient[exact, greybox] = 3 variants → 15 cells;
    # the two excludes each remove one (none|tucker × greybox) → 13; + a 2× PGD rung for lorid
    # (tucker none) only → 14; + PGD at eps 0.1 on none and lorid (tucker none) → 16; + the
    # t_s/loops ablation (3 LoRIDs, clean and the exact PGD at eps 0.25 each) → 21.
    g = load_grid(SMOKE)
    assert len(g.cells) == 21
    assert (g.sweep, g.examples, g.batch_size, g.shard_size, g.seeds, g.eval_runs) == \
        ("smoke", 100, 50, 100, [0], 3)
    pairs = {(c["purifier"]["name"], c["attack"]["params"].get("gradient")) for c in g.cells}
    assert ("none", "greybox") not in pairs and ("tucker", "greybox") not in pairs
    assert ("lorid", "greybox") in pairs and ("none", None) in pairs
    assert len({cell_hash(c) for c in g.cells}) == 21


def test_defaults_filled() -> None:
    [c] = cells(purifier="lorid")
    assert c["purifier"] == {"name": "lorid", "params": {
        "denoiser": "digits-ddpm", "t_s": 0.1, "loops": 3, "sampler": "ddpm", "steps": 0,
        "tucker": "none", "tucker_patch": 4, "tucker_stride": 2, "tucker_rank": 0.5,
        "tucker_per": "image"}}
    assert c["attack"] == {"name": "none", "params": {}}
    assert (c["seed"], c["eval_runs"], c["data_seed"], c["precision"]) == (0, 1, 0, "auto")
    assert set(c) == {"dataset", "classifier", "purifier", "attack", "seed", "eval_runs",
                      "data_seed", "precision"}


def test_grid_defaults(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(grid()))
    g = load_grid(p)
    assert (g.batch_size, g.shard_size, g.seeds, g.eval_runs, g.data_seed, g.profile) == \
        (64, 256, [0], 1, 0, None)
    assert g.source == p.read_bytes()


def test_param_axes_cross() -> None:
    out = cells(purifier={"name": "lorid", "params": {"t_s": [0.1, 0.2], "loops": [1, 2, 3]}})
    assert len(out) == 6


def test_entry_zip() -> None:
    out = cells(purifier={"name": "lorid", "params": {"t_s": [0.1, 0.2, 0.3], "loops": [1, 2, 3],
                                                      "steps": [5, 10]},
                          "zip": [["t_s", "loops"]]})
    assert len(out) == 6
    pairs = {(c["purifier"]["params"]["t_s"], c["purifier"]["params"]["loops"]) for c in out}
    assert pairs == {(0.1, 1), (0.2, 2), (0.3, 3)}


def test_top_level_zip() -> None:
    out = cells(purifier=["none", "tucker"], attack=["none", {"name": "pgd", "params":
                {"eps": 0.1, "step_size": 0.01}}], seeds=[1, 2],
                zip=[["purifier", "attack"]])
    assert len(out) == 4  # 2 zipped pairs × 2 seeds
    assert {(c["purifier"]["name"], c["attack"]["name"]) for c in out} == \
        {("none", "none"), ("tucker", "pgd")}


def test_exclude() -> None:
    out = cells(purifier=["none", "tucker"], seeds=[0, 1, 2],
                exclude=[{"purifier.name": "tucker", "seed": 2},
                         {"purifier.params.tucker_rank": 0.5, "seed": 0}])
    kept = {(c["purifier"]["name"], c["seed"]) for c in out}
    assert kept == {("none", 0), ("none", 1), ("none", 2), ("tucker", 1)}


def test_exclude_value_normalised() -> None:
    # eps is a float parameter: an integer in the rule is the same value.
    out = cells(attack={"name": "pgd", "params": {"eps": [1, 0.5], "step_size": 0.01}},
                exclude=[{"attack.params.eps": 1}])
    assert [c["attack"]["params"]["eps"] for c in out] == [0.5]


def test_list_param_flat_is_one_value() -> None:
    out = cells(purifier={"name": "multistep", "params": {"schedule": [30, 30, 50]}})
    assert len(out) == 1 and out[0]["purifier"]["params"]["schedule"] == [30, 30, 50]


def test_list_param_list_of_lists_is_axis() -> None:
    out = cells(purifier={"name": "multistep", "params": {"schedule": [[30, 30], [10, 20, 0.05]]}})
    assert [c["purifier"]["params"]["schedule"] for c in out] == [[30, 30], [10, 20, 0.05]]


def test_seeds_int_and_duplicates_collapse() -> None:
    assert [c["seed"] for c in cells(seeds=7)] == [7]
    # Two spellings of the same resolved cell are one cell.
    assert len(cells(purifier=["lorid", {"name": "lorid", "params": {"t_s": 0.1}}])) == 1


def test_yaml_exponent_is_float(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_text(yaml.safe_dump(grid()) + "exclude: []\n")
    text = p.read_text().replace("attack: none", "attack: {name: pgd, params: {eps: 8e-3, "
                                                 "step_size: 2e-3}}")
    p.write_text(text)
    [c] = load_grid(p).cells
    assert c["attack"]["params"]["eps"] == pytest.approx(0.008)


# ---------------------------------------------------------------- hash and label

def test_hash_pinned() -> None:
    # Results are keyed by this hash: changing it must be deliberate (bump HASH_SALT).
    [c] = cells()
    assert cell_hash(c) == "2b3b3f6710dd7775"  # v4 (the CPU's own normal transform)


def test_hash_is_salted_sha256_of_canonical_json() -> None:
    [c] = cells()
    text = json.dumps(c, sort_keys=True, separators=(",", ":"))
    assert cell_hash(c) == hashlib.sha256((HASH_SALT + text).encode()).hexdigest()[:16]


def test_hash_ignores_key_order_and_sizes() -> None:
    [c] = cells()
    reordered = dict(reversed(list(c.items())))
    assert cell_hash(reordered) == cell_hash(c)
    [bigger] = cells(examples=400, batch_size=7, shard_size=3)
    assert cell_hash(bigger) == cell_hash(c)


def test_hash_changes_with_params() -> None:
    [a] = cells(purifier={"name": "lorid", "params": {"loops": 3}})
    [b] = cells(purifier={"name": "lorid", "params": {"loops": 4}})
    [s] = cells(purifier={"name": "lorid", "params": {"loops": 3}}, seeds=1)
    [e] = cells(purifier={"name": "lorid", "params": {"loops": 3}}, eval_runs=2)
    assert len({cell_hash(x) for x in (a, b, s, e)}) == 4
    # t_s as a step (int) and as a fraction (float) are different cells.
    [i] = cells(purifier={"name": "lorid", "params": {"t_s": 1}})
    [f] = cells(purifier={"name": "lorid", "params": {"t_s": 1.0}})
    assert cell_hash(i) != cell_hash(f)


def test_cell_label() -> None:
    [c] = cells(purifier={"name": "lorid", "params": {"t_s": 0.2, "steps": 5, "tucker": "pre"}},
                attack={"name": "pgd", "params": {"eps": 0.1, "step_size": 0.01}})
    # t_s and loops are declared label parameters: shown even at their default
    assert cell_label(c) == "lorid(t_s=0.2,loops=3,steps=5,tucker=pre)"
    assert cell_label(c, "attack") == "pgd(norm=linf,eps=0.1,steps=20,step_size=0.01,eot=1)"
    [n] = cells()
    assert cell_label(n) == "none"


def test_flatten() -> None:
    [c] = cells(purifier={"name": "diffpure", "params": {"t_s": 30}})
    f = flatten(c)
    assert f["purifier.name"] == "diffpure" and f["purifier.params.t_s"] == 30
    assert f["seed"] == 0 and "attack.name" in f


# ---------------------------------------------------------------- errors

ZIP_BAD = {"name": "lorid", "params": {"t_s": [0.1, 0.2], "loops": [1, 2, 3]},
           "zip": [["t_s", "loops"]]}

# (id, grid text or raw mapping, key path, fragments the message must contain)
BAD: list[tuple[str, Any, str, tuple[str, ...]]] = [
    ("not-yaml", "a: [1", "<root>", ("not valid YAML", "sweep, dataset")),
    ("not-mapping", "- 1\n- 2\n", "<root>", ("not a mapping", "sweep, dataset")),
    ("duplicate-key", yaml.safe_dump(grid()) + "examples: 5\n", "<root>", ("duplicate key",)),
    ("unknown-top", grid(sweeps="x"), "sweeps", ("unknown key", "allowed: sweep, dataset")),
    ("missing-required", {k: v for k, v in grid().items() if k != "examples"}, "examples",
     ("required", "sweep, dataset")),
    ("bad-sweep-name", grid(sweep="a/b"), "sweep", ("letters, digits",)),
    ("examples-zero", grid(examples=0), "examples", ("an integer in [1, ",)),
    ("unknown-plugin", grid(purifier=["none", "lorrid"]), "purifier[1]",
     ("unknown purifier 'lorrid'", "diffpure, gdmp, lorid, multistep, none, tucker")),
    ("unknown-plugin-mapping", grid(attack={"name": "fgsm"}), "attack.name",
     ("unknown attack", "none, pgd")),
    ("unknown-entry-key", grid(purifier={"name": "lorid", "loops": 3}), "purifier.loops",
     ("unknown key", "name, params, zip")),
    ("unknown-param", grid(purifier=["none", {"name": "lorid", "params": {"loop": 3}}]),
     "purifier[1].params.loop", ("unknown parameter", "loops")),
    ("out-of-range", grid(purifier=["none", "tucker", "diffpure",
                                    {"name": "lorid", "params": {"loops": [3, 0]}}]),
     "purifier[3].params.loops", ("0 is not allowed", "an integer in [1, 1000]")),
    ("bad-choice", grid(purifier={"name": "lorid", "params": {"tucker": "post"}}),
     "purifier.params.tucker", ("'post'", "one of 'none', 'pre', 'noisy', 'every_loop'")),
    ("wrong-type", grid(attack=["none", {"name": "pgd", "params": {"eps": "big",
                                                                   "step_size": 0.01}}]),
     "attack[1].params.eps", ("'big' is not allowed", "a number in [0.0, 1000000.0]")),
    ("missing-required-param", grid(attack="pgd"), "attack.params.eps",
     ("required", "a number in [0.0, 1000000.0]")),
    ("empty-param-list", grid(purifier={"name": "lorid", "params": {"tucker": []}}),
     "purifier.params.tucker", ("empty list", "one of 'none', 'pre'")),
    ("empty-plugin-list", grid(purifier=[]), "purifier", ("empty list", "lorid")),
    ("empty-seeds", grid(seeds=[]), "seeds", ("empty list", "integer >= 0")),
    ("empty-schedule-axis", grid(purifier={"name": "multistep", "params": {"schedule": [[]]}}),
     "purifier.params.schedule", ("[] is not allowed", "non-empty list of numbers")),
    ("zip-unequal", grid(purifier=ZIP_BAD), "purifier.zip[0]",
     ("[t_s, loops]", "t_s 2, loops 3", "equal length")),
    ("zip-unknown-name", grid(purifier={**ZIP_BAD, "zip": [["t_s", "steps"]]}),
     "purifier.zip[0]", ("'steps'", "allowed: loops, t_s")),
    ("top-zip-unequal", grid(purifier=["none", "tucker"], seeds=[0, 1, 2],
                             zip=[["purifier", "seeds"]]), "zip[0]",
     ("[purifier, seeds]", "purifier 2, seeds 3")),
    ("top-zip-unknown", grid(zip=[["purifier", "seed"]]), "zip[0]",
     ("'seed'", "dataset, classifier, purifier, attack, seeds")),
    ("exclude-unknown-path", grid(exclude=[{"defence.name": "none"}]), "exclude[0].defence.name",
     ("no cell has this path", "purifier.name")),
    ("exclude-param-not-in-grid", grid(exclude=[{"attack.params.gradient": "greybox"}]),
     "exclude[0].attack.params.gradient", ("no cell has this path", "attack.name")),
    ("exclude-bad-value", grid(attack={"name": "pgd", "params": {"eps": 0.1, "step_size": 0.1}},
                               exclude=[{"attack.params.gradient": "grey"}]),
     "exclude[0].attack.params.gradient", ("'grey'", "one of 'exact', 'greybox'")),
    ("exclude-bad-name", grid(exclude=[{"purifier.name": "nope"}]), "exclude[0].purifier.name",
     ("unknown purifier", "lorid")),
    ("all-excluded", grid(purifier=["none", "tucker"],
                          exclude=[{"seed": 0}]), "exclude", ("every cell is excluded", "2")),
    # what the reader cannot represent, and values no worker survives (issue 11)
    ("empty-file", "", "<root>", ("empty file",)),
    ("unhashable-key", "? [a]\n: 1\n", "<root>", ("keys must be names",)),
    ("int-key", "1: x\n", "<root>", ("keys must be names",)),
    ("too-deep", "sweep: " + "[" * 2000 + "]" * 2000 + "\n", "<root>", ("nested deeper than 32",)),
    ("huge-int", "sweep: t\nexamples: " + "9" * 5000 + "\n", "<root>", ("expected at most 64 bits",)),
    ("int-over-64-bits", "examples: 9223372036854775808\n", "<root>", ("outside 64 bits",)),
    ("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n" for p, c in zip("abcdef", "bcdefg")),
     "g[9][9][1][0][0][0][2]", ("more than 100000 values",)),
    ("sweep-too-long", grid(sweep="a" * 300), "sweep", ("1 to 64", "[...]")),
    ("sweep-underscore", grid(sweep="_x"), "sweep", ("starting with a letter or digit",)),
    ("examples-over-split", grid(examples=451), "examples", ("450",)),
    ("eval-runs-huge", grid(eval_runs=10 ** 9), "eval_runs", ("[1, 1000]",)),
    ("data-seed-2-40", grid(data_seed=2 ** 40), "data_seed", ("4294967295",)),
    ("eot-huge", grid(attack={"name": "pgd", "params": {"eps": 0.1, "step_size": 0.01, "eot": 10 ** 12}}),
     "attack.params.eot", ("[1, 10000]",)),
    ("eps-huge", grid(attack={"name": "pgd", "params": {"eps": 1e308, "step_size": 0.01}}),
     "attack.params.eps", ("1e+308 is not allowed",)),
    ("eps-inf", "sweep: t\ndataset: digits\nclassifier: digits-cnn\npurifier: none\nexamples: 2\n"
                "attack: {name: pgd, params: {eps: .inf, step_size: 0.1}}\n",
     "attack.params.eps", ("inf is not allowed",)),
    ("tucker-patch-over-side", grid(purifier={"name": "tucker", "params": {"tucker_patch": 9}}),
     "purifier.params.tucker_patch", ("image side", "8x8")),
    ("tucker-patch-huge", grid(purifier={"name": "tucker", "params": {"tucker_patch": 10 ** 9}}),
     "purifier.params.tucker_patch", ("[1, 64]",)),
    ("long-value-cut", grid(purifier="x" * 5000), "purifier", ("[...]",)),
]


@pytest.mark.parametrize("case", BAD, ids=[b[0] for b in BAD])
def test_bad_grid(case: tuple[str, Any, str, tuple[str, ...]], tmp_path: Path) -> None:
    _, content, key, fragments = case
    path = tmp_path / "bad-grid.yaml"
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    jobs = tmp_path / "jobs"
    with pytest.raises(GridError) as info:
        write_plan(load_grid(path), jobs)
    err = info.value
    assert err.file == str(path) and err.key == key
    text = str(err)
    for fragment in (str(path), key, *fragments):
        assert fragment in text, f"{fragment!r} not in {text!r}"
    assert len(text) < len(str(path)) + 1000
    assert not jobs.exists()


def test_non_utf8_and_directory(tmp_path: Path) -> None:
    p = tmp_path / "g.yaml"
    p.write_bytes(b"sweep: \xff\xfe\n")
    with pytest.raises(GridError, match="not UTF-8"):
        load_grid(p)
    with pytest.raises(GridError, match="is a directory"):
        load_grid(tmp_path)


def test_sweep_name_rule() -> None:
    from harness.grid import is_sweep_name

    assert all(is_sweep_name(n) for n in ("smoke", "a", "cifar10.v2", "x-1_2", "9" * 64))
    assert not any(is_sweep_name(n) for n in ("", ".", "..", "_x", ".x", "-x", "a/b", "a" * 65, 3, None))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GridError, match="cannot read"):
        load_grid(tmp_path / "nope.yaml")


@pytest.mark.parametrize("bad", [lambda r: r.update(purifier={"name": "lorid", "params": None}),
                                 lambda r: r.update(zip="purifier"),
                                 lambda r: r.update(exclude={"seed": 0})])
def test_bad_shapes(bad: Callable[[dict[str, Any]], None]) -> None:
    raw = grid()
    bad(raw)
    with pytest.raises(GridError, match="is not allowed"):
        expand(raw, "g.yaml")


def test_sweep_name_rule_is_the_reports() -> None:
    """One rule: every sweep name the grid accepts is read by the report, every one the report
    skips is refused by the grid."""
    import random

    from analysis.aggregate import _ignored
    from harness.grid import is_sweep_name

    rng = random.Random(0)
    alphabet = "aZ09_.-~ /"
    names = ["smoke", "paper-cifar10", ".hidden", "_under", "...", "run.tmp", "a" * 64, "a" * 65, "x.y_z-1"]
    names += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8))) for _ in range(2000)]
    for name in names:
        if is_sweep_name(name):
            assert not _ignored(name), name
        if _ignored(name):
            assert not is_sweep_name(name), name
    assert not any(is_sweep_name(n) for n in (".hidden", "_under", "...", "run.tmp", "a" * 65))
