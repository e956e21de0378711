"""Drawing primitives of the synthetic scenes: shape masks sampled at pixel centres, textures, backgrounds.

Pure numpy functions of their arguments and of the `numpy.random.Generator` handed in, so a scene (and
the COCO writer's extra objects, `coco.py`) is a function of its seed.
"""

from __future__ import annotations

import functools
import math

import numpy as np

__all__ = ["shape_mask", "place", "grid", "pattern", "render_background"]


def shape_mask(kind: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Inside-test of a shape of outer radius r in its own (rotated, centred) coordinates u, v."""
    if kind == "circle":
        return u * u + v * v <= r * r
    if kind == "square":
        h = 0.8 * r
        return (np.abs(u) <= h) & (np.abs(v) <= h)
    if kind == "triangle":  # equilateral, circumradius r: three half-planes at distance r / 2
        m = np.ones(u.shape, bool)
        for k in range(3):
            a = math.pi / 2 + 2 * math.pi * k / 3
            m &= u * math.cos(a) + v * math.sin(a) <= r / 2
        return m
    if kind == "cross":
        w = 0.3 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= r) & (av <= w)) | ((av <= r) & (au <= w))
    if kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if kind == "star":  # five points; fold the angle onto one edge from inner vertex I to outer vertex O
        d = np.sqrt(u * u + v * v)
        a = np.abs(np.mod(np.arctan2(v, u), 2 * math.pi / 5) - math.pi / 5)
        ix, ox, oy = 0.45 * r, r * math.cos(math.pi / 5), r * math.sin(math.pi / 5)
        ex, ey = ox - ix, oy
        side = ex * (d * np.sin(a)) - ey * (d * np.cos(a) - ix)  # cross(O - I, P - I)
        return side >= 0  # the origin's side: cross(O - I, -I) = ey * ix > 0
    if kind in _POLYGON_SIDES:  # regular polygon of circumradius r: n half-planes at the apothem
        n = _POLYGON_SIDES[kind]
        m = np.ones(u.shape, bool)
        for k in range(n):
            a = math.pi / 2 + 2 * math.pi * k / n
            m &= u * math.cos(a) + v * math.sin(a) <= r * math.cos(math.pi / n)
        return m
    if kind == "crescent":  # a disc less a smaller disc shifted sideways
        return (u * u + v * v <= r * r) & ((u - 0.45 * r) ** 2 + v * v > (0.8 * r) ** 2)
    if kind == "arrow":  # a shaft and a triangular head pointing along +u
        shaft = (u >= -r) & (u <= 0.1 * r) & (np.abs(v) <= 0.22 * r)
        head = (u >= 0.1 * r) & (u <= r) & (np.abs(v) <= 0.75 * (r - u))
        return shaft | head
    if kind == "diamond":  # an elongated rhombus
        return np.abs(u) / r + np.abs(v) / (0.55 * r) <= 1
    if kind == "half-disc":
        return (u * u + v * v <= r * r) & (v >= -0.1 * r)
    raise ValueError(f"unknown shape {kind!r}")


_POLYGON_SIDES = {"pentagon": 5, "hexagon": 6}


def place(kind: str, cx: float, cy: float, r: float, theta: float, size: int) -> np.ndarray:
    """Full-frame bool mask of a shape, sampled at pixel centres (computed on its bounding window)."""
    m = np.zeros((size, size), bool)
    x0, x1 = max(int(cx - r) - 1, 0), min(int(cx + r) + 2, size)
    y0, y1 = max(int(cy - r) - 1, 0), min(int(cy + r) + 2, size)
    if x0 >= x1 or y0 >= y1:
        return m
    dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx += 0.5 - cx
    dy += 0.5 - cy
    c, s = math.cos(theta), math.sin(theta)
    m[y0:y1, x0:x1] = shape_mask(kind, dx * c + dy * s, -dx * s + dy * c, r)
    return m


@functools.lru_cache(maxsize=8)
def grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel row / column coordinates (read-only, shared between scenes)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    yy.flags.writeable = False
    xx.flags.writeable = False
    return yy, xx


def pattern(rng: np.random.Generator, size: int, kind: int | None = None) -> np.ndarray:
    """A texture in [-1, 1]: flat, stripes, checker, noise (drawn when `kind` is None), dots or rings.

    The draws are the same for every kind, so fixing the kind changes no other random number.
    """
    kind = rng.integers(4) if kind is None else kind
    period = rng.uniform(3.0, 9.0) * max(size / 64, 0.5)
    angle = rng.uniform(0, math.pi)
    noise = rng.standard_normal((size, size)).astype(np.float32)
    yy, xx = grid(size)
    if kind == 0:
        return np.zeros((size, size), np.float32)
    if kind == 1:
        t = xx * math.cos(angle) + yy * math.sin(angle)
        return np.sign(np.sin(2 * math.pi * t / period)).astype(np.float32)
    if kind in (2, 4):
        u = xx * math.cos(angle) + yy * math.sin(angle)
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        wave = np.sin(math.pi * u / period) * np.sin(math.pi * v / period)
        return np.sign(wave if kind == 2 else wave - 0.5).astype(np.float32)
    if kind == 5:  # concentric rings about a point set by the angle draw
        r = np.hypot(xx - size * angle / math.pi, yy - size / 2)
        return np.sign(np.sin(2 * math.pi * r / period)).astype(np.float32)
    return np.clip(noise / 2, -1, 1)


def render_background(rng: np.random.Generator, size: int, textured: bool = True) -> np.ndarray:
    """Linear gradient between two random colours, a luminance texture (unless plain) and pixel noise, (S, S, 3)."""
    c0, c1 = rng.uniform(0, 1, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = grid(size)
    t = ((xx - size / 2) * math.cos(theta) + (yy - size / 2) * math.sin(theta)) / size + 0.5
    img = c0 + (c1 - c0) * t[..., None]
    amplitude, texture = rng.uniform(0.03, 0.15), pattern(rng, size)  # drawn either way: same later draws
    if textured:
        img += amplitude * texture[..., None]
    img += rng.uniform(0.005, 0.04) * rng.standard_normal((size, size, 3)).astype(np.float32)
    return img
