"""Forward-backward consistency: which pixels of a flow to trust.

A pixel's forward flow is trusted when following it and then the backward flow found there
brings it back to where it started, up to a tolerance that grows with the motion, and when
it lands inside the frame. This is the occlusion test of Sundaram, Brox and Keutzer
(ECCV 2010): valid where ``|f + b_w|^2 < alpha (|f|^2 + |b_w|^2) + beta``, ``b_w`` being the
backward flow sampled at ``p + f``. Occluded pixels (covered in the second frame) fail it,
as do most pixels where the estimator is wrong.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.flow.base import FlowBackend
from cmpdata.records import check_flow


def forward_backward(
    backend: FlowBackend,
    frames0: Sequence[np.ndarray],
    frames1: Sequence[np.ndarray],
    *,
    alpha: float = 0.01,
    beta: float = 0.5,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Forward flow of each pair and its validity mask, from one batched ``backend`` call.

    ``alpha`` (unitless) and ``beta`` (px²) are the test's tolerances; the defaults are
    Sundaram et al.'s. Returns ``(flow, valid)`` per pair: float32 (H, W, 2) px and bool
    (H, W). Raises ``ValueError`` if the lists differ in length or the backend refuses the
    frames.
    """
    if len(frames0) != len(frames1):
        raise ValueError(f"{len(frames0)} first frames but {len(frames1)} second frames")
    n = len(frames0)
    flows = backend([*frames0, *frames1], [*frames1, *frames0])
    return [
        (forward, consistency_mask(forward, backward, alpha=alpha, beta=beta))
        for forward, backward in zip(flows[:n], flows[n:], strict=True)
    ]


def consistency_mask(
    forward: np.ndarray, backward: np.ndarray, *, alpha: float = 0.01, beta: float = 0.5
) -> np.ndarray:
    """Bool (H, W) mask of the pixels whose ``forward`` flow passes the consistency test.

    ``backward`` is the flow from the second frame to the first, both float32 (H, W, 2) px.
    A target counts as inside the frame when it falls on a pixel's area, i.e. within half a
    pixel of the outermost pixel centres. Raises ``ValueError`` on mismatched shapes or
    negative tolerances.
    """
    check_flow("forward flow", forward)
    check_flow("backward flow", backward, forward.shape[:2])
    if alpha < 0 or beta < 0:
        raise ConfigError(f"alpha and beta must be non-negative, got {alpha} and {beta}")
    height, width = forward.shape[:2]
    grid_y, grid_x = np.mgrid[0:height, 0:width].astype(np.float32)
    target_x = grid_x + forward[..., 0]
    target_y = grid_y + forward[..., 1]
    backward_warped = cv2.remap(
        backward, target_x, target_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )
    round_trip = np.sum((forward + backward_warped) ** 2, axis=2)
    magnitude = np.sum(forward**2, axis=2) + np.sum(backward_warped**2, axis=2)
    inside = (
        (target_x >= -0.5)
        & (target_x <= width - 0.5)
        & (target_y >= -0.5)
        & (target_y <= height - 0.5)
    )
    return (round_trip < alpha * magnitude + beta) & inside
