"""Propagate a few hand-given motion vectors over one image with a trained CMP.

::

    flow = propagate("runs/r50/checkpoint.pt", "cat.jpg", [(120, 80, 10, 0)], "cat-flow.png")

The picture shows the image with the guidance arrows | the propagated flow's colours |
the colour legend.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from cmpdata.errors import ConfigError, UsageError
from cmpdata.paths import check_output_file
from cmpdata.records import Guidance
from cmpdata.store.shards import StoredSample
from cmpdata.viz import flow_figure, save_png
from cmpmodel.data import eval_inputs
from cmpmodel.evaluate import model_flow
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
    h, w = image.shape[:2]
    if not guides or any(len(g) != 4 for g in guides):
        raise ConfigError(f"guides must be a non-empty list of (x, y, dx, dy), got {guides!r}")
    values = np.asarray(guides, dtype=np.float64)
    for x, y, dx, dy in values:
        if not (np.isfinite([x, y, dx, dy]).all() and 0 <= round(x) < w and 0 <= round(y) < h):
            raise ConfigError(
                f"guide {x:g},{y:g}: the point lies outside the {w} x {h} image {image_path}"
            )
        # A motion longer than the image is no motion of anything in it.
        if not max(abs(dx), abs(dy)) <= max(w, h):
            raise ConfigError(
                f"guide {x:g},{y:g}: motion {dx:g},{dy:g} px is longer than the {w} x {h} image"
            )
    values = values.astype(np.float32)
    model, ckpt = load_model(checkpoint)
    guidance = Guidance(np.ascontiguousarray(values[:, :2]), np.ascontiguousarray(values[:, 2:]))
    # An unlabelled sample whose stored guidance is the user's: eval_inputs then pads,
    # normalises and rasterises exactly as evaluation does.
    sample = StoredSample(
        sample_id=str(image_path),
        source_id=str(image_path),
        t0=0,
        t1=0,
        split="val",
        guide_seed=0,
        image=image,
        flow=np.zeros((h, w, 2), np.float32),
        valid=None,
        guidance=guidance,
        crop=(0, 0, w, h),
        scale=(1.0, 1.0),
    )
    transform = ckpt.get("transform_config", {})
    mean_std = {k: transform[k] for k in ("mean", "std") if k in transform}
    inputs = eval_inputs(
        sample, None, 0, **mean_std, multiple=model.stride, min_side=model.min_side
    )
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flow = model_flow(model.to(device), inputs, ckpt["model_config"]["flow_range"], device)
    figure = flow_figure(image, flow, guidance, title=f"propagated from {len(guidance)} guides")
    save_png(out_png, figure)
    return flow
