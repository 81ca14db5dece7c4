"""Propagate a few hand-given motion vectors over one image with a trained CMP.

::

    flow = propagate("runs/r50/checkpoint.pt", "cat.jpg", [(120, 80, 10, 0)], "cat-flow.png")

The picture shows the image with the guidance arrows | the propagated flow's colours |
the colour legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from cmpdata.errors import ConfigError, UsageError
from cmpdata.guidance import rasterize
from cmpdata.paths import check_output_file
from cmpdata.records import Guidance
from cmpdata.store.shards import StoredSample
from cmpdata.viz import flow_figure, save_png
from cmpmodel.data import eval_inputs
from cmpmodel.evaluate import cropped_flows
from cmpmodel.model import CMP
from cmpmodel.train import load_model


def read_rgb(path: str | Path) -> np.ndarray:
    """The image file ``path`` as uint8 (H, W, 3) RGB; :class:`UsageError` naming it if it
    cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise UsageError(f"{path}: not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def propagate(
    checkpoint: str | Path,
    image_path: str | Path,
    guides: Sequence[tuple[float, float, float, float]],
    out_png: str | Path,
) -> np.ndarray:
    """The flow (float32 (H, W, 2), px) the model propagates from ``guides`` over the image.

    Each guide is ``(x, y, dx, dy)`` in px: a point of the image and its motion. The image is
    normalised as in training and padded to a multiple of 8; the picture goes to
    ``out_png``. Raises :class:`~cmpdata.errors.UsageError` for an unreadable image or
    checkpoint or an unusable ``out_png``, and :class:`~cmpdata.errors.ConfigError` (a
    ``ValueError``) for a guide outside the image, of non-finite values, or of a motion longer
    than the image.
    """
    check_output_file(out_png, (".png",))
    image = read_rgb(image_path)
    guidance = check_guides(guides, image.shape[:2], image_path)
    model, ckpt = load_model(checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    [flow] = guided_flows(model.to(device), ckpt, image, [guidance], device)
    figure = flow_figure(image, flow, guidance, title=f"propagated from {len(guidance)} guides")
    save_png(out_png, figure)
    return flow


def check_guides(
    guides: Sequence[Sequence[float]], size: tuple[int, int], where: object
) -> Guidance:
    """The :class:`Guidance` of ``guides`` (``(x, y, dx, dy)`` each, px) on an image of
    ``size`` = (H, W) named ``where`` in messages.

    Raises :class:`~cmpdata.errors.ConfigError` (a ``ValueError``) for no guide, a guide that
    is not four numbers, one outside the image, of non-finite values, or of a motion longer
    than the image.
    """
    h, w = size
    if not guides or any(len(g) != 4 for g in guides):
        raise ConfigError(f"guides must be a non-empty list of (x, y, dx, dy), got {guides!r}")
    try:
        values = np.asarray(guides, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"guides must be numbers (x, y, dx, dy), got {guides!r}") from None
    for x, y, dx, dy in values:
        if not (np.isfinite([x, y, dx, dy]).all() and 0 <= round(x) < w and 0 <= round(y) < h):
            raise ConfigError(
                f"guide {x:g},{y:g}: the point lies outside the {w} x {h} image {where}"
            )
        # A motion longer than the image is no motion of anything in it.
        if not max(abs(dx), abs(dy)) <= max(w, h):
            raise ConfigError(
                f"guide {x:g},{y:g}: motion {dx:g},{dy:g} px is longer than the {w} x {h} image"
            )
    values = values.astype(np.float32)
    return Guidance(np.ascontiguousarray(values[:, :2]), np.ascontiguousarray(values[:, 2:]))


def guided_flows(
    model: CMP,
    ckpt: dict[str, Any],
    image: np.ndarray,
    guidances: Sequence[Guidance],
    device: torch.device,
) -> list[np.ndarray]:
    """The flows (float32 (H, W, 2), px) that ``model`` (on ``device``, from checkpoint
    ``ckpt``) propagates from each of ``guidances`` over the uint8 (H, W, 3) RGB ``image``,
    normalised with the checkpoint's mean and std and padded to the model's stride as
    evaluation does; the image is encoded once for all of them."""
    h, w = image.shape[:2]
    transform = ckpt.get("transform_config", {})
    mean_std = {k: transform[k] for k in ("mean", "std") if k in transform}
    shape = {"multiple": model.stride, "min_side": model.min_side}
    # An unlabelled sample whose stored guidance is the user's: eval_inputs then pads and
    # normalises the image, and rasterises the first guidance, exactly as evaluation does; the
    # others are rasterised the same way onto the same padded size.
    sample = StoredSample(
        sample_id="image",
        source_id="image",
        t0=0,
        t1=0,
        split="val",
        guide_seed=0,
        image=image,
        flow=np.zeros((h, w, 2), np.float32),
        valid=None,
        guidance=guidances[0],
        crop=(0, 0, w, h),
        scale=(1.0, 1.0),
    )
    first = eval_inputs(sample, None, 0, **mean_std, **shape)
    others = [torch.from_numpy(rasterize(g, first["valid"].shape)) for g in guidances[1:]]
    padded = first["image"][None].to(device)
    sparse = torch.stack([first["sparse"], *others]).to(device)
    with torch.no_grad():
        logits = model.forward_one_image(padded, sparse)
    flow_range = ckpt["model_config"]["flow_range"]
    return list(cropped_flows(logits, padded.shape[-2:], (h, w), flow_range))
