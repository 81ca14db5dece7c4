"""The ``uniform`` strategy: random pixels, about one per ``1 / bg_ratio`` pixels of the frame.

``max(1, round(bg_ratio * H * W))`` distinct pixels are drawn uniformly, without replacement,
among the valid ones (all of them when fewer are valid), from the generator passed in.
"""

from __future__ import annotations

import numpy as np

from cmpdata.guidance.base import (
    GuidanceConfig,
    GuidanceStrategy,
    check_bg_ratio,
    register_strategy,
)


@register_strategy("uniform")
class Uniform(GuidanceStrategy):
    """``max(1, round(bg_ratio * H * W))`` distinct random valid pixels."""

    def __init__(self, bg_ratio: float = 1 / 6400) -> None:
        check_bg_ratio(bg_ratio)
        self.bg_ratio = bg_ratio

    @classmethod
    def from_config(cls, config: GuidanceConfig) -> Uniform:
        return cls(bg_ratio=config.bg_ratio)

    def sample(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = flow.shape[:2]
        count = max(1, round(self.bg_ratio * h * w))
        if valid is None:
            index = rng.choice(h * w, size=count, replace=False)
        else:
            pixels = np.flatnonzero(valid)
            index = rng.choice(pixels, size=min(count, pixels.size), replace=False)
        return np.divmod(index, w)
