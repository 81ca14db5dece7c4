"""OpenCV's DIS optical flow (Kroeger et al. 2016): fast, deterministic, CPU only, no weights.

The project's default backend. Runs on the grayscale frames; one ``cv2.DISOpticalFlow``
object is made per backend instance and reused for every pair, so an instance must not be
shared between threads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.flow.base import FlowBackend, register_flow

PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}

#: smallest height and width DIS is given: on smaller frames OpenCV 5.0's DIS raises, or
#: crashes the whole process (segmentation fault, seen on frames 8-15 px high)
MIN_SIDE = 16


@register_flow("dis")
class DisFlow(FlowBackend):
    """Dense Inverse Search flow, from the OpenCV preset ``ultrafast``, ``fast`` or ``medium``.

    Raises ``ValueError`` for an unknown preset, and (per call) for a frame under
    :data:`MIN_SIDE` px on a side.
    """

    min_side = MIN_SIDE

    def __init__(self, preset: str = "medium") -> None:
        if preset not in PRESETS:
            raise ConfigError(f"unknown DIS preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        self.preset = preset
        self._dis = cv2.DISOpticalFlow_create(PRESETS[preset])

    def __reduce__(self) -> tuple[type[DisFlow], tuple[str]]:
        # the OpenCV object cannot be pickled; rebuild it from the preset in the new process
        return type(self), (self.preset,)

    def compute(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        flows = []
        for i, (a, b) in enumerate(zip(frames0, frames1, strict=True)):
            if min(a.shape[:2]) < MIN_SIDE:
                raise ValueError(
                    f"pair {i}: frames of shape {a.shape} are too small for DIS "
                    f"(at least {MIN_SIDE} x {MIN_SIDE} px)"
                )
            gray0 = cv2.cvtColor(a, cv2.COLOR_RGB2GRAY)
            gray1 = cv2.cvtColor(b, cv2.COLOR_RGB2GRAY)
            flows.append(self._dis.calc(gray0, gray1, None))
        return flows

    def params(self) -> dict[str, Any]:
        return {"preset": self.preset}
