"""Pictures people look at: flow colours, guidance arrows, captioned panels, PNG files.

Flows are coloured with the Middlebury colour coding (Baker et al., "A Database and
Evaluation Methodology for Optical Flow"): the hue gives the direction on a 55-colour wheel,
the saturation the magnitude relative to a maximum; zero flow is white, flow beyond the
maximum is drawn dimmed. Every function takes and returns uint8 (H, W, 3) RGB images and
never modifies its inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from cmpdata.records import Guidance, check_flow, check_image, check_mask

# Colours per segment of the wheel, going red -> yellow -> green -> cyan -> blue -> magenta:
# the counts of the Middlebury coding, chosen so that equal steps look about equally different.
_WHEEL_SEGMENTS = (15, 6, 4, 11, 13, 6)  # RY, YG, GC, CB, BM, MR
# Beyond the maximum magnitude a colour is darkened by this factor instead of saturating.
_OVERFLOW_DIM = 0.75

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_CAPTION_HEIGHT = 22  # px of the strip above each panel image
_PANEL_GAP = 4  # px of background between panel images
_BACKGROUND = (255, 255, 255)
_TEXT = (0, 0, 0)
_INVALID_GREY = (128, 128, 128)
_HATCH_PERIOD = 8  # px between the diagonal lines drawn over invalid flow
_SUBPIXEL_BITS = 4  # cv2 drawing takes fixed-point coordinates with this many fraction bits


def _color_wheel() -> np.ndarray:
    """The (55, 3) float wheel in [0, 1], index 0 red, going through yellow, green, blue."""
    ry, yg, gc, cb, bm, mr = _WHEEL_SEGMENTS

    def ramp(n: int) -> np.ndarray:
        return np.floor(255 * np.arange(n) / n)

    def segment(n: int, r, g, b) -> np.ndarray:
        return np.stack([np.broadcast_to(c, (n,)) for c in (r, g, b)], axis=1)

    wheel = np.concatenate(
        [
            segment(ry, 255, ramp(ry), 0),
            segment(yg, 255 - ramp(yg), 255, 0),
            segment(gc, 0, 255, ramp(gc)),
            segment(cb, 0, 255 - ramp(cb), 255),
            segment(bm, ramp(bm), 0, 255),
            segment(mr, 255, 0, 255 - ramp(mr)),
        ]
    )
    return wheel / 255.0


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """Colour a flow field with the Middlebury coding: an (H, W, 3) uint8 RGB image.

    Direction picks the hue (flow towards +x is the wheel's first colour, red); the
    magnitude divided by ``max_magnitude`` (px) picks the saturation, white at zero. Vectors
    longer than ``max_magnitude`` keep full saturation and are dimmed; non-finite vectors
    are black. ``max_magnitude`` defaults to the largest finite magnitude of the field (1 px
    when the field is all zero, so zero flow stays white).

    Raises ``ValueError`` if ``flow`` is not float32 (H, W, 2) or ``max_magnitude`` <= 0.
    """
    check_flow("flow", flow)
    u = flow[..., 0].astype(np.float64)
    v = flow[..., 1].astype(np.float64)
    finite = np.isfinite(u) & np.isfinite(v)
    u = np.where(finite, u, 0.0)
    v = np.where(finite, v, 0.0)
    radius = np.hypot(u, v)
    if max_magnitude is None:
        max_magnitude = _default_max(radius)
    elif not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be > 0 px, got {max_magnitude}")
    radius = radius / max_magnitude

    n = len(_WHEEL)
    # atan2(-v, -u) is -pi for +x flow, so +x lands on wheel index 0 (red).
    position = (np.arctan2(-v, -u) / np.pi + 1) / 2 * (n - 1)
    k0 = np.floor(position).astype(np.int64)
    k1 = (k0 + 1) % n
    frac = (position - k0)[..., None]
    color = (1 - frac) * _WHEEL[k0] + frac * _WHEEL[k1]

    inside = (radius <= 1)[..., None]
    saturated = 1 - radius[..., None] * (1 - color)
    color = np.where(inside, saturated, color * _OVERFLOW_DIM)
    color[~finite] = 0.0
    return np.floor(255 * color).astype(np.uint8)


def _default_max(radius: np.ndarray) -> float:
    largest = float(radius.max()) if radius.size else 0.0
    return largest if largest > 0 else 1.0


def color_wheel_legend(size: int = 128, max_magnitude: float | None = None) -> np.ndarray:
    """A disc showing the flow colour of each direction, with the scale written under it.

    The pixel at offset (dx, dy) from the disc's centre has the colour of a flow (dx, dy):
    the rim is ``max_magnitude``. Below the disc: ``"max 12.3 px"``, or ``"max: per image"``
    when ``max_magnitude`` is ``None``. Returns (size + caption strip, size, 3) uint8 RGB.

    Raises ``ValueError`` if ``size`` < 16 or ``max_magnitude`` <= 0.
    """
    if size < 16:
        raise ValueError(f"legend size must be at least 16 px, got {size}")
    if max_magnitude is not None and not max_magnitude > 0:
        raise ValueError(f"max_magnitude must be > 0 px, got {max_magnitude}")
    centre = (size - 1) / 2
    rim = size / 2 - 1
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    offsets = np.stack([xs - centre, ys - centre], axis=-1)
    disc = flow_to_color(offsets, max_magnitude=rim)
    disc[np.hypot(offsets[..., 0], offsets[..., 1]) > rim] = _BACKGROUND
    text = "max: per image" if max_magnitude is None else f"max {max_magnitude:.3g} px"
    return np.concatenate([disc, _caption_strip(size, text)], axis=0)


def draw_guidance(
    image: np.ndarray,
    guidance: Guidance,
    *,
    scale: float = 1.0,
    color: tuple[int, int, int] = (255, 255, 0),
    thickness: int = 1,
) -> np.ndarray:
    """A copy of ``image`` with an arrow from each guidance point along its vector.

    Each arrow is ``scale`` times its vector (say so in the caption when ``scale != 1``),
    drawn in ``color`` (RGB) over a dark outline so it reads on bright and dark images, with
    a dot at the point so that zero vectors still show. Points are (x, y) pixels.

    Raises ``ValueError`` if ``image`` is not uint8 (H, W, 3), the guidance is not finite,
    ``scale`` <= 0 or ``thickness`` < 1.
    """
    check_image("image", image)
    if not isinstance(guidance, Guidance):
        raise ValueError(f"guidance must be a Guidance record, got {type(guidance).__name__}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    if not (np.isfinite(guidance.points).all() and np.isfinite(guidance.vectors).all()):
        raise ValueError("guidance points and vectors must be finite")
    out = image.copy()
    one = 1 << _SUBPIXEL_BITS
    starts = np.round(guidance.points * one).astype(np.int64)
    ends = np.round((guidance.points + scale * guidance.vectors) * one).astype(np.int64)
    lengths = np.hypot(*(scale * guidance.vectors.T))
    outline = (0, 0, 0)
    dot = thickness + 1
    # Outlines first, for every arrow, so that no outline covers a neighbour's bright stroke.
    for layer_color, extra in ((outline, 2), (color, 0)):
        for start, end, length in zip(starts, ends, lengths, strict=True):
            p0, p1 = (int(start[0]), int(start[1])), (int(end[0]), int(end[1]))
            if length >= 1:
                # Arrow heads of about 6 px whatever the length, at most a third of it.
                tip = min(0.33, 6.0 / length)
                cv2.arrowedLine(
                    out, p0, p1, layer_color, thickness + extra, cv2.LINE_AA, _SUBPIXEL_BITS, tip
                )
            radius = (dot + extra // 2) * one
            cv2.circle(out, p0, radius, layer_color, -1, cv2.LINE_AA, _SUBPIXEL_BITS)
    return out


def panel(images: Sequence[np.ndarray], captions: Sequence[str]) -> np.ndarray:
    """Images side by side at a common height (the tallest), each under a caption strip.

    Returns a uint8 RGB image of height tallest + 22 px. Raises ``ValueError`` if there are
    no images, the counts of images and captions differ, or an image is not uint8 (H, W, 3).
    """
    if not images:
        raise ValueError("panel needs at least one image")
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    for i, image in enumerate(images):
        check_image(f"images[{i}]", image)
    height = max(image.shape[0] for image in images)
    columns = []
    for image, caption in zip(images, captions, strict=True):
        resized = _to_height(image, height)
        columns.append(np.concatenate([_caption_strip(resized.shape[1], caption), resized]))
    gap = np.full((height + _CAPTION_HEIGHT, _PANEL_GAP, 3), _BACKGROUND, dtype=np.uint8)
    pieces = [columns[0]]
    for column in columns[1:]:
        pieces += [gap, column]
    return np.concatenate(pieces, axis=1)


def _to_height(image: np.ndarray, height: int) -> np.ndarray:
    h, w = image.shape[:2]
    if h == height:
        return image
    width = max(1, round(w * height / h))
    interpolation = cv2.INTER_AREA if height < h else cv2.INTER_LINEAR
    return cv2.resize(image, (width, height), interpolation=interpolation)


def _caption_strip(width: int, text: str) -> np.ndarray:
    """A white strip, ``_CAPTION_HEIGHT`` px tall, with ``text`` shrunk to fit ``width``."""
    strip = np.full((_CAPTION_HEIGHT, width, 3), _BACKGROUND, dtype=np.uint8)
    font_scale = 0.5
    (text_width, _), _ = cv2.getTextSize(text, _FONT, font_scale, 1)
    # Shrink long captions, but not below legibility; whatever still overflows is clipped.
    if text_width > width - 4:
        font_scale = max(0.3, font_scale * (width - 4) / text_width)
    cv2.putText(strip, text, (2, _CAPTION_HEIGHT - 7), _FONT, font_scale, _TEXT, 1, cv2.LINE_AA)
    return strip


def save_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an RGB image to ``path`` as PNG, creating parent folders; returns the path.

    Raises ``ValueError`` if ``image`` is not uint8 (H, W, 3) and ``OSError`` naming the path
    if it cannot be written.
    """
    check_image("image", image)
    path = Path(path)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(encoded.tobytes())
    except OSError as error:
        raise OSError(f"{path}: cannot write PNG ({error})") from error
    return path


def flow_figure(
    frame: np.ndarray,
    flow: np.ndarray,
    guidance: Guidance | None = None,
    *,
    valid: np.ndarray | None = None,
    title: str | None = None,
    guidance_scale: float = 1.0,
) -> np.ndarray:
    """The standard picture of a sample: frame with guidance | flow colours | legend.

    The flow is coloured up to its largest valid magnitude (stated by the legend); where
    ``valid`` is False it is greyed out and hatched. ``title``, when given, is a strip above
    the whole panel. Returns a uint8 RGB image.

    Raises ``ValueError`` if ``frame`` is not uint8 (H, W, 3), ``flow`` not float32
    (H, W, 2) of the frame's size, or ``valid`` not a bool (H, W) mask.
    """
    check_image("frame", frame)
    size = frame.shape[:2]
    check_flow("flow", flow, size)
    if valid is not None:
        check_mask("valid", valid, size)
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    trusted = np.isfinite(magnitude) if valid is None else np.isfinite(magnitude) & valid
    max_magnitude = _default_max(magnitude[trusted])
    colored = flow_to_color(flow, max_magnitude)
    flow_caption = f"flow (max {max_magnitude:.3g} px)"
    if valid is not None:
        colored = _hatch_invalid(colored, valid)
        flow_caption = f"flow, {valid.mean():.0%} valid"

    if guidance is None:
        shown, frame_caption = frame, "frame"
    else:
        shown = draw_guidance(frame, guidance, scale=guidance_scale)
        frame_caption = f"frame + {len(guidance)} guidance points"
        if guidance_scale != 1:
            frame_caption += f", arrows x{guidance_scale:g}"
    legend_size = max(16, size[0] - _CAPTION_HEIGHT)
    legend = color_wheel_legend(legend_size, max_magnitude)
    figure = panel([shown, colored, legend], [frame_caption, flow_caption, "direction"])
    if title is None:
        return figure
    return np.concatenate([_caption_strip(figure.shape[1], title), figure])


def _hatch_invalid(image: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = image.copy()
    grey = np.array(_INVALID_GREY, dtype=np.float32)
    out[~valid] = (0.5 * image[~valid] + 0.5 * grey).astype(np.uint8)
    ys, xs = np.mgrid[0 : valid.shape[0], 0 : valid.shape[1]]
    hatch = ~valid & ((xs + ys) % _HATCH_PERIOD == 0)
    out[hatch] = (64, 64, 64)
    return out
