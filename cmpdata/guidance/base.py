"""The guidance interface: strategies that pick pixels, and the sampler that combines them.

A *strategy* (``watershed``, ``grid``, ``uniform``, ``gradnms``) looks at one flow field and
returns pixel positions. The :class:`GuidanceSampler` runs several strategies, merges their
positions, optionally caps their number, and reads the flow vectors there::

    sampler = build_sampler(GuidanceConfig(strategies="watershed,grid"))
    guidance = sampler(flow, sample_rng(seed, sample_id), valid)   # -> Guidance

Every random choice comes from the generator passed in, so the same (seed, sample id) always
gets the same guidance. Positions are integer pixel coordinates (x, y); a position never lies
on a pixel whose ``valid`` entry is False.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.records import Guidance, check_flow, check_mask
from cmpdata.registry import Registry


def check_bg_ratio(bg_ratio: float) -> None:
    """Raise ``ValueError`` unless ``bg_ratio`` (points per pixel) is in (0, 1]."""
    if not 0 < bg_ratio <= 1:
        raise ConfigError(f"bg_ratio must be in (0, 1], got {bg_ratio}")


def check_nms_ks(nms_ks: int) -> None:
    """Raise ``ValueError`` unless ``nms_ks`` is an odd kernel size >= 3."""
    if nms_ks < 3 or nms_ks % 2 == 0:
        raise ConfigError(f"nms_ks must be an odd number >= 3, got {nms_ks}")


def check_fraction(name: str, value: float) -> None:
    """Raise ``ValueError`` unless ``value`` is strictly between 0 and 1."""
    if not 0 < value < 1:
        raise ConfigError(f"{name} must be in (0, 1), got {value}")


def check_cap(max_num_guide: int | None) -> None:
    """Raise ``ValueError`` unless ``max_num_guide`` is None or a positive count."""
    if max_num_guide is not None and max_num_guide < 1:
        raise ConfigError(f"max_num_guide must be None or >= 1, got {max_num_guide}")


@dataclass(frozen=True)
class GuidanceConfig:
    """Which strategies to combine and their settings; the defaults are the paper's ResNet-50 ones.

    ``strategies`` may be given as a comma-separated string; it is stored as a tuple of names.
    The paper's settings are :meth:`resnet`, :meth:`alexnet` and :meth:`annotation`; all of them
    use the fast watershed unless ``watershed_exact`` is set (see ``watershed``).
    Raises ``ValueError`` for an unknown strategy (listing the choices) or an out-of-range value.
    """

    strategies: str | tuple[str, ...] = "watershed,grid"  # names from GUIDANCE_SAMPLERS
    bg_ratio: float = 1 / 6400  # grid/uniform density, points per pixel (grid stride 80 px)
    nms_ks: int = 15  # odd max-filter kernel (px, x ds on large frames); sets the spacing
    edge_threshold: float = 0.1  # motion edge: flow gradient above this fraction of its max
    max_num_guide: int | None = None  # cap on the number of points (random subset); None: no cap
    watershed_exact: bool = False  # paper-exact watershed; default: 5x faster approximation

    def __post_init__(self) -> None:
        names = self.strategies
        if isinstance(names, str):
            names = tuple(n.strip() for n in names.split(",") if n.strip())
        names = tuple(names)
        if not names:
            raise ConfigError("GuidanceConfig.strategies is empty; name at least one strategy")
        if len(set(names)) != len(names):
            raise ConfigError(f"GuidanceConfig.strategies repeats a name: {names}")
        for name in names:
            GUIDANCE_SAMPLERS.get(name)
        object.__setattr__(self, "strategies", names)
        check_bg_ratio(self.bg_ratio)
        check_nms_ks(self.nms_ks)
        check_fraction("edge_threshold", self.edge_threshold)
        check_cap(self.max_num_guide)

    @classmethod
    def resnet(cls) -> GuidanceConfig:
        """The paper's representation-learning setting for ResNet-50 (the defaults)."""
        return cls(strategies="watershed,grid", bg_ratio=1 / 6400, nms_ks=15)

    @classmethod
    def alexnet(cls) -> GuidanceConfig:
        """The paper's representation-learning setting for AlexNet: wider NMS, at most 150."""
        return cls(strategies="watershed,grid", bg_ratio=1 / 6400, nms_ks=41, max_num_guide=150)

    @classmethod
    def annotation(cls) -> GuidanceConfig:
        """The semi-automatic annotation model's setting: grid stride 132 px, ``nms_ks`` 41."""
        return cls(strategies="watershed,grid", bg_ratio=5.74e-5, nms_ks=41)


class GuidanceStrategy(ABC):
    """Picks guidance pixels on one flow field; settings come only through the constructor."""

    #: registry name, set by :func:`register_strategy`
    name: ClassVar[str] = ""

    def __call__(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> np.ndarray:
        """(K, 2) int64 pixel positions (x, y) on ``flow`` (float32 (H, W, 2), pixels).

        ``valid`` (bool (H, W)) excludes pixels; ``rng`` is the only source of randomness.
        Raises ``ValueError`` naming the shapes if ``flow`` or ``valid`` is malformed or empty.
        """
        check_flow("flow", flow)
        h, w = flow.shape[:2]
        if h == 0 or w == 0:
            raise ValueError(f"flow is empty: shape {flow.shape}")
        if valid is not None:
            check_mask("valid", valid, (h, w))
        ys, xs = self.sample(flow, rng, valid)
        return np.stack([xs, ys], axis=1).astype(np.int64, copy=False)

    @abstractmethod
    def sample(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and columns of the chosen pixels, all valid; inputs already checked."""

    @classmethod
    @abstractmethod
    def from_config(cls, config: GuidanceConfig) -> GuidanceStrategy:
        """The strategy with the settings of ``config`` that concern it."""


GUIDANCE_SAMPLERS: Registry[type[GuidanceStrategy]] = Registry("guidance strategy")


def register_strategy(
    name: str,
) -> Callable[[type[GuidanceStrategy]], type[GuidanceStrategy]]:
    """Class decorator: register a :class:`GuidanceStrategy` under ``name``."""

    def add(cls: type[GuidanceStrategy]) -> type[GuidanceStrategy]:
        cls.name = name
        return GUIDANCE_SAMPLERS.register(name)(cls)

    return add


class GuidanceSampler:
    """The union of several strategies' points, optionally capped, with the flow at each."""

    def __init__(
        self, strategies: Sequence[GuidanceStrategy], max_num_guide: int | None = None
    ) -> None:
        if not strategies:
            raise ValueError("a GuidanceSampler needs at least one strategy")
        check_cap(max_num_guide)
        self.strategies = tuple(strategies)
        self.max_num_guide = max_num_guide

    def __call__(
        self, flow: np.ndarray, rng: np.random.Generator, valid: np.ndarray | None = None
    ) -> Guidance:
        """Guidance on ``flow`` (float32 (H, W, 2), pixels), drawn with ``rng``.

        Points are unique and sorted by (y, x); with a cap, a uniformly random subset of that
        size is kept. The vectors are the flow at the points. Raises ``ValueError`` on
        malformed inputs (see :meth:`GuidanceStrategy.__call__`).
        """
        check_flow("flow", flow)
        w = flow.shape[1]
        found = [strategy(flow, rng, valid) for strategy in self.strategies]
        xy = np.concatenate(found)
        # The linear index y * W + x sorts by (y, x); np.unique also removes points that
        # two strategies picked.
        index = np.unique(xy[:, 1] * w + xy[:, 0])
        if self.max_num_guide is not None and len(index) > self.max_num_guide:
            index = np.sort(rng.choice(index, size=self.max_num_guide, replace=False))
        ys, xs = np.divmod(index, w)
        return Guidance(
            points=np.stack([xs, ys], axis=1).astype(np.float32),
            vectors=np.ascontiguousarray(flow[ys, xs], dtype=np.float32).reshape(-1, 2),
        )


def build_sampler(config: GuidanceConfig) -> GuidanceSampler:
    """The sampler described by ``config``: its strategies, in order, and its cap."""
    strategies = [GUIDANCE_SAMPLERS.get(name).from_config(config) for name in config.strategies]
    return GuidanceSampler(strategies, config.max_num_guide)


def guidance_pixels(guidance: Guidance, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Columns and rows (int64) of the pixels of ``guidance``'s points on an image of ``size``
    = (H, W): the points rounded to the nearest pixel. Raises ``ValueError`` if the size is
    empty or a point lies outside it."""
    h, w = size
    if h < 1 or w < 1:
        raise ValueError(f"cannot rasterize guidance onto size {size}")
    xy = np.rint(guidance.points).astype(np.int64)
    outside = (xy[:, 0] < 0) | (xy[:, 0] >= w) | (xy[:, 1] < 0) | (xy[:, 1] >= h)
    if outside.any():
        x, y = guidance.points[np.argmax(outside)]
        raise ValueError(
            f"{int(outside.sum())} guidance point(s) outside size (H, W) = {size}, "
            f"e.g. (x, y) = ({x}, {y})"
        )
    return xy[:, 0], xy[:, 1]


def rasterize(guidance: Guidance, size: tuple[int, int]) -> np.ndarray:
    """The model's 4-channel guidance input, float32 (4, H, W) for ``size`` = (H, W).

    Channels 0 and 1 hold the guidance vectors (x, y, pixels) at their points and zero
    elsewhere; channels 2 and 3 both hold the binary mask of the points. Points are rounded
    to the nearest pixel (:func:`guidance_pixels`; of two points on one pixel, the later one's
    vector is kept). Raises ``ValueError`` if a point lies outside ``size``.
    """
    xs, ys = guidance_pixels(guidance, size)
    out = np.zeros((4, *size), np.float32)
    out[0, ys, xs] = guidance.vectors[:, 0]
    out[1, ys, xs] = guidance.vectors[:, 1]
    out[2:, ys, xs] = 1.0
    return out
