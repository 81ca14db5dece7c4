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

from cmpdata.errors import CmpDataError
from cmpdata.records import Guidance
from cmpdata.shards import StoredSample
from cmpdata.viz import flow_figure, save_png
from cmpmodel.data import eval_inputs
from cmpmodel.evaluate import model_flow
from cmpmodel.train import load_model


def read_rgb(path: str | Path) -> np.ndarray:
    """The image file ``path`` as uint8 (H, W, 3) RGB; :class:`CmpDataError` naming it if it
    cannot be read."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise CmpDataError(f"{path}: not a readable image")
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
    ``out_png``. Raises :class:`CmpDataError` for an unreadable image or checkpoint and
    ``ValueError`` for a guide outside the image or not four numbers.
    """
    model, ckpt = load_model(checkpoint)
    image = read_rgb(image_path)
    h, w = image.shape[:2]
    if not guides or any(len(g) != 4 for g in guides):
        raise ValueError(f"guides must be a non-empty list of (x, y, dx, dy), got {guides!r}")
    values = np.asarray(guides, dtype=np.float32)
    xy = np.rint(values[:, :2])
    if ((xy < 0) | (xy >= [w, h])).any():
        raise ValueError(f"a guide point lies outside the {w} x {h} image {image_path}")
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
    inputs = eval_inputs(sample, None, 0, **mean_std)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    flow = model_flow(model.to(device), inputs, ckpt["model_config"]["flow_range"], device)
    figure = flow_figure(image, flow, guidance, title=f"propagated from {len(guidance)} guides")
    save_png(out_png, figure)
    return flow
