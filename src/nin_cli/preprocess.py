"""The paper's preprocessing: global contrast normalisation, ZCA whitening, per-channel mean/std.

All functions take and return float tensors of shape (N, C, H, W). Fitting is done in float64.
"""

from __future__ import annotations

import torch


def gcn(images: torch.Tensor, scale: float = 55.0, eps: float = 1e-8) -> torch.Tensor:
    """Per image: subtract the mean over all its values, divide by the L2 norm, multiply by `scale`."""
    flat = images.reshape(len(images), -1).to(torch.float64)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True).clamp_min(eps)
    return (scale * flat / norms).reshape(images.shape).to(images.dtype)


def fit_zca(images: torch.Tensor, bias: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA on flattened images: cov = XcᵀXc/N + bias·I, P = V diag(1/√λ) Vᵀ. Returns (mean, P) in float64."""
    flat = images.reshape(len(images), -1).to(torch.float64)
    mean = flat.mean(dim=0)
    centred = flat - mean
    cov = centred.T @ centred / len(flat) + bias * torch.eye(flat.shape[1], dtype=torch.float64)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    whiten = eigvecs @ torch.diag(eigvals.rsqrt()) @ eigvecs.T
    return mean, whiten


def apply_zca(images: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """(x − mean) P, in chunks so the float64 copy never holds a whole dataset."""
    out = torch.empty(images.shape, dtype=torch.float32)
    flat_out = out.view(len(images), -1)
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk].reshape(-1, mean.numel()).to(torch.float64)
        flat_out[start:start + chunk] = ((part - mean) @ whiten).to(torch.float32)
    return out


def channel_mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    x = images.to(torch.float64) / 255.0
    return x.mean(dim=(0, 2, 3)).float(), x.std(dim=(0, 2, 3)).clamp_min(1e-6).float()
