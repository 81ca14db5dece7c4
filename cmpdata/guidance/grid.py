"""The ``grid`` strategy: a regular, centred grid of points, the same on every flow.

The stride is ``round(sqrt(1 / bg_ratio))`` px (80 for the paper's 1/6400), so there is about
one point per ``1 / bg_ratio`` pixels. Along each axis of n pixels the grid has
``(n - 1) // stride + 1`` points, shifted so that the margins before the first and after the
last differ by at most one pixel. (The original started at ``(n % stride) // 2``, which is the
same count but leaves a margin of 0 and ``stride - 1`` when n is a multiple of the stride; it
also truncated the stride, so 5.74e-5 gave 131 px where we take 132.) Points on invalid pixels
are dropped; no randomness.
"""

from __future__ import annotations

import functools

import numpy as np

from cmpdata.guidance.base import (
    GuidanceConfig,
    GuidanceStrategy,
    check_bg_ratio,
    register_strategy,
)


def grid_positions(n: int, stride: int) -> np.ndarray:
    """Centred positions 0 <= p < n spaced ``stride`` apart, as many as fit."""
    count = (n - 1) // stride + 1
    return (n - 1 - (count - 1) * stride) // 2 + stride * np.arange(count)


@functools.lru_cache(maxsize=16)
def grid_points(h: int, w: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns (read-only) of the centred grid on an H x W frame."""
    rows, cols = grid_positions(h, stride), grid_positions(w, stride)
    ys, xs = np.repeat(rows, cols.size), np.tile(cols, rows.size)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


@register_strategy("grid")
class Grid(GuidanceStrategy):
    """A centred grid with stride ``round(sqrt(1 / bg_ratio))`` px (module docstring)."""

    def __init__(self, bg_ratio: float = 1 / 6400) -> None:
        check_bg_ratio(bg_ratio)
        self.bg_ratio = bg_ratio
        self.stride = max(1, round(float(np.sqrt(1 / bg_ratio))))

    @classmethod
    def from_config(cls, config: GuidanceConfig) -> Grid:
        return cls(bg_ratio=config.bg_ratio)

    def sample(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        ys, xs = grid_points(*flow.shape[:2], self.stride)
        if valid is not None:
            on_valid = valid[ys, xs]
            ys, xs = ys[on_valid], xs[on_valid]
        return ys, xs
