"""Synthetic videos with exact ground-truth optical flow.

A :class:`SyntheticClip` is a textured background, translating with the camera, under a few
textured objects (ellipses, rectangles, polygons) that translate, rotate and scale smoothly
and occlude each other in a fixed z-order. Every layer ``k`` (0 = background, objects 1..N,
higher on top) is a texture carried into the frame by an affine map ``A_k(t)``; a frame is
rendered by inverse mapping with bilinear interpolation, so the forward flow of a pixel ``p``
of frame ``t0`` is exactly ``A_k(t1) A_k(t0)^-1 p - p`` for the layer ``k`` visible at ``p``.
Object edges are anti-aliased; a pixel belongs to the top-most layer whose coverage there is at
least 0.5, the same rule in :meth:`SyntheticClip.frame`, :meth:`SyntheticClip.layers` and the
flow. Everything is drawn from ``np.random.default_rng(config.seed)``: the same config gives
the same pixels and flows on every machine.

Pixel coordinates follow OpenCV: the centre of pixel (row i, column j) is (x=j, y=i).

Synthetic clips
---------------
:func:`write_clip` writes, in ``out_dir``:

- ``<name>.mp4``: the frames as H.264 (crf 12, yuv420p; 4:4:4 for odd sizes), at ``config.fps``;
- ``<name>/00000.png, 00001.png, ...``: the same frames, lossless 8-bit RGB PNGs;
- ``<name>.flow.npz`` (``np.savez_compressed``): ``pairs`` int64 (N, 2), the frame indices
  ``(t, t + gap)`` for ``t = 0 .. num_frames - gap - 1``; ``flow`` float32 (N, H, W, 2), the
  forward flow of each pair in pixels, x (right) then y (down); ``valid`` bool (N, H, W), True
  where the surface point seen in the first frame is still visible in the second (inside the
  frame, not occluded by a layer above);
- ``<name>.json``: ``{"config": <SynthConfig fields>, "gap": gap, "num_pairs": N}``, enough to
  regenerate the clip with :func:`load_config`.

:func:`load_ground_truth` reads the ``.npz`` back.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np

from cmpdata.errors import CmpDataError, ConfigError, SourceError
from cmpdata.io.media import write_video

LayerKind = Literal["background", "translate", "rotate", "scale", "mixed"]

# Objects beyond the first three mix all motions; the first three each show one motion cleanly.
_PURE_KINDS: tuple[LayerKind, ...] = ("translate", "rotate", "scale")
_VIDEO_CRF = 12
# Noise octaves as cell sizes in pixels: 4 px is the finest detail that bilinear resampling
# reproduces well (so warping a frame with the ground truth reproduces its neighbour).
_OCTAVES = (4, 8, 16, 32, 64)  # must double from one to the next
_SUPERSAMPLE = 4  # shape masks are drawn at 4x and averaged down: anti-aliased edges
_PAD = 2  # px of empty texture around an object, so its coverage falls to 0 before the border


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic clip; sizes in pixels, motions per frame."""

    height: int = 256  # frame height (px)
    width: int = 320  # frame width (px)
    num_frames: int = 40  # frames in the clip
    num_objects: int = 4  # moving objects over the background
    seed: int = 0  # seed of every random draw (textures, shapes, motions)
    camera_motion: bool = True  # the background translates (uniform flow), else it is still
    camera_speed: float = 1.0  # background speed (px/frame) when camera_motion is on
    max_speed: float = 4.0  # fastest object translation (px/frame)
    max_rotation: float = 2.0  # fastest object rotation (degrees/frame)
    max_growth: float = 0.01  # fastest relative scale change (1/frame), capped to 0.5x-1.5x
    min_object_size: float = 0.2  # smallest object diameter, as a fraction of min(height, width)
    max_object_size: float = 0.45  # largest object diameter, as a fraction of min(height, width)
    fps: float = 25.0  # frame rate of the written video (frames/s)

    def __post_init__(self) -> None:
        if self.height < 8 or self.width < 8:
            raise ConfigError(f"frame size {self.height}x{self.width}: both sides must be >= 8 px")
        if self.num_frames < 1:
            raise ConfigError(f"num_frames must be >= 1, got {self.num_frames}")
        if self.num_objects < 0:
            raise ConfigError(f"num_objects must be >= 0, got {self.num_objects}")
        for name in ("camera_speed", "max_speed", "max_rotation", "max_growth"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 < self.min_object_size <= self.max_object_size <= 1:
            raise ConfigError(
                "object sizes must satisfy 0 < min_object_size <= max_object_size <= 1, got "
                f"{self.min_object_size}, {self.max_object_size}"
            )
        if not self.fps > 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")


@dataclass(frozen=True)
class _Motion:
    """Pose of a layer texture in the frame: ``A(t) = T(p(t)) R(angle(t)) S(scale(t)) T(-pivot)``.

    ``p(t) = p0 + v t + bend * 4 t (span - t) / span**2``: a parabola (constant acceleration)
    leaving the straight line by ``bend`` px at mid-clip and rejoining it at ``t = span``.
    """

    pivot: tuple[float, float]  # texture point carried to p(t) (texture px)
    p0: tuple[float, float]  # position at t = 0 (frame px)
    velocity: tuple[float, float]  # straight-line velocity (px/frame)
    bend: tuple[float, float]  # mid-clip offset from the straight line (px)
    span: float  # frames over which the bend is spread (num_frames - 1, at least 1)
    angle0: float  # rotation at t = 0 (radians)
    omega: float  # rotation speed (radians/frame)
    scale0: float  # scale at t = 0
    growth: float  # relative scale change: scale(t) = scale0 * (1 + growth t)

    def affine(self, t: float) -> np.ndarray:
        """(3, 3) float64 map from texture coordinates to frame ``t`` coordinates."""
        shape = 4.0 * t * (self.span - t) / self.span**2
        px = self.p0[0] + self.velocity[0] * t + self.bend[0] * shape
        py = self.p0[1] + self.velocity[1] * t + self.bend[1] * shape
        angle = self.angle0 + self.omega * t
        s = self.scale0 * (1.0 + self.growth * t)
        c, si = s * math.cos(angle), s * math.sin(angle)
        qx, qy = self.pivot
        return np.array(
            [[c, -si, px - c * qx + si * qy], [si, c, py - si * qx - c * qy], [0.0, 0.0, 1.0]]
        )


def _noise(rng: np.random.Generator, h: int, w: int, channels: int) -> np.ndarray:
    """Multi-octave smooth noise, float32 (h, w, channels), zero mean and unit std per channel.

    Octaves of cell size 64, 32, ... 4 px are summed coarse to fine, each upsampled 2x
    (bicubic) before the next is added, all with the same weight: the finest detail is as
    strong as the coarse one, so no area of a texture is flat.
    """

    def cells(cell: int) -> tuple[int, int]:
        return h // cell + 4, w // cell + 4

    grid = rng.standard_normal((*cells(_OCTAVES[-1]), channels)).astype(np.float32)
    for cell in _OCTAVES[-2::-1]:
        gh, gw = grid.shape[:2]
        up = cv2.resize(grid, (2 * gw, 2 * gh), interpolation=cv2.INTER_CUBIC)
        nh, nw = cells(cell)
        grid = up.reshape(2 * gh, 2 * gw, channels)[:nh, :nw]
        grid += rng.standard_normal(grid.shape).astype(np.float32)
    finest = _OCTAVES[0]
    gh, gw = grid.shape[:2]
    big = cv2.resize(grid, (gw * finest, gh * finest), interpolation=cv2.INTER_CUBIC)
    big = big.reshape(gh * finest, gw * finest, channels)
    oy, ox = rng.integers(0, finest, size=2)
    out = big[oy : oy + h, ox : ox + w]
    out -= out.mean(axis=(0, 1))
    out /= out.std(axis=(0, 1)) + 1e-6
    return out


def _stripes(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A sinusoidal grating in [-1, 1], float32 (h, w), random direction and 6-16 px period."""
    phi = rng.uniform(0, math.pi)
    period = rng.uniform(6.0, 16.0)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    phase = (xs * math.cos(phi) + ys * math.sin(phi)) * (2 * math.pi / period)
    return np.sin(phase + rng.uniform(0, 2 * math.pi)).astype(np.float32)


def _background_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Coloured blobs under multi-octave colour noise and a faint grating, float32 RGB 0..255."""
    canvas = np.empty((h, w, 3), np.uint8)
    canvas[:] = rng.integers(60, 200, size=3)
    for _ in range(max(4, h * w // 2000)):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        axes = tuple(int(a) for a in rng.integers(2, max(3, min(h, w) // 12), size=2))
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        cv2.ellipse(
            canvas, centre, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA
        )
    # Blob edges are softened so that resampling them stays accurate to a grey level or so.
    tex = cv2.GaussianBlur(canvas.astype(np.float32), (0, 0), 1.0)
    tex += 30.0 * _noise(rng, h, w, 1) + 18.0 * _noise(rng, h, w, 3)
    tex += 10.0 * _stripes(rng, h, w)[..., None]
    return np.clip(tex, 0, 255)


def _shape_mask(rng: np.random.Generator, shape: str, n: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1], float32 (n, n), of a shape inscribed in the canvas."""
    big = np.zeros((n * _SUPERSAMPLE, n * _SUPERSAMPLE), np.uint8)
    centre = np.array([n * _SUPERSAMPLE / 2.0] * 2)
    radius = (n - 2 * _PAD) * _SUPERSAMPLE / 2.0
    if shape == "ellipse":
        axes = (radius, radius * rng.uniform(0.5, 0.9))
        points = cv2.ellipse2Poly((0, 0), (1000, int(1000 * axes[1] / axes[0])), 0, 0, 360, 2)
        polygon = centre + points * (axes[0] / 1000.0)
    elif shape == "rectangle":
        half = rng.uniform(math.radians(25), math.radians(65))
        corners = [half, math.pi - half, math.pi + half, -half]
        polygon = centre + radius * np.array([[math.cos(a), math.sin(a)] for a in corners])
    else:
        k = int(rng.integers(5, 9))
        # Evenly spread vertices, jittered: irregular but never a sliver.
        step = 2 * math.pi / k
        angles = np.arange(k) * step + rng.uniform(-0.3, 0.3, size=k) * step
        radii = radius * rng.uniform(0.55, 1.0, size=k)
        polygon = centre + np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)
    # 4 fractional bits: the vertices keep their sub-pixel positions.
    cv2.fillPoly(big, [np.round(polygon * 16).astype(np.int32)], 255, cv2.LINE_8, shift=4)
    small = cv2.resize(big, (n, n), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


def _object_texture(rng: np.random.Generator, n: int) -> np.ndarray:
    """A colour modulated by noise and a grating, float32 RGB 0..255 (n, n, 3)."""
    colour = rng.uniform(30, 225, size=3).astype(np.float32)
    lum = 0.30 * _noise(rng, n, n, 1) + 0.15 * _stripes(rng, n, n)[..., None]
    tint = 18.0 * _noise(rng, n, n, 3)
    return np.clip(colour * (1.0 + lum) + tint, 0, 255)


def _trajectory(
    rng: np.random.Generator,
    speed: float,
    bend_budget: float,
    box_lo: np.ndarray,
    box_hi: np.ndarray,
    span: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Start, velocity and bend of a path that stays inside ``[box_lo, box_hi]`` over ``span``.

    The straight part moves at ``speed`` px/frame unless the box is too small for it; the bend
    (px at mid-clip) adds at most ``bend_budget`` px/frame to the speed at the ends.
    """
    theta = rng.uniform(0, 2 * math.pi)
    bend_dir = np.array([-math.sin(theta), math.cos(theta)]) * rng.choice([-1.0, 1.0])
    bend = bend_dir * bend_budget * span / 4.0 * rng.uniform(0.0, 1.0)
    lo = box_lo + np.maximum(bend, 0)
    hi = np.maximum(box_hi + np.minimum(bend, 0), lo)
    travel = np.array([math.cos(theta), math.sin(theta)]) * speed * span
    room = hi - lo
    fit = min([1.0, *(room[i] / abs(travel[i]) for i in range(2) if abs(travel[i]) > 1e-9)])
    travel *= fit
    start = lo + np.maximum(-travel, 0) + rng.uniform(0, 1, size=2) * (room - np.abs(travel))
    return start, travel / span, bend


def _object_motion(
    rng: np.random.Generator, config: SynthConfig, kind: LayerKind, n: int
) -> _Motion:
    """The pose over time of an ``n`` x ``n`` object texture whose motion is of ``kind``."""
    span = float(max(config.num_frames - 1, 1))
    fraction = {"translate": (0.6, 0.8), "rotate": (0.0, 0.2), "scale": (0.0, 0.2)}
    speed_lo, speed_hi = fraction.get(kind, (0.3, 0.6))
    speed = config.max_speed * rng.uniform(speed_lo, speed_hi)
    bend_budget = config.max_speed * 0.2 if kind in ("translate", "mixed") else 0.0
    omega = 0.0
    if kind in ("rotate", "mixed"):
        lo, hi = (0.6, 1.0) if kind == "rotate" else (0.2, 0.5)
        omega = math.radians(config.max_rotation) * rng.uniform(lo, hi) * rng.choice([-1, 1])
    growth = 0.0
    if kind in ("scale", "mixed"):
        lo, hi = (0.6, 1.0) if kind == "scale" else (0.2, 0.5)
        # Cap so the scale stays within [0.5, 1.5] of its start over the whole clip.
        growth = min(config.max_growth * rng.uniform(lo, hi), 0.5 / span) * rng.choice([-1, 1])
    scale0 = rng.uniform(0.85, 1.15)
    radius = (n - 2 * _PAD) / 2.0 * scale0 * max(1.0, 1.0 + growth * span)
    size = np.array([config.width, config.height], float)
    # "Mostly in view": the centre keeps 70% of the radius from the borders.
    inset = np.minimum(0.7 * radius, 0.45 * size)
    start, velocity, bend = _trajectory(rng, speed, bend_budget, inset, size - 1 - inset, span)
    return _Motion(
        pivot=((n - 1) / 2.0, (n - 1) / 2.0),
        p0=(float(start[0]), float(start[1])),
        velocity=(float(velocity[0]), float(velocity[1])),
        bend=(float(bend[0]), float(bend[1])),
        span=span,
        angle0=rng.uniform(0, 2 * math.pi),
        omega=omega,
        scale0=scale0,
        growth=growth,
    )


class SyntheticClip:
    """A synthetic video with exact forward flow, occlusion masks and layer maps.

    Layer 0 is the background; objects are layers 1..``num_objects``, each drawn over the ones
    below. ``kinds[k]`` names the motion of layer ``k``: with at least three objects, one is
    purely translating, one rotates in place (with a little drift) and one scales (with a little
    drift); further objects mix all three.
    Frame indices ``t`` must lie in ``[0, num_frames)``; otherwise ``ValueError`` is raised.
    """

    def __init__(self, config: SynthConfig | None = None) -> None:
        if config is None:
            config = SynthConfig()
        elif not isinstance(config, SynthConfig):
            raise ValueError(f"SyntheticClip needs a SynthConfig, got {type(config).__name__}")
        self.config = cfg = config
        rng = np.random.default_rng(cfg.seed)
        h, w = cfg.height, cfg.width
        span = float(max(cfg.num_frames - 1, 1))

        camera = np.zeros(2)
        if cfg.camera_motion:
            theta = rng.uniform(0, 2 * math.pi)
            camera = (
                cfg.camera_speed
                * rng.uniform(0.5, 1.0)
                * np.array([math.cos(theta), math.sin(theta)])
            )
        # The texture is large enough that the moving frame window never leaves it.
        travel = np.abs(camera) * span
        offset = 2.0 + np.maximum(camera, 0) * span
        bg_w, bg_h = (np.array([w, h]) + np.ceil(travel) + 4).astype(int)
        self._background = _background_texture(rng, int(bg_h), int(bg_w))
        motions = [
            _Motion(
                pivot=(float(offset[0]), float(offset[1])),
                p0=(0.0, 0.0),
                velocity=(float(camera[0]), float(camera[1])),
                bend=(0.0, 0.0),
                span=span,
                angle0=0.0,
                omega=0.0,
                scale0=1.0,
                growth=0.0,
            )
        ]

        pure = [_PURE_KINDS[i] for i in rng.permutation(len(_PURE_KINDS))]
        kinds: list[LayerKind] = ["background"]
        shapes = ("ellipse", "rectangle", "polygon")
        first_shape = int(rng.integers(0, len(shapes)))
        self._textures: list[np.ndarray] = []  # (n, n, 4) float32: RGB 0..255 then coverage
        self._masks: list[np.ndarray] = []  # (n, n) float32 coverage alone, for layer maps
        short = min(h, w)
        for i in range(cfg.num_objects):
            kind = pure[i] if i < len(pure) else "mixed"
            diameter = short * rng.uniform(cfg.min_object_size, cfg.max_object_size)
            n = max(math.ceil(diameter), 4) + 2 * _PAD
            mask = _shape_mask(rng, shapes[(first_shape + i) % len(shapes)], n)
            texture = _object_texture(rng, n)
            self._textures.append(np.dstack([texture, mask]))
            self._masks.append(mask)
            motions.append(_object_motion(rng, cfg, kind, n))
            kinds.append(kind)
        self._motions = tuple(motions)
        self.kinds: tuple[LayerKind, ...] = tuple(kinds)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self._xs, self._ys = xs, ys

    @property
    def num_layers(self) -> int:
        """Background plus objects."""
        return len(self._motions)

    def _check_t(self, t: int) -> None:
        if not 0 <= t < self.config.num_frames:
            raise ValueError(f"frame index {t} outside the clip [0, {self.config.num_frames})")

    def transform(self, layer: int, t0: int, t1: int) -> np.ndarray:
        """(3, 3) float64 affine map carrying points of ``layer`` from frame ``t0`` to ``t1``.

        Raises ``ValueError`` for an unknown layer or a frame index outside the clip.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside [0, {self.num_layers})")
        self._check_t(t0)
        self._check_t(t1)
        motion = self._motions[layer]
        return motion.affine(t1) @ np.linalg.inv(motion.affine(t0))

    def _sample(self, layer: int, t: int, x: np.ndarray, y: np.ndarray, colour: bool) -> np.ndarray:
        """Texture of object ``layer`` at frame-``t`` points (x, y), bilinear, 0 outside it.

        Returns (..., 4) RGB and coverage when ``colour`` is set, else the (...) coverage.
        Frames, layer maps and occlusion tests all sample through here, so they agree on
        which pixels a layer covers.
        """
        inv = np.linalg.inv(self._motions[layer].affine(t)).astype(np.float32)
        u = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
        v = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
        src = self._textures[layer - 1] if colour else self._masks[layer - 1]
        return cv2.remap(src, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def _object_boxes(self, t: int) -> Iterator[tuple[int, tuple[slice, slice]]]:
        """(layer, (row slice, column slice)) of each object's bounding box within frame ``t``."""
        h, w = self.config.height, self.config.width
        for k in range(1, self.num_layers):
            affine = self._motions[k].affine(t)
            n = self._masks[k - 1].shape[0]
            corners = affine[:2, :2] @ np.array([[0, n - 1, 0, n - 1], [0, 0, n - 1, n - 1]])
            corners += affine[:2, 2:]
            x0, y0 = np.maximum(np.floor(corners.min(axis=1)).astype(int), 0)
            x1 = min(int(np.ceil(corners[0].max())) + 1, w)
            y1 = min(int(np.ceil(corners[1].max())) + 1, h)
            if x0 < x1 and y0 < y1:
                yield k, (slice(y0, y1), slice(x0, x1))

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 RGB (H, W, 3)."""
        self._check_t(t)
        h, w = self.config.height, self.config.width
        image = cv2.warpAffine(
            self._background, self._motions[0].affine(t)[:2], (w, h), flags=cv2.INTER_LINEAR
        )
        for k, box in self._object_boxes(t):
            warped = self._sample(k, t, self._xs[box], self._ys[box], colour=True)
            roi = image[box]
            roi += warped[..., 3:] * (warped[..., :3] - roi)
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    def layers(self, t: int) -> np.ndarray:
        """int32 (H, W) index of the layer visible at each pixel of frame ``t`` (0 = background)."""
        self._check_t(t)
        out = np.zeros((self.config.height, self.config.width), np.int32)
        for k, box in self._object_boxes(t):
            out[box][self._sample(k, t, self._xs[box], self._ys[box], colour=False) >= 0.5] = k
        return out

    def _flow_on(self, layer_map: np.ndarray, t0: int, t1: int) -> np.ndarray:
        """Flow t0 -> t1 of each pixel, moved by the affine map of its layer in ``layer_map``."""
        coef = np.stack([self.transform(k, t0, t1)[:2] for k in range(self.num_layers)])
        coef[:, 0, 0] -= 1.0
        coef[:, 1, 1] -= 1.0
        coef = coef.astype(np.float32)
        flow = np.empty((*layer_map.shape, 2), np.float32)
        for c in range(2):
            a, b, d = (coef[:, c, j][layer_map] for j in range(3))
            flow[..., c] = a * self._xs + b * self._ys + d
        return flow

    def flow(self, t0: int, t1: int) -> np.ndarray:
        """Exact forward flow from frame ``t0`` to frame ``t1``: float32 (H, W, 2), px, x then y."""
        return self._flow_on(self.layers(t0), t0, t1)

    def valid(self, t0: int, t1: int) -> np.ndarray:
        """bool (H, W): True where the point seen at ``p`` in ``t0`` is visible in ``t1``.

        See :meth:`ground_truth`.
        """
        return self.ground_truth(t0, t1)[1]

    def ground_truth(self, t0: int, t1: int) -> tuple[np.ndarray, np.ndarray]:
        """``(flow(t0, t1), valid(t0, t1))`` computed together (cheaper than separately).

        A point is valid when its position in ``t1`` lies within the pixel centres of the frame
        (``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` up to 1e-3 px, so frame ``t1`` can be
        interpolated there) and no layer above its own covers that position (coverage >= 0.5)
        in ``t1``.
        """
        layer_map = self.layers(t0)
        flow = self._flow_on(layer_map, t0, t1)
        h, w = layer_map.shape
        x1 = self._xs + flow[..., 0]
        y1 = self._ys + flow[..., 1]
        # The tolerance absorbs float rounding of the flow (1e-14 px when t0 == t1).
        tol = 1e-3
        valid = (x1 >= -tol) & (x1 <= w - 1 + tol) & (y1 >= -tol) & (y1 <= h - 1 + tol)
        for k in range(1, self.num_layers):
            below = layer_map < k
            if not below.any():
                continue
            coverage = self._sample(k, t1, x1, y1, colour=False)
            valid &= ~((coverage >= 0.5) & below)
        return flow, valid


@dataclass(frozen=True)
class ClipFiles:
    """The files :func:`write_clip` wrote for one clip (``None`` where not asked for)."""

    video: Path | None  # <name>.mp4
    frames: Path | None  # <name>/ folder of 00000.png ...
    ground_truth: Path  # <name>.flow.npz
    meta: Path  # <name>.json


def write_clip(
    clip: SyntheticClip,
    out_dir: str | Path,
    name: str,
    gap: int = 3,
    video: bool = True,
    frames: bool = True,
) -> ClipFiles:
    """Write ``clip`` as a video, a frame folder, its ground truth and its config.

    The ground truth holds every pair ``(t, t + gap)``; see the module docstring for the
    formats. Raises ``ValueError`` if ``gap < 1`` or the clip has no more than ``gap`` frames,
    ``RuntimeError`` if ffmpeg fails and ``CmpDataError`` if a PNG cannot be written.
    """
    cfg = clip.config
    if gap < 1 or cfg.num_frames <= gap:
        raise ValueError(
            f"{name}: gap must be >= 1 and below num_frames ({cfg.num_frames}), got {gap}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = [clip.frame(t) for t in range(cfg.num_frames)]
    video_path = frames_dir = None
    if video:
        video_path = write_video(out / f"{name}.mp4", images, fps=cfg.fps, quality=_VIDEO_CRF)
    if frames:
        frames_dir = out / name
        frames_dir.mkdir(exist_ok=True)
        for t, image in enumerate(images):
            path = frames_dir / f"{t:05d}.png"
            if not cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR)):
                raise CmpDataError(f"{path}: could not write the PNG")
    pairs = np.array([(t, t + gap) for t in range(cfg.num_frames - gap)], np.int64)
    truth = [clip.ground_truth(int(t0), int(t1)) for t0, t1 in pairs]
    gt_path = out / f"{name}.flow.npz"
    np.savez_compressed(
        gt_path,
        pairs=pairs,
        flow=np.stack([f for f, _ in truth]),
        valid=np.stack([v for _, v in truth]),
    )
    meta_path = out / f"{name}.json"
    meta = {"config": dataclasses.asdict(cfg), "gap": gap, "num_pairs": len(pairs)}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return ClipFiles(video=video_path, frames=frames_dir, ground_truth=gt_path, meta=meta_path)


def load_ground_truth(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(pairs, flow, valid)`` from a ``.flow.npz`` written by :func:`write_clip`.

    ``pairs`` int64 (N, 2), ``flow`` float32 (N, H, W, 2) in px, ``valid`` bool (N, H, W).
    Raises ``SourceError`` if the file is missing, unreadable or not in that format.
    """
    path = Path(path)
    try:
        data = np.load(path)
    except FileNotFoundError:
        raise SourceError(path, "no such file") from None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise SourceError(path, f"unreadable ground truth: {err}") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise SourceError(path, "not a ground-truth file: a single array, not an .npz archive")
    with data:
        missing = sorted({"pairs", "flow", "valid"} - set(data.files))
        if missing:
            raise SourceError(path, f"not a ground-truth file: missing arrays {missing}")
        try:
            arrays = {key: data[key] for key in ("pairs", "flow", "valid")}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as err:
            raise SourceError(path, f"unreadable ground truth: {err}") from None
    pairs, flow, valid = arrays["pairs"], arrays["flow"], arrays["valid"]
    n = len(pairs)
    if not (
        pairs.shape == (n, 2)
        and flow.dtype == np.float32
        and flow.ndim == 4
        and flow.shape[::3] == (n, 2)
        and valid.dtype == np.bool_
        and valid.shape == flow.shape[:3]
    ):
        raise SourceError(
            path,
            f"inconsistent ground truth: pairs {pairs.shape}, flow {flow.dtype} {flow.shape}, "
            f"valid {valid.dtype} {valid.shape}",
        )
    return pairs.astype(np.int64), flow, valid


def load_config(path: str | Path) -> tuple[SynthConfig, int]:
    """``(config, gap)`` from a ``<name>.json`` written by :func:`write_clip`.

    ``SyntheticClip(config)`` regenerates the clip exactly. Raises ``SourceError`` if the file
    is missing or does not describe a clip.
    """
    path = Path(path)
    try:
        meta = json.loads(path.read_text())
        return SynthConfig(**meta["config"]), int(meta["gap"])
    except FileNotFoundError:
        raise SourceError(path, "no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise SourceError(path, f"not a synthetic clip description: {err!r}") from None


def make_clips(
    out_dir: str | Path, count: int, seed: int = 0, gap: int = 3, **config_overrides: Any
) -> list[ClipFiles]:
    """Write ``count`` clips named ``clip000, clip001, ...`` with seeds ``seed, seed + 1, ...``.

    ``config_overrides`` are other :class:`SynthConfig` fields. Raises ``TypeError`` for an
    unknown field and ``ValueError`` for an invalid value (see :func:`write_clip`).
    """
    if count < 1:
        raise ConfigError(f"count must be >= 1 clip, got {count}")
    files = []
    for i in range(count):
        clip = SyntheticClip(SynthConfig(seed=seed + i, **config_overrides))
        files.append(write_clip(clip, out_dir, f"clip{i:03d}", gap=gap))
    return files
