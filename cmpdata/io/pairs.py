"""Frame pairs out of a source: exact frame indices, one decoder per pair, resizing.

Frame ``t`` of a video is the ``t``-th frame its decoder outputs (no frame-rate resampling,
also for variable frame rates), as players show it: upright (ffmpeg and decord 0.6 both
apply the container's display rotation, and give exactly the same turned pixels) and, for
anamorphic video, with square pixels (ffmpeg scales to the probed display size; decord
cannot, so ``"auto"`` uses ffmpeg there). A frame of another size than the probed one is a
bad frame: the pairs using it are dropped.

The decoders themselves (child processes that can be killed, strict image reading) are
:mod:`cmpdata.io.decoders`.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cmpdata.errors import ConfigError, DecodeError, DecodeTimeout, SourceError
from cmpdata.io.decoders import READERS, read_image
from cmpdata.io.sources import check_source_size, probe
from cmpdata.records import Dropped, FramePair, Source, VideoInfo
from cmpdata.synth.truth import description, load_clip, truth_parts

DECODERS = ("auto", "decord", "ffmpeg")

_log = logging.getLogger(__name__)

#: ``crop(frame0, frame1) -> (x0, y0, x1, y1)``: the box to keep from both frames of a pair.
CropFn = Callable[[np.ndarray, np.ndarray], tuple[int, int, int, int]]


@dataclass(frozen=True)
class PairConfig:
    """How frame pairs are taken from a source."""

    gap: int = 3  # frames between the two frames of a pair (t1 = t0 + gap)
    stride: int = 10  # frames between the first frames of consecutive pairs
    max_pairs_per_video: int | None = None  # keep at most this many, spread over the video
    short_side: int | None = 416  # resize so the short side has this many px; None keeps size
    min_side: int = 64  # sources with a shorter short side (px) are refused
    timeout: float = 30.0  # seconds without a decoded frame before decoding is abandoned
    decoder: str = "auto"  # "decord", "ffmpeg", or "auto": the probe's choice (VideoInfo.decoder)

    def __post_init__(self) -> None:
        for name in ("gap", "stride", "min_side"):
            if getattr(self, name) < 1:
                raise ConfigError(f"PairConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_pairs_per_video", "short_side"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"PairConfig.{name} must be None or >= 1, got {value}")
        if not self.timeout > 0:
            raise ConfigError(f"PairConfig.timeout must be > 0 s, got {self.timeout}")
        if self.decoder not in DECODERS:
            raise ConfigError(f"unknown decoder {self.decoder!r}; choose one of {DECODERS}")


def pair_indices(
    num_frames: int, gap: int, stride: int, max_pairs: int | None = None
) -> list[tuple[int, int]]:
    """Pairs ``(t, t + gap)`` for ``t = 0, stride, 2 * stride...`` with ``t + gap < num_frames``.

    With ``max_pairs`` set and more candidates than that, ``max_pairs`` of them are kept,
    spread evenly over the video (first and last included), not the first ones.
    Raises ``ValueError`` for a negative count or a gap, stride or max_pairs under 1.
    """
    if num_frames < 0 or gap < 1 or stride < 1 or (max_pairs is not None and max_pairs < 1):
        raise ValueError(
            f"need num_frames >= 0 and gap, stride, max_pairs >= 1; got num_frames={num_frames}, "
            f"gap={gap}, stride={stride}, max_pairs={max_pairs}"
        )
    starts = range(0, max(num_frames - gap, 0), stride)
    if max_pairs is not None and len(starts) > max_pairs:
        # Spacing (len - 1) / (max_pairs - 1) > 1, so the rounded positions are distinct.
        positions = np.linspace(0, len(starts) - 1, max_pairs).round().astype(int)
        starts = [starts[p] for p in positions]
    return [(t, t + gap) for t in starts]


def resize_short_side(image: np.ndarray, short_side: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize ``image`` so its short side is ``short_side`` px, keeping the aspect ratio.

    Returns the image and the factors ``(sx, sy) = (new_w / old_w, new_h / old_h)`` actually
    applied (they differ slightly after rounding). Shrinking averages (``INTER_AREA``),
    growing interpolates (``INTER_LINEAR``). Raises ``ValueError`` for ``short_side < 1``.
    """
    if short_side < 1:
        raise ValueError(f"short_side must be >= 1, got {short_side}")
    height, width = image.shape[:2]
    factor = short_side / min(height, width)
    if height <= width:
        new_h, new_w = short_side, max(1, round(width * factor))
    else:
        new_h, new_w = max(1, round(height * factor)), short_side
    if (new_h, new_w) == (height, width):
        return image, (1.0, 1.0)
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return resized, (new_w / width, new_h / height)


# The interface ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BadFrame:
    """A wanted frame that cannot be used: unreadable, damaged, of the wrong size, or never
    decoded (``missing``: the stream ended before it). Only the pairs using it are lost."""

    index: int
    path: Path  # the video, or the frame's own file in a frame folder
    reason: str
    missing: bool = False

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


_Group = tuple[int, ...]


def _read_folder(
    source: Source, indices: Sequence[int]
) -> Iterator[tuple[int, np.ndarray | BadFrame]]:
    for index in indices:
        if index >= len(source.frames):
            return
        file = Path(source.path) / source.frames[index]
        image = read_image(file)
        yield index, BadFrame(index, file, image) if isinstance(image, str) else image


def decoders(source: Source, decoder: str, info: VideoInfo) -> tuple[str, ...]:
    """The decoders ``read_frames`` tries in turn (``"frames"`` for a frame folder); each one
    after the first re-reads what is left, and gives the same RGB.

    ``"auto"`` follows the probe's choice: ffmpeg alone where decord's RGB would differ,
    decord then ffmpeg where they agree (or when no probe chose).
    """
    if source.kind == "frames":
        return ("frames",)
    if decoder != "auto":
        return (decoder,)
    return ("ffmpeg",) if info.decoder == "ffmpeg" else ("decord", "ffmpeg")


def _frames_from(
    name: str, source: Source, wanted: Sequence[int], timeout: float, info: VideoInfo
) -> Iterator[tuple[int, np.ndarray | BadFrame]]:
    """The wanted frames from one decoder, ascending; a frame of the wrong size is bad."""
    path = Path(source.path)
    if name == "frames":
        frames = _read_folder(source, wanted)
    else:
        frames = READERS[name](path, wanted, timeout, (info.height, info.width))
    with contextlib.closing(frames):
        for index, frame in frames:
            if isinstance(frame, np.ndarray) and frame.shape[:2] != (info.height, info.width):
                where = path / source.frames[index] if source.kind == "frames" else path
                frame = BadFrame(
                    index,
                    where,
                    f"frame {index} is {frame.shape[1]}x{frame.shape[0]}, "
                    f"the source is {info.width}x{info.height}",
                )
            yield index, frame


def _read_groups(
    source: Source, groups: Sequence[_Group], decoder: str, timeout: float, info: VideoInfo
) -> Iterator[tuple[_Group, list[np.ndarray] | BadFrame]]:
    """Each group of frame indices (each group ascending) once, as soon as it is settled:
    with its frames, all from one decoder, when its last frame is read; with the first bad
    frame among them when that is read; or, after the stream has ended, with the first frame
    that never came (``missing``).

    Holds only frames that an unsettled group still needs. With ``decoder="auto"``, when
    decord fails (not when it hangs) ffmpeg re-reads every group not yet settled, whole:
    the frames of a pair never come from two decoders. Raises :class:`DecodeError` when the
    last decoder fails (frames already yielded stay valid), :class:`DecodeTimeout` when one
    hangs.
    """
    order = decoders(source, decoder, info)
    pending = list(dict.fromkeys(groups))
    first_error = ""
    for attempt, name in enumerate(order):
        users: dict[int, list[_Group]] = collections.defaultdict(list)
        for group in pending:
            for index in group:
                users[index].append(group)
        unsettled = set(pending)
        held: dict[int, np.ndarray] = {}
        last = -1
        frames = _frames_from(name, source, sorted(users), timeout, info)
        try:
            with contextlib.closing(frames):  # a consumer that stops stops the decoder at once
                for index, frame in frames:
                    last = index
                    for group in users[index]:
                        settles = isinstance(frame, BadFrame) or index == group[-1]
                        if group in unsettled and settles:
                            unsettled.discard(group)
                            if isinstance(frame, BadFrame):
                                yield group, frame
                            else:
                                yield group, [*(held[t] for t in group[:-1]), frame]
                    if isinstance(frame, np.ndarray):
                        held[index] = frame
                    held = {t: f for t, f in held.items() if not unsettled.isdisjoint(users[t])}
        except DecodeTimeout:
            raise
        except DecodeError as error:
            if attempt + 1 == len(order):
                reason = error.reason
                if attempt:
                    reason += f" (after {order[0]} failed: {first_error})"
                raise DecodeError(error.path, reason) from error
            first_error = error.reason
            _log.info("%s: %s; %s re-reads what is left", source.path, error.reason, order[-1])
            pending = [group for group in pending if group in unsettled]
            continue
        break
    for group in pending:
        if group in unsettled:
            missing = next(t for t in group if t > last)
            reason = (
                f"frame {missing} missing: the video ended before it "
                f"(last frame read: {last}, {info.num_frames} counted by the probe)"
            )
            yield group, BadFrame(missing, Path(source.path), reason, missing=True)


def read_frames(
    source: Source,
    indices: Iterable[int],
    *,
    decoder: str = "auto",
    timeout: float = 30.0,
    info: VideoInfo | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, frame)`` for the wanted frame indices, ascending, each once, streamed.

    Frames are RGB uint8 ``(H, W, 3)``, upright (display rotation applied), of the size in
    ``info`` (probed when None), each from one decoder (``"auto"``: the one the probe chose,
    ``info.decoder``; when that is decord and it fails, ffmpeg reads the frames still wanted:
    the two agree on such sources). Frame folders ignore ``decoder`` and
    ``timeout``. When the stream ends before some index, the iteration just stops: the
    caller sees which indices never came.

    Raises ``ValueError`` for a negative index or an unknown decoder, :class:`DecodeError`
    when not a single frame decodes, an image is unreadable or a frame has the wrong size
    (:func:`iter_pairs` drops only the pairs using such a frame instead),
    :class:`DecodeTimeout` when no frame is decoded for ``timeout`` seconds (the decoder is
    killed; no other decoder is tried).
    """
    if decoder not in DECODERS:
        raise ValueError(f"unknown decoder {decoder!r}; choose one of {DECODERS}")
    wanted = sorted(set(indices))
    if wanted and wanted[0] < 0:
        raise ValueError(f"frame indices must be >= 0, got {wanted[0]}")
    if not wanted:
        return
    info = probe(source, timeout) if info is None else info
    results = _read_groups(source, [(t,) for t in wanted], decoder, timeout, info)
    with contextlib.closing(results):
        for (index,), result in results:
            if isinstance(result, BadFrame):
                if result.missing:
                    return
                raise DecodeError(result.path, result.reason)
            yield index, result[0]


def _make_pair(
    source_id: str,
    t0: int,
    t1: int,
    frame0: np.ndarray,
    frame1: np.ndarray,
    config: PairConfig,
    crop: CropFn | None,
) -> FramePair:
    box = None
    if crop is not None:
        box = crop(frame0, frame1)
        x0, y0, x1, y1 = box
        height, width = frame0.shape[:2]
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            raise ValueError(f"crop box {box} does not fit a {width}x{height} frame")
        frame0, frame1 = frame0[y0:y1, x0:x1], frame1[y0:y1, x0:x1]
    scale = (1.0, 1.0)
    if config.short_side is not None:
        frame0, scale = resize_short_side(frame0, config.short_side)
        frame1, _ = resize_short_side(frame1, config.short_side)
    return FramePair(source_id, t0, t1, frame0, frame1, crop=box, scale=scale)


def iter_pairs(
    source: Source,
    config: PairConfig,
    info: VideoInfo | None = None,
    crop: CropFn | None = None,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> Iterator[FramePair | Dropped]:
    """Frame pairs of one source, cropped and resized, and a Dropped for each pair lost.

    Probes when ``info`` is None, plans :func:`pair_indices` (or takes the given ``pairs``,
    a part of that plan: the pipeline splits long videos into pieces), and streams the
    frames they need, holding only first frames still waiting for their second; both frames
    of a pair come from one decoder. ``crop`` (e.g. a letterbox detector) picks one box for
    both frames of a pair. A bad frame (unreadable, damaged, of the wrong size) drops the
    pairs that use it, as it comes, each ``Dropped(stage="decode")`` with that frame's file
    and reason; later pairs go on. When the video ends early (truncated, over-reported frame
    count), each planned pair not formed is dropped after the others.

    A synthetic clip (a description beside it, :mod:`cmpdata.synth.truth`) gets its exact
    flow and object ids in each pair's ``extras``.

    Raises :class:`SourceError` for a source under ``config.min_side`` or with fewer than
    ``gap + 1`` frames, whatever :func:`probe` raises, :class:`DecodeError` when decoding
    fails in a way that ends the stream and :class:`DecodeTimeout` when the decoder hangs:
    the pairs already yielded stay valid, the caller drops the rest.
    """
    info = probe(source, config.timeout) if info is None else info
    check_source_size(source, info, config.min_side)
    if info.num_frames < config.gap + 1:
        raise SourceError(
            source.path,
            f"{info.num_frames} frames, fewer than gap + 1 = {config.gap + 1}",
        )
    if pairs is None:
        pairs = pair_indices(info.num_frames, config.gap, config.stride, config.max_pairs_per_video)
    planned = [(int(t0), int(t1)) for t0, t1 in pairs]
    meta = description(source.path)
    clip = None if meta is None else load_clip(meta, (info.height, info.width))
    results = _read_groups(source, planned, config.decoder, config.timeout, info)
    # closing(): a consumer that stops early stops the decoder at once, not when collected.
    with contextlib.closing(results):
        for (t0, t1), result in results:
            if isinstance(result, BadFrame):
                yield Dropped(source.id, t0, t1, stage="decode", reason=str(result))
                continue
            pair = _make_pair(source.id, t0, t1, *result, config, crop)
            if clip is not None:
                pair = dataclasses.replace(pair, extras=truth_parts(clip, pair))
            yield pair
