"""Writes the example guides in examples/ (small PNGs, committed; this script remakes them).

    python scripts/make_examples.py

- digit.png: a held-out MNIST digit (never seen by the models), 32x32 greyscale.
- mask-top.png: white over the top half: regenerate it, keep the bottom half.
- strokes.png: a crude "painting" of a 7 with a few flat grey strokes, the kind of guide
  SDEdit turns into a realistic image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from service.pipeline.imaging import encode_png
from training.digits import load_split

OUT = Path(__file__).resolve().parent.parent / "examples"


def painted_seven() -> np.ndarray:
    canvas = np.zeros((32, 32), dtype=np.uint8)
    canvas[7:11, 8:25] = 200  # the bar
    for row in range(11, 27):  # the stem, a slanted thick stroke
        col = 22 - (row - 11) * 8 // 16
        canvas[row, col - 2:col + 2] = 170
    return canvas


def main() -> None:
    OUT.mkdir(exist_ok=True)
    split = load_split()
    digit = split.held_out_images[np.flatnonzero(split.held_out_labels == 3)[0]]
    mask = np.zeros((32, 32), dtype=np.uint8)
    mask[:16] = 255
    for name, pixels in (("digit.png", digit), ("mask-top.png", mask), ("strokes.png", painted_seven())):
        (OUT / name).write_bytes(encode_png(pixels[:, :, None]))
        print(f"wrote {OUT / name}")


if __name__ == "__main__":
    main()
