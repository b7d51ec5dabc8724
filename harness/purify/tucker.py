"""Tucker low-rank patch denoising (differentiable).

Each image is cut into overlapping p×p patches (stride s), stacked as a tensor
(patches × C × p × p), decomposed with a truncated Tucker decomposition whose cross-patch
rank is cut (ranks (r, C, p, p)), rebuilt, and folded back averaging the overlaps.

With every other mode at full rank, HOOI's fixed point is reached at its SVD
initialisation: the rebuilt tensor is the projection of the mode-1 unfolding onto its top-r
left singular vectors. `low_rank` computes exactly that for the whole batch in one batched
SVD; `tensorly_low_rank` runs tensorly's Tucker (PyTorch backend) image by image and is kept
as the reference the tests compare against (it is ~100× slower under an attack).
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


def low_rank(t: torch.Tensor, r: int) -> torch.Tensor:
    """Truncated Tucker (r, full, full, ...) of each tensor in the batch t[B, L, ...]."""
    b, n = t.shape[:2]
    m = t.reshape(b, n, -1)
    u, _, _ = torch.linalg.svd(m, full_matrices=False)
    u = u[..., :r]
    return (u @ (u.transpose(1, 2) @ m)).reshape(t.shape)


def tensorly_low_rank(t: torch.Tensor, r: int) -> torch.Tensor:
    """The same with tensorly's HOOI for one tensor t[L, ...] (reference implementation)."""
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
        flat = patches.reshape(1, n * n_patches, c, patch, patch)
        rebuilt = low_rank(flat, cross_patch_rank(rank, n * n_patches)).reshape(patches.shape)
    elif per == "image":
        rebuilt = low_rank(patches, cross_patch_rank(rank, n_patches))
    else:
        raise ValueError(f"per must be 'image' or 'batch', not {per!r}")
    cols = rebuilt.reshape(n, n_patches, c * patch * patch).transpose(1, 2)
    size = xp.shape[-2:]
    summed = F.fold(cols, size, patch, stride=stride)
    count = F.fold(torch.ones_like(cols), size, patch, stride=stride)
    return (summed / count)[..., :h, :w]
