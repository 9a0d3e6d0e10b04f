"""The paper's preprocessing: global contrast normalisation (GCN), ZCA whitening, LeCun local contrast
normalisation (LCN), per-channel mean/std.

Images are (N, C, H, W) tensors. `apply_preprocessing(uint8 images, constants)` is the one function that turns
raw images into model inputs; training (ahead of time, in chunks) and eval/export/cam (per batch) both call it, so
a checkpoint's constants reproduce the training inputs exactly. ZCA is fitted in float64, applied in float32.
"""

from __future__ import annotations

import math

import torch

LCN_KERNEL, LCN_SIGMA, LCN_THRESHOLD = 7, 2.0, 1e-4  # paper: 7×7 Gaussian, σ = 2, threshold 1e-4


def gcn(images: torch.Tensor, scale: float = 55.0, min_norm: float = 1e-8) -> torch.Tensor:
    """Per image: subtract the mean over all its values, divide by the L2 norm, multiply by `scale`.
    A flat image (norm below `min_norm`) is only centred, as in pylearn2's global_contrast_normalize."""
    flat = images.reshape(len(images), -1)
    flat = flat - flat.mean(dim=1, keepdim=True)
    norms = flat.norm(dim=1, keepdim=True)
    norms = torch.where(norms < min_norm, torch.ones_like(norms), norms)
    return (flat * (scale / norms)).reshape(images.shape)


def fit_zca(images: torch.Tensor, bias: float = 0.1, gcn_scale: float | None = None,
            chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """ZCA on flattened images (GCN first when `gcn_scale` is given): cov = XcᵀXc/N + bias·I,
    P = V diag(1/√λ) Vᵀ. Returns (mean, P) in float64 on the images' device.

    XᵀX is accumulated over chunks, so no float64 copy of the whole set ever exists."""
    n, dim = len(images), images[0].numel()
    total = torch.zeros(dim, dtype=torch.float64, device=images.device)
    gram = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    for start in range(0, n, chunk):
        x = images[start:start + chunk].reshape(-1, dim).to(torch.float64)
        if gcn_scale is not None:
            x = gcn(x, gcn_scale)
        total += x.sum(dim=0)
        gram.addmm_(x.T, x)
    mean = total / n
    cov = gram / n - torch.outer(mean, mean)
    cov.diagonal().add_(bias)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    return mean, (eigvecs * eigvals.rsqrt()) @ eigvecs.T


def apply_zca(images: torch.Tensor, mean: torch.Tensor, whiten: torch.Tensor) -> torch.Tensor:
    """(x − mean) P for a batch, in the dtype of `whiten`."""
    flat = images.reshape(len(images), -1).to(whiten.dtype)
    return ((flat - mean.to(whiten.dtype)) @ whiten).reshape(images.shape)


def gaussian_kernel_1d(size: int = LCN_KERNEL, sigma: float = LCN_SIGMA) -> torch.Tensor:
    """The normalised 1-D factor of pylearn2's 2-D Gaussian filter: outer(k, k) equals it exactly, because
    exp(−(x²+y²)/2σ²) separates and its sum is the square of the 1-D sum."""
    mid = size // 2
    k = torch.tensor([math.exp(-((i - mid) ** 2) / (2 * sigma ** 2)) for i in range(size)], dtype=torch.float64)
    return k / k.sum()


def _band(k: torch.Tensor, n: int) -> torch.Tensor:
    """(n, n) matrix M with M[j, i] = k[j − i + mid]: x @ M filters x's last axis with k, zero-padded."""
    mid, i = len(k) // 2, torch.arange(n, device=k.device)
    offset = i[:, None] - i[None, :] + mid
    inside = (offset >= 0) & (offset < len(k))
    return torch.where(inside, k[offset.clamp(0, len(k) - 1)], torch.zeros((), dtype=k.dtype, device=k.device))


def _blur(x: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Zero-padded 'same' Gaussian filter of each (H, W) map, as two products with banded matrices: the padded
    convolution exactly, and ~6× faster than one-channel conv2d on a CPU."""
    height, width = x.shape[-2:]
    return _band(k, height).T @ x @ _band(k, width)


def lcn(images: torch.Tensor, size: int = LCN_KERNEL, sigma: float = LCN_SIGMA,
        threshold: float = LCN_THRESHOLD) -> torch.Tensor:
    """LeCun local contrast normalisation per channel, as pylearn2's `lecun_lcn` (the maxout/NIN SVHN
    pipelines): v = x − G∗x; d = √(G∗x²); y = v / max(d, mean of d over the image, threshold)."""
    k = gaussian_kernel_1d(size, sigma).to(device=images.device, dtype=images.dtype)
    denom = _blur(images * images, k).clamp_min_(0).sqrt_()  # pylearn2 blurs x², not v²; clamp: rounding below 0
    divisor = denom.clamp_(min=denom.mean(dim=(2, 3), keepdim=True)).clamp_min_(threshold)
    centred = torch.sub(images, _blur(images, k))
    return centred.div_(divisor)


def channel_mean_std(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of uint8 images on the [0, 1] scale, exact: from each channel's histogram."""
    values = torch.arange(256, dtype=torch.float64)
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = torch.bincount(images[:, c].reshape(-1), minlength=256).double().cpu()
        n = counts.sum()
        mean = (counts * values).sum() / n
        var = (counts * (values - mean) ** 2).sum() / max(n - 1, 1)
        means.append(mean / 255.0)
        stds.append(var.sqrt() / 255.0)
    return torch.stack(means).float(), torch.stack(stds).clamp_min(1e-6).float()


def apply_preprocessing(images: torch.Tensor, constants: dict) -> torch.Tensor:
    """uint8 (N, C, H, W) images → float32 model inputs, as described by `constants` (Data.preprocessing)."""
    x = _normalise(images, constants)
    scale = float(constants.get("input_scale", 1.0))  # dataset.input_scale; absent in older checkpoints
    return x if scale == 1.0 else x.mul_(scale)


def _normalise(images: torch.Tensor, constants: dict) -> torch.Tensor:
    kind = constants.get("kind", "mean_std")
    x = images.to(torch.float32)
    if kind in ("none", "mean_std"):
        if "mean" not in constants:
            return x.div_(255.0)
        # (x/255 − m)/s as (x − 255m)/(255s) per channel, with Python numbers: a host→GPU copy of the constants
        # would synchronise the stream on every training batch.
        for c, (mean, std) in enumerate(zip(constants["mean"], constants["std"], strict=True)):
            x[:, c].sub_(255.0 * float(mean)).div_(255.0 * float(std))
        return x
    if kind == "mean_image":  # the authors' providers (cuda-convnet convdata.py): raw pixels − the mean image, unscaled
        return x.sub_(constants["mean_image"].to(x.device, non_blocking=True))
    if kind == "unit_mean_image":  # pylearn2's MNIST ([0, 1] floats) − the stored mean image: the authors' MNIST input
        return x.div_(255.0).sub_(constants["mean_image"].to(x.device, non_blocking=True))
    x = gcn(x, constants["gcn_scale"])
    if kind == "gcn_zca":
        return apply_zca(x, constants["zca_mean"].to(x.device), constants["zca_matrix"].to(x.device))
    if kind == "gcn_lcn":
        return lcn(x, constants["lcn_kernel"], constants["lcn_sigma"], constants["lcn_threshold"])
    raise ValueError(f"unknown preprocessing kind {kind!r}")
