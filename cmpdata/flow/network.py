"""What the learned estimators (RAFT, LiteFlowNet) share: a torch network, its weights file,
the device and precision it runs at, and batches of same-size pairs.

A subclass builds its network (:meth:`NetworkFlow.build`), says how a state dict read from a
file becomes the network's (:meth:`NetworkFlow.fit_state`), and computes the flows of one
batch of same-size pairs (:meth:`NetworkFlow.infer`). This class reads the file
(``torch.load(weights_only=True)``, never a download), checks that every key is used,
records the file's sha256 in the backend's identity, groups the pairs by size, and resizes
each flow back to its frame's size. torch is imported when a backend is built.
"""

from __future__ import annotations

import contextlib
import hashlib
from abc import abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cmpdata.errors import ConfigError, FlowWeightsError
from cmpdata.flow.base import FlowBackend, resize_flow

if TYPE_CHECKING:
    import torch

PRECISIONS = ("fp32", "fp16", "bf16")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def some_keys(keys: Sequence[str], shown: int = 4) -> str:
    """``"3 keys (a, b, c)"``: a few of ``keys`` for an error message."""
    if not keys:
        return "no keys"
    more = f", ... ({len(keys) - shown} more)" if len(keys) > shown else ""
    return f"{len(keys)} keys ({', '.join(keys[:shown])}{more})"


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of the weights file ``path``: a state dict, or a dict holding one under
    ``'state_dict'`` or ``'model'``; a ``module.`` prefix on every key (a checkpoint saved
    from a DataParallel wrapper) is removed. Raises :class:`FlowWeightsError` naming ``path``."""
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
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def resolve_device(device: str) -> torch.device:
    """``"auto"`` (CUDA when available, else CPU) or a torch device string, checked."""
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


class NetworkFlow(FlowBackend):
    """A flow network in torch.

    - ``weights``: a weights file; ``None`` asks :meth:`default_weights` for one.
    - ``device``: ``"auto"`` (CUDA when available, else CPU) or a torch device string.
    - ``precision``: ``"fp32"``, or ``"fp16"`` / ``"bf16"`` autocast, on CUDA only (refused
      on the CPU, where bf16 autocast is slow on most processors and fp16 unsupported).
    - ``batch_size``: pairs per forward pass; pairs are grouped by size first.
    - ``random_init``: run with random weights (seeded, so repeatable). For tests and speed
      benchmarks only: the flow is meaningless.

    Building never changes the caller's torch random state. Raises :class:`FlowWeightsError`
    when the weights are missing, unreadable or not this network's, and ``ValueError`` for
    invalid settings.
    """

    takes_weights = True

    def __init__(
        self,
        weights: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 8,
        random_init: bool = False,
    ) -> None:
        import torch

        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of: {PRECISIONS}")
        if batch_size < 1:
            raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
        if random_init and weights is not None:
            raise ConfigError(f"give weights ({weights}) or random_init=True, not both")
        self.device = resolve_device(device)
        if precision != "fp32" and self.device.type != "cuda":
            raise ConfigError(
                f"precision {precision!r} needs a CUDA device, not {self.device}; "
                "use precision='fp32'"
            )
        self.precision = precision
        self.batch_size = int(batch_size)
        self.random_init = bool(random_init)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = self.build()
        self.weights_path: Path | None = None
        if not random_init:
            self.weights_path = Path(weights) if weights is not None else self.default_weights()
            self.load(self.weights_path)
        self._sha256 = sha256_file(self.weights_path) if self.weights_path else None
        self.model.eval().to(self.device)

    @abstractmethod
    def build(self) -> torch.nn.Module:
        """The network, randomly initialised (under a fixed seed)."""

    def default_weights(self) -> Path:
        """The weights file used when none is given; raises :class:`FlowWeightsError` saying
        how to supply one."""
        raise FlowWeightsError(f"{self.name} needs weights: pass --flow-weights FILE")

    def fit_state(self, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
        """The file's state dict as the network names it (the same, unless overridden)."""
        return state

    def load(self, path: Path) -> None:
        """Load ``path`` strictly: every key used, every key present, every shape equal."""
        state = self.fit_state(read_state_dict(path), path)
        expected = self.model.state_dict()
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        if missing or unexpected:
            raise FlowWeightsError(
                f"{path}: not weights of {self.network_name}: "
                f"{some_keys(missing)} missing, {some_keys(unexpected)} unexpected"
            )
        shapes = [
            f"{k} {tuple(v.shape)} (the network's is {tuple(expected[k].shape)})"
            for k, v in state.items()
            if v.shape != expected[k].shape
        ]
        if shapes:
            raise FlowWeightsError(
                f"{path}: does not fit {self.network_name}: {len(shapes)} tensors of another "
                f"shape, first {shapes[0]}"
            )
        self.model.load_state_dict(state)

    @property
    def network_name(self) -> str:
        return self.name

    def compute(
        self, frames0: Sequence[np.ndarray], frames1: Sequence[np.ndarray]
    ) -> list[np.ndarray]:
        groups: dict[tuple[int, int], list[int]] = {}
        for i, frame in enumerate(frames0):
            groups.setdefault(frame.shape[:2], []).append(i)
        for size in groups:  # every size is checked before any work is done
            self.check_size(*size)
        flows: dict[int, np.ndarray] = {}
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = self._flow_batch(
                    np.stack([frames0[i] for i in chunk]), np.stack([frames1[i] for i in chunk])
                )
                flows.update(zip(chunk, batch, strict=True))
        return [flows[i] for i in range(len(frames0))]

    def check_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` naming the shape if the network cannot take frames this size."""
        if min(height, width) < self.min_side:
            raise ValueError(
                f"frames of shape ({height}, {width}) are too small for {self.name} "
                f"(at least {self.min_side} x {self.min_side} px)"
            )

    def _flow_batch(self, first: np.ndarray, second: np.ndarray) -> list[np.ndarray]:
        """Flows of N pairs of one size: ``first``, ``second`` are (N, H, W, 3) uint8."""
        import torch

        height, width = first.shape[1:3]
        if self.precision == "fp32":
            autocast = contextlib.nullcontext()
        else:
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            autocast = torch.autocast(self.device.type, dtype=dtype)
        with torch.inference_mode():
            images = torch.from_numpy(np.concatenate([first, second])).to(self.device)
            images = images.permute(0, 3, 1, 2).float()
            with autocast:
                flow = self.infer(images[: len(first)], images[len(first) :])
            flow = flow.float().permute(0, 2, 3, 1).cpu().numpy()
        return [resize_flow(np.ascontiguousarray(f), (height, width)) for f in flow]

    @abstractmethod
    def infer(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``(N, 2, h, w)`` flows in px of an ``h x w`` grid spanning the frames, from
        ``(N, 3, H, W)`` float RGB frames on the 0-255 scale (on :attr:`device`);
        :meth:`_flow_batch` resizes them to ``H x W`` with their vectors scaled."""

    def params(self) -> dict[str, Any]:
        return {"precision": self.precision, "random_init": self.random_init}

    def weights_sha256(self) -> str | None:
        return self._sha256
