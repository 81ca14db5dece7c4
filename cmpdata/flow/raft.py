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

import contextlib
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np

from cmpdata.errors import ConfigError, FlowWeightsError
from cmpdata.flow.base import FlowBackend, register_flow, resize_flow

if TYPE_CHECKING:
    import torch

#: smallest height and width accepted: a smaller frame holds too little for features at 1/8
#: of its size to mean anything, however far it is up-sized
MIN_SIDE = 16
#: short side the network sees at least
MIN_NETWORK_SIDE = 128
#: RAFT's feature maps are 1/8 of the input, so its sides must be multiples of this
SIZE_MULTIPLE = 8
PRECISIONS = ("fp32", "fp16", "bf16")


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


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class RaftFlow(FlowBackend):
    """torchvision's RAFT; the variants below pick the architecture.

    - ``weights``: a checkpoint file (a state_dict, or a dict holding one under
      ``'state_dict'`` or ``'model'``). ``None`` looks for torchvision's published checkpoint in
      its cache, :meth:`default_weights_path`.
    - ``device``: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
    - ``precision``: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast, on CUDA only (refused
      on the CPU, where bf16 autocast is slow on most processors and fp16 unsupported).
    - ``num_flow_updates``: RAFT's refinement iterations; the last prediction is returned.
    - ``batch_size``: pairs per forward pass; pairs are grouped by size first.
    - ``random_init``: run with random weights (seeded, so repeatable). For tests and speed
      benchmarks only: the flow is meaningless.

    Building the model never changes the caller's torch random state. Raises
    ``FlowWeightsError`` when the weights are missing, unreadable or not this variant's, and
    ``ValueError`` for invalid settings or (per call) frames under :data:`MIN_SIDE` px.
    """

    min_side = MIN_SIDE
    #: torchvision builder function and weights enum of the variant
    builder: str = ""
    weights_enum: str = ""

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        num_flow_updates: int = 12,
        batch_size: int = 8,
        random_init: bool = False,
    ) -> None:
        import torch
        from torchvision.models import optical_flow

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of: {PRECISIONS}")
        if num_flow_updates < 1:
            raise ConfigError(f"num_flow_updates must be at least 1, got {num_flow_updates}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if random_init and weights is not None:
            raise ConfigError(f"give weights ({weights}) or random_init=True, not both")
        self.device = _resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise ConfigError(
                f"precision {precision!r} needs a CUDA device, not {self.device}; "
                "use precision='fp32'"
            )
        self.precision = precision
        self.num_flow_updates = int(num_flow_updates)
        self.batch_size = int(batch_size)
        self.random_init = bool(random_init)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = getattr(optical_flow, self.builder)(weights=None, progress=False)
        self.weights_path: Path | None = None
        if not random_init:
            self.weights_path = Path(weights) if weights is not None else self._cached_weights()
            self._load(self.weights_path)
        self._sha256 = sha256_file(self.weights_path) if self.weights_path else None
        self.model.eval().to(self.device)

    @classmethod
    def default_weights_path(cls) -> Path:
        """Where torchvision caches its published checkpoint of this variant."""
        import torch
        from torchvision.models import optical_flow

        url = getattr(optical_flow, cls.weights_enum).DEFAULT.url
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)

    def _cached_weights(self) -> Path:
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

    def _load(self, path: Path) -> None:
        import torch

        if not path.is_file():
            raise FlowWeightsError(f"{path}: no such weights file")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        # torch.load fails with many exception types (unpickling, zip, EOF, ...): all mean
        # the same thing to the user
        except Exception as e:
            raise FlowWeightsError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
        state = checkpoint
        if isinstance(checkpoint, dict):
            for key in ("state_dict", "model"):
                if isinstance(checkpoint.get(key), dict):
                    state = checkpoint[key]
                    break
        if not (
            isinstance(state, dict)
            and state
            and all(isinstance(v, torch.Tensor) for v in state.values())
        ):
            raise FlowWeightsError(f"{path}: holds no state_dict of tensors")
        # checkpoints saved from a DistributedDataParallel wrapper prefix every key
        if all(k.startswith("module.") for k in state):
            state = {k.removeprefix("module."): v for k, v in state.items()}
        try:
            result = self.model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # tensor shapes that do not match the architecture
            raise FlowWeightsError(
                f"{path}: does not fit torchvision's {self.builder}: {str(e).strip()}"
            ) from e
        if result.missing_keys or result.unexpected_keys:
            raise FlowWeightsError(
                f"{path}: not weights of torchvision's {self.builder}: "
                f"{_some_keys(result.missing_keys)} missing, "
                f"{_some_keys(result.unexpected_keys)} unexpected"
            )

    def compute(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames0):
            groups.setdefault(frame.shape[:2], []).append(i)
        # every size is checked before any work is done
        sizes = {size: network_sizes(*size) for size in groups}
        flows: dict[int, np.ndarray] = {}
        for size, indices in groups.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = self._flow_batch(
                    np.stack([frames0[i] for i in chunk]),
                    np.stack([frames1[i] for i in chunk]),
                    *sizes[size],
                )
                for i, flow in zip(chunk, batch, strict=True):
                    flows[i] = flow
        return [flows[i] for i in range(len(frames0))]

    def _flow_batch(
        self,
        first: np.ndarray,
        second: np.ndarray,
        resized: tuple[int, int],
        padded: tuple[int, int],
    ) -> list[np.ndarray]:
        """Flows of N pairs of one size: ``first``, ``second`` are (N, H, W, 3) uint8."""
        import torch
        import torch.nn.functional as F

        n, height, width = first.shape[:3]
        if self.precision == "fp32":
            autocast = contextlib.nullcontext()
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            autocast = torch.autocast(self.device.type, dtype=dtype)
        with torch.inference_mode():
            images = torch.from_numpy(np.concatenate([first, second])).to(self.device)
            images = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
            if resized != (height, width):
                images = F.interpolate(images, size=resized, mode="bilinear", align_corners=False)
            if padded != resized:
                pad = (0, padded[1] - resized[1], 0, padded[0] - resized[0])
                images = F.pad(images, pad, mode="replicate")
            with autocast:
                predictions = self.model(
                    images[:n], images[n:], num_flow_updates=self.num_flow_updates
                )
            flow = predictions[-1][:, :, : resized[0], : resized[1]]
            flow = flow.float().permute(0, 2, 3, 1).cpu().numpy()
        return [resize_flow(np.ascontiguousarray(f), (height, width)) for f in flow]

    def params(self) -> dict[str, Any]:
        return {
            "num_flow_updates": self.num_flow_updates,
            "precision": self.precision,
            "random_init": self.random_init,
        }

    def weights_sha256(self) -> str | None:
        return self._sha256


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


def _resolve_device(device: str) -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as e:
        raise ConfigError(f"unknown device {device!r}: {e}") from e
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def _some_keys(keys: list[str], shown: int = 4) -> str:
    if not keys:
        return "no keys"
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} keys ({', '.join(keys[:shown])}{more})"
