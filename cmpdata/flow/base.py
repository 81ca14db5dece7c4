"""The one interface every optical-flow backend implements.

A backend takes a batch of frame pairs and returns their forward flows::

    backend = build_flow("dis", preset="medium")
    flows = backend(frames0, frames1)   # lists of (H, W, 3) uint8 RGB -> list of (H, W, 2) float32

Frames of one pair share a size; different pairs of a batch may differ. Each backend takes
its settings only through its constructor and reports them in :meth:`FlowBackend.identity`
for provenance (name, parameters, sha256 of the weights when it has any).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np

from cmpdata.records import check_flow, check_image
from cmpdata.registry import Registry


class FlowBackend(ABC):
    """Batch of frame pairs in, batch of forward flows out."""

    #: registry name, set by :func:`register_flow`
    name: str = ""
    #: smallest frame height and width (px) the backend accepts
    min_side: int = 1
    #: whether the backend reads a weights file (``weights=FILE``, ``--flow-weights FILE``)
    takes_weights: bool = False

    def __call__(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """Forward flow from each ``frames0[i]`` to ``frames1[i]``.

        Raises ``ValueError`` if the two lists differ in length, a frame is not uint8 RGB, or
        the frames of a pair differ in size.
        """
        if len(frames0) != len(frames1):
            raise ValueError(f"{len(frames0)} first frames but {len(frames1)} second frames")
        for i, (a, b) in enumerate(zip(frames0, frames1, strict=True)):
            check_image(f"frames0[{i}]", a)
            check_image(f"frames1[{i}]", b)
            if a.shape != b.shape:
                raise ValueError(f"pair {i}: frame shapes differ: {a.shape} vs {b.shape}")
        if not frames0:
            return []
        flows = self.compute(frames0, frames1)
        for i, (a, flow) in enumerate(zip(frames0, flows, strict=True)):
            check_flow(f"{self.name} flow[{i}]", flow, a.shape[:2])
        return flows

    @abstractmethod
    def compute(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        """The backend's work, on inputs already checked by :meth:`__call__`."""

    def params(self) -> dict[str, Any]:
        """The settings that change the output (JSON-serialisable)."""
        return {}

    def weights_sha256(self) -> str | None:
        return None

    def identity(self) -> dict[str, Any]:
        """Provenance: what computed the flows, so a dataset records it."""
        return {"name": self.name, "params": self.params(), "weights_sha256": self.weights_sha256()}


FLOW_BACKENDS: Registry[type[FlowBackend]] = Registry("flow backend")


def register_flow(name: str):
    """Class decorator: register a :class:`FlowBackend` under ``name``."""

    def add(cls: type[FlowBackend]) -> type[FlowBackend]:
        cls.name = name
        return FLOW_BACKENDS.register(name)(cls)

    return add


def build_flow(name: str, **options: Any) -> FlowBackend:
    """Instantiate the backend registered as ``name`` with its constructor ``options``."""
    return FLOW_BACKENDS.get(name)(**options)


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a flow field to ``size`` (H, W), scaling its vectors by the same factors.

    A flow computed on frames of width W0 and shown on frames of width W1 moves every pixel
    W1/W0 times as far in x (likewise in y), so x and y are scaled separately.
    """
    check_flow("flow", flow)
    h0, w0 = flow.shape[:2]
    h1, w1 = size
    if (h0, w0) == (h1, w1):
        return flow
    if h1 < 1 or w1 < 1:
        raise ValueError(f"cannot resize a flow to {size}")
    shrinking = h1 * w1 < h0 * w0
    out = cv2.resize(
        flow, (w1, h1), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    )
    out[..., 0] *= w1 / w0
    out[..., 1] *= h1 / h0
    return out.astype(np.float32, copy=False)
