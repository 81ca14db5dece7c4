"""How well a trained CMP propagates sparse guidance, against three baselines.

For every sample of a split, on the whole frame (:func:`cmpmodel.data.eval_inputs`: padded to
a multiple of 8, the same guidance for every method, drawn with the training guidance
settings stored in the checkpoint and ``guidance_seed``), four dense flows are compared with
the stored flow:

- ``model``: the network's prediction (the expectation over the bins), upsampled bilinearly
  to the padded frame and cropped back to it;
- ``zero``: no motion anywhere;
- ``nearest``: each pixel takes the vector of its nearest guidance point;
- ``idw``: inverse-distance weighting of all guidance vectors, weight ``1 / d**2`` (a pixel on
  a guidance point takes its vector).

A sample without any guidance point gives ``nearest`` and ``idw`` zero flow (there is
nothing to propagate), and all its pixels count as far from guidance.

The score is the end-point error ``|predicted - true|`` in px, averaged over every valid pixel
of every sample (pixel-weighted, not per-sample), and over the valid pixels farther than
:data:`FAR_DISTANCE` px from any guidance point, where the guidance alone says least.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from cmpdata.errors import ConfigError, UsageError
from cmpdata.guidance import GuidanceConfig
from cmpdata.store.dataset import ShardDataset
from cmpmodel.data import eval_inputs
from cmpmodel.loss import dense_flow
from cmpmodel.train import guidance_of_map, load_model

FAR_DISTANCE = 16.0  # px: "far from guidance" means strictly farther than this
METHODS = ("model", "zero", "nearest", "idw")
_IDW_CHUNK = 1 << 16  # pixels per block of the (pixels x points) distance matrix


def nearest_flow(sparse: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's nearest guidance vector, float32 (H, W, 2) px, and its Euclidean distance
    to the nearest guidance point, float64 (H, W) px; zero flow and infinite distances when
    the (4, H, W) map ``sparse`` holds no point."""
    h, w = sparse.shape[1:]
    marked = sparse[2] > 0
    if not marked.any():
        return np.zeros((h, w, 2), np.float32), np.full((h, w), np.inf)
    distance, (rows, cols) = distance_transform_edt(~marked, return_indices=True)
    return np.ascontiguousarray(sparse[:2, rows, cols].transpose(1, 2, 0)), distance


def idw_flow(sparse: np.ndarray, power: float = 2.0) -> np.ndarray:
    """Inverse-distance-weighted guidance, float32 (H, W, 2) px, from a (4, H, W) map.

    Every pixel averages all guidance vectors with weights ``1 / d**power`` (``d`` its
    distance to the point, px); a pixel on a point takes that point's vector. Zero flow when
    there is no point.
    """
    h, w = sparse.shape[1:]
    guidance = guidance_of_map(sparse)
    points, vectors = guidance.points.astype(np.float64), guidance.vectors
    out = np.zeros((h * w, 2), np.float32)
    if len(points) == 0:
        return out.reshape(h, w, 2)
    ys, xs = np.divmod(np.arange(h * w), w)
    pixels = np.stack([xs, ys], axis=1).astype(np.float64)
    for start in range(0, h * w, _IDW_CHUNK):
        block = pixels[start : start + _IDW_CHUNK]
        squared = ((block[:, None, :] - points[None, :, :]) ** 2).sum(axis=-1)
        on_point = squared == 0
        with np.errstate(divide="ignore"):
            weights = squared ** (-power / 2)
        # A pixel on a point: that point alone (its weight would be infinite).
        hit = on_point.any(axis=1)
        weights[hit] = on_point[hit]
        out[start : start + len(block)] = (weights @ vectors) / weights.sum(axis=1, keepdims=True)
    return out.reshape(h, w, 2)


def model_flow(
    model: torch.nn.Module, inputs: dict[str, Any], flow_range: float, device: torch.device
) -> np.ndarray:
    """The model's flow for one :func:`eval_inputs` item, float32 (H, W, 2) px at the
    unpadded size; ``flow_range`` is the half-range of its bins (px)."""
    image = inputs["image"][None].to(device)
    sparse = inputs["sparse"][None].to(device)
    with torch.no_grad():
        logits = model(image, sparse)
    flow = dense_flow(logits, image.shape[-2:], flow_range)
    h, w = inputs["size"]
    return flow[0, :, :h, :w].permute(1, 2, 0).cpu().numpy().astype(np.float32)


def evaluate(
    data_dirs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    split: str = "val",
    max_samples: int | None = None,
    guidance_seed: int = 0,
) -> dict[str, Any]:
    """Mean end-point errors (px) of the model and the baselines on ``split`` (module
    docstring).

    Returns ``{"methods": {name: {"epe": ..., "epe_far": ...}}, "num_samples",
    "num_pixels", "num_far_pixels", "far_distance_px", "split", "checkpoint", "step",
    "guidance"}``; ``epe_far`` is NaN when no valid pixel is far from guidance. Raises
    :class:`~cmpdata.errors.CmpDataError` for missing data or a bad checkpoint, and
    ``ValueError`` for an empty split or a bad ``max_samples``.
    """
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be None or >= 1, got {max_samples}")
    model, ckpt = load_model(checkpoint)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    transform = ckpt.get("transform_config", {})
    guidance_config = GuidanceConfig(**transform["guidance"]) if "guidance" in transform else None
    mean_std = {k: transform[k] for k in ("mean", "std") if k in transform}
    dataset = ShardDataset(data_dirs, split=split)
    count = len(dataset) if max_samples is None else min(max_samples, len(dataset))
    if count == 0:
        raise UsageError(f"{', '.join(map(str, data_dirs))}: no {split} samples to evaluate")
    sums = {m: 0.0 for m in METHODS}
    far_sums = {m: 0.0 for m in METHODS}
    num_pixels = num_far = 0
    for index in range(count):
        inputs = eval_inputs(
            dataset[index],
            guidance_config,
            guidance_seed,
            **mean_std,
            multiple=model.stride,
            min_side=model.min_side,
        )
        h, w = inputs["size"]
        sparse = inputs["sparse"].numpy()
        nearest, distance = nearest_flow(sparse)
        flows = {
            "model": model_flow(model, inputs, ckpt["model_config"]["flow_range"], device),
            "zero": np.zeros((h, w, 2), np.float32),
            "nearest": nearest[:h, :w],
            "idw": idw_flow(sparse)[:h, :w],
        }
        truth = inputs["flow"].numpy()[:, :h, :w].transpose(1, 2, 0)
        valid = inputs["valid"].numpy()[:h, :w]
        far = valid & (distance[:h, :w] > FAR_DISTANCE)
        num_pixels += int(valid.sum())
        num_far += int(far.sum())
        for name, flow in flows.items():
            error = np.hypot(*(flow - truth).transpose(2, 0, 1).astype(np.float64))
            sums[name] += float(error[valid].sum())
            far_sums[name] += float(error[far].sum())
    return {
        "methods": {
            m: {
                "epe": sums[m] / num_pixels if num_pixels else float("nan"),
                "epe_far": far_sums[m] / num_far if num_far else float("nan"),
            }
            for m in METHODS
        },
        "num_samples": count,
        "num_pixels": num_pixels,
        "num_far_pixels": num_far,
        "far_distance_px": FAR_DISTANCE,
        "split": split,
        "checkpoint": str(checkpoint),
        "step": ckpt["step"],
        "guidance": transform.get("guidance"),
    }


def format_table(result: dict[str, Any]) -> str:
    """The result of :func:`evaluate` as an aligned text table, one row per method."""
    far = f"EPE > {result['far_distance_px']:g} px from guidance"
    lines = [
        f"{result['num_samples']} {result['split']} samples, {result['num_pixels']} valid "
        f"pixels ({result['num_far_pixels']} far from guidance); checkpoint step {result['step']}",
        f"{'method':<10} {'EPE (px)':>10} {far:>32}",
    ]
    for name, scores in result["methods"].items():
        lines.append(f"{name:<10} {scores['epe']:>10.3f} {scores['epe_far']:>32.3f}")
    return "\n".join(lines)
