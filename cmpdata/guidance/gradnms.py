"""The ``gradnms`` strategy: points on the strongest motion boundaries.

Our definition (the original's idea, not its exact score): on the flow sub-sampled as for
``watershed``, the motion-edge magnitude (:func:`~cmpdata.guidance.watershed.motion_edges`)
is smoothed with a Gaussian of ``sigma`` px, which merges the two-pixel-wide Sobel response
into one ridge along each boundary. Its local maxima (window ``nms_ks``, away from the border)
scoring at least ``threshold`` times the highest score are thinned like the watershed points,
and the strongest ``max(1, round(bg_ratio * H * W))`` are kept. A flow without any motion
boundary gives no point. (The original scored a box mean of width W / 20 minus a box mean of
half that width, kept maxima above 0.1 and had no cap.)
"""

from __future__ import annotations

import cv2
import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.guidance.base import (
    GuidanceConfig,
    GuidanceStrategy,
    check_bg_ratio,
    check_fraction,
    check_nms_ks,
    register_strategy,
)
from cmpdata.guidance.watershed import (
    downsample_factor,
    motion_edges,
    nms_points,
    work_grid,
)


@register_strategy("gradnms")
class GradNMS(GuidanceStrategy):
    """Thinned maxima of the smoothed motion-edge magnitude, strongest first, capped."""

    def __init__(
        self,
        nms_ks: int = 15,
        threshold: float = 0.1,
        bg_ratio: float = 1 / 6400,
        sigma: float = 2.0,
    ) -> None:
        check_nms_ks(nms_ks)
        check_fraction("threshold", threshold)
        check_bg_ratio(bg_ratio)
        if sigma <= 0:
            raise ConfigError(f"sigma must be positive, got {sigma}")
        self.nms_ks = nms_ks
        self.threshold = threshold
        self.bg_ratio = bg_ratio
        self.sigma = sigma

    @classmethod
    def from_config(cls, config: GuidanceConfig) -> GradNMS:
        # The same relative threshold as for the motion edges.
        return cls(nms_ks=config.nms_ks, threshold=config.edge_threshold, bg_ratio=config.bg_ratio)

    def sample(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        h, w = flow.shape[:2]
        ds = downsample_factor(h, w)
        score = cv2.GaussianBlur(
            motion_edges(work_grid(flow, ds)), (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT
        )
        r = (self.nms_ks - 1) // 2
        ys, xs = nms_points(score, r, r * ds, ds, valid, floor=self.threshold * float(score.max()))
        count = max(1, round(self.bg_ratio * h * w))
        return ys[:count], xs[:count]
