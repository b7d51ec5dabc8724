"""How much of a transfer PGD attack LoRID undoes on the bundled digits models (issue 14's
"purified PGD accuracy within 10 points of clean" criterion).

PGD (harness.attacks.pgd, Linf, 20 steps of 0.03, random start) against the BARE classifier,
quantised to uint8 as a written data set would be; then LoRID (steps 4) at several (t_s, loops)
purifies the clean and the adversarial images with the same per-example noise. Prints, per
budget and setting, the bare classifier's accuracy on the adversarial images, the purified clean
and adversarial accuracies and their gap; --append adds the table to benchmarks/RESULTS.md.

A second table does the same for PGD that stops, example by example, as soon as its uint8 image
is misclassified with a logit margin of at least kappa (200 steps of 0.005, no random start):
the smallest perturbation within the budget that fools the bare classifier, as a poisoned or
adversarial data set would carry, rather than the largest-loss point of the ball.

    python benchmarks/purify_pgd.py [--examples 450] [--append]
"""
from __future__ import annotations

import argparse
import datetime

import numpy as np
import torch

from harness.attacks.pgd import attack, margin_reached
from harness.data.digits import arrays
from harness.purify.pipeline import Defended
from harness.registry import get
from harness.rng import ExampleNoise, derive_seed
from harness.telemetry import machine
from harness.worker import Assets
from results_md import publish

SETTINGS = ((0.1, 3), (0.15, 3), (0.1, 6), (0.2, 3), (0.15, 6), (0.25, 2))
STOPPED = (0.5, 2.0)  # kappa: the logit margin at which an example's PGD stops
STOPPED_SETTINGS = ((0.1, 3), (0.1, 6), (0.15, 3))


def _u8(x: torch.Tensor) -> torch.Tensor:
    return torch.round(x * 255) / 255


def stopped_pgd(bare, clf, x: torch.Tensor, y: torch.Tensor, eps: float, kappa: float, noise,
                steps: int = 200, step_size: float = 0.005) -> torch.Tensor:
    """Linf PGD on the bare classifier where an example stops moving once its uint8 image's
    margin (best wrong logit - true logit) reaches kappa (harness.attacks.pgd's stop)."""
    params = entry("attack", "pgd", norm="linf", eps=eps, steps=steps, step_size=step_size, eot=1,
                   random_start=False)["params"]
    return _u8(attack(bare, x, y, params, noise, stop=margin_reached(clf, y, kappa)).x_adv.detach())


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
    clean_acc: dict[tuple[float, int], float] = {}  # the clean images' purification, once per setting

    def purified(t_s: float, loops: int, x_adv: torch.Tensor) -> tuple[float, float]:
        """(purified clean, purified adversarial) accuracy at LoRID (t_s, loops), same noise."""
        pur = assets.purifier(entry("purifier", "lorid", t_s=t_s, loops=loops, steps=4), "fp32")
        with torch.inference_mode():
            if (t_s, loops) not in clean_acc:
                clean_acc[t_s, loops] = (clf(pur(x, noise("purify"))).argmax(1) == y).float().mean().item()
            adv = (clf(pur(x_adv, noise("purify"))).argmax(1) == y).float().mean().item()
        return clean_acc[t_s, loops], adv

    lines = []
    for eps in (0.25, 0.2):
        pgd = entry("attack", "pgd", norm="linf", eps=eps, steps=20, step_size=0.03, eot=1)
        x_adv = _u8(attack(bare, x, y, pgd["params"], noise("pgd")).x_adv.detach())
        with torch.no_grad():
            bare_acc = (clf(x_adv).argmax(1) == y).float().mean().item()
        for t_s, loops in SETTINGS:
            clean, adv = purified(t_s, loops, x_adv)
            lines.append(f"| {eps} | {bare_acc:.1%} | {t_s} | {loops} | {clean:.1%} | {adv:.1%} | {clean - adv:+.1%} |")
            print(lines[-1], flush=True)
    stopped = []
    for kappa in STOPPED:
        x_adv = stopped_pgd(bare, clf, x, y, 0.25, kappa, noise("pgd"))
        with torch.no_grad():
            bare_acc = (clf(x_adv).argmax(1) == y).float().mean().item()
        linf = (x_adv - x).abs().flatten(1).amax(1).median().item()
        for t_s, loops in STOPPED_SETTINGS:
            clean, adv = purified(t_s, loops, x_adv)
            stopped.append(f"| {kappa} | {bare_acc:.1%} | {linf:.3f} | {t_s} | {loops} | {clean:.1%} | {adv:.1%} | "
                           f"{clean - adv:+.1%} |")
            print(stopped[-1], flush=True)
    text = "\n".join([
        f"\n## Purification against transfer PGD (issue 14) — {datetime.datetime.now():%Y-%m-%d %H:%M}, {machine('cpu')}\n",
        f"{len(y)} digits; PGD Linf, 20 steps of 0.03, random start, against the bare digits-cnn, uint8; "
        "LoRID steps 4 (benchmarks/purify_pgd.py).\n",
        "| eps | bare on PGD | t_s | loops | purified clean | purified PGD | gap |", "|---|---|---|---|---|---|---|",
        *lines, "",
        "PGD stopped per example at a logit margin kappa (Linf 0.25, 200 steps of 0.005, no random start, uint8):\n",
        "| kappa | bare on PGD | median Linf | t_s | loops | purified clean | purified PGD | gap |",
        "|---|---|---|---|---|---|---|---|", *stopped, ""]) + "\n"
    publish(text, args.append)


if __name__ == "__main__":
    main()
