"""Tucker low-rank patch denoising (tensorly on the PyTorch backend, differentiable).

Each image is cut into overlapping p×p patches (stride s), stacked as a tensor
(patches × C × p × p), decomposed with a truncated Tucker decomposition (HOOI, SVD init)
whose cross-patch rank is cut, rebuilt, and folded back averaging the overlaps.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F


def _pad_to_fit(x: torch.Tensor, patch: int, stride: int) -> tuple[torch.Tensor, int, int]:
    h, w = x.shape[-2:]
    ph = (-(h - patch)) % stride if h >= patch else patch - h
    pw = (-(w - patch)) % stride if w >= patch else patch - w
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    return x, h, w


def cross_patch_rank(rank: float, n_patches: int) -> int:
    """rank >= 1 is absolute; 0 < rank < 1 is a fraction of the number of patches."""
    r = int(rank) if rank >= 1 else int(round(rank * n_patches))
    return max(1, min(r, n_patches))


def _low_rank(t: torch.Tensor, r: int) -> torch.Tensor:
    import tensorly as tl
    from tensorly.decomposition import tucker

    tl.set_backend("pytorch")
    ranks = [r, *t.shape[1:]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tensorly warns when copying a tensor that requires grad
        core, factors = tucker(t, rank=ranks, init="svd", n_iter_max=10, tol=1e-6)
    return tl.tucker_to_tensor((core, factors))


def tucker_denoise(x: torch.Tensor, *, patch: int = 4, stride: int = 2, rank: float = 0.5,
                   per: str = "image") -> torch.Tensor:
    """Low-rank patch reconstruction of a batch x (N×C×H×W), any value range."""
    n, c = x.shape[:2]
    xp, h, w = _pad_to_fit(x, patch, stride)
    cols = F.unfold(xp, patch, stride=stride)  # N × (C·p·p) × L
    n_patches = cols.shape[-1]
    patches = cols.transpose(1, 2).reshape(n, n_patches, c, patch, patch)
    if per == "batch":
        flat = patches.reshape(n * n_patches, c, patch, patch)
        r = cross_patch_rank(rank, n * n_patches)
        rebuilt = _low_rank(flat, r).reshape(n, n_patches, c, patch, patch)
    elif per == "image":
        r = cross_patch_rank(rank, n_patches)
        rebuilt = torch.stack([_low_rank(p, r) for p in patches])
    else:
        raise ValueError(f"per must be 'image' or 'batch', not {per!r}")
    cols = rebuilt.reshape(n, n_patches, c * patch * patch).transpose(1, 2)
    size = xp.shape[-2:]
    summed = F.fold(cols, size, patch, stride=stride)
    count = F.fold(torch.ones_like(cols), size, patch, stride=stride)
    return (summed / count)[..., :h, :w]
