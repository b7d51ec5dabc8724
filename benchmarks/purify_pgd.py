"""How much of a transfer PGD attack LoRID undoes on the bundled digits models (issue 14's
"purified PGD accuracy within 10 points of clean" criterion).

PGD (harness.attacks.pgd, Linf, 20 steps of 0.03, random start) against the BARE classifier,
quantised to uint8 as a written data set would be; then LoRID (steps 4) at several (t_s, loops)
purifies the clean and the adversarial images with the same per-example noise. Prints, per
budget and setting, the bare classifier's accuracy on the adversarial images, the purified clean
and adversarial accuracies and their gap; --append adds the table to benchmarks/RESULTS.md.

    python benchmarks/purify_pgd.py [--examples 450] [--append]
"""
from __future__ import annotations

import argparse
import datetime

import numpy as np
import torch

from harness.attacks.pgd import attack
from harness.data.digits import arrays
from harness.purify.pipeline import Defended
from harness.registry import get
from harness.rng import ExampleNoise, derive_seed
from harness.telemetry import machine
from harness.worker import Assets
from results_md import publish

SETTINGS = ((0.1, 3), (0.15, 3), (0.1, 6), (0.2, 3), (0.15, 6), (0.25, 2))


def entry(kind: str, name: str, **params: object) -> dict:
    return {"name": name, "params": get(kind, name).resolve(dict(params), "benchmark", kind)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=450)
    ap.add_argument("--append", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    x, y = arrays("test")
    x = torch.from_numpy(np.round(x[:args.examples] * 255) / 255).float()
    y = torch.from_numpy(y[:args.examples])
    assets = Assets()
    clf = assets.classifier(entry("classifier", "digits-cnn"), "fp32")
    bare = Defended(assets.purifier(entry("purifier", "none"), "fp32"), clf)
    noise = lambda tag: ExampleNoise([derive_seed(tag, i) for i in range(len(y))])  # noqa: E731
    lines = []
    for eps in (0.25, 0.2):
        pgd = entry("attack", "pgd", norm="linf", eps=eps, steps=20, step_size=0.03, eot=1)
        x_adv = torch.round(attack(bare, x, y, pgd["params"], noise("pgd")).x_adv.detach() * 255) / 255
        with torch.no_grad():
            bare_acc = (clf(x_adv).argmax(1) == y).float().mean().item()
        for t_s, loops in SETTINGS:
            pur = assets.purifier(entry("purifier", "lorid", t_s=t_s, loops=loops, steps=4), "fp32")
            with torch.inference_mode():
                clean = (clf(pur(x, noise("purify"))).argmax(1) == y).float().mean().item()
                adv = (clf(pur(x_adv, noise("purify"))).argmax(1) == y).float().mean().item()
            lines.append(f"| {eps} | {bare_acc:.1%} | {t_s} | {loops} | {clean:.1%} | {adv:.1%} | {clean - adv:+.1%} |")
            print(lines[-1], flush=True)
    text = "\n".join([
        f"\n## Purification against transfer PGD (issue 14) — {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine('cpu')}\n",
        f"{len(y)} digits; PGD Linf, 20 steps of 0.03, random start, against the bare digits-cnn, uint8; "
        "LoRID steps 4 (benchmarks/purify_pgd.py).\n",
        "| eps | bare on PGD | t_s | loops | purified clean | purified PGD | gap |", "|---|---|---|---|---|---|---|",
        *lines, ""]) + "\n"
    publish(text, args.append)


if __name__ == "__main__":
    main()
