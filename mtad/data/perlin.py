"""2-D Perlin (gradient) noise in numpy, for irregular defect shapes.

DRAEM draws its anomaly masks by thresholding Perlin noise; blobs made this
way have organic outlines that simple ellipses lack. Written here in numpy so
the demo data needs no extra package and is reproducible from a seeded
Generator.
"""
from __future__ import annotations

import numpy as np


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Noise of ``shape`` with ``res`` gradient cells per axis; values roughly in [-0.7, 0.7]."""
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    ys = np.arange(h) * (ry / h)
    xs = np.arange(w) * (rx / w)
    y0 = np.floor(ys).astype(int)
    x0 = np.floor(xs).astype(int)
    fy = (ys - y0)[:, None]
    fx = (xs - x0)[None, :]
    Y0, X0 = y0[:, None], x0[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        # Dot product of the corner's gradient with the offset to the pixel.
        return gy[Y0 + dy, X0 + dx] * (fy - dy) + gx[Y0 + dy, X0 + dx] * (fx - dx)

    uy, ux = _fade(fy), _fade(fx)
    top = corner(0, 0) * (1 - ux) + corner(0, 1) * ux
    bottom = corner(1, 0) * (1 - ux) + corner(1, 1) * ux
    return top * (1 - uy) + bottom * uy

