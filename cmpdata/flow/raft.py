"""RAFT (Teed & Deng 2020) from torchvision: a learned estimator, best on a GPU, needs weights.

Two variants, ``raft-small`` (1.0M parameters) and ``raft-large`` (5.3M). Weights come from a
local file or from torchvision's own cache; nothing is ever downloaded. torch and torchvision
are imported when a backend is built, so importing this module stays cheap.

RAFT wants inputs in [-1, 1] whose sides are multiples of 8, and its output degrades (to NaN
with the published weights) on frames under about 128 px. So each frame is up-sized
(bilinear, aspect ratio kept) until its short side is at least :data:`MIN_NETWORK_SIDE`, padded
(edge pixels repeated, bottom and right) to multiples of 8, and the flow is cropped and
resized back to the frame's size with its vectors scaled.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from cmpdata.errors import ConfigError, FlowWeightsError
from cmpdata.flow.base import register_flow
from cmpdata.flow.network import NetworkFlow

if TYPE_CHECKING:
    import torch

#: smallest height and width accepted: a smaller frame holds too little for features at 1/8
#: of its size to mean anything, however far it is up-sized
MIN_SIDE = 16
#: short side the network sees at least
MIN_NETWORK_SIDE = 128
#: RAFT's feature maps are 1/8 of the input, so its sides must be multiples of this
SIZE_MULTIPLE = 8


def network_sizes(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sizes (H, W) RAFT works at for a frame of ``height`` x ``width`` px.

    Returns ``(resized, padded)``: ``resized`` is the frame up-sized, aspect ratio kept, so
    its short side is at least :data:`MIN_NETWORK_SIDE` (unchanged when it already is);
    ``padded`` is ``resized`` rounded up to multiples of :data:`SIZE_MULTIPLE`.

    Raises ``ValueError`` naming the shape when a side is under :data:`MIN_SIDE`.
    """
    if min(height, width) < MIN_SIDE:
        raise ValueError(
            f"frames of shape ({height}, {width}) are too small for RAFT "
            f"(at least {MIN_SIDE} x {MIN_SIDE} px)"
        )
    scale = MIN_NETWORK_SIDE / min(height, width)
    if scale > 1:
        resized = (
            max(MIN_NETWORK_SIDE, round(height * scale)),
            max(MIN_NETWORK_SIDE, round(width * scale)),
        )
    else:
        resized = (height, width)
    padded = (
        -(-resized[0] // SIZE_MULTIPLE) * SIZE_MULTIPLE,
        -(-resized[1] // SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )
    return resized, padded


class RaftFlow(NetworkFlow):
    """torchvision's RAFT; the variants below pick the architecture.

    Settings as :class:`~cmpdata.flow.network.NetworkFlow`'s, plus ``num_flow_updates``:
    RAFT's refinement iterations (the last prediction is returned). The weights file is a
    state dict of torchvision's model (or a dict holding one under ``'state_dict'`` or
    ``'model'``); ``None`` looks for torchvision's published checkpoint in its cache,
    :meth:`default_weights_path`. Raises ``ValueError`` (per call) for frames under
    :data:`MIN_SIDE` px.
    """

    min_side = MIN_SIDE
    #: torchvision builder function and weights enum of the variant
    builder: str = ""
    weights_enum: str = ""

    def __init__(self, *args: Any, num_flow_updates: int = 12, **options: Any) -> None:
        if num_flow_updates < 1:
            raise ConfigError(f"num_flow_updates must be at least 1, got {num_flow_updates}")
        self.num_flow_updates = int(num_flow_updates)
        super().__init__(*args, **options)

    def build(self) -> torch.nn.Module:
        from torchvision.models import optical_flow

        return getattr(optical_flow, self.builder)(weights=None, progress=False)

    @property
    def network_name(self) -> str:
        return f"torchvision's {self.builder}"

    @classmethod
    def default_weights_path(cls) -> Path:
        """Where torchvision caches its published checkpoint of this variant."""
        import torch
        from torchvision.models import optical_flow

        url = getattr(optical_flow, cls.weights_enum).DEFAULT.url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)

    def default_weights(self) -> Path:
        from torchvision.models import optical_flow

        path = self.default_weights_path()
        if not path.is_file():
            url = getattr(optical_flow, self.weights_enum).DEFAULT.url
            raise FlowWeightsError(
                f"no weights for {self.name}: pass a checkpoint file with --flow-weights FILE "
                f"(weights=FILE in Python), or put torchvision's published {self.builder} "
                f"checkpoint ({url}) at {path}. Nothing is downloaded."
            )
        return path

    def check_size(self, height: int, width: int) -> None:
        network_sizes(height, width)

    def infer(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        resized, padded = network_sizes(*first.shape[2:])
        images = torch.cat([first, second]) / 127.5 - 1.0
        if resized != tuple(images.shape[2:]):
            images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False)
        if padded != resized:
            pad = (0, padded[1] - resized[1], 0, padded[0] - resized[0])
            images = F.pad(images, pad, mode="replicate")
        n = len(first)
        predictions = self.model(images[:n], images[n:], num_flow_updates=self.num_flow_updates)
        return predictions[-1][:, :, : resized[0], : resized[1]]

    def params(self) -> dict[str, Any]:
        return {"num_flow_updates": self.num_flow_updates, **super().params()}


@register_flow("raft-small")
class RaftSmallFlow(RaftFlow):
    """RAFT small (1.0M parameters, 1/4.4 of large's operations): Sintel-train EPE 1.99 / 3.28."""

    builder = "raft_small"
    weights_enum = "Raft_Small_Weights"


@register_flow("raft-large")
class RaftLargeFlow(RaftFlow):
    """RAFT large (5.3M parameters): Sintel-train EPE 1.38 clean / 2.72 final."""

    builder = "raft_large"
    weights_enum = "Raft_Large_Weights"
