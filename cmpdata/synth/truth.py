"""The exact flow and object ids of a synthetic clip's pairs, stored beside their samples.

``extract`` recognises a synthetic clip by the ``<name>.json`` beside its video (or frame
folder) that :func:`~cmpdata.synth.clips.write_clip` wrote (``"generator": "cmp-synth"``),
rebuilds the clip from it, and stores with each sample three optional parts
(:class:`~cmpdata.store.shards.EncodedSample` ``extras``), all at the stored frame's size
(H, W) and pixel grid, after the pair's crop and resize:

- ``objects``: zlib-compressed uint8 (H, W), C order: the layer visible at each pixel of the
  first frame, 0 for the background, 1.. for the objects and limbs (their z-order);
- ``truth_valid``: zlib-compressed ``np.packbits`` of bool (H, W), C order: True where the
  surface point is still visible in the second frame;
- ``truth_motion``: float64 little-endian (L, 2, 3), one row per layer: the exact flow of a
  pixel (x, y) of layer k, in stored px, is ``truth_motion[k] @ (x, y, 1)``.

A stored pixel (x, y) stands for the decoded-frame point ``((x + 0.5) / sx - 0.5 + x0,
(y + 0.5) / sy - 0.5 + y0)`` (the pixel-centre convention of ``cv2.resize``; ``crop`` starts at
(x0, y0), ``scale`` is (sx, sy)): its object id and validity are the clip's at that point, and
its flow is the clip's there, scaled by (sx, sy). :func:`read_truth` turns the parts back into
arrays.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmpdata.errors import SourceError
from cmpdata.records import FramePair
from cmpdata.synth.clips import GENERATOR, SyntheticClip, load_config

TRUTH_PARTS = ("objects", "truth_motion", "truth_valid")
_MOTION = np.dtype("<f8")


@dataclass(frozen=True, eq=False)
class Truth:
    """The exact ground truth of a stored sample (module docstring)."""

    flow: np.ndarray  # float32 (H, W, 2) px
    valid: np.ndarray  # bool (H, W)
    objects: np.ndarray  # uint8 (H, W), 0 = background


def description(path: str | Path) -> Path | None:
    """The synthetic clip description beside a source (``<name>.json`` for ``<name>.mp4`` or
    the folder ``<name>``) when there is one written by :func:`write_clip`, else ``None``."""
    path = Path(path)
    meta = path.parent / f"{path.name if path.is_dir() else path.stem}.json"
    try:
        text = meta.read_text()
    except (OSError, UnicodeDecodeError):
        return None
    try:
        marked = json.loads(text).get("generator") == GENERATOR
    except (ValueError, AttributeError):
        return None
    return meta if marked else None


def load_clip(meta: Path, size: tuple[int, int]) -> SyntheticClip:
    """The clip a description rebuilds, checked against the decoded (H, W) ``size``; raises
    :class:`SourceError` when it cannot be read or describes frames of another size."""
    config, _ = load_config(meta)
    if (config.height, config.width) != tuple(size):
        raise SourceError(
            meta,
            f"describes {config.height}x{config.width} frames, the video decodes at "
            f"{size[0]}x{size[1]}",
        )
    return SyntheticClip(config)


def stored_points(pair: FramePair) -> tuple[np.ndarray, np.ndarray]:
    """The decoded-frame points (x, y), float32 (H, W) each, that the stored pixels stand for."""
    h, w = pair.size
    x0, y0 = (0, 0) if pair.crop is None else pair.crop[:2]
    sx, sy = pair.scale
    xs = (np.arange(w, dtype=np.float64) + 0.5) / sx - 0.5 + x0
    ys = (np.arange(h, dtype=np.float64) + 0.5) / sy - 0.5 + y0
    grid_x, grid_y = np.meshgrid(xs.astype(np.float32), ys.astype(np.float32))
    return grid_x, grid_y


def truth_parts(clip: SyntheticClip, pair: FramePair) -> dict[str, bytes]:
    """The three optional parts (module docstring) of ``pair``, a pair of ``clip``."""
    points = stored_points(pair)
    objects = clip.layers(pair.t0, points)
    _, valid = clip.ground_truth(pair.t0, pair.t1, points)
    x0, y0 = (0, 0) if pair.crop is None else pair.crop[:2]
    sx, sy = pair.scale
    # stored pixel -> decoded point, decoded flow -> stored flow
    to_decoded = np.array(
        [[1 / sx, 0, 0.5 / sx - 0.5 + x0], [0, 1 / sy, 0.5 / sy - 0.5 + y0], [0, 0, 1]]
    )
    motion = np.empty((clip.num_layers, 2, 3))
    for k in range(clip.num_layers):
        moved = clip.transform(k, pair.t0, pair.t1) - np.eye(3)
        motion[k] = np.diag([sx, sy]) @ (moved @ to_decoded)[:2]
    return {
        "objects": zlib.compress(np.ascontiguousarray(objects, np.uint8).tobytes()),
        "truth_motion": motion.astype(_MOTION).tobytes(),
        "truth_valid": zlib.compress(np.packbits(valid).tobytes()),
    }


def read_truth(extras: Mapping[str, bytes], size: tuple[int, int]) -> Truth | None:
    """The :class:`Truth` in a stored sample's ``extras`` at its (H, W) ``size``; ``None``
    when the sample has none. Raises ``ValueError`` when the parts are incomplete or do not
    match the size."""
    present = [name for name in TRUTH_PARTS if name in extras]
    if not present:
        return None
    if len(present) != len(TRUTH_PARTS):
        raise ValueError(f"incomplete ground truth: parts {present} of {list(TRUTH_PARTS)}")
    h, w = size
    try:
        objects = np.frombuffer(zlib.decompress(extras["objects"]), np.uint8)
        packed = np.frombuffer(zlib.decompress(extras["truth_valid"]), np.uint8)
    except zlib.error as err:
        raise ValueError(f"unreadable ground truth: {err}") from None
    motion = np.frombuffer(extras["truth_motion"], _MOTION)
    if objects.size != h * w or packed.size != -(-h * w // 8) or motion.size % 6:
        raise ValueError(
            f"ground truth does not match a {h}x{w} sample: {objects.size} object ids, "
            f"{packed.size} mask bytes, {motion.size} motion values"
        )
    objects = objects.reshape(h, w)
    motion = motion.reshape(-1, 2, 3)
    if objects.max(initial=0) >= len(motion):
        raise ValueError(f"object id {objects.max()} without a motion ({len(motion)} layers)")
    valid = np.unpackbits(packed, count=h * w).reshape(h, w).astype(bool)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    rows = motion[objects]  # (H, W, 2, 3)
    flow = rows[..., 0] * xs[..., None] + rows[..., 1] * ys[..., None] + rows[..., 2]
    return Truth(flow.astype(np.float32), valid, objects)
