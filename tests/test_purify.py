"""`harness purify` end to end on the bundled digits: layouts, accuracy, PGD, corrupt items,
resume after kill -9, refused inputs, dry run and status.

Every run goes through the real console entry point (conftest.harness: `python -m harness.cli`
in a child process). LoRID as in grids/smoke.yaml: t_s 0.1, 3 loops, 4 DDPM steps (12 denoiser
evaluations per item). Outputs are read back twice: with harness.dataset_io (what a pipeline
using the harness sees) and with plain tarfile / pyarrow / file reads (so a reader bug cannot
hide a writer bug).

Reference for the accuracy check (criterion 2): LoRID's clean accuracy computed in this process
as the smoke sweep's worker computes it: Assets().defended(cell) (classifier(purifier(x))) on
the data set's float images in [0, 1], fp32 on the CPU, per-example counter-based noise
(ExampleNoise), averaged over 3 noise draws per example.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import harness

LORID = {"t_s": 0.1, "loops": 3, "steps": 4}  # grids/smoke.yaml's LoRID (sampler ddpm by default)
NFE = 3 * 4  # loops x steps: denoiser evaluations per item
PURIFY = ("--purifier", "lorid", "--params", json.dumps(LORID))
SHARD = 100  # items per shard (folder: --shard-items; tars and Parquet files: write_dataset's)
N = 450  # the digits test split
LAYOUTS = ("folder", "webdataset", "parquet")


# ---------------------------------------------------------------- helpers

def purify(inp: Path, out: Path, *extra: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    r = harness("purify", "--input", str(inp), "--output", str(out), *PURIFY, *extra, cwd=cwd)
    if check:
        assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def state_of(out: Path) -> Path:
    return Path(str(out) + ".purify")


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root (hidden ones included), relative path → bytes."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifests(out: Path) -> pd.DataFrame:
    files = sorted((state_of(out) / "manifests").glob("*.parquet"))
    assert files, f"no manifests under {state_of(out)}"
    return pd.concat([pd.read_parquet(f).assign(manifest=f.name) for f in files], ignore_index=True)


def raw_items(root: Path, layout: str) -> dict[str, dict[str, Any]]:
    """key → {file, png, fields}, read without harness.dataset_io; a key seen twice fails."""
    out: dict[str, dict[str, Any]] = {}

    def put(key: str, value: dict[str, Any]) -> None:
        assert key not in out, f"{root}: key {key!r} twice ({out[key]['file']}, {value['file']})"
        out[key] = value

    if layout == "folder":
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = p.relative_to(root).as_posix()
                put(rel.rsplit(".", 1)[0], {"file": rel, "png": p.read_bytes(), "fields": {"label": rel.split("/")[0]}})
    elif layout == "webdataset":
        for t in sorted(root.glob("*.tar")):
            with tarfile.open(t) as tf:
                for m in tf.getmembers():
                    folder, _, base = m.name.rpartition("/")
                    stem, _, ext = base.partition(".")
                    key = f"{folder}/{stem}" if folder else stem
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    item = out.get(key) if ext != "png" else None
                    if ext == "png":
                        put(key, {"file": t.name, "png": data, "fields": {}})
                    else:
                        assert item is not None, f"{t}: {m.name} before its image"
                        item["fields"][ext] = data
    else:
        for f in sorted(root.glob("*.parquet")):
            for i, row in enumerate(pq.read_table(f).to_pylist()):
                image = row.pop("image")
                key = str(row["key"]) if "key" in row else f"{f.stem}/{i}"
                put(key, {"file": f.name, "png": image["bytes"], "fields": {**row, "image.path": image["path"]}})
    return out


def decode(png: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(png)) as im:
        assert im.format == "PNG" and im.mode == "L", (im.format, im.mode)
        return np.array(im)


def io_items(root: Path, layout: str) -> list[Any]:
    """Every item as harness.dataset_io reads it (list_shards + read_items)."""
    from harness.dataset_io import list_shards, read_items

    return [it for s in list_shards(root, layout, SHARD) for it in read_items(root, s)]


def write_keyed(dst: Path, layout: str, images: np.ndarray, labels: np.ndarray) -> None:
    """The digits as webdataset or Parquet with the keys write_dataset gives an image folder
    ("<label>/<i:05d>"): write_dataset's own tar and Parquet keys ("00000", "part-00000/0")
    differ from its folder keys, and outputs depend on (seed, key), so only inputs with the same
    keys can give the same bytes across layouts."""
    from harness.dataset_io import encode_png

    keys = [f"{int(y)}/{i:05d}" for i, y in enumerate(labels)]
    dst.mkdir(parents=True)
    for s, start in enumerate(range(0, len(keys), SHARD)):
        part = range(start, min(start + SHARD, len(keys)))
        if layout == "webdataset":
            with tarfile.open(dst / f"shard-{s:06d}.tar", "w") as tf:
                for i in part:
                    for name, data in ((f"{keys[i]}.png", encode_png(images[i])), (f"{keys[i]}.cls", str(int(labels[i])).encode())):
                        ti = tarfile.TarInfo(name)
                        ti.size = len(data)
                        tf.addfile(ti, io.BytesIO(data))
        else:
            image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
            pq.write_table(pa.table({
                "key": pa.array([keys[i] for i in part], pa.string()),
                "image": pa.array([{"bytes": encode_png(images[i]), "path": f"{keys[i]}.png"} for i in part], image_type),
                "label": pa.array([int(labels[i]) for i in part], pa.int64())}), dst / f"part-{s:05d}.parquet")


# ---------------------------------------------------------------- shared runs (module scope)

@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("purify")


@pytest.fixture(scope="module")
def digits() -> SimpleNamespace:
    from harness.data.digits import arrays

    x, y = arrays("test")
    return SimpleNamespace(x=x, u8=np.round(x[:, 0] * 255).astype(np.uint8), y=y)


@pytest.fixture(scope="module")
def networks() -> SimpleNamespace:
    """The networks as the harness loads them (grid-resolved entries, fp32 on the CPU)."""
    from harness.grid import _expand_entry
    from harness.worker import Assets

    assets = Assets()
    entry = lambda kind, e: _expand_entry(kind, e, "test", kind)[0]  # noqa: E731
    cls = entry("classifier", "digits-cnn")
    lorid = entry("purifier", {"name": "lorid", "params": LORID})
    return SimpleNamespace(classifier=assets.classifier(cls, "fp32"),
                           lorid=assets.defended({"purifier": lorid, "classifier": cls}),
                           bare=assets.defended({"purifier": entry("purifier", "none"), "classifier": cls}))


def accuracy(net: Any, images_u8: np.ndarray, labels: np.ndarray) -> float:
    import torch

    x = torch.from_numpy(images_u8.astype(np.float32) / 255).reshape(len(images_u8), 1, 8, 8)
    with torch.inference_mode():
        return float((net(x).argmax(1).numpy() == np.asarray(labels)).mean())


@pytest.fixture(scope="module")
def runs(work: Path, digits: SimpleNamespace) -> Any:
    """runs(name): the digits written as `name` and purified (with the classifier), cached."""
    from harness.dataset_io import write_dataset

    cache: dict[str, SimpleNamespace] = {}

    def get(name: str) -> SimpleNamespace:
        if name not in cache:
            layout = name.split("-")[0]
            inp, out = work / f"in-{name}", work / f"out-{name}"
            if name.endswith("-keyed"):
                write_keyed(inp, layout, digits.u8, digits.y)
            else:
                write_dataset(inp, layout, digits.u8, digits.y, shard_items=SHARD)
            t0 = time.perf_counter()
            r = purify(inp, out, "--classifier", "digits-cnn", "--shard-items", str(SHARD), cwd=work)
            cache[name] = SimpleNamespace(layout=layout, inp=inp, out=out, result=r, seconds=time.perf_counter() - t0)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def small(work: Path, digits: SimpleNamespace) -> Path:
    """The first 60 digits as an image folder (for the runs that need no accuracy)."""
    from harness.dataset_io import write_dataset

    path = work / "in-small"
    write_dataset(path, "folder", digits.u8[:60], digits.y[:60])
    return path


# ---------------------------------------------------------------- 1. layouts

@pytest.mark.parametrize("layout", LAYOUTS)
def test_each_layout_keeps_keys_labels_files_and_image_size(runs: Any, layout: str) -> None:
    run = runs(layout)
    # harness.dataset_io's view: same keys (each once), same label fields, uint8 8x8x1 images
    before, after = io_items(run.inp, layout), io_items(run.out, layout)
    assert len(before) == N and all(i.error is None for i in before)
    assert len(after) == N, f"{len(after)} items in the output, {N} in the input"
    assert len({i.key for i in after}) == N, "an item appears twice in the output"
    assert {i.key for i in after} == {i.key for i in before}
    fields_in = {i.key: i.fields for i in before}
    for item in after:
        assert item.error is None, (item.key, item.error)
        assert item.fields == fields_in[item.key], item.key
        assert item.image.dtype == np.uint8 and item.image.shape == (8, 8, 1), (item.key, item.image.shape)
        assert 0 <= item.image.min() and item.image.max() <= 255
    # plain readers: same file names (tar and Parquet shards; folder: <label>/<i>.png), same
    # fields byte for byte, PNG grayscale images of the same size
    raw_in, raw_out = raw_items(run.inp, layout), raw_items(run.out, layout)
    assert sorted(raw_out) == sorted(raw_in)
    assert sorted(p.relative_to(run.out).as_posix() for p in run.out.rglob("*") if p.is_file()) == \
        sorted(p.relative_to(run.inp).as_posix() for p in run.inp.rglob("*") if p.is_file())
    for key, item in raw_out.items():
        assert item["file"] == raw_in[key]["file"], key
        assert item["fields"] == raw_in[key]["fields"], key
        assert decode(item["png"]).shape == (8, 8), key
    if layout == "webdataset":
        for t in sorted(run.inp.glob("*.tar")):
            with tarfile.open(t) as a, tarfile.open(run.out / t.name) as b:
                assert a.getnames() == b.getnames(), t.name  # member order kept
    if layout == "parquet":
        for f in sorted(run.inp.glob("*.parquet")):
            a, b = pq.read_schema(f), pq.read_schema(run.out / f.name)
            assert a.equals(b, check_metadata=True), f.name  # Hugging Face's features kept
    # the manifests: every item exactly once, hashes of the bytes actually written and read
    m = manifests(run.out)
    assert len(m) == N and m["key"].is_unique and set(m["key"]) == set(raw_in)
    assert (m["status"] == "purified").all(), m.loc[m["status"] != "purified", ["key", "status"]]
    for key, out_sha, in_sha in zip(m["key"], m["output_sha256"], m["input_sha256"]):
        assert out_sha == sha(raw_out[key]["png"]), key
        assert in_sha == sha(raw_in[key]["png"]), key
    assert m["pred_before"].notna().all() and m["pred_after"].notna().all()
    assert np.isfinite(m["l2"]).all() and ((m["linf"] >= 0) & (m["linf"] <= 1)).all()
    # purification did something (a no-op purifier would pass everything above)
    changed = sum(raw_out[k]["png"] != raw_in[k]["png"] for k in raw_in)
    assert changed > N // 2 and m["linf"].mean() > 0.05, (changed, m["linf"].mean())


def test_layouts_give_identical_bytes_for_the_same_key(runs: Any) -> None:
    """The output of an item depends on (seed, key) only: not on the layout, shard or batch."""
    folder = runs("folder")
    base = raw_items(folder.out, "folder")
    base_m = manifests(folder.out).set_index("key")["output_sha256"].sort_index()
    assert len(base) == N
    for name in ("webdataset-keyed", "parquet-keyed"):
        run = runs(name)
        other = raw_items(run.out, run.layout)
        assert sorted(other) == sorted(base), name
        differ = [k for k in base if other[k]["png"] != base[k]["png"]]
        assert not differ, f"{name}: {len(differ)} keys with other bytes than the folder's, e.g. {differ[:3]}"
        m = manifests(run.out).set_index("key")["output_sha256"].sort_index()
        assert m.equals(base_m), name


# ---------------------------------------------------------------- 2. accuracy

@pytest.fixture(scope="module")
def clean_figures(runs: Any, digits: SimpleNamespace, networks: SimpleNamespace) -> SimpleNamespace:
    import torch

    from harness.rng import ExampleNoise, derive_seed

    run = runs("folder")
    items = io_items(run.out, "folder")
    images = np.stack([i.image[:, :, 0] for i in items])
    labels = np.array([int(i.fields["label"]) for i in items])
    x = torch.from_numpy(digits.x)
    reference = []
    for draw in range(3):  # the smoke sweep's way: defended(x, per-example noise), clean images
        noise = ExampleNoise([derive_seed("test-purify-reference", i, draw) for i in range(N)])
        with torch.inference_mode():
            reference.append(float((networks.lorid(x, noise).argmax(1).numpy() == digits.y).mean()))
    m = manifests(run.out).set_index("key").loc[[i.key for i in items]]
    return SimpleNamespace(purified=accuracy(networks.classifier, images, labels),
                           bare=accuracy(networks.classifier, digits.u8, digits.y),
                           reference=float(np.mean(reference)), reference_draws=reference, items=items,
                           images=images, labels=labels, manifest=m)


def test_purified_clean_accuracy_matches_in_process_lorid(clean_figures: SimpleNamespace,
                                                          networks: SimpleNamespace) -> None:
    f = clean_figures
    print(f"\nclean: bare {f.bare:.3f}, LoRID in-process {f.reference:.3f} {f.reference_draws}, "
          f"purified files {f.purified:.3f}")
    assert abs(f.purified - f.reference) <= 0.03, (f.purified, f.reference)
    assert f.purified < 1.0 and f.bare > 0.95
    # the manifest's predictions are the classifier's on the input and on the written output
    import torch

    with torch.inference_mode():
        after = networks.classifier(torch.from_numpy(f.images.astype(np.float32)[:, None] / 255)).argmax(1).numpy()
    agree = float((f.manifest["pred_after"].to_numpy() == after).mean())
    assert agree >= 0.995, agree
    assert abs(float((f.manifest["pred_before"].to_numpy() == f.labels).mean()) - f.bare) <= 0.005


# ---------------------------------------------------------------- 3. PGD against the bare classifier

# Linf PGD within eps 0.25 on the bare classifier's exact gradient, each example stopping once
# its uint8 image is misclassified with a logit margin of KAPPA: the smallest perturbation along
# PGD's path that fools the classifier, as an adversarial data set carries. (PGD run to the
# budget's largest-loss point moves every pixel by 0.25, a quarter of the range; LoRID at t_s 0.1
# undoes about half of that: benchmarks/purify_pgd.py, RESULTS.md.)
PGD = {"norm": "linf", "eps": 0.25, "steps": 200, "step_size": 0.005, "random_start": False,
       "gradient": "exact", "eot": 1}
KAPPA = 0.5


@pytest.fixture(scope="module")
def pgd(work: Path, digits: SimpleNamespace, networks: SimpleNamespace, clean_figures: SimpleNamespace) -> SimpleNamespace:
    """PGD (harness.attacks.pgd, through the `none` purifier: the bare classifier's gradient,
    stopping per example at margin KAPPA) on the uint8 digits, written as an image folder,
    purified by `harness purify`."""
    import torch

    from harness.attacks.pgd import attack, margin_reached
    from harness.dataset_io import write_dataset
    from harness.rng import ExampleNoise, derive_seed

    x = torch.from_numpy(digits.u8.astype(np.float32)[:, None] / 255)
    y = torch.from_numpy(digits.y)
    noise = ExampleNoise([derive_seed("test-purify-pgd", i) for i in range(N)])
    x_adv = attack(networks.bare, x, y, PGD, noise, stop=margin_reached(networks.classifier, y, KAPPA)).x_adv.detach()
    adv_u8 = torch.round(x_adv[:, 0] * 255).to(torch.uint8).numpy()
    inp, out = work / "in-pgd", work / "out-pgd"
    write_dataset(inp, "folder", adv_u8, digits.y)
    purify(inp, out, "--classifier", "digits-cnn", "--shard-items", str(SHARD), cwd=work)
    written = io_items(inp, "folder")  # what was written, read back from disk
    w_images = np.stack([i.image[:, :, 0] for i in written])
    w_labels = np.array([int(i.fields["label"]) for i in written])
    items = io_items(out, "folder")
    images = np.stack([i.image[:, :, 0] for i in items])
    labels = np.array([int(i.fields["label"]) for i in items])
    linf = np.abs(adv_u8.astype(int) - digits.u8).reshape(N, -1).max(1) / 255
    return SimpleNamespace(bare_adv=accuracy(networks.classifier, w_images, w_labels),
                           purified_adv=accuracy(networks.classifier, images, labels),
                           purified_clean=clean_figures.purified, linf=float(linf.max()),
                           median_linf=float(np.median(linf)), manifest=manifests(out), items=len(items))


def test_pgd_examples_fool_the_bare_classifier(pgd: SimpleNamespace) -> None:
    print(f"\nPGD: bare {pgd.bare_adv:.3f}, purified {pgd.purified_adv:.3f} "
          f"(clean purified {pgd.purified_clean:.3f}), Linf max {pgd.linf:.4f}, median {pgd.median_linf:.4f}")
    assert pgd.bare_adv <= 0.10, pgd.bare_adv
    assert pgd.linf <= 0.25 + 1 / 255, pgd.linf  # eps 0.25 around the uint8 clean, plus rounding
    assert 0 < pgd.median_linf < 0.25, pgd.median_linf  # stopped inside the budget, not at its edge
    assert pgd.items == N and (pgd.manifest["status"] == "purified").all()


def test_purification_brings_pgd_accuracy_back_within_10_points_of_clean(pgd: SimpleNamespace) -> None:
    """Issue 14's criterion: after `harness purify`, the bare classifier's accuracy on the PGD
    examples is within 10 points of its accuracy on the purified clean images."""
    assert pgd.purified_clean - pgd.purified_adv <= 0.10, (pgd.purified_clean, pgd.purified_adv)


# ---------------------------------------------------------------- 4. a corrupt input item

@pytest.fixture(scope="module")
def corrupt(work: Path, small: Path) -> SimpleNamespace:
    inp = work / "in-corrupt"
    shutil.copytree(small, inp)
    files = sorted(p for p in inp.rglob("*.png"))
    victim = files[25]  # in the second shard of 20
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2])  # a truncated PNG: the header reads, the pixels do not
    key = victim.relative_to(inp).with_suffix("").as_posix()
    return SimpleNamespace(inp=inp, key=key, rel=victim.relative_to(inp).as_posix(), n=len(files))


def test_corrupt_item_is_skipped_named_recorded_and_reported(work: Path, corrupt: SimpleNamespace) -> None:
    out = work / "out-corrupt-skip"
    r = purify(corrupt.inp, out, "--shard-items", "20", cwd=work)
    assert corrupt.key in r.stderr, r.stderr[-2000:]
    m = manifests(out)
    assert len(m) == corrupt.n and m["key"].is_unique
    row = m[m["key"] == corrupt.key]
    assert len(row) == 1 and row["status"].iloc[0].startswith("skipped"), row
    assert row["output_sha256"].isna().all()
    assert (m.loc[m["key"] != corrupt.key, "status"] == "purified").all()
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert corrupt.rel not in written and len(written) == corrupt.n - 1
    rep = harness("report", str(out), cwd=work)
    assert rep.returncode == 0, rep.stderr[-2000:]
    assert corrupt.key in rep.stdout and "1 skipped" in rep.stdout, rep.stdout
    st = harness("status", str(out), cwd=work)
    assert st.returncode == 0 and "1 skipped" in st.stdout, st.stdout + st.stderr


def test_corrupt_item_with_on_error_stop_fails_naming_it(work: Path, corrupt: SimpleNamespace) -> None:
    out = work / "out-corrupt-stop"
    r = purify(corrupt.inp, out, "--shard-items", "20", "--on-error", "stop", cwd=work, check=False)
    assert r.returncode != 0
    assert corrupt.key in r.stderr, r.stderr[-2000:]
    assert not (state_of(out) / "manifests" / "folder-00001.parquet").exists()
    assert not (out / corrupt.rel).exists()


# ---------------------------------------------------------------- 5. resume after kill -9

def test_kill_9_then_rerun_gives_the_uninterrupted_bytes_exactly_once(work: Path, runs: Any) -> None:
    inp = runs("folder").inp  # 450 digits, an image folder (read only here)
    args = ("--shard-items", "50", "--batch-size", "10")
    killed, ref = work / "out-killed", work / "out-uninterrupted"
    staging = state_of(killed) / "staging"
    cmd = [sys.executable, "-m", "harness.cli", "purify", "--input", str(inp), "--output", str(killed), *PURIFY, *args]
    with open(work / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=work, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while len(list(staging.glob("*/rank-*-part-*.parquet"))) < 3:
                assert proc.poll() is None, f"finished before it could be killed: {(work / 'killed.log').read_text()[-2000:]}"
                assert time.monotonic() < deadline, "no staged parts after 120 s"
                time.sleep(0.005)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done = list((state_of(killed) / "manifests").glob("*.parquet"))
    assert len(done) < 9, "every shard finished before the kill: nothing was interrupted"
    assert list(staging.glob("*/rank-*-part-*.parquet")), "no staged part survived the kill"
    st = harness("status", str(killed), cwd=work)
    assert st.returncode == 0 and f"shards: {len(done)}/9 done" in st.stdout, st.stdout + st.stderr

    # The rerun resumes with another batch size (not part of the job's identity), so its batches
    # do not line up with the staged parts: the bytes must not depend on how items were batched.
    purify(inp, killed, "--shard-items", "50", "--batch-size", "7", cwd=work)
    purify(inp, ref, *args, cwd=work)  # the same job, never interrupted
    a, b = tree(killed), tree(ref)
    assert len(b) == N and sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
    assert [k for k in b if a[k] != b[k]] == []
    ma, mb = manifests(killed), manifests(ref)
    assert len(ma) == N and ma["key"].is_unique and (ma["status"] == "purified").all()
    cols = ["manifest", "key", "status", "input_sha256", "output_sha256", "seed"]
    pd.testing.assert_frame_equal(ma.sort_values("key")[cols].reset_index(drop=True),
                                  mb.sort_values("key")[cols].reset_index(drop=True))
    for key, out_sha in zip(ma["key"], ma["output_sha256"]):
        assert sha(a[f"{key}.png"]) == out_sha, key
    leftovers = [p for p in state_of(killed).rglob("*") if p.is_file() and ("part-" in p.name or p.name.endswith(".tmp"))]
    assert not leftovers, leftovers[:5]


# ---------------------------------------------------------------- 6. refused inputs: exit 2, nothing written

def test_unknown_purifier_parameter_refused(work: Path, small: Path) -> None:
    out = work / "out-badparam"
    r = harness("purify", "--input", str(small), "--output", str(out), "--purifier", "lorid",
                "--params", json.dumps({**LORID, "tee_ess": 0.1}), cwd=work)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "tee_ess" in r.stderr
    assert not out.exists() and not state_of(out).exists()


def test_output_inside_input_refused(work: Path, small: Path) -> None:
    before = tree(small)
    out = small / "purified"
    r = purify(small, out, cwd=work, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "output" in r.stderr
    assert tree(small) == before and not out.exists() and not state_of(out).exists()


def test_missing_input_refused(work: Path) -> None:
    out = work / "out-noinput"
    r = purify(work / "no-such-data-set", out, cwd=work, check=False)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "no-such-data-set" in r.stderr
    assert not out.exists() and not state_of(out).exists()


def test_second_job_over_the_same_output_refused(work: Path, small: Path) -> None:
    out = work / "out-twojobs"
    purify(small, out, cwd=work)
    first = {**{f"out/{k}": v for k, v in tree(out).items()}, **{f"state/{k}": v for k, v in tree(state_of(out)).items()}}
    assert sum(k.startswith("out/") for k in first) == 60
    r = harness("purify", "--input", str(small), "--output", str(out), "--purifier", "lorid",
                "--params", json.dumps({**LORID, "t_s": 0.2}), cwd=work)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "another job" in r.stderr, r.stderr
    after = {**{f"out/{k}": v for k, v in tree(out).items()}, **{f"state/{k}": v for k, v in tree(state_of(out)).items()}}
    assert after == first
    # the same job again is no other job: accepted, nothing redone, nothing changed
    purify(small, out, cwd=work)
    again = {**{f"out/{k}": v for k, v in tree(out).items()}, **{f"state/{k}": v for k, v in tree(state_of(out)).items()}}
    assert again == first


# ---------------------------------------------------------------- 7, 8. dry run, status

def test_dry_run_prints_the_cost_and_purifies_nothing(work: Path, runs: Any) -> None:
    out = work / "out-dry"
    r = purify(runs("folder").inp, out, "--shard-items", str(SHARD), "--dry-run", cwd=work)
    m = re.search(r"([\d,]+) items in (\d+) shards × (\d+) denoiser evaluations = ~(\S+ ?\S*) evaluations", r.stdout)
    assert m, r.stdout
    assert int(m.group(1).replace(",", "")) == N and int(m.group(2)) == 5 and int(m.group(3)) == NFE, m.groups()
    assert m.group(4).replace(" ", "") in ("5.4k", "5,400"), m.group(4)  # 450 × 12
    assert not tree(out), sorted(tree(out))[:5]
    assert not tree(state_of(out) / "manifests") and not tree(state_of(out) / "staging")


def test_status_after_a_complete_run(work: Path, runs: Any) -> None:
    out = runs("folder").out
    st = harness("status", str(out), cwd=work)
    assert st.returncode == 0, st.stderr[-2000:]
    assert "shards: 5/5 done" in st.stdout and f"items: {N}/{N}" in st.stdout, st.stdout
    rep = harness("report", str(out), cwd=work)
    assert rep.returncode == 0 and f"{N} purified, 0 skipped" in rep.stdout, rep.stdout + rep.stderr


def test_a_denoiser_of_another_resolution_is_refused_at_plan_time(work: Path, small: Path) -> None:
    """A diffusers folder's config.json (in_channels, sample_size) is read before anything runs."""
    import json

    folder = work / "unet-32"
    folder.mkdir(exist_ok=True)
    (folder / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel", "in_channels": 3,
                                                    "sample_size": 32}))
    out = work / "out-wrong-resolution"
    r = harness("purify", "--input", str(small), "--output", str(out), "--purifier", "lorid",
                "--params", json.dumps({"t_s": 0.1, "denoiser": str(folder)}), cwd=work)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "3x32x32" in r.stderr and "is 1x8x8" in r.stderr and "diffusers folder" in r.stderr, r.stderr
    assert not out.exists() and not state_of(out).exists()
