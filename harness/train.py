"""`harness train`: rebuild the bundled digits classifier and DDPM from scratch.

Deterministic seeds; the result is written as safetensors plus a MANIFEST.json of sha256
sums that the loaders verify.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from .data.digits import arrays
from .models.bundled import ASSETS, sha256
from .models.digits import DigitsCNN, make_unet
from .purify.schedule import Schedule


def train_classifier(steps: int = 3000, seed: int = 0, log=print) -> DigitsCNN:
    torch.manual_seed(seed)
    x, y = (torch.from_numpy(a) for a in arrays("train"))
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    # Standard training on clean images, as the classifiers purification papers defend (no
    # noise augmentation: it made the CNN need Linf ~0.15 to fool, perturbations as large as
    # the forward noise of t_s 0.1, which LoRID could then not undo; issue 14, RESULTS.md).
    for step in range(steps):
        idx = torch.randint(len(y), (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 500 == 0:
            log(f"classifier step {step}: loss {loss.item():.4f}")
    return model.eval()


def train_ddpm(steps: int = 4000, seed: int = 0, log=print) -> torch.nn.Module:
    torch.manual_seed(seed)
    x = torch.from_numpy(arrays("train")[0]) * 2 - 1
    unet = make_unet()
    sched = Schedule.linear()
    ab = sched.alphas_bar.float()
    opt = torch.optim.AdamW(unet.parameters(), lr=2e-3, weight_decay=0.0)
    lr_sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.05)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(x), (128,), generator=g)
        x0 = x[idx]
        t = torch.randint(sched.T, (len(idx),), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ab[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        loss = F.mse_loss(unet(xt, t).sample, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        lr_sched.step()
        if step % 250 == 0:
            log(f"ddpm step {step}: loss {loss.item():.4f}")
    return unet.eval()


def save(models: dict[str, torch.nn.Module], out: Path = ASSETS) -> Path:
    """Write each model as <name>.safetensors and (re)write MANIFEST.json atomically."""
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "MANIFEST.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    for name, model in models.items():
        path = out / f"{name}.safetensors"
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(path) + ".tmp")
        os.replace(str(path) + ".tmp", path)
        manifest[name] = {"file": path.name, "sha256": sha256(path),
                          "parameters": sum(v.numel() for v in state.values()),
                          "torch": torch.__version__, "built": time.strftime("%Y-%m-%d")}
    tmp = manifest_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    return manifest_path


def main(which: str = "all", out: Path = ASSETS, ddpm_steps: int = 4000, cnn_steps: int = 3000) -> None:
    models: dict[str, torch.nn.Module] = {}
    if which in ("all", "classifier"):
        models["digits-cnn"] = train_classifier(cnn_steps)
    if which in ("all", "ddpm"):
        models["digits-ddpm"] = train_ddpm(ddpm_steps)
    print(f"wrote {save(models, out)}")
