"""Decoding, conversions and the pixel round trip."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.errors import InvalidArgument
from service.pipeline.imaging import decode_image, decode_mask, encode_png, to_model_range, to_pixels
from tests.helpers import image_bytes


def test_every_pixel_value_survives_the_round_trip():
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1)
    np.testing.assert_array_equal(to_pixels(to_model_range(pixels)), pixels)
    x = to_model_range(pixels)
    assert x.dtype == np.float32 and x.shape == (1, 16, 16) and x.min() == -1 and x.max() == 1


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "LA", "P", "I;16"])
def test_modes_convert_to_the_model_channels(mode):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    else:
        image = Image.fromarray(grey).convert(mode)
    one = decode_image(image_bytes(image), channels=1, max_pixels=1000)
    three = decode_image(image_bytes(image), channels=3, max_pixels=1000)
    assert one.shape == (8, 8, 1) and three.shape == (8, 8, 3)
    if mode in ("L", "RGB", "I;16", "LA", "RGBA"):
        np.testing.assert_array_equal(one[:, :, 0], grey)


def test_pixel_limit_is_checked_before_decoding():
    data = image_bytes(Image.new("L", (2000, 2000)))
    with pytest.raises(InvalidArgument, match="over the limit"):
        decode_image(data, 1, max_pixels=1000)


def test_mask_threshold_and_size():
    mask = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    decoded = decode_mask(encode_png(mask[:, :, None]), 4, 1, 100)
    np.testing.assert_array_equal(decoded, [[0, 0, 1, 1]])
    with pytest.raises(InvalidArgument) as raised:
        decode_mask(encode_png(mask[:, :, None]), 2, 2, 100)
    assert raised.value.field == "mask"
