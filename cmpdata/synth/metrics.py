"""Flow error measures."""

from __future__ import annotations

import numpy as np

from cmpdata.records import check_flow


def endpoint_error(
    flow: np.ndarray, reference: np.ndarray, mask: np.ndarray | None = None
) -> float:
    """Mean end-point error in pixels: the mean Euclidean distance between the vectors.

    ``mask`` (bool, H x W) restricts the mean to the pixels where it is True. Raises
    ``ValueError`` when the shapes differ or the mask selects nothing.
    """
    check_flow("flow", flow)
    check_flow("reference", reference, flow.shape[:2])
    err = np.linalg.norm(flow - reference, axis=-1)
    if mask is not None:
        if mask.shape != err.shape:
            raise ValueError(f"mask shape {mask.shape} does not match flow {err.shape}")
        if not mask.any():
            raise ValueError("mask selects no pixel")
        err = err[mask]
    return float(err.mean())
