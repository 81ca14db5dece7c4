"""OpenCV's Farneback optical flow (Farneback 2003): polynomial expansion, CPU only, no weights.

Slower and less accurate than DIS on most footage; kept as a second classical estimator to
compare against and as a fallback that accepts frames of any size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.flow.base import FlowBackend, register_flow

#: the polynomial neighbourhood sizes OpenCV implements
POLY_SIZES = (5, 7)


@register_flow("farneback")
class FarnebackFlow(FlowBackend):
    """Farneback flow on the grayscale frames, with OpenCV's parameters as constructor args.

    - ``pyr_scale``: each pyramid level is this fraction of the one below (0 < s < 1).
    - ``levels``: number of pyramid levels including the full-size one. With 0.5 and 5 the
      coarsest level is 1/16 of the frame, enough for motions of tens of pixels at 416 px.
    - ``winsize``: averaging window in px; larger is smoother and more robust to noise.
    - ``iterations``: refinement iterations per level.
    - ``poly_n``: neighbourhood of the polynomial fit, 5 or 7 px.
    - ``poly_sigma``: Gaussian sigma of that fit; OpenCV suggests 1.1 for 5 and 1.5 for 7.
    - ``gaussian_window``: a Gaussian instead of a box averaging window (slower, more accurate).

    Raises ``ValueError`` for a setting out of its range.
    """

    def __init__(
        self,
        pyr_scale: float = 0.5,
        levels: int = 5,
        winsize: int = 15,
        iterations: int = 3,
        poly_n: int = 5,
        poly_sigma: float = 1.2,
        gaussian_window: bool = False,
    ) -> None:
        if not 0.0 < pyr_scale < 1.0:
            raise ConfigError(f"pyr_scale must be in (0, 1), got {pyr_scale}")
        for name, value in (("levels", levels), ("winsize", winsize), ("iterations", iterations)):
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if poly_n not in POLY_SIZES:
            raise ConfigError(f"poly_n must be one of {POLY_SIZES}, got {poly_n}")
        if poly_sigma <= 0:
            raise ConfigError(f"poly_sigma must be positive, got {poly_sigma}")
        self.pyr_scale = float(pyr_scale)
        self.levels = int(levels)
        self.winsize = int(winsize)
        self.iterations = int(iterations)
        self.poly_n = int(poly_n)
        self.poly_sigma = float(poly_sigma)
        self.gaussian_window = bool(gaussian_window)

    def compute(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        flags = cv2.OPTFLOW_FARNEBACK_GAUSSIAN if self.gaussian_window else 0
        return [
            cv2.calcOpticalFlowFarneback(
                cv2.cvtColor(a, cv2.COLOR_RGB2GRAY),
                cv2.cvtColor(b, cv2.COLOR_RGB2GRAY),
                None,
                self.pyr_scale,
                self.levels,
                self.winsize,
                self.iterations,
                self.poly_n,
                self.poly_sigma,
                flags,
            )
            for a, b in zip(frames0, frames1, strict=True)
        ]

    def params(self) -> dict[str, Any]:
        return {
            "pyr_scale": self.pyr_scale,
            "levels": self.levels,
            "winsize": self.winsize,
            "iterations": self.iterations,
            "poly_n": self.poly_n,
            "poly_sigma": self.poly_sigma,
            "gaussian_window": self.gaussian_window,
        }
