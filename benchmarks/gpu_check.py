"""Every GPU check of issue 13 in one run (at most ~5 minutes on an H100/H200): bf16 vs fp32
agreement, denoiser evaluations and images per second with the fraction of the bf16 peak
reached, and one exact-gradient PGD-EOT step's throughput and peak memory with and without
checkpointing. Random weights, real architectures (from the catalogue's `build`), except the
agreement check, which uses the bundled digits models (trained: their predictions mean
something). Appends the figures with the device's name to benchmarks/RESULTS.md.

    bash benchmarks/gpu_check.sh            # on a GPU machine
    python benchmarks/gpu_check.py --dry    # on CPU: tiny sizes, checks the script runs
"""
from __future__ import annotations

import argparse
import datetime
from pathlib import Path

import torch

from harness.catalog import load_catalog
from harness.launch.preflight import best_time
from harness.models.bundled import load_classifier, load_denoiser
from harness.models.digits import UNetEps
from harness.precision import Network, configure_backends
from harness.purify.pipeline import Purifier, PurifierConfig
from harness.rng import ExampleNoise, tile
from harness.telemetry import machine

#: Dense bf16 tensor-core peak, TFLOP/s (vendor data sheets), by a substring of the device name.
BF16_PEAK = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0}


def build(arch_name: str) -> torch.nn.Module:
    import importlib

    arch = load_catalog().archs[arch_name]
    module, _, attr = arch.build.partition(":")
    return getattr(importlib.import_module(module), attr)(**arch.kwargs)


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in BF16_PEAK.items() if k in name), None)


def agreement(device: str, n: int) -> list[str]:
    """bf16 vs fp32 on the trained digits models: purified images and predictions."""
    from sklearn.datasets import load_digits

    d = load_digits()
    reps = -(-n // len(d.images))
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1).repeat(reps, 1, 1, 1)[:n].to(device)
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for prec in ("fp32", "bf16"):
        eps = Network(load_denoiser("digits-ddpm").to(device), prec, device)
        clf = Network(load_classifier({}).to(device), prec, device)
        pur = Purifier(PurifierConfig(rounds=[0.1] * 3, steps=5), eps).to(device)
        with torch.inference_mode():
            xp = pur(x, ExampleNoise(list(range(n)), device))
            out[prec] = (xp, clf(xp).argmax(1))
    diff = (out["fp32"][0] - out["bf16"][0]).abs()
    agree = (out["fp32"][1] == out["bf16"][1]).float().mean().item()
    return [f"| bf16 vs fp32, digits LoRID (t=0.1, L=3, 5 steps), {n} images | purified max abs diff "
            f"{diff.max().item():.4f}, mean {diff.mean().item():.5f} | predictions agree {100 * agree:.2f} % |"]


def throughput(device: str, arch_name: str, batches: list[int], repeat: int) -> list[str]:
    """Denoiser evaluations/s at fp32 and bf16 per batch size; fraction of the bf16 peak."""
    arch = load_catalog().archs[arch_name]
    unet = build(arch_name).to(device).eval()
    eps_raw = UNetEps(unet) if "ddpm" in arch_name else unet
    lines = []
    peak = peak_tflops(device)
    for prec in ("fp32", "bf16"):
        eps = Network(eps_raw, prec, device)
        for b in batches:
            x = torch.randn(b, *arch.input, device=device)
            t = torch.full((b,), 100, dtype=torch.long, device=device)
            try:
                with torch.inference_mode():
                    s = best_time(lambda: eps(x, t), device, repeat)
            except torch.OutOfMemoryError:
                lines.append(f"| {arch_name} | {prec} | {b} | out of memory | | |")
                torch.cuda.empty_cache()
                break
            rate = b / s
            tflops = rate * arch.gflops / 1e3
            frac = f"{100 * tflops / peak:.1f} %" if peak and prec == "bf16" else ""
            lines.append(f"| {arch_name} | {prec} | {b} | {rate:,.0f} evals/s | {tflops:.1f} TFLOP/s | {frac} |")
            print(lines[-1], flush=True)
    return lines


def pgd_step(device: str, batch: int, eot: int, repeat: int, loops: int = 3, steps: int = 5) -> list[str]:
    """One exact-gradient PGD-EOT step through LoRID (CIFAR-10 UNet, 3 rounds of 5 steps) and a
    WRN-28-10: seconds and peak memory with and without checkpointing, bf16."""
    eps = Network(UNetEps(build("ddpm-cifar10-32").to(device)), "bf16", device)
    clf = Network(build("wrn-28-10").to(device).eval(), "bf16", device)
    x = torch.rand(batch, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (batch,), device=device)
    lines = []
    for ckpt in (False, True):
        pur = Purifier(PurifierConfig(rounds=[0.1] * loops, steps=steps), eps, checkpoint=ckpt).to(device)
        noise = tile(ExampleNoise(list(range(batch)), device), eot)

        def step() -> None:
            v = x.repeat(eot, 1, 1, 1).requires_grad_(True)
            loss = torch.nn.functional.cross_entropy(clf(pur(v, noise)), y.repeat(eot))
            loss.backward()

        if device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats(device)
        try:
            s = best_time(step, device, repeat)
        except torch.OutOfMemoryError:
            lines.append(f"| PGD-EOT step, batch {batch} × EOT {eot} | checkpoint {ckpt} | out of memory | |")
            torch.cuda.empty_cache()
            continue
        mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else float("nan")
        lines.append(f"| PGD-EOT step, batch {batch} × EOT {eot} | checkpoint {ckpt} | "
                     f"{batch * eot / s:,.1f} image-gradients/s | peak {mem:.1f} GiB |")
        print(lines[-1], flush=True)
    return lines


def batch_search(device: str, total: int, start: int, loops: int, steps: int) -> list[str]:
    """The worker's batch search (harness.batching.run_batches with the device's memory gauge) on
    exact-gradient PGD steps through LoRID (CIFAR-10 UNet) and a WRN-28-10, bf16, `total`
    examples from a batch of `start`: the sizes it went through, out-of-memory retries, and the
    peak memory of its last full batch. On CPU there is no gauge and the batch stays."""
    import tempfile

    from harness.batching import FitRecord, gauge_for, run_batches, start_fit

    eps = Network(UNetEps(build("ddpm-cifar10-32").to(device)), "bf16", device)
    clf = Network(build("wrn-28-10").to(device).eval(), "bf16", device)
    pur = Purifier(PurifierConfig(rounds=[0.1] * loops, steps=steps), eps).to(device)
    sizes: list[tuple[int, bool]] = []

    def step(chunk) -> None:
        sizes.append((len(chunk), pur.checkpoint))
        n = len(chunk)
        v = torch.rand(n, 3, 32, 32, device=device, requires_grad=True)
        y = torch.randint(0, 10, (n,), device=device)
        loss = torch.nn.functional.cross_entropy(clf(pur(v, ExampleNoise(list(chunk), device))), y)
        (g,) = torch.autograd.grad(loss, v)
        assert torch.isfinite(g).all()

    gauge = gauge_for(device)
    cell = {"check": "gpu_check batch search", "loops": loops, "steps": steps}
    with tempfile.TemporaryDirectory() as tmp:
        record = FitRecord(Path(tmp), device)
        fit = start_fit(record, cell, start, gauge, device, {})
        pur.checkpoint = fit.checkpoint
        t0 = datetime.datetime.now()
        run_batches(list(range(total)), step, fit, gauge=gauge, record=record, cell=cell, device=device,
                    on_checkpoint=lambda on: setattr(pur, "checkpoint", on))
        seconds = (datetime.datetime.now() - t0).total_seconds()
        kept = record.get(cell) or fit
    usable = f"{gauge.usable() / 2**30:.1f} GiB usable" if gauge else "no gauge (CPU): the batch stays"
    path = " → ".join(f"{n}{' (ckpt)' if c else ''}" for n, c in sizes)
    return [f"| batch search, PGD step through LoRID ({loops}×{steps}) + WRN-28-10, {total} examples from {start} | "
            f"{path} | {usable}; kept batch {kept.batch}, failed at {kept.fail}; "
            f"{total / seconds:,.1f} image-gradients/s overall |"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="tiny sizes on CPU: check that the script runs")
    ap.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = ap.parse_args()
    device = "cuda:0" if torch.cuda.is_available() and not args.dry else "cpu"
    configure_backends(device, "bf16")
    if args.dry:
        sizes = dict(n=64, cifar=[2], guided=[1], batch=2, eot=1, repeat=1, guided_arch=None, loops=1, steps=2,
                     search_total=4, search_start=2)
    else:
        sizes = dict(n=4096, cifar=[64, 256, 1024], guided=[4, 16, 32], batch=64, eot=4, repeat=3,
                     guided_arch="guided-256-uncond", loops=3, steps=5, search_total=2048, search_start=16)
    lines = agreement(device, sizes["n"])
    lines += ["", "| network | precision | batch | denoiser evals/s | achieved | of bf16 peak |",
              "|---|---|---|---|---|---|"]
    lines += throughput(device, "ddpm-cifar10-32", sizes["cifar"], sizes["repeat"])
    if sizes["guided_arch"]:
        lines += throughput(device, sizes["guided_arch"], sizes["guided"], sizes["repeat"])
    lines += ["", "| step | setting | throughput | memory |", "|---|---|---|---|"]
    lines += pgd_step(device, sizes["batch"], sizes["eot"], sizes["repeat"], sizes["loops"], sizes["steps"])
    lines += ["", "| check | sizes | result |", "|---|---|---|"]
    lines += batch_search(device, sizes["search_total"], sizes["search_start"], sizes["loops"], sizes["steps"])
    stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    head = f"\n## GPU check{' (DRY RUN on CPU: sizes too small to mean anything)' if args.dry else ''} — {stamp}, {machine(device)}\n"
    text = "\n".join([head, "| check | value | |", "|---|---|---|", *lines, ""])
    if args.dry:
        print(text)
    else:
        with open(args.out, "a") as f:
            f.write(text + "\n")
        print(f"appended to {args.out}")


if __name__ == "__main__":
    main()
