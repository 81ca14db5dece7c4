"""What the browser page of ``cmpmodel serve`` computes, without the web server.

- :func:`decode_image`: an uploaded file as an RGB image, resized so that its longer side is at
  most ``max_side`` px (the model then runs in a second or two on a CPU); refused with an
  :class:`ImageError` when it is not an image or too large to decode.
- Methods, each ``(image, guidances) -> flows``: :class:`ModelMethod` (a checkpoint this project
  loads, its own or a converted original) and the two baselines of ``cmpmodel eval``
  (:func:`baseline_flows`: the nearest guide, inverse-distance weighting), so a user sees what
  the model adds.
- :func:`annotate`: semi-automatic annotation as in the paper's application. Every positive
  click is given a test motion of :data:`ANNOTATION_SPEED` px, once in each of the four
  directions +x, -x, +y, -y, every negative click none; the four propagated flows are averaged
  in absolute value (both components), divided by their largest value, and the pixels above
  :data:`ANNOTATION_THRESHOLD` are the object. Both numbers are the original project's demo
  notebook's (``demos/demo_annot.ipynb``: ``velocity=30.``, ``th=0.5``); its zoom on small
  objects and its CRF are not reproduced.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from cmpdata.errors import ConfigError, UsageError
from cmpdata.guidance import rasterize
from cmpdata.records import Guidance
from cmpmodel.evaluate import idw_flow, nearest_flow
from cmpmodel.propagate import guided_flows
from cmpmodel.train import load_model

MAX_SIDE = 512  # px: longer side of the pictures the page works on (CPU-friendly)
MAX_PIXELS = 40_000_000  # refused above this many pixels: decoding alone would take GBs
MAX_UPLOAD_BYTES = 50 * 1024 * 1024  # refused above: no picture of MAX_PIXELS needs more
ANNOTATION_SPEED = 30.0  # px: test motion of a positive click (the original demo's call)
ANNOTATION_THRESHOLD = 0.5  # share of the largest response that is the object (the original's)
# The four test motions of a positive click, as unit vectors: the original's order.
_TEST_DIRECTIONS = ((1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))
_ORIENTATION_TAG = 0x0112  # EXIF's orientation of the stored picture

# (image, guidances) -> one flow a guidance: the page's methods.
Method = Callable[[np.ndarray, Sequence[Guidance]], list[np.ndarray]]


class ImageError(UsageError):
    """A picture given to the page that cannot be used: not an image, damaged, or too large."""


def decode_image(
    data: bytes, name: str, max_side: int = MAX_SIDE
) -> tuple[np.ndarray, tuple[int, int]]:
    """The picture in ``data`` (the bytes of an image file named ``name``) as uint8 (H, W, 3)
    RGB, its longer side at most ``max_side`` px (resized with area averaging), and its
    (H, W) as stored, turned upright as its EXIF orientation says.

    Raises :class:`ImageError` naming ``name`` when ``data`` is empty, larger than
    :data:`MAX_UPLOAD_BYTES`, not an image, damaged, or of more than :data:`MAX_PIXELS`.
    """
    if not data:
        raise ImageError(f"{name}: the file is empty")
    if len(data) > MAX_UPLOAD_BYTES:
        raise ImageError(
            f"{name}: {len(data) / 2**20:.0f} MiB is too large "
            f"(at most {MAX_UPLOAD_BYTES // 2**20} MiB)"
        )
    try:
        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            # EXIF orientations 5 to 8 turn the picture by a quarter: its upright (H, W) swaps.
            upright = opened.getexif().get(_ORIENTATION_TAG, 1) in (5, 6, 7, 8)
            if width * height > MAX_PIXELS:
                raise ImageError(
                    f"{name}: {width} x {height} px is too large "
                    f"(at most {MAX_PIXELS / 1e6:.0f} million pixels); make it smaller first"
                )
            # JPEG decodes at 1/2, 1/4 or 1/8 of the size directly when that is enough.
            opened.draft("RGB", (max_side, max_side))
            image = np.asarray(ImageOps.exif_transpose(opened).convert("RGB"))
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: too large to decode (a decompression bomb?)") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (no picture format recognised)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{name}: a damaged image ({exc})") from None
    return fit(image, max_side), ((width, height) if upright else (height, width))


def fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) resized with area averaging so that its longer side is at
    most ``max_side`` px, keeping its aspect; the image itself when it already fits."""
    h, w = image.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1:
        return np.ascontiguousarray(image)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def baseline_flows(name: str, image: np.ndarray, guidances: Sequence[Guidance]) -> list[np.ndarray]:
    """The flows (float32 (H, W, 2), px) of baseline ``name`` (``"nearest"`` or ``"idw"``,
    as in ``cmpmodel eval``) from each of ``guidances`` over ``image``'s size; the image's
    content plays no part. Raises ``ValueError`` for another name."""
    spread = {"nearest": lambda sparse: nearest_flow(sparse)[0], "idw": idw_flow}
    if name not in spread:
        raise ValueError(f"unknown baseline {name!r}; expected 'nearest' or 'idw'")
    return [spread[name](rasterize(g, image.shape[:2])) for g in guidances]


class ModelMethod:
    """A CMP model as a method: ``method(image, guidances) -> flows`` (float32 (H, W, 2), px,
    one a guidance; the image encoded once).

    Loads checkpoint ``path`` (this project's, or an original converted with ``cmpmodel
    convert-original``) onto the GPU when there is one; raises
    :class:`~cmpmodel.train.CheckpointError` naming it when it does not load. Calls from
    several threads run one at a time.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        model, self.checkpoint = load_model(path)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = model.to(self.device)
        self._lock = threading.Lock()

    def __call__(self, image: np.ndarray, guidances: Sequence[Guidance]) -> list[np.ndarray]:
        with self._lock:
            return guided_flows(self.model, self.checkpoint, image, guidances, self.device)


def annotation_guidance(
    positive: Sequence[tuple[float, float]],
    negative: Sequence[tuple[float, float]],
    speed: float = ANNOTATION_SPEED,
) -> list[Guidance]:
    """The four guidances of the annotation's test: the ``positive`` points (x, y px) moving
    by ``speed`` px towards +x, -x, +y and -y in turn, the ``negative`` ones still. Raises
    :class:`~cmpdata.errors.ConfigError` when there is no positive point or ``speed`` is not > 0."""
    if not positive:
        raise ConfigError("annotation needs at least one positive point")
    if not speed > 0:
        raise ConfigError(f"speed must be > 0 px, got {speed}")
    points = np.asarray([*positive, *negative], np.float32).reshape(-1, 2)
    guidances = []
    for direction in _TEST_DIRECTIONS:
        vectors = np.zeros_like(points)
        vectors[: len(positive)] = np.multiply(direction, speed)
        guidances.append(Guidance(points, vectors))
    return guidances


def annotation_response(flows: Sequence[np.ndarray]) -> np.ndarray:
    """float32 (H, W) in [0, 1]: the mean absolute value of the test's flows (both
    components of each, float32 (H, W, 2) px) divided by its largest value (zero everywhere
    when every flow is zero)."""
    response = np.mean([np.abs(flow).mean(axis=-1) for flow in flows], axis=0)
    largest = float(response.max())
    return (response / largest if largest > 0 else response).astype(np.float32)


def annotate(
    method: Method,
    image: np.ndarray,
    positive: Sequence[tuple[float, float]],
    negative: Sequence[tuple[float, float]],
    speed: float = ANNOTATION_SPEED,
    threshold: float = ANNOTATION_THRESHOLD,
) -> tuple[np.ndarray, np.ndarray]:
    """The mask (bool (H, W)) of the object that the ``positive`` clicks (x, y px) are on and
    the ``negative`` ones are not, and the response it thresholds (:func:`annotation_response`),
    by propagating :func:`annotation_guidance` with ``method`` over ``image``.

    Raises :class:`~cmpdata.errors.ConfigError` (a ``ValueError``) without a positive point,
    for ``speed`` <= 0 or a ``threshold`` outside (0, 1), and what ``method`` raises.
    """
    if not 0 < threshold < 1:
        raise ConfigError(f"threshold must be in (0, 1), got {threshold}")
    flows = method(image, annotation_guidance(positive, negative, speed))
    response = annotation_response(flows)
    return response > threshold, response
