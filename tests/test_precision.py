"""The GPU path's numerics, exercised on CPU: bf16 autocast (CPU autocast), channels_last,
compilation with its fallback, one purification batch for clean and adversarial inputs."""
from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest
import torch
from torch import nn

from conftest import harness
from harness import precision
from harness.models.bundled import load_classifier, load_denoiser
from harness.precision import Network, resolve
from harness.purify.pipeline import Purifier, PurifierConfig
from harness.rng import ExampleNoise


def _digits(n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images[:n] / 16.0, dtype=torch.float32).unsqueeze(1)
    return x, torch.tensor(d.target[:n])


def test_resolve() -> None:
    assert resolve("auto", "cpu") == "fp32" and resolve(None, "cpu") == "fp32"
    assert resolve("auto", "cuda:1") == "bf16"  # (a device name: no GPU needed to resolve it)
    assert resolve("fp32", "cuda:0") == "fp32" and resolve("bf16", "cpu") == "bf16"
    with pytest.raises(ValueError, match="fp16"):
        resolve("fp16", "cpu")


def test_bf16_runs_the_network_in_bf16_and_returns_fp32() -> None:
    model = load_classifier({})
    seen: list[torch.dtype] = []
    first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
    x, y = _digits()
    ref = model(x)
    out = Network(model, "bf16", "cpu")(x)
    assert seen == [torch.float32, torch.bfloat16]  # the plain call, then under autocast
    assert out.dtype == torch.float32
    assert (out - ref).abs().max() < 0.25 * ref.abs().max()  # close, not equal: bf16 has 8 bits
    assert (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.9
    assert torch.equal(Network(model, "fp32", "cpu")(x), ref)  # fp32 changes nothing


def test_channels_last_gives_the_same_values() -> None:
    model = load_classifier({})
    x, _ = _digits(8)
    ref = model(x)
    wrapped = Network(model, "fp32", "cpu", channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(wrapped(x), ref, rtol=1e-5, atol=1e-5)


def test_compile_or_its_fallback_gives_the_eager_values(capsys: pytest.CaptureFixture[str]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 4))
    x = torch.randn(5, 16)
    compiled = Network(net, "fp32", "cpu", compile=True)  # real inductor where a C compiler is
    torch.testing.assert_close(compiled(x), net(x), rtol=1e-5, atol=1e-5)


def test_a_failing_compile_falls_back_once(monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    calls = []

    def broken(module: nn.Module, **_kw: object):
        def run(*_a: object) -> torch.Tensor:
            calls.append(1)
            raise RuntimeError("inductor: no C++ compiler")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    net = nn.Linear(3, 2)
    x = torch.randn(4, 3)
    wrapped = Network(net, "fp32", "cpu", compile=True)
    assert torch.equal(wrapped(x), net(x)) and torch.equal(wrapped(x), net(x))
    assert calls == [1]  # tried once, then eager for good
    assert capsys.readouterr().err.count("running eagerly") == 1


def test_clean_and_adversarial_in_one_batch_equal_two_batches() -> None:
    """Example i's noise is its own in a batch of 2n (clean then adversarial), so purifying
    both halves together gives what two calls give."""
    eps = load_denoiser("digits-ddpm")
    pur = Purifier(PurifierConfig(rounds=[0.1], sampler="ddpm", steps=5), eps)
    x, _ = _digits(6)
    x_adv = (x + 0.1 * torch.sign(torch.randn_like(x))).clamp(0, 1)
    seeds = [11, 22, 33, 44, 55, 66]
    with torch.inference_mode():
        both = pur(torch.cat([x, x_adv]), ExampleNoise(seeds * 2))
        alone = torch.cat([pur(x, ExampleNoise(seeds)), pur(x_adv, ExampleNoise(seeds))])
    torch.testing.assert_close(both, alone, rtol=1e-5, atol=1e-5)


def test_bf16_purification_agrees_with_fp32() -> None:
    """The CPU counterpart of the GPU check: LoRID (digits DDPM) purified and classified at
    bf16 and at fp32 from the same noise."""
    x, y = _digits(64)
    seeds = list(range(64))
    preds = {}
    for prec in ("fp32", "bf16"):
        eps = Network(load_denoiser("digits-ddpm"), prec, "cpu")
        clf = Network(load_classifier({}), prec, "cpu")
        pur = Purifier(PurifierConfig(rounds=[0.1, 0.1], sampler="ddpm", steps=5), eps)
        with torch.inference_mode():
            preds[prec] = clf(pur(x, ExampleNoise(seeds))).argmax(1)
    agree = (preds["fp32"] == preds["bf16"]).float().mean().item()
    assert agree >= 0.9, agree
    assert (preds["fp32"] == y).float().mean() >= 0.8


def test_rows_record_the_precision(tiny_grid, tmp_path) -> None:
    r = harness("run", "--grid", str(tiny_grid), cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    files = list((tmp_path / "results").rglob("*.parquet"))
    assert files
    assert {v for f in files for v in pq.read_table(f, columns=["precision"]).column(0).to_pylist()} == {"fp32"}


def test_backends_untouched_on_cpu() -> None:
    before = torch.backends.cudnn.benchmark
    precision.configure_backends("cpu", "bf16")
    assert torch.backends.cudnn.benchmark == before


def test_out_of_memory_turns_checkpointing_on_then_halves_the_batch(tiny_grid, tmp_path, monkeypatch) -> None:
    """A batch that does not fit is retried (checkpointing first, then half the batch) and
    every row is written exactly once, the same rows as a run that never ran out."""
    import harness.evaluate as evaluate
    from analysis.aggregate import load_results
    from harness.grid import load_grid
    from harness.plan import make_plan
    from harness.batching import BatchFit, combination_key
    from harness.worker import Assets, run_row

    plan = make_plan(load_grid(tiny_grid))
    real = evaluate.evaluate_batch
    sizes: list[tuple[int, bool]] = []

    def tight(model, batch, **kw):  # a device that holds 1 example, and only when checkpointing
        sizes.append((len(batch.examples), model.purifier.checkpoint))
        if len(batch.examples) > 1 or not model.purifier.checkpoint:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(model, batch, **kw)

    row = plan.iloc[0].to_dict()
    plain = run_row(row, tmp_path / "plain", Assets())
    assets = Assets()  # as on a GPU: no checkpointing to start with
    assets.cache[f"fit:cpu:{combination_key(json.loads(row['cell_json']))}"] = BatchFit(4, False)
    monkeypatch.setattr(evaluate, "evaluate_batch", tight)
    tight_rows = run_row(row, tmp_path / "tight", assets)
    assert tight_rows == plain > 0
    assert sizes[:3] == [(4, False), (4, True), (2, True)] and all(s == (1, True) for s in sizes[4:])
    a, b = (load_results(tmp_path / d) for d in ("plain", "tight"))
    keep = ["cell", "example", "eval_run", "clean_pred", "adv_pred", "perturbation"]
    key = ["example", "eval_run"]
    assert a[keep].sort_values(key).reset_index(drop=True).equals(b[keep].sort_values(key).reset_index(drop=True))
    assert b["grad_checkpoint"].all()  # recorded on every row
    # what fitted is kept per device type beside the sweep: a new process starts there
    fit = json.loads((tmp_path / "tight" / row["sweep"] / "_fit" / "cpu.json").read_text())
    assert [(e["batch"], e["checkpoint"]) for e in fit.values()] == [(1, True)]
    (tmp_path / "again" / row["sweep"]).mkdir(parents=True)
    shutil.copytree(tmp_path / "tight" / row["sweep"] / "_fit", tmp_path / "again" / row["sweep"] / "_fit")
    sizes.clear()
    assert run_row(row, tmp_path / "again", Assets()) == plain
    assert sizes and all(s == (1, True) for s in sizes)  # no out-of-memory retry this time


def test_grid_precision_is_checked_and_part_of_the_cell(tmp_path) -> None:
    from harness.errors import UsageError
    from harness.grid import cell_hash, load_grid

    text = (tmp_path / "tiny.yaml")
    base = "sweep: p\ndataset: digits\nclassifier: digits-cnn\npurifier: none\nattack: none\nexamples: 2\n"
    text.write_text(base)
    auto = load_grid(text).cells[0]
    text.write_text(base + "precision: fp32\n")
    fp32 = load_grid(text).cells[0]
    assert auto["precision"] == "auto" and fp32["precision"] == "fp32"
    assert cell_hash(auto) != cell_hash(fp32)  # part of the identity: never mixed
    text.write_text(base + "precision: fp16\n")
    with pytest.raises(UsageError, match=r"precision.*fp16.*auto, fp32, bf16"):
        load_grid(text)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_compiled_sampler_step_matches_eager_with_one_graph_per_variant(
        sampler: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """HARNESS_COMPILE=1 compiles the denoiser and the reverse step's arithmetic (real inductor
    on CPU), under checkpointing: the same values and gradients as eager to float rounding, no
    fallback (checkpoint's early stop passes through), and no recompile of the step for other
    steps, batch sizes or image sizes (floats and shapes are symbolic)."""
    from torch._dynamo.utils import counters

    from harness.precision import Network
    from harness.purify.samplers import _update, reverse
    from harness.purify.schedule import Schedule
    from harness.rng import ExampleNoise

    sched = Schedule.linear()
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 3, 3, padding=1)

    def run(n: int, size: int, compiled: bool) -> tuple[torch.Tensor, torch.Tensor]:
        monkeypatch.setenv("HARNESS_COMPILE", "1" if compiled else "0")
        net = Network(conv, "fp32", "cpu")
        eps_fn = lambda x, t: net(x) * (1 + t.float().view(-1, 1, 1, 1) / 1000)  # noqa: E731
        x = torch.linspace(-1, 1, n * 3 * size * size).reshape(n, 3, size, size).requires_grad_(True)
        out, nfe = reverse(eps_fn, x, 300, sched, steps=6, sampler=sampler,
                           noise=ExampleNoise(list(range(n))), checkpoint=True)
        assert nfe == 6
        (grad,) = torch.autograd.grad(out.square().sum(), x)
        return out.detach(), grad

    want = run(4, 8, compiled=False)
    got = run(4, 8, compiled=True)
    fn = precision._FUNCTIONS.get(_update)
    assert fn is not None and getattr(fn, "compiled", None) is not None, "the step did not compile"
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-4, atol=1e-5)
    for n, size in [(7, 8), (2, 5), (4, 8)]:
        got, want = run(n, size, compiled=True), run(n, size, compiled=False)
        torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    assert precision._FUNCTIONS[_update] is fn and "eagerly" not in capsys.readouterr().err
    monkeypatch.setenv("HARNESS_COMPILE", "1")  # evaluation runs: under inference_mode
    x = torch.linspace(-1, 1, 4 * 3 * 8 * 8).reshape(4, 3, 8, 8)
    with torch.inference_mode():
        inf, _ = reverse(lambda v, t: conv(v), x, 300, sched, steps=6, sampler=sampler,
                         noise=ExampleNoise(list(range(4))))
    monkeypatch.setenv("HARNESS_COMPILE", "0")
    with torch.no_grad():
        plain, _ = reverse(lambda v, t: conv(v), x, 300, sched, steps=6, sampler=sampler,
                           noise=ExampleNoise(list(range(4))))
    torch.testing.assert_close(inf, plain, rtol=1e-5, atol=1e-5)
    assert precision._FUNCTIONS[_update] is fn and fn.compiled is not None
    ddim = sampler == "ddim"

    def step(n: int, size: int, a: float, a_prev: float) -> None:
        x, eps, z = torch.randn(3, n, 3, size, size)
        torch.testing.assert_close(fn(x, eps, a, a_prev, ddim, True, z, None),
                                   _update(x, eps, a, a_prev, ddim, True, z, None), rtol=1e-5, atol=1e-5)

    step(4, 8, 0.5, 0.6)
    graphs = counters["stats"]["unique_graphs"]
    for n, size, a, a_prev in [(7, 8, 0.3, 0.35), (2, 5, 0.9, 0.95), (64, 3, 0.1, 0.2)]:
        step(n, size, a, a_prev)
    assert counters["stats"]["unique_graphs"] == graphs, "another step, batch or image size recompiled"


def test_out_of_memory_in_a_compiled_call_propagates_and_keeps_it_compiled(
        capsys: pytest.CaptureFixture[str]) -> None:
    """The batch search halves the batch on out-of-memory: the wrapper must let it through, and
    not take it for a failed compile (which would run eagerly for good)."""
    calls = []

    def compiled(*_a: object) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return torch.zeros(1)

    guarded = precision.Guarded(lambda *_a: torch.ones(1), compiled, "net")
    with pytest.raises(torch.OutOfMemoryError):
        guarded(torch.zeros(1))
    assert guarded.compiled is compiled and torch.equal(guarded(torch.zeros(1)), torch.zeros(1))
    assert "eagerly" not in capsys.readouterr().err
