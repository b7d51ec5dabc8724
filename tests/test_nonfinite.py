"""A non-finite number is never a result, and a gradient never vanishes silently.

- The Tucker step's backward is finite where singular values repeat or vanish (flat,
  constant and one-pixel images), and exact (gradcheck) wherever the step is differentiable;
  torch's own SVD backward gives NaN at those very points.
- Attacks count the non-finite gradients they meet, per example (`grad_nonfinite`).
- Non-finite logits are a failed prediction (NONFINITE_PRED), never a class.
"""
from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck

from harness.attacks import autoattack, bpda, pgd
from harness.evaluate import predict
from harness.models.bundled import load_classifier, load_denoiser
from harness.purify.pipeline import Defended, Purifier, PurifierConfig
from harness.purify.tucker import tucker_denoise
from harness.results import NONFINITE_PRED
from harness.rng import ExampleNoise


def _image(kind: str, channels: int = 1) -> torch.Tensor:
    if kind == "flat":
        return torch.full((1, channels, 8, 8), 0.5, dtype=torch.float64)
    if kind == "zero":
        return torch.zeros(1, channels, 8, 8, dtype=torch.float64)
    x = torch.zeros(1, channels, 8, 8, dtype=torch.float64)
    x[0, :, 3, 4] = 1.0  # one bright pixel
    return x


def _svd_backward_reference(x: torch.Tensor, rank: float) -> torch.Tensor:
    """The input gradient with torch's own SVD backward (what the harness used before)."""
    import harness.purify.tucker as tucker

    def low_rank(t: torch.Tensor, r: int) -> torch.Tensor:
        m = t.reshape(t.shape[0], t.shape[1], -1)
        u = torch.linalg.svd(m, full_matrices=False)[0][..., :r]
        return (u @ (u.transpose(1, 2) @ m)).reshape(t.shape)

    saved, tucker.low_rank = tucker.low_rank, low_rank
    try:
        x = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(tucker_denoise(x, patch=4, stride=2, rank=rank).sum(), x)
    finally:
        tucker.low_rank = saved
    return g


# (image, channels, cross-patch rank) where the step is differentiable: 9 patches of 4×4, so
# rank 0.6 keeps 5, 0.5 keeps 4 (a pixel perturbation reaches up to 4 patches).
DIFFERENTIABLE = [("flat", 1, 0.6), ("flat", 3, 0.6), ("zero", 1, 0.5), ("zero", 3, 0.6), ("pixel", 1, 0.5)]


@pytest.mark.parametrize("kind,channels,rank", DIFFERENTIABLE)
def test_tucker_gradient_is_exact_where_singular_values_repeat(kind: str, channels: int, rank: float) -> None:
    x = _image(kind, channels).requires_grad_(True)
    assert not torch.isfinite(_svd_backward_reference(x, rank)).all()  # what torch's backward gives
    assert gradcheck(lambda v: tucker_denoise(v, patch=4, stride=2, rank=rank), (x,))


@pytest.mark.parametrize("kind,rank", [("flat", 0.5), ("pixel", 0.6)])
def test_tucker_gradient_is_finite_where_the_cut_ties(kind: str, rank: float) -> None:
    """σ_r = σ_{r+1}: no derivative exists, but the backward stays finite and non-zero."""
    x = _image(kind).requires_grad_(True)
    w = torch.randn(1, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (g,) = torch.autograd.grad((tucker_denoise(x, patch=4, stride=2, rank=rank) * w).sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0


def test_tucker_gradient_is_exact_at_generic_points() -> None:
    x = torch.rand(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for per, rank in (("image", 0.5), ("batch", 0.3), ("image", 2)):
        assert gradcheck(lambda v: tucker_denoise(v, patch=4, stride=2, rank=rank, per=per),  # noqa: B023
                         (x.requires_grad_(True),))


def _noise(n: int, tag: str = "a") -> ExampleNoise:
    from harness.rng import derive_seed

    return ExampleNoise([derive_seed("test", tag, i) for i in range(n)])


def _params(**kw) -> dict:
    return {"norm": "linf", "eps": 0.2, "steps": 3, "step_size": 0.05, "eot": 2, "random_start": False,
            "gradient": "exact", **kw}


def test_flat_image_through_tucker_gets_a_finite_nonzero_pgd_gradient() -> None:
    """A flat image purified with Tucker (pre) + LoRID rounds, attacked with exact PGD-EOT."""
    model = Defended(Purifier(PurifierConfig(rounds=[0.05] * 2, steps=2, tucker="pre", tucker_patch=4,
                                             tucker_stride=2, tucker_rank=0.5), load_denoiser("digits-ddpm")),
                     load_classifier({}))
    x = torch.full((2, 1, 8, 8), 0.5)
    x[1] = 0.0
    y = torch.tensor([3, 0])
    g, bad = pgd.loss_gradient(model, x, y, "exact", 2, _noise(2))
    assert bad.tolist() == [0, 0]
    assert torch.isfinite(g).all() and (g.flatten(1).abs().sum(1) > 0).all()
    out = pgd.attack(model, x, y, _params(), _noise(2))
    assert out.grad_nonfinite == [0, 0] and out.grad_evals == 3 * 2


class _NaNBackward(torch.autograd.Function):
    """Identity forward, NaN backward: a deliberately masked gradient."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        # NaN wherever a gradient arrives (torch.where sends exact zeros to the unmasked rows)
        return torch.where(g != 0, torch.full_like(g, float("nan")), g)


class MaskedClassifier(torch.nn.Module):
    """The bundled CNN with a NaN gradient on the examples in `masked` (finite logits)."""

    def __init__(self, masked: list[int]):
        super().__init__()
        self.inner, self.masked = load_classifier({}), masked

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = torch.zeros(x.shape[0], dtype=torch.bool)
        rows[[i for i in range(x.shape[0]) if i % 4 in self.masked]] = True  # EOT copies tile the batch
        x = torch.where(rows.view(-1, 1, 1, 1), _NaNBackward.apply(x), x)
        return self.inner(x)


def _masked_model(masked: list[int]) -> Defended:
    return Defended(Purifier(PurifierConfig()), MaskedClassifier(masked))


def _digits(n: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    from harness.data.digits import load

    return load({}).take(list(range(n)))


@pytest.mark.parametrize("attack", ["pgd", "bpda"])
def test_masked_gradients_are_counted_per_example(attack: str) -> None:
    x, y = _digits()
    model = _masked_model([1, 3])
    if attack == "pgd":
        out = pgd.attack(model, x, y, _params(), _noise(4))
    else:
        out = bpda.attack(model, x, y, {**_params(), "tucker_backward": "identity"}, _noise(4))
    assert out.grad_nonfinite == [0, 6, 0, 6]  # 3 steps × EOT 2, on the masked examples only
    assert torch.isfinite(out.x_adv).all()


def test_autoattack_counts_masked_gradients_per_example() -> None:
    x, y = _digits()
    model = _masked_model([2])
    out = autoattack.attack(model, x, y, {"version": "custom", "attacks": ["apgd-ce"], "norm": "linf", "eps": 0.1,
                                          "steps": 5, "eot": 1, "queries": 10, "gradient": "exact"}, _noise(4))
    assert out.grad_nonfinite[2] > 0 and out.grad_nonfinite[0] == out.grad_nonfinite[1] == out.grad_nonfinite[3] == 0
    assert torch.isfinite(out.x_adv).all()


def test_nonfinite_logits_are_a_failed_prediction_never_a_class() -> None:
    logits = torch.tensor([[0.1, 2.0, 0.3], [float("nan")] * 3, [1.0, float("inf"), 0.0], [5.0, 0.0, float("nan")]])
    assert predict(logits) == [1, NONFINITE_PRED, NONFINITE_PRED, NONFINITE_PRED]
    assert NONFINITE_PRED < 0


# ---------------------------------------------------------------- end to end: harness run + harness report

NAN_GRID = """\
sweep: nan
dataset: digits
classifier: {classifier}
purifier:
  - name: lorid
    params: {{t_s: 0.05, loops: 1, steps: 2, denoiser: "{denoiser}"}}
attack:
  - none
  - name: pgd
    params: {{norm: linf, eps: 0.1, steps: 2, step_size: 0.05, eot: 1}}
examples: 8
batch_size: 8
shard_size: 8
eval_runs: 2
"""


def _nan_denoiser(folder) -> str:
    """The bundled digits DDPM's architecture as a local diffusers folder, every weight NaN."""
    from harness.models.digits import make_unet

    unet = make_unet()
    with torch.no_grad():
        for p in unet.parameters():
            p.fill_(float("nan"))
    unet.save_pretrained(str(folder))
    return str(folder)


def _nan_classifier(path) -> str:
    """The bundled digits CNN's architecture with NaN weights, as a safetensors checkpoint."""
    from safetensors.torch import save_file

    from harness.models.digits import DigitsCNN

    state = {k: torch.full_like(v, float("nan")) for k, v in DigitsCNN().state_dict().items()}
    save_file(state, str(path))
    return "{name: digits-cnn, params: {path: \"%s\"}}" % path


def _run_and_report(tmp_path, classifier: str, denoiser: str):
    import pandas as pd

    from conftest import harness

    grid = tmp_path / "nan.yaml"
    grid.write_text(NAN_GRID.format(classifier=classifier, denoiser=denoiser))
    r = harness("run", "--grid", str(grid), "--jobs", "jobs", "--results", "results", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr
    rows = pd.concat([pd.read_parquet(f) for f in sorted((tmp_path / "results").rglob("*.parquet"))])
    rep = harness("report", "results/nan", cwd=tmp_path, timeout=300)
    assert rep.returncode == 0, rep.stderr
    summary = pd.read_csv(tmp_path / "results/nan/_report/report.csv")
    return rows, rep.stdout + (tmp_path / "results/nan/_report/report.md").read_text(), summary


@pytest.mark.parametrize("broken", ["denoiser", "classifier"])
def test_nan_model_scores_zero_and_is_flagged_end_to_end(tmp_path, broken: str) -> None:
    """A NaN-producing denoiser or classifier: 0 % clean and robust (not 10 %: argmax of NaN
    is class 0), every prediction NONFINITE_PRED, the report says non-finite; the attack's
    gradients were NaN too and the report says gradient-masked."""
    denoiser = _nan_denoiser(tmp_path / "nan-ddpm") if broken == "denoiser" else "digits-ddpm"
    classifier = _nan_classifier(tmp_path / "nan-cnn.safetensors") if broken == "classifier" else "digits-cnn"
    rows, text, summary = _run_and_report(tmp_path, classifier, denoiser)
    assert len(rows) == 2 * 8 * 2
    assert (rows["clean_pred"] == NONFINITE_PRED).all() and (rows["adv_pred"] == NONFINITE_PRED).all()
    assert not rows["clean_correct"].any() and not rows["adv_correct"].any()
    assert (rows.loc[rows["attack"] == "pgd", "grad_nonfinite"] == 2).all()  # 2 steps × EOT 1
    assert (summary["clean"] == 0).all() and (summary["robust_mean"] == 0).all()
    assert (summary["nonfinite"] == 8 * 2).all()  # every (example, run) row, clean and attacked
    flags = summary.set_index("attack_label")["flags"].str.split(";")
    assert all("non-finite" in f for f in flags)
    pgd_flags = flags[[a for a in flags.index if a.startswith("pgd")][0]]
    assert "gradient-masked" in pgd_flags
    assert "flagged: non-finite" in text and "flagged: gradient-masked" in text
