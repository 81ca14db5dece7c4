"""Typed records passed between the stages: source -> frame pair -> flow sample -> guided sample.

Conventions, everywhere in the project:
- images are ``uint8`` arrays of shape ``(H, W, 3)``, RGB;
- a flow is a ``float32`` array of shape ``(H, W, 2)`` in pixels, x (to the right) then y
  (downwards), pointing from the first frame of a pair to the second;
- a validity mask is a ``bool`` array of shape ``(H, W)``, True where the flow is trusted;
- guidance points are ``(K, 2)`` ``float32`` pixel coordinates (x, y) with their ``(K, 2)``
  flow vectors.

Records check their own shapes and dtypes when built, so a stage that hands on something
malformed fails at its boundary, with the shapes in the message.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

SourceKind = Literal["video", "frames"]


def check_array(
    name: str, value: object, dtype: type, shape: Sequence[int | None], what: str
) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a numpy array of ``dtype`` whose
    shape matches ``shape`` (``None``: any length on that axis); ``what`` describes it."""
    if not (
        isinstance(value, np.ndarray)
        and value.dtype == dtype
        and value.ndim == len(shape)
        and all(want is None or want == got for want, got in zip(shape, value.shape, strict=True))
    ):
        found = f"{getattr(value, 'dtype', type(value).__name__)} {getattr(value, 'shape', '')}"
        raise ValueError(f"{name} must be {what}, got {found}")


def check_image(name: str, image: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``image`` is uint8 (H, W, 3)."""
    check_array(name, image, np.uint8, (None, None, 3), "a uint8 (H, W, 3) RGB array")


def check_flow(name: str, flow: np.ndarray, size: tuple[int, int] | None = None) -> None:
    """Raise ``ValueError`` unless ``flow`` is float32 (H, W, 2), optionally of ``size`` (H, W)."""
    check_array(name, flow, np.float32, (None, None, 2), "a float32 (H, W, 2) array")
    if size is not None and flow.shape[:2] != tuple(size):
        raise ValueError(f"{name} has size {flow.shape[:2]}, expected {tuple(size)}")


def check_mask(name: str, mask: np.ndarray, size: tuple[int, int]) -> None:
    """Raise ``ValueError`` unless ``mask`` is bool of shape ``size`` (H, W)."""
    check_array(name, mask, np.bool_, size, f"a bool array of shape {size}")


def make_sample_id(source_id: str, t0: int, t1: int) -> str:
    """The id of the pair (t0, t1) of a source; stable across machines and runs."""
    return f"{source_id}#{t0:06d}-{t1:06d}"


@dataclass(frozen=True)
class Source:
    """One video file or one folder of frames.

    ``id`` is the path relative to the root it was found under (POSIX separators): it does not
    change when the collection is moved, and every sample id starts with it.
    """

    id: str
    path: Path
    kind: SourceKind
    frames: tuple[str, ...] = ()  # frame folders only: file names in natural order


@dataclass(frozen=True)
class VideoInfo:
    """What a source is, as displayed: size after rotation, frame count as far as known."""

    width: int
    height: int
    num_frames: int
    fps: float | None = None
    rotation: int = 0  # degrees clockwise applied to the stored frames to display them
    note: str | None = None  # what the probe did not take as the file claimed, and why
    # The decoder that decoder="auto" reads a video with, chosen by the probe: "decord" or
    # "ffmpeg". None: a frame folder, or not probed (decord, then ffmpeg if decord fails).
    decoder: str | None = None

    @property
    def short_side(self) -> int:
        return min(self.width, self.height)


@dataclass(frozen=True, eq=False)
class FramePair:
    """Two frames of one source, ``t1 = t0 + gap``, already cropped and resized.

    ``crop`` is the (x0, y0, x1, y1) box kept from the decoded frame (letterbox borders
    removed), ``scale`` the (sx, sy) factors from that box to the stored frames. ``extras``
    are optional parts stored with the sample (a synthetic clip's exact flow and object ids,
    :mod:`cmpdata.synth.truth`).
    """

    source_id: str
    t0: int
    t1: int
    frame0: np.ndarray
    frame1: np.ndarray
    crop: tuple[int, int, int, int] | None = None
    scale: tuple[float, float] = (1.0, 1.0)
    extras: Mapping[str, bytes] = field(default_factory=dict)
    sample_id: str = field(init=False)

    def __post_init__(self) -> None:
        check_image("frame0", self.frame0)
        check_image("frame1", self.frame1)
        if self.frame0.shape != self.frame1.shape:
            raise ValueError(
                f"frames of a pair differ in shape: {self.frame0.shape} vs {self.frame1.shape}"
            )
        if self.t1 <= self.t0:
            raise ValueError(f"t1 ({self.t1}) must come after t0 ({self.t0})")
        object.__setattr__(self, "sample_id", make_sample_id(self.source_id, self.t0, self.t1))

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the frames."""
        return self.frame0.shape[0], self.frame0.shape[1]


@dataclass(frozen=True, eq=False)
class FlowSample:
    """A frame pair with its dense forward flow and, when computed, its validity mask."""

    pair: FramePair
    flow: np.ndarray
    valid: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_flow("flow", self.flow, self.pair.size)
        if self.valid is not None:
            check_mask("valid", self.valid, self.pair.size)

    @property
    def sample_id(self) -> str:
        return self.pair.sample_id


@dataclass(frozen=True, eq=False)
class Guidance:
    """Sparse flow vectors at ``points`` (x, y pixel coordinates)."""

    points: np.ndarray
    vectors: np.ndarray

    def __post_init__(self) -> None:
        for name, arr in (("points", self.points), ("vectors", self.vectors)):
            check_array(f"guidance {name}", arr, np.float32, (None, 2), "float32 (K, 2)")
        if len(self.points) != len(self.vectors):
            raise ValueError(f"{len(self.points)} guidance points but {len(self.vectors)} vectors")

    def __len__(self) -> int:
        return len(self.points)


@dataclass(frozen=True, eq=False)
class GuidedSample:
    """A flow sample with the guidance drawn for it and the seed that drew it."""

    flow_sample: FlowSample
    guidance: Guidance
    seed: int

    @property
    def sample_id(self) -> str:
        return self.flow_sample.sample_id


@dataclass(frozen=True)
class Dropped:
    """A pair (or a whole source, with ``t0 = t1 = -1``) left out of the dataset, and why.

    ``stage`` names where it was dropped (``"source"``, ``"decode"``, ``"filter:static"``...),
    ``reason`` is a human-readable sentence naming the file or the measured value.
    """

    source_id: str
    t0: int
    t1: int
    stage: str
    reason: str

    @property
    def sample_id(self) -> str:
        return make_sample_id(self.source_id, self.t0, self.t1)
