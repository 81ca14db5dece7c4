"""Pair filters: leave out the pairs not worth training on, and say why.

Two kinds of check, run at two points of the pipeline:

- on the frames, before any flow is computed (so a cut costs no flow): :func:`shot_cut`;
- on the flow: :func:`static` (almost nothing moves) and :func:`mostly_invalid` (the flow's
  validity mask, when there is one, rejects most of the frame).

Each check returns ``None`` to keep the pair or a sentence naming the measured value and the
threshold; :func:`frames_rejection` and :func:`flow_rejection` turn the first such sentence into a
:class:`~cmpdata.records.Dropped` record. Every threshold lives in :class:`FilterConfig`, and
``None`` switches its check off.

:func:`detect_letterbox` is not a filter but the ``crop(frame0, frame1) -> box`` callable the
decoder stage accepts, so that black borders are cut off before resizing and flow.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import cv2
import numpy as np

from cmpdata.errors import ConfigError
from cmpdata.records import Dropped, FlowSample, FramePair, check_flow, check_image

# A border row or column may hold compression ringing or a few stray bright pixels: it stays
# border unless more than this fraction of its pixels reach the threshold (a 99th percentile).
_MAX_BRIGHT_FRACTION = 0.01
# Lines looked at together, from each edge inwards, when looking for the borders.
_BLOCK = 8

# Grey thumbnail compared for the layout part of the cut score, and how far (in thumbnail
# pixels) it may slide: 3 of 32 x 24 tolerates a camera or object shift of about 10% of the
# frame between the two frames of a pair.
_THUMB_SIZE = (32, 24)
_THUMB_SHIFT = 3
# A thumbnail flatter than this (grey-level standard deviation) has no layout to compare.
_MIN_THUMB_STD = 1.0
# Bins of the hue (OpenCV range 0..180) and saturation (0..256) histograms.
_HIST_BINS = 16
# The cut score looks at every k-th pixel of every k-th row, k = short side // this (at
# least 1): ~100 px on the short side give the same histograms and thumbnails within ~1e-3
# of the score, at a twentieth of the cost of a 416 px frame.
_CUT_SAMPLES = 100


def detect_letterbox(
    frame0: np.ndarray, frame1: np.ndarray, *, threshold: int = 16, min_keep: float = 0.5
) -> tuple[int, int, int, int]:
    """The ``(x0, y0, x1, y1)`` box (``x1``, ``y1`` exclusive) inside the black borders.

    A row (column) at the top or bottom (left or right) edge is border when at most 1% of
    its pixels reach ``threshold`` (0..255) in any channel of either frame, i.e. its
    99th-percentile intensity stays below it; borders are peeled off from each edge inwards
    until the first content line.
    When the kept extent on an axis would be less than ``min_keep`` of the frame (a night or
    dark scene rather than bars), that axis is not cropped.

    Fits the decoder's ``crop(frame0, frame1) -> box`` hook, e.g.
    ``functools.partial(detect_letterbox, threshold=24)``.

    Raises ``ValueError`` if a frame is not uint8 (H, W, 3), the two frames differ in shape,
    or ``threshold`` / ``min_keep`` are out of range.
    """
    _check_frames_match(frame0, frame1)
    if not 0 <= threshold <= 255:
        raise ValueError(f"letterbox threshold must be in 0..255, got {threshold}")
    if not 0.0 <= min_keep <= 1.0:
        raise ValueError(f"min_keep must be in [0, 1], got {min_keep}")

    def content(lines: slice, axis: int) -> np.ndarray:
        """Which rows (axis 0) or columns (axis 1) of ``lines`` are content."""
        where = (lines,) if axis == 0 else (slice(None), lines)
        # Brightest channel per pixel: a dark-red or dark-blue line is content, not border. (A
        # chain of np.maximum over channel views is ~10x faster than .max(axis=2) here.)
        channels = [frame[where][..., c] for frame in (frame0, frame1) for c in range(3)]
        bright = functools.reduce(np.maximum, channels) >= threshold
        return bright.mean(axis=1 - axis) > _MAX_BRIGHT_FRACTION

    height, width = frame0.shape[:2]
    y0, y1 = _content_span(functools.partial(content, axis=0), height, min_keep)
    x0, x1 = _content_span(functools.partial(content, axis=1), width, min_keep)
    return x0, y0, x1, y1


def _check_frames_match(frame0: np.ndarray, frame1: np.ndarray) -> None:
    check_image("frame0", frame0)
    check_image("frame1", frame1)
    if frame0.shape != frame1.shape:
        raise ValueError(f"frames differ in shape: {frame0.shape} vs {frame1.shape}")


def _content_span(
    content: Callable[[slice], np.ndarray], n: int, min_keep: float
) -> tuple[int, int]:
    """First and one-past-last content line of ``n``, or the full extent if that keeps too
    little; ``content(lines)`` tells which lines of a slice are content. Lines are looked at
    a block at a time from each edge inwards, up to the first content line: a frame without
    borders costs two blocks an axis instead of every pixel."""
    start = next(
        (k + int(hits[0]) for k in range(0, n, _BLOCK) if len(hits := _hits(content, k, n))),
        None,
    )
    if start is None:
        return 0, n
    stop = next(
        k + int(hits[-1]) + 1
        for k in range((n - 1) // _BLOCK * _BLOCK, -1, -_BLOCK)
        if len(hits := _hits(content, k, n))
    )
    if stop - start < min_keep * n:
        return 0, n
    return start, stop


def _hits(content: Callable[[slice], np.ndarray], k: int, n: int) -> np.ndarray:
    return np.flatnonzero(content(slice(k, min(k + _BLOCK, n))))


@dataclass(frozen=True)
class FilterConfig:
    """Thresholds of the pair filters; ``None`` switches a check off."""

    shot_cut_threshold: float | None = 0.2  # drop when cut_score (0 same shot .. ~1 cut) exceeds
    static_motion_px: float | None = 0.5  # a pixel moving less than this (px) counts as static
    static_min_moving_fraction: float | None = 0.01  # drop if a smaller fraction than this moves
    min_valid_fraction: float | None = 0.5  # drop if less of the flow than this is valid
    letterbox: bool = True  # crop black letterbox / pillarbox borders before the flow
    letterbox_threshold: int | None = 16  # border lines stay below this intensity (0..255)
    letterbox_min_keep: float = 0.5  # crop an axis only if at least this fraction remains

    def __post_init__(self) -> None:
        checks = (
            ("shot_cut_threshold", self.shot_cut_threshold, 0.0, 2.0),
            ("static_motion_px", self.static_motion_px, 0.0, float("inf")),
            ("static_min_moving_fraction", self.static_min_moving_fraction, 0.0, 1.0),
            ("min_valid_fraction", self.min_valid_fraction, 0.0, 1.0),
            ("letterbox_threshold", self.letterbox_threshold, 0, 255),
            ("letterbox_min_keep", self.letterbox_min_keep, 0.0, 1.0),
        )
        for name, value, low, high in checks:
            if value is not None and not low <= value <= high:
                raise ConfigError(f"FilterConfig.{name} must be in [{low}, {high}], got {value}")

    @property
    def crop(self) -> Callable[[np.ndarray, np.ndarray], tuple[int, int, int, int]] | None:
        """The letterbox ``crop`` hook for the decoder, or ``None`` when cropping is off."""
        if not self.letterbox or self.letterbox_threshold is None:
            return None
        return functools.partial(
            detect_letterbox,
            threshold=self.letterbox_threshold,
            min_keep=self.letterbox_min_keep,
        )


def cut_score(frame0: np.ndarray, frame1: np.ndarray) -> float:
    """How unlike two frames are, as a shot cut would make them: 0 (same shot) to about 1.

    The smaller of two distances, each blind to one thing ordinary video does:

    - colour: 1 - mean correlation of the hue and saturation histograms, unchanged by motion
      and by brightness changes;
    - layout: 1 - the best normalised cross-correlation of 32 x 24 grey thumbnails over
      shifts of up to 3 thumbnail pixels, unchanged by gain, offset and a shift of about
      10% of the frame.

    A cut changes both; motion, exposure changes, or both at once leave one of them near 0.
    The value can exceed 1 (anti-correlation), never 2. Both are measured on a regular
    subsample of about :data:`_CUT_SAMPLES` px on the short side.

    Raises ``ValueError`` if a frame is not uint8 (H, W, 3) or the shapes differ.
    """
    _check_frames_match(frame0, frame1)
    k = max(1, min(frame0.shape[:2]) // _CUT_SAMPLES)
    frame0, frame1 = (np.ascontiguousarray(f[::k, ::k]) for f in (frame0, frame1))
    return min(_colour_distance(frame0, frame1), _layout_distance(frame0, frame1))


def _colour_distance(frame0: np.ndarray, frame1: np.ndarray) -> float:
    hsv0 = cv2.cvtColor(frame0, cv2.COLOR_RGB2HSV)
    hsv1 = cv2.cvtColor(frame1, cv2.COLOR_RGB2HSV)
    correlations = [
        cv2.compareHist(
            cv2.calcHist([hsv0], [channel], None, [_HIST_BINS], [0, upper]),
            cv2.calcHist([hsv1], [channel], None, [_HIST_BINS], [0, upper]),
            cv2.HISTCMP_CORREL,
        )
        for channel, upper in ((0, 180), (1, 256))
    ]
    return 1.0 - float(np.mean(correlations))


def _layout_distance(frame0: np.ndarray, frame1: np.ndarray) -> float:
    thumbs = [
        cv2.resize(
            cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY), _THUMB_SIZE, interpolation=cv2.INTER_AREA
        ).astype(np.float32)
        for frame in (frame0, frame1)
    ]
    template = thumbs[0][_THUMB_SHIFT:-_THUMB_SHIFT, _THUMB_SHIFT:-_THUMB_SHIFT]
    # A flat frame has no layout: report "completely different" so the colour term decides.
    if template.std() < _MIN_THUMB_STD or thumbs[1].std() < _MIN_THUMB_STD:
        return 1.0
    scores = cv2.matchTemplate(thumbs[1], template, cv2.TM_CCOEFF_NORMED)
    return 1.0 - float(np.nanmax(scores))


def shot_cut(frame0: np.ndarray, frame1: np.ndarray, threshold: float | None) -> str | None:
    """A reason to drop the pair if :func:`cut_score` exceeds ``threshold``, else ``None``."""
    if threshold is None:
        return None
    score = cut_score(frame0, frame1)
    if score <= threshold:
        return None
    return f"shot cut: frame difference score {score:.3f} above {threshold:g}"


def static(flow: np.ndarray, motion_px: float | None, min_fraction: float | None) -> str | None:
    """A reason to drop the pair if fewer than ``min_fraction`` of its pixels move more than
    ``motion_px`` pixels, else ``None``.

    Raises ``ValueError`` if ``flow`` is not float32 (H, W, 2).
    """
    if motion_px is None or min_fraction is None:
        return None
    check_flow("flow", flow)
    squared = np.square(flow[..., 0]) + np.square(flow[..., 1])
    moving = np.count_nonzero(squared > motion_px**2) / squared.size
    if moving >= min_fraction:
        return None
    return (
        f"static: {_percent(moving)} of pixels move more than {motion_px:g} px "
        f"(minimum {_percent(min_fraction)})"
    )


def mostly_invalid(valid: np.ndarray | None, min_fraction: float | None) -> str | None:
    """A reason to drop the pair if less than ``min_fraction`` of ``valid`` is True, else
    ``None`` (also when there is no mask).

    Raises ``ValueError`` if ``valid`` is not a 2-D bool array.
    """
    if valid is None or min_fraction is None:
        return None
    if not (isinstance(valid, np.ndarray) and valid.dtype == np.bool_ and valid.ndim == 2):
        raise ValueError(
            f"valid must be a 2-D bool mask, got {getattr(valid, 'dtype', type(valid).__name__)} "
            f"{getattr(valid, 'shape', '')}"
        )
    fraction = float(valid.mean())
    if fraction >= min_fraction:
        return None
    return (
        f"mostly invalid: {_percent(fraction)} of the flow is valid "
        f"(minimum {_percent(min_fraction)})"
    )


def _percent(fraction: float) -> str:
    """0.004 -> '0.4%', 0.02 -> '2%': three significant digits, so tiny values stay visible."""
    return f"{100 * fraction:.3g}%"


# Each table row: the check's name (the Dropped stage is "filter:<name>") and how to run it.
_FRAME_CHECKS: tuple[tuple[str, Callable[[FramePair, FilterConfig], str | None]], ...] = (
    ("shot_cut", lambda pair, cfg: shot_cut(pair.frame0, pair.frame1, cfg.shot_cut_threshold)),
)
_FLOW_CHECKS: tuple[tuple[str, Callable[[FlowSample, FilterConfig], str | None]], ...] = (
    ("mostly_invalid", lambda s, cfg: mostly_invalid(s.valid, cfg.min_valid_fraction)),
    (
        "static",
        lambda s, cfg: static(s.flow, cfg.static_motion_px, cfg.static_min_moving_fraction),
    ),
)


def frames_rejection(pair: FramePair, config: FilterConfig) -> Dropped | None:
    """The first frame check that rejects ``pair`` as a :class:`Dropped`, or ``None``."""
    return _first_rejection(_FRAME_CHECKS, pair, pair, config)


def flow_rejection(sample: FlowSample, config: FilterConfig) -> Dropped | None:
    """The first flow check that rejects ``sample`` as a :class:`Dropped`, or ``None``."""
    return _first_rejection(_FLOW_CHECKS, sample, sample.pair, config)


_Item = TypeVar("_Item", FramePair, FlowSample)


def _first_rejection(
    checks: tuple[tuple[str, Callable[[_Item, FilterConfig], str | None]], ...],
    item: _Item,
    pair: FramePair,
    config: FilterConfig,
) -> Dropped | None:
    for name, run in checks:
        reason = run(item, config)
        if reason is not None:
            return Dropped(pair.source_id, pair.t0, pair.t1, stage=f"filter:{name}", reason=reason)
    return None
