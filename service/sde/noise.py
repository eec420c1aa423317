"""Each sample's Gaussian noise: one stream of standard normals per seed.

The engine draws a sample's noise from its own stream (service/sde/engine.py): the start
noise of each repeat, then per step the sampler's and the mask's. Drawing it was most of the
CPU of a step outside the network (numpy's float32 ziggurat: 1.7-2.9 ms per 3x256x256 image
on this project's 2-core machines, against 0.3-0.7 ms for all of a step's arithmetic), so the
stream is made by the Box-Muller transform in float32 over numpy's float32 uniforms, which
vectorises: 0.6 ms per 3x256x256 image, a third of the ziggurat's time.

    u1, u2 ~ U[0, 1) on the grid k * 2^-24 (PCG64, the seed's generator)
    r = sqrt(-2 log(1 - u1)),  theta = 2 pi u2
    z = (r cos theta, r sin theta): the first half of a draw takes the cosines, the second the sines

Every value is a deterministic function of the seed and the draw's position in the stream
(numpy's float32 log, sin and cos are its own SIMD code, the same on every x86-64 CPU with
FMA). The tails are cut at sqrt(-2 log 2^-24) = 5.77 standard deviations (probability 8e-9
per value); tests/test_sdedit_math.py checks the moments and the shape of the distribution.
"""

from __future__ import annotations

import math

import numpy as np

TWO_PI = np.float32(2.0 * math.pi)


class GaussianNoise:
    """Standard normals from one seed, with the part of numpy.random.Generator's interface
    the engine uses: standard_normal(shape, dtype=np.float32) or standard_normal(out=..., ...)."""

    def __init__(self, seed: int | None):
        self._uniform = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=np.float32, out: np.ndarray | None = None) -> np.ndarray:
        if np.dtype(dtype) != np.float32:
            raise ValueError("GaussianNoise draws float32 only")
        if out is None:
            out = np.empty(() if size is None else size, dtype=np.float32)
        elif out.dtype != np.float32 or not out.flags.c_contiguous:
            raise ValueError("out must be a C-contiguous float32 array")
        fill_standard_normal(self._uniform, out.reshape(-1))
        return out


def fill_standard_normal(uniform: np.random.Generator, flat: np.ndarray) -> None:
    """Fills the 1-D float32 array `flat` with standard normals (Box-Muller, see above)."""
    n = flat.size
    half = (n + 1) // 2
    u = np.empty(2 * half, dtype=np.float32)
    uniform.random(out=u, dtype=np.float32)
    radius, angle = u[:half], u[half:]
    np.subtract(np.float32(1.0), radius, out=radius)  # (0, 1]: log is finite
    np.log(radius, out=radius)
    np.multiply(radius, np.float32(-2.0), out=radius)
    np.sqrt(radius, out=radius)
    np.multiply(angle, TWO_PI, out=angle)
    np.cos(angle, out=flat[:half])
    rest = n - half  # the sines: one fewer than the cosines when n is odd
    if rest:
        np.sin(angle[:rest], out=flat[half:])
        np.multiply(flat[half:], radius[:rest], out=flat[half:])
    np.multiply(flat[:half], radius, out=flat[:half])
