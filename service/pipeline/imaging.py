"""Decoding and encoding images, and the pixel <-> model-range mapping.

Pixels are uint8 [H, W, C]; the model sees float32 [C, H, W] in [-1, 1] (p / 127.5 - 1).
Images are never resized: a size the model does not accept is an INVALID_ARGUMENT.
Colour images sent to a single-channel model are converted to greyscale (ITU-R 601-2
luma, Pillow's "L"); alpha is dropped. Masks are PNG only (JPEG artefacts would blur the
boundary); a mask pixel >= 128 means regenerate.
"""

from __future__ import annotations

import io
import re
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from service.errors import InvalidArgument, echo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MEDIA_TYPE = "image/png"
NPY_MEDIA_TYPE = "application/x-npy"
MASK_THRESHOLD = 128
OBJECT_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def sniff_format(data: bytes) -> str | None:
    if data.startswith(PNG_MAGIC):
        return "PNG"
    if data.startswith(JPEG_MAGIC):
        return "JPEG"
    return None


def _png_end(data: bytes) -> int | None:
    """Where the PNG ends: after its IEND chunk (chunks are length, type, data, CRC); None when
    it has no IEND (truncated: decoding says so)."""
    pos = len(PNG_MAGIC)
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        pos += 12 + length
        if kind == b"IEND":
            return pos
    return None


def _refuse_trailing(data: bytes, field: str, kind: str) -> None:
    """Bytes after a PNG's IEND are no part of it: refused, never kept (in a job, a cache). A
    JPEG may rightly carry data after its EOI (a camera's Multi-Picture Format images): kept."""
    if kind != "PNG":
        return
    end = _png_end(data)
    if end is not None and end < len(data):
        raise InvalidArgument(field, f"has {len(data) - end} bytes after the end of the PNG (its IEND chunk); "
                                     "send the image alone")


def _describe(exc: BaseException) -> str:
    """An exception's text without object reprs (`<_io.BytesIO object at 0x...>`), shortened."""
    return echo(OBJECT_REPR.sub("the data", str(exc)) or type(exc).__name__, 200, quote=False)


def _open(data: bytes, field: str, allowed: tuple[str, ...], max_pixels: int, decode: bool = True) -> Image.Image:
    if not data:
        raise InvalidArgument(field, "is empty")
    kind = sniff_format(data)
    if kind not in allowed:
        raise InvalidArgument(field, f"unsupported format; send {' or '.join(allowed)} bytes")
    _refuse_trailing(data, field, kind)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[kind])
            width, height = image.size
            if width * height > max_pixels:
                raise InvalidArgument(field, f"{width}x{height} is {width * height} pixels, over the limit of {max_pixels}")
            if decode:
                image.load()  # decodes now, so corrupt or truncated data fails here
    except InvalidArgument:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, MemoryError, Image.DecompressionBombWarning,
            Image.DecompressionBombError) as exc:
        raise InvalidArgument(field, f"corrupt or truncated {kind}: {_describe(exc)}") from exc
    return image


def image_size(data: bytes, max_pixels: int, field: str = "image", allowed: tuple[str, ...] = ("PNG", "JPEG")) -> tuple[int, int]:
    """(width, height) from the header alone: what admission needs before anything is decoded."""
    return _open(data, field, allowed, max_pixels, decode=False).size


def _to_mode(image: Image.Image, channels: int) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than clip
        array = np.asarray(image, dtype=np.float64) / (257.0 if image.mode.startswith("I;16") else 1.0)
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA").convert("RGB")
    return image.convert("L" if channels == 1 else "RGB")


def decode_image(data: bytes, channels: int, max_pixels: int, field: str = "image") -> np.ndarray:
    """PNG or JPEG bytes -> uint8 [H, W, C] with the model's channel count."""
    image = _to_mode(_open(data, field, ("PNG", "JPEG"), max_pixels), channels)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_mask(data: bytes, width: int, height: int, max_pixels: int, field: str = "mask") -> np.ndarray:
    """PNG bytes -> float32 [H, W], 1 = regenerate (white), 0 = keep (black)."""
    image = _open(data, field, ("PNG",), max_pixels)
    if image.size != (width, height):
        raise InvalidArgument(field, f"size {image.size[0]}x{image.size[1]} differs from the image's {width}x{height}")
    grey = np.asarray(_to_mode(image, 1), dtype=np.uint8)
    return (grey >= MASK_THRESHOLD).astype(np.float32)


def to_model_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C] -> float32 [C, H, W] in [-1, 1]."""
    return (pixels.astype(np.float32) / np.float32(127.5) - np.float32(1.0)).transpose(2, 0, 1).copy()


def to_pixels(x: np.ndarray) -> np.ndarray:
    """float32 [C, H, W] in [-1, 1] -> uint8 [H, W, C], rounded and clipped."""
    return np.clip(np.rint((x.transpose(1, 2, 0) + 1.0) * 127.5), 0, 255).astype(np.uint8)


def encode_png(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # fast; these are small and short-lived
    return buffer.getvalue()


def encode_npy(x: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(x, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def composite_kept(original: np.ndarray, edited: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Pixels: kept region (mask 0) from the original, exactly; the rest from the edit."""
    if mask is None:
        return edited
    return np.where(mask[:, :, None] > 0, edited, original)
