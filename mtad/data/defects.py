"""Synthetic surface defects painted onto normal images, each with its exact mask.

Four kinds, chosen to resemble what industrial datasets contain and what
anomaly-synthesis papers paste: a foreign texture on a Perlin-noise blob (as
DRAEM makes them), CutPaste patches and scars, scratches and cracks, stains
and colour shifts. The returned mask is computed from the pixels that
actually changed, so it is exact even where a paint stroke happens to match
the background.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageDraw

from .perlin import perlin_noise

DEFECT_KINDS = ("foreign_texture", "cutpaste", "scratch", "stain")

# Accepted share of the image covered by a defect; outside it the defect is redrawn.
AREA_RANGE = (0.001, 0.10)
# A pixel counts as changed from this many grey levels; fainter changes are undone.
VISIBLE = 8
# Least mean change (share of full scale) over a defect's pixels.
MIN_CONTRAST = 0.1

Foreign = Callable[[np.random.Generator], np.ndarray]


def _blob(shape, rng: np.random.Generator, radius: tuple[float, float], res: tuple[int, int]) -> np.ndarray:
    """An irregular blob: an ellipse whose outline is perturbed by Perlin noise."""
    h, w = shape
    side = min(h, w)
    cy, cx = rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w
    r = rng.uniform(*radius) * side
    aspect = np.exp(rng.uniform(-0.5, 0.5))
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    dy, dx = yy - cy, xx - cx
    u = (dx * np.cos(angle) + dy * np.sin(angle)) / (r * aspect)
    v = (-dx * np.sin(angle) + dy * np.cos(angle)) / (r / aspect)
    cells = int(rng.integers(res[0], res[1] + 1))
    noise = perlin_noise((h, w), (cells, cells), rng)
    return (1.0 - (u * u + v * v)) + 1.6 * noise > 0


def foreign_texture(img: np.ndarray, rng: np.random.Generator, foreign: Foreign):
    """A patch of another photograph on a Perlin blob, lightly blended (DRAEM style)."""
    mask = _blob(img.shape[:2], rng, (0.07, 0.17), (3, 7))
    tex = foreign(rng)
    beta = rng.uniform(0.0, 0.3)
    out = np.where(mask[:, :, None], beta * img + (1 - beta) * tex, img)
    return out, mask


def _jitter(piece: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Make a pasted piece stand out: brighter or darker, colour images also recoloured."""
    if piece.mean() > 0.5:
        piece = piece * rng.uniform(0.45, 0.65)
    else:
        piece = piece + (1 - piece) * rng.uniform(0.35, 0.55)
    if piece.shape[2] == 3 and rng.random() < 0.5:
        piece = piece[:, :, rng.permutation(3)]
    return np.clip(piece, 0, 1)


def cutpaste(img: np.ndarray, rng: np.random.Generator, foreign: Foreign):
    """CutPaste: a patch (or a thin rotated scar) of the same image, jittered, pasted elsewhere."""
    h, w, c = img.shape
    side = min(h, w)
    out = img.copy()
    mask = np.zeros((h, w), dtype=bool)
    if rng.random() < 0.5:
        area = rng.uniform(0.012, 0.05) * h * w
        aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
        ph = int(np.clip(round(np.sqrt(area / aspect)), 2, h // 2))
        pw = int(np.clip(round(np.sqrt(area * aspect)), 2, w // 2))
        sy, sx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        piece = _jitter(img[sy : sy + ph, sx : sx + pw], rng)
        piece = np.rot90(piece, int(rng.integers(0, 4)))
        ph, pw = piece.shape[:2]
        ty, tx = rng.integers(0, h - ph + 1), rng.integers(0, w - pw + 1)
        out[ty : ty + ph, tx : tx + pw] = piece
        mask[ty : ty + ph, tx : tx + pw] = True
        return out, mask
    length = max(4, int(round(rng.uniform(0.2, 0.4) * side)))
    width = max(2, int(round(rng.uniform(0.025, 0.05) * side)))
    sy, sx = rng.integers(0, h - width + 1), rng.integers(0, w - length + 1)
    piece = _jitter(img[sy : sy + width, sx : sx + length], rng)
    angle = rng.uniform(-70, 70) + (90 if rng.random() < 0.5 else 0)
    as_u8 = np.rint(piece * 255).astype(np.uint8)
    pimg = Image.fromarray(as_u8[:, :, 0] if c == 1 else as_u8)
    alpha = Image.new("L", pimg.size, 255)
    pimg = pimg.rotate(angle, resample=Image.BILINEAR, expand=True)
    alpha = np.asarray(alpha.rotate(angle, resample=Image.NEAREST, expand=True)) > 127
    rot = np.asarray(pimg, dtype=np.float64).reshape(alpha.shape + (c,)) / 255.0
    rh, rw = alpha.shape
    rh, rw = min(rh, h), min(rw, w)
    rot, alpha = rot[:rh, :rw], alpha[:rh, :rw]
    ty, tx = rng.integers(0, h - rh + 1), rng.integers(0, w - rw + 1)
    region = out[ty : ty + rh, tx : tx + rw]
    out[ty : ty + rh, tx : tx + rw] = np.where(alpha[:, :, None], rot, region)
    mask[ty : ty + rh, tx : tx + rw] = alpha
    return out, mask


def _walk(rng, h, w, length, steps, wiggle, start=None, heading=None):
    """Points of a random walk: a scratch or crack centre line."""
    y, x = start if start is not None else (rng.uniform(0.15, 0.85) * h, rng.uniform(0.15, 0.85) * w)
    a = rng.uniform(0, 2 * np.pi) if heading is None else heading
    pts = [(x, y)]
    for _ in range(steps):
        a += rng.normal(0, wiggle)
        x, y = x + np.cos(a) * length / steps, y + np.sin(a) * length / steps
        pts.append((float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))))
    return pts, a


def scratch(img: np.ndarray, rng: np.random.Generator, foreign: Foreign):
    """A thin scratch (smooth, bright or dark) or a crack (jagged, branching, dark)."""
    h, w, _ = img.shape
    side = min(h, w)
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    crack = rng.random() < 0.5
    length = rng.uniform(0.3, 0.6) * side
    width = max(1, int(round(rng.uniform(0.01, 0.02) * side)))
    pts, heading = _walk(rng, h, w, length, int(rng.integers(8, 16)), 0.45 if crack else 0.12)
    draw.line(pts, fill=255, width=width, joint="curve")
    if crack:
        for _ in range(int(rng.integers(1, 3))):
            x, y = pts[int(rng.integers(1, len(pts) - 1))]
            turn = rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            branch, _ = _walk(rng, h, w, length * rng.uniform(0.2, 0.4), 5, 0.5, (y, x), heading + turn)
            draw.line(branch, fill=255, width=max(1, width - 1), joint="curve")
    mask = np.asarray(canvas) > 127
    local = img[mask].mean() if mask.any() else img.mean()
    dark = crack or local > 0.5
    value = local * rng.uniform(0.05, 0.25) if dark else rng.uniform(0.85, 1.0)
    shade = value * (1 + rng.normal(0, 0.05, size=(h, w, 1)))
    out = np.where(mask[:, :, None], np.clip(shade, 0, 1), img)
    return out, mask


def stain(img: np.ndarray, rng: np.random.Generator, foreign: Foreign):
    """A stain (darker or lighter, or a tint on colour images) over a smooth blob."""
    mask = _blob(img.shape[:2], rng, (0.07, 0.16), (2, 4))
    opacity = rng.uniform(0.6, 0.85)
    if img.shape[2] == 3 and rng.random() < 0.7:
        if rng.random() < 0.5:
            target = img[:, :, rng.permutation([1, 2, 0])]  # a colour shift
            opacity = 1.0
        else:
            hue = rng.uniform(0.2, 0.9, size=3) * rng.uniform(0.3, 0.8)
            target = np.broadcast_to(hue, img.shape)
    elif not mask.any() or img[mask].mean() > 0.45:
        target = img * rng.uniform(0.15, 0.4)
    else:
        target = img + (1 - img) * rng.uniform(0.6, 0.85)
    out = np.where(mask[:, :, None], (1 - opacity) * img + opacity * target, img)
    return out, mask


PAINTERS = {
    "foreign_texture": foreign_texture,
    "cutpaste": cutpaste,
    "scratch": scratch,
    "stain": stain,
}


def add_defect(
    image: np.ndarray,
    kind: str,
    rng: np.random.Generator,
    foreign: Foreign,
    area_range: tuple[float, float] = AREA_RANGE,
    max_tries: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one defect of ``kind`` on a uint8 H x W x C image -> (image, bool mask).

    Changes too faint to see (under ``VISIBLE`` grey levels) are undone, so
    the mask is exactly the set of pixels that differ from the input. A defect
    is redrawn when its area falls outside ``area_range`` (share of the image)
    or its mean change is under ``MIN_CONTRAST`` (e.g. a colour shift over a
    white background): the demo's defects must be visible to a person.
    """
    if kind not in PAINTERS:
        raise ValueError(f"unknown defect kind {kind!r}; known: {', '.join(PAINTERS)}")
    img = image.astype(np.float64) / 255.0
    for _ in range(max_tries):
        out, shape = PAINTERS[kind](img, rng, foreign)
        out8 = np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
        diff = np.abs(out8.astype(np.int16) - image.astype(np.int16)).max(axis=2)
        mask = shape & (diff >= VISIBLE)
        area = float(mask.mean())
        if not area_range[0] <= area <= area_range[1]:
            continue
        if diff[mask].mean() < MIN_CONTRAST * 255:
            continue
        out8[~mask] = image[~mask]
        return out8, mask
    raise RuntimeError(f"could not draw a visible {kind} defect within {area_range} of the image area")
