"""GCN, ZCA, LCN and mean/std against direct NumPy implementations of the paper's formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from nin_cli import preprocess as pp
from nin_cli.preprocess import apply_preprocessing, channel_mean_std, fit_zca, gcn, lcn


def images_u8(n: int = 40, shape: tuple[int, ...] = (3, 6, 6), seed: int = 0) -> torch.Tensor:
    g = np.random.RandomState(seed)
    x = g.randint(0, 256, size=(n, *shape)).astype(np.uint8)
    x[0] = 77  # a flat image: GCN must leave it centred (zero), not divide by zero
    return torch.from_numpy(x)


# ------------------------------------------------------------------------------------------ NumPy references


def gcn_ref(x: np.ndarray, scale: float = 55.0) -> np.ndarray:
    flat = x.reshape(len(x), -1).astype(np.float64)
    flat = flat - flat.mean(axis=1, keepdims=True)
    norms = np.sqrt((flat ** 2).sum(axis=1, keepdims=True))
    norms[norms < 1e-8] = 1.0
    return (scale * flat / norms).reshape(x.shape)


def zca_ref(x: np.ndarray, bias: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / len(flat) + bias * np.eye(flat.shape[1])
    eigvals, eigvecs = np.linalg.eigh(cov)
    return mean, eigvecs @ np.diag(1.0 / np.sqrt(eigvals)) @ eigvecs.T


def gaussian_ref(size: int = 7, sigma: float = 2.0) -> np.ndarray:
    """pylearn2's gaussian_filter: 2-D, normalised to sum 1."""
    mid = size // 2
    k = np.array([[np.exp(-((i - mid) ** 2 + (j - mid) ** 2) / (2 * sigma ** 2)) / (2 * np.pi * sigma ** 2)
                   for j in range(size)] for i in range(size)])
    return k / k.sum()


def filter_same(img: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Zero-padded 'same' 2-D filter of one (H, W) image, by explicit windows."""
    pad = len(kernel) // 2
    padded = np.pad(img, pad)
    windows = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape)
    return (windows * kernel[::-1, ::-1]).sum(axis=(2, 3))  # a convolution (the kernel is symmetric anyway)


def lcn_ref(x: np.ndarray, size: int = 7, sigma: float = 2.0, threshold: float = 1e-4) -> np.ndarray:
    """pylearn2 lecun_lcn, per image and channel."""
    kernel, out = gaussian_ref(size, sigma), np.empty_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        for c in range(x.shape[1]):
            img = x[i, c].astype(np.float64)
            centred = img - filter_same(img, kernel)
            denom = np.sqrt(np.maximum(filter_same(img ** 2, kernel), 0))
            divisor = np.maximum(np.maximum(denom, denom.mean()), threshold)
            out[i, c] = centred / divisor
    return out


# ------------------------------------------------------------------------------------------------- tests


def test_gcn_matches_numpy_and_centres_flat_images():
    x = images_u8()
    ours = gcn(x.double(), 55.0).numpy()
    np.testing.assert_allclose(ours, gcn_ref(x.numpy()), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours[1:].reshape(39, -1).std(axis=1) * np.sqrt(108), 55.0, rtol=1e-9)
    assert np.all(ours[0] == 0)


@pytest.mark.parametrize("chunk", [7, 4096])
def test_zca_fit_matches_numpy(chunk):
    x = images_u8()
    mean, whiten = fit_zca(x, bias=0.1, gcn_scale=55.0, chunk=chunk)
    mean_ref, whiten_ref = zca_ref(gcn_ref(x.numpy()).reshape(len(x), -1), 0.1)
    np.testing.assert_allclose(mean.numpy(), mean_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(whiten.numpy(), whiten_ref, rtol=1e-7, atol=1e-9)


def test_gcn_zca_application_matches_numpy():
    x = images_u8()
    mean, whiten = fit_zca(x, 0.1, 55.0)
    consts = {"kind": "gcn_zca", "gcn_scale": 55.0, "zca_mean": mean.float(), "zca_matrix": whiten.float()}
    ours = apply_preprocessing(x, consts)
    mean_ref, whiten_ref = zca_ref(gcn_ref(x.numpy()).reshape(len(x), -1), 0.1)
    ref = ((gcn_ref(x.numpy()).reshape(len(x), -1) - mean_ref) @ whiten_ref).reshape(x.shape)
    assert ours.dtype == torch.float32 and ours.shape == x.shape
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4)


def test_lcn_matches_numpy_reference():
    x = torch.from_numpy(gcn_ref(images_u8(6, (3, 11, 9)).numpy()))
    ours = lcn(x.float(), pp.LCN_KERNEL, pp.LCN_SIGMA, pp.LCN_THRESHOLD)
    np.testing.assert_allclose(ours.numpy(), lcn_ref(x.numpy()), rtol=1e-4, atol=1e-4)
    ours64 = lcn(x, pp.LCN_KERNEL, pp.LCN_SIGMA, pp.LCN_THRESHOLD)
    np.testing.assert_allclose(ours64.numpy(), lcn_ref(x.numpy()), rtol=1e-10, atol=1e-10)


def test_gcn_lcn_constants_apply_both_steps():
    x = images_u8(5, (3, 10, 10))
    consts = {"kind": "gcn_lcn", "gcn_scale": 55.0, "lcn_kernel": 7, "lcn_sigma": 2.0, "lcn_threshold": 1e-4}
    np.testing.assert_allclose(apply_preprocessing(x, consts).numpy(), lcn_ref(gcn_ref(x.numpy())),
                               rtol=1e-4, atol=1e-4)


def test_channel_mean_std_and_normalisation_match_numpy():
    x = images_u8(30, (3, 5, 4))
    mean, std = channel_mean_std(x)
    scaled = x.numpy().astype(np.float64) / 255.0
    ref_mean, ref_std = scaled.mean(axis=(0, 2, 3)), scaled.std(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(mean.numpy(), ref_mean, rtol=1e-6)
    np.testing.assert_allclose(std.numpy(), ref_std, rtol=1e-6)
    out = apply_preprocessing(x, {"kind": "mean_std", "mean": mean.tolist(), "std": std.tolist()})
    ref = (scaled - ref_mean[None, :, None, None]) / ref_std[None, :, None, None]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-5, atol=1e-5)
    none = apply_preprocessing(x, {"kind": "none", "mean": [0.0] * 3, "std": [1.0] * 3})
    np.testing.assert_allclose(none.numpy(), scaled, rtol=1e-6)
