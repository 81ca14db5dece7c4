"""Synthetic videos with exact ground-truth optical flow.

A :class:`SyntheticClip` is a photographic background seen by a moving camera, under a few
textured objects (ellipses, rectangles, polygons) that translate, rotate, scale and shear
smoothly and occlude each other in a fixed z-order; some objects carry an articulated limb
that swings about a joint on them. Every layer ``k`` (0 = background, then the objects, each
limb right after its body, higher on top) is a texture carried into the frame by an affine map
``A_k(t) = C(t) [B_k(t)] M_k(t)``: the camera's map ``C(t)`` (pan in any direction, roll and
zoom about the frame centre), the pose of the body a limb hangs on (``B_k``, limbs only) and
the layer's own pose ``M_k(t)``. A frame is rendered by inverse mapping with bilinear
interpolation, so the forward flow of a pixel ``p`` of frame ``t0`` is exactly
``A_k(t1) A_k(t0)^-1 p - p`` for the layer ``k`` visible at ``p``. Object edges are
anti-aliased; a pixel belongs to the top-most layer whose coverage there is at least 0.5, the
same rule in :meth:`SyntheticClip.frame`, :meth:`SyntheticClip.layers` and the flow.

What makes the frames harder than their geometry, without touching the flow: the brightness
of the whole frame drifts over the clip (a gain of up to ``1 +- brightness``), and a clip may
be filmed with an exposure of up to ``motion_blur`` of a frame interval (three renders spread
over it, averaged; the ground truth is the flow between the exposures' centres). Textures are
crops of the photos bundled with scikit-image (:mod:`cmpdata.synth.photos`), or procedural
noise with ``texture="noise"``. Everything is drawn from
``np.random.default_rng(config.seed)``: the same config gives the same pixels and flows on
every machine with the same photos.

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
- ``<name>.json``: ``{"generator": "cmp-synth", "config": <SynthConfig fields>, "gap": gap,
  "num_pairs": N}``, enough to regenerate the clip with :func:`load_config`; ``extract`` finds
  it beside the video and stores each pair's exact flow and object ids with the sample
  (:mod:`cmpdata.synth.truth`).

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
from cmpdata.synth.photos import photo_patch

LayerKind = Literal["background", "translate", "rotate", "scale", "mixed", "limb"]
Texture = Literal["photo", "noise"]
TEXTURES: tuple[str, ...] = ("photo", "noise")
GENERATOR = "cmp-synth"  # the "generator" of a clip's .json: marks it as one of ours

# Objects beyond the first three mix all motions; the first three each show one motion cleanly.
_PURE_KINDS: tuple[LayerKind, ...] = ("translate", "rotate", "scale")
_VIDEO_CRF = 12
# Noise octaves as cell sizes in pixels: 4 px is the finest detail that bilinear resampling
# reproduces well (so warping a frame with the ground truth reproduces its neighbour).
_OCTAVES = (4, 8, 16, 32, 64)  # must double from one to the next
_SUPERSAMPLE = 4  # shape masks are drawn at 4x and averaged down: anti-aliased edges
_PAD = 2  # px of empty texture around an object, so its coverage falls to 0 before the border
_BLUR_RENDERS = 3  # renders averaged over a blurred frame's exposure
_MAX_SWING = math.radians(60)  # largest swing of a limb either side of its rest angle


@dataclass(frozen=True)
class SynthConfig:
    """Everything that defines a synthetic clip; sizes in pixels, motions per frame."""

    height: int = 256  # frame height (px)
    width: int = 320  # frame width (px)
    num_frames: int = 40  # frames in the clip
    num_objects: int = 4  # moving objects over the background
    seed: int = 0  # seed of every random draw (textures, shapes, motions)
    texture: str = "photo"  # "photo": crops of scikit-image's photos; "noise": procedural
    camera_motion: bool = True  # the camera pans, rolls and zooms; else it is still
    camera_speed: float = 1.0  # fastest camera pan (px/frame), any direction
    camera_rotation: float = 0.2  # fastest camera roll (degrees/frame)
    camera_zoom: float = 0.005  # fastest relative zoom in or out (1/frame)
    max_speed: float = 4.0  # fastest object translation (px/frame)
    max_rotation: float = 2.0  # fastest object rotation (degrees/frame)
    max_growth: float = 0.01  # fastest relative scale change (1/frame), capped to 0.5x-1.5x
    max_shear: float = 0.01  # fastest shear change of a mixed-motion object (1/frame)
    limbs: int = 1  # objects that carry an articulated limb (at most num_objects)
    limb_swing: float = 4.0  # fastest swing of a limb about its joint (degrees/frame)
    brightness: float = 0.1  # largest brightness drift over the clip (gain 1 +- this)
    motion_blur: float = 0.5  # longest exposure, as a fraction of the frame interval
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
        if not 0 <= self.limbs <= self.num_objects:
            raise ConfigError(
                f"limbs must be within 0..num_objects ({self.num_objects}), got {self.limbs}"
            )
        if self.texture not in TEXTURES:
            raise ConfigError(f"texture must be one of {TEXTURES}, got {self.texture!r}")
        for name in (
            "camera_speed",
            "camera_rotation",
            "camera_zoom",
            "max_speed",
            "max_rotation",
            "max_growth",
            "max_shear",
            "limb_swing",
        ):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("brightness", "motion_blur"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0 < self.min_object_size <= self.max_object_size <= 1:
            raise ConfigError(
                "object sizes must satisfy 0 < min_object_size <= max_object_size <= 1, got "
                f"{self.min_object_size}, {self.max_object_size}"
            )
        if not self.fps > 0:
            raise ConfigError(f"fps must be > 0, got {self.fps}")


@dataclass(frozen=True)
class _Motion:
    """A pose over time: ``M(t) = T(p(t)) R(angle(t)) Sh(shear t) S(scale(t)) T(-pivot)``.

    ``p(t) = p0 + v t + bend * 4 t (span - t) / span**2``: a parabola (constant acceleration)
    leaving the straight line by ``bend`` px at mid-clip and rejoining it at ``t = span``.
    ``angle(t) = angle0 + omega t + swing (sin(2 pi t / period + phase) - sin(phase))``;
    ``Sh(k)`` is the shear ``x += k y``. ``t`` may be fractional (the exposures of a blurred
    frame).
    """

    pivot: tuple[float, float]  # texture point carried to p(t) (texture px)
    p0: tuple[float, float]  # position at t = 0 (px of the parent: frame, world or body)
    velocity: tuple[float, float] = (0.0, 0.0)  # straight-line velocity (px/frame)
    bend: tuple[float, float] = (0.0, 0.0)  # mid-clip offset from the straight line (px)
    span: float = 1.0  # frames over which the bend is spread (num_frames - 1, at least 1)
    angle0: float = 0.0  # rotation at t = 0 (radians)
    omega: float = 0.0  # rotation speed (radians/frame)
    scale0: float = 1.0  # scale at t = 0
    growth: float = 0.0  # relative scale change: scale(t) = scale0 * (1 + growth t)
    shear: float = 0.0  # shear change (1/frame)
    swing: float = 0.0  # amplitude of the periodic rotation (radians)
    period: float = 1.0  # its period (frames)
    phase: float = 0.0  # its phase at t = 0 (radians)

    def affine(self, t: float) -> np.ndarray:
        """(3, 3) float64 map from texture coordinates to the parent's at time ``t``."""
        shape = 4.0 * t * (self.span - t) / self.span**2
        px = self.p0[0] + self.velocity[0] * t + self.bend[0] * shape
        py = self.p0[1] + self.velocity[1] * t + self.bend[1] * shape
        wave = math.sin(2 * math.pi * t / self.period + self.phase) - math.sin(self.phase)
        angle = self.angle0 + self.omega * t + self.swing * wave
        s = self.scale0 * (1.0 + self.growth * t)
        c, si = math.cos(angle), math.sin(angle)
        linear = np.array([[c, -si], [si, c]]) @ np.array([[s, self.shear * t * s], [0.0, s]])
        qx, qy = self.pivot
        out = np.eye(3)
        out[:2, :2] = linear
        out[:2, 2] = (px, py) - linear @ (qx, qy)
        return out


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


def _object_texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A colour modulated by noise and a grating, float32 RGB 0..255 (h, w, 3)."""
    colour = rng.uniform(30, 225, size=3).astype(np.float32)
    lum = 0.30 * _noise(rng, h, w, 1) + 0.15 * _stripes(rng, h, w)[..., None]
    tint = 18.0 * _noise(rng, h, w, 3)
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


def _capsule_mask(length: float, width: float) -> np.ndarray:
    """Anti-aliased coverage, float32 (nh, nw), of a horizontal bar with round ends (a limb);
    its joint end is centred at ``(_PAD + width / 2, (nh - 1) / 2)``."""
    nh, nw = math.ceil(width) + 2 * _PAD, math.ceil(length) + 2 * _PAD
    big = np.zeros((nh * _SUPERSAMPLE, nw * _SUPERSAMPLE), np.uint8)
    radius = width / 2 * _SUPERSAMPLE
    y = (nh * _SUPERSAMPLE - 1) / 2
    x0, x1 = (_PAD + width / 2) * _SUPERSAMPLE, (nw - _PAD - width / 2) * _SUPERSAMPLE
    ends = [(round(x0 * 16), round(y * 16)), (round(x1 * 16), round(y * 16))]
    cv2.line(big, ends[0], ends[1], 255, max(1, round(2 * radius)), cv2.LINE_8, shift=4)
    for end in ends:
        cv2.circle(big, end, round(radius * 16), 255, -1, cv2.LINE_8, shift=4)
    small = cv2.resize(big, (nw, nh), interpolation=cv2.INTER_AREA)
    return small.astype(np.float32) / 255.0


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
    growth = shear = 0.0
    if kind in ("scale", "mixed"):
        lo, hi = (0.6, 1.0) if kind == "scale" else (0.2, 0.5)
        # Cap so the scale stays within [0.5, 1.5] of its start over the whole clip.
        growth = min(config.max_growth * rng.uniform(lo, hi), 0.5 / span) * rng.choice([-1, 1])
    if kind == "mixed":
        # Cap so the shear stays below 0.5 over the whole clip.
        shear = min(config.max_shear * rng.uniform(0.3, 1.0), 0.5 / span) * rng.choice([-1, 1])
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
        shear=shear,
    )


def _limb_motion(rng: np.random.Generator, config: SynthConfig, body: int, width: float) -> _Motion:
    """The pose, in the texture coordinates of an ``body`` x ``body`` object, of a limb of
    ``width`` px hinged near the object's edge, swinging about its joint."""
    direction = rng.uniform(0, 2 * math.pi)
    reach = 0.6 * (body - 2 * _PAD) / 2.0
    centre = (body - 1) / 2.0
    joint = (centre + reach * math.cos(direction), centre + reach * math.sin(direction))
    peak = math.radians(config.limb_swing) * rng.uniform(0.6, 1.0)  # rad/frame
    period = rng.uniform(12.0, 30.0)
    return _Motion(
        pivot=(_PAD + width / 2.0, (math.ceil(width) + 2 * _PAD - 1) / 2.0),
        p0=joint,
        angle0=direction + rng.uniform(-0.5, 0.5),
        swing=min(peak * period / (2 * math.pi), _MAX_SWING),
        period=period,
        phase=rng.uniform(0, 2 * math.pi),
    )


class SyntheticClip:
    """A synthetic video with exact forward flow, occlusion masks and layer maps.

    Layer 0 is the background; objects and limbs are the layers above, each drawn over the
    ones below, a limb right after the object it hangs on. ``kinds[k]`` names the motion of
    layer ``k``: with at least three objects, one purely translates, one rotates in place (with
    a little drift) and one scales (with a little drift), before the camera's motion; further
    objects mix all of them and shear; ``"limb"`` layers swing about a joint on their body.
    ``parents[k]`` is the layer a limb hangs on (``-1`` for the others).
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

        camera = _Motion(pivot=((w - 1) / 2.0, (h - 1) / 2.0), p0=((w - 1) / 2.0, (h - 1) / 2.0))
        if cfg.camera_motion:
            theta = rng.uniform(0, 2 * math.pi)
            speed = cfg.camera_speed * rng.uniform(0.5, 1.0)
            zoom = min(cfg.camera_zoom * rng.uniform(0.0, 1.0), 0.5 / span)
            camera = dataclasses.replace(
                camera,
                velocity=(speed * math.cos(theta), speed * math.sin(theta)),
                span=span,
                omega=math.radians(cfg.camera_rotation) * rng.uniform(-1.0, 1.0),
                growth=zoom * rng.choice([-1.0, 1.0]),
            )
        self._camera = camera
        # A margin of texture around the frame for the camera's pan; beyond it the texture is
        # mirrored (the flow stays exact: the mirror image is just more texture).
        margin = int(min(64, math.ceil(math.hypot(*camera.velocity) * span) + 8))
        self._margin = margin
        texture = cfg.texture
        self._background = (
            photo_patch(rng, h + 2 * margin, w + 2 * margin)
            if texture == "photo"
            else _background_texture(rng, h + 2 * margin, w + 2 * margin)
        )
        self._exposure = rng.uniform(0.0, cfg.motion_blur)
        self._gain = rng.uniform(-cfg.brightness, cfg.brightness)

        pure = [_PURE_KINDS[i] for i in rng.permutation(len(_PURE_KINDS))]
        with_limb = set(rng.permutation(cfg.num_objects)[: cfg.limbs].tolist())
        kinds: list[LayerKind] = ["background"]
        parents = [-1]
        motions = [_Motion(pivot=(float(margin), float(margin)), p0=(0.0, 0.0))]
        shapes = ("ellipse", "rectangle", "polygon")
        first_shape = int(rng.integers(0, len(shapes)))
        self._textures: list[np.ndarray] = []  # (nh, nw, 4) float32: RGB 0..255 then coverage
        self._masks: list[np.ndarray] = []  # (nh, nw) float32 coverage alone, for layer maps
        short = min(h, w)

        def add(mask: np.ndarray, motion: _Motion, kind: LayerKind, parent: int) -> None:
            nh, nw = mask.shape
            make = photo_patch if texture == "photo" else _object_texture
            colour = make(rng, nh, nw)
            self._textures.append(np.dstack([colour, mask]))
            self._masks.append(mask)
            motions.append(motion)
            kinds.append(kind)
            parents.append(parent)

        for i in range(cfg.num_objects):
            kind = pure[i] if i < len(pure) else "mixed"
            diameter = short * rng.uniform(cfg.min_object_size, cfg.max_object_size)
            n = max(math.ceil(diameter), 4) + 2 * _PAD
            mask = _shape_mask(rng, shapes[(first_shape + i) % len(shapes)], n)
            add(mask, _object_motion(rng, cfg, kind, n), kind, -1)
            if i in with_limb:
                body = len(motions) - 1
                length = diameter * rng.uniform(0.5, 0.8)
                width = max(length * rng.uniform(0.2, 0.3), 3.0)
                limb = _limb_motion(rng, cfg, n, width)
                add(_capsule_mask(length, width), limb, "limb", body)
        self._motions = tuple(motions)
        self.kinds: tuple[LayerKind, ...] = tuple(kinds)
        self.parents: tuple[int, ...] = tuple(parents)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self._xs, self._ys = xs, ys

    @property
    def num_layers(self) -> int:
        """Background plus objects and limbs."""
        return len(self._motions)

    def _check_t(self, t: int) -> None:
        if not 0 <= t < self.config.num_frames:
            raise ValueError(f"frame index {t} outside the clip [0, {self.config.num_frames})")

    def pose(self, layer: int, t: float) -> np.ndarray:
        """(3, 3) float64 map from the texture of ``layer`` to frame ``t`` (``t`` may be
        fractional): the camera's map after the body's (limbs) and the layer's own."""
        out = self._motions[layer].affine(t)
        parent = self.parents[layer]
        if parent >= 0:
            out = self._motions[parent].affine(t) @ out
        return self._camera.affine(t) @ out

    def transform(self, layer: int, t0: int, t1: int) -> np.ndarray:
        """(3, 3) float64 affine map carrying points of ``layer`` from frame ``t0`` to ``t1``.

        Raises ``ValueError`` for an unknown layer or a frame index outside the clip.
        """
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} outside [0, {self.num_layers})")
        self._check_t(t0)
        self._check_t(t1)
        return self.pose(layer, t1) @ np.linalg.inv(self.pose(layer, t0))

    def _sample(
        self, layer: int, t: float, x: np.ndarray, y: np.ndarray, colour: bool
    ) -> np.ndarray:
        """Texture of object ``layer`` at frame-``t`` points (x, y), bilinear, 0 outside it.

        Returns (..., 4) RGB and coverage when ``colour`` is set, else the (...) coverage.
        Frames, layer maps and occlusion tests all sample through here, so they agree on
        which pixels a layer covers.
        """
        inv = np.linalg.inv(self.pose(layer, t)).astype(np.float32)
        u = inv[0, 0] * x + inv[0, 1] * y + inv[0, 2]
        v = inv[1, 0] * x + inv[1, 1] * y + inv[1, 2]
        src = self._textures[layer - 1] if colour else self._masks[layer - 1]
        return cv2.remap(src, u, v, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    def _object_boxes(self, t: float) -> Iterator[tuple[int, tuple[slice, slice]]]:
        """(layer, (row slice, column slice)) of each object's bounding box within frame ``t``."""
        h, w = self.config.height, self.config.width
        for k in range(1, self.num_layers):
            affine = self.pose(k, t)
            nh, nw = self._masks[k - 1].shape
            corners = affine[:2, :2] @ np.array([[0, nw - 1, 0, nw - 1], [0, 0, nh - 1, nh - 1]])
            corners += affine[:2, 2:]
            x0, y0 = np.maximum(np.floor(corners.min(axis=1)).astype(int), 0)
            x1 = min(int(np.ceil(corners[0].max())) + 1, w)
            y1 = min(int(np.ceil(corners[1].max())) + 1, h)
            if x0 < x1 and y0 < y1:
                yield k, (slice(y0, y1), slice(x0, x1))

    def _render(self, t: float) -> np.ndarray:
        """The layers composited at time ``t``, float32 RGB 0..255 (H, W, 3), no gain."""
        h, w = self.config.height, self.config.width
        image = cv2.warpAffine(
            self._background,
            self.pose(0, t)[:2],
            (w, h),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )
        for k, box in self._object_boxes(t):
            warped = self._sample(k, t, self._xs[box], self._ys[box], colour=True)
            roi = image[box]
            roi += warped[..., 3:] * (warped[..., :3] - roi)
        return image

    def frame(self, t: int) -> np.ndarray:
        """Frame ``t`` as uint8 RGB (H, W, 3): blurred over the clip's exposure (if any),
        times the brightness gain of ``t``."""
        self._check_t(t)
        exposure = self._exposure
        if exposure > 0:
            offsets = np.linspace(-exposure / 2, exposure / 2, _BLUR_RENDERS)
            image = sum(self._render(t + float(o)) for o in offsets) / _BLUR_RENDERS
        else:
            image = self._render(t)
        span = max(self.config.num_frames - 1, 1)
        image *= np.float32(1.0 + self._gain * (2.0 * t / span - 1.0))
        return np.clip(image + 0.5, 0, 255).astype(np.uint8)

    def layers(self, t: int, points: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """int32 index of the layer visible at each pixel of frame ``t`` (0 = background):
        (H, W), or the shape of ``points``, float32 arrays (x, y) of frame positions."""
        self._check_t(t)
        if points is not None:
            xs, ys = points
            out = np.zeros(xs.shape, np.int32)
            for k in range(1, self.num_layers):
                out[self._sample(k, t, xs, ys, colour=False) >= 0.5] = k
            return out
        out = np.zeros((self.config.height, self.config.width), np.int32)
        for k, box in self._object_boxes(t):
            out[box][self._sample(k, t, self._xs[box], self._ys[box], colour=False) >= 0.5] = k
        return out

    def _flow_on(
        self, layer_map: np.ndarray, t0: int, t1: int, xs: np.ndarray, ys: np.ndarray
    ) -> np.ndarray:
        """Flow t0 -> t1 at points (xs, ys), each moved by the map of its layer in
        ``layer_map``."""
        coef = np.stack([self.transform(k, t0, t1)[:2] for k in range(self.num_layers)])
        coef[:, 0, 0] -= 1.0
        coef[:, 1, 1] -= 1.0
        coef = coef.astype(np.float32)
        flow = np.empty((*layer_map.shape, 2), np.float32)
        for c in range(2):
            a, b, d = (coef[:, c, j][layer_map] for j in range(3))
            flow[..., c] = a * xs + b * ys + d
        return flow

    def flow(self, t0: int, t1: int) -> np.ndarray:
        """Exact forward flow from frame ``t0`` to frame ``t1``: float32 (H, W, 2), px, x then y."""
        return self._flow_on(self.layers(t0), t0, t1, self._xs, self._ys)

    def valid(self, t0: int, t1: int) -> np.ndarray:
        """bool (H, W): True where the point seen at ``p`` in ``t0`` is visible in ``t1``.

        See :meth:`ground_truth`.
        """
        return self.ground_truth(t0, t1)[1]

    def ground_truth(
        self, t0: int, t1: int, points: tuple[np.ndarray, np.ndarray] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """``(flow(t0, t1), valid(t0, t1))`` computed together (cheaper than separately), at
        every pixel or at ``points`` (float32 arrays (x, y) of frame-``t0`` positions).

        A point is valid when its position in ``t1`` lies within the pixel centres of the frame
        (``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` up to 1e-3 px, so frame ``t1`` can be
        interpolated there) and no layer above its own covers that position (coverage >= 0.5)
        in ``t1``.
        """
        xs, ys = (self._xs, self._ys) if points is None else points
        layer_map = self.layers(t0, points)
        flow = self._flow_on(layer_map, t0, t1, xs, ys)
        h, w = self.config.height, self.config.width
        x1 = xs + flow[..., 0]
        y1 = ys + flow[..., 1]
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
    meta = {
        "generator": GENERATOR,
        "config": dataclasses.asdict(cfg),
        "gap": gap,
        "num_pairs": len(pairs),
    }
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
