"""Metrics and guide simulation for the quality benchmark (numpy only).

- Strokes (the paper's simulation): a median filter removes fine detail, then the image is
  reduced to a palette of a few colours by k-means on its own pixel values (here after a 2x
  coarsening, see simulate_strokes).
- Faithfulness: the paper's L2, the Euclidean distance between guide and output with
  pixels in [0, 1], summed over all pixels of an image (then averaged over images).
- Realism: KID (Binkowski et al. 2018), the unbiased squared MMD with the cubic polynomial
  kernel k(x, y) = (x.y / d + 1)^3 on classifier features, averaged over random subsets.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def median_filter(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Median over size x size windows, edges padded by reflection. image: [H, W]."""
    pad = size // 2
    padded = np.pad(image, pad, mode="reflect")
    return np.median(sliding_window_view(padded, (size, size)), axis=(-2, -1)).astype(image.dtype)


def palette_quantize(image: np.ndarray, colours: int, iterations: int = 20) -> np.ndarray:
    """k-means on the image's own grey levels (1-D Lloyd, quantile start); each pixel -> its centre."""
    values = image.astype(np.float64).ravel()
    centres = np.quantile(values, (np.arange(colours) + 0.5) / colours)
    for _ in range(iterations):
        labels = np.abs(values[:, None] - centres[None]).argmin(1)
        for k in range(colours):
            if np.any(labels == k):
                centres[k] = values[labels == k].mean()
    labels = np.abs(values[:, None] - centres[None]).argmin(1)
    return np.rint(centres[labels]).clip(0, 255).astype(np.uint8).reshape(image.shape)


def coarsen(image: np.ndarray, factor: int = 2) -> np.ndarray:
    """Block means, then back to full size with nearest neighbours: a coarser brush."""
    h, w = image.shape
    small = image.reshape(h // factor, factor, w // factor, factor).astype(np.float64).mean(axis=(1, 3))
    return np.kron(np.rint(small), np.ones((factor, factor))).astype(np.uint8)


def simulate_strokes(image: np.ndarray, rng: np.random.Generator, min_colours: int = 3, max_colours: int = 4) -> np.ndarray:
    """A stroke painting of a real image: a coarser brush (2x2 blocks), a 5x5 median filter
    that rounds the strokes into blobs, then a palette of 3-4 flat colours. The coarsening
    comes first because 32x32 digits have strokes only 2-3 pixels wide: a median filter alone
    leaves them nearly intact (the guide would be almost a real digit)."""
    return palette_quantize(median_filter(coarsen(image), 5), int(rng.integers(min_colours, max_colours + 1)))


def paint_over(image: np.ndarray, rng: np.random.Generator, size: int = 10, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Paints a flat grey square over part of the digit; returns (guide, mask) with the mask
    (255 = regenerate) covering the square plus a margin."""
    side = image.shape[0]
    top, left = (int(v) for v in rng.integers(6, side - 6 - size + 1, size=2))
    guide = image.copy()
    guide[top:top + size, left:left + size] = int(rng.integers(60, 200))
    mask = np.zeros_like(image)
    mask[max(0, top - margin):top + size + margin, max(0, left - margin):left + size + margin] = 255
    return guide, mask


def l2_faithfulness(guides: np.ndarray, outputs: np.ndarray) -> np.ndarray:
    """Per image ||output - guide||_2 with pixels in [0, 1]; inputs uint8 [N, H, W]."""
    diff = (outputs.astype(np.float64) - guides.astype(np.float64)) / 255.0
    return np.sqrt((diff**2).reshape(len(diff), -1).sum(1))


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    m, n = len(x), len(y)
    kxx, kyy, kxy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1)) - 2 * kxy.mean())


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 250, seed: int = 0) -> tuple[float, float]:
    """KID mean and standard deviation over random subsets (features [N, d])."""
    rng = np.random.default_rng(seed)
    size = min(subset_size, len(x), len(y))
    values = [mmd2_unbiased(x[rng.choice(len(x), size, replace=False)], y[rng.choice(len(y), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))
