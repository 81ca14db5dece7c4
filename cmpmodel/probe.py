"""A linear probe of a CMP image encoder: how well one 1x1 convolution on its features tells
moving objects from the background, against the same encoder at random initialisation.

The labels are the object ids that synthetic clips store with their samples
(:mod:`cmpdata.synth.truth`): a pixel is "object" when the layer visible there in the first
frame is not the background (``objects > 0``). Real footage has none, so the probe runs on
synthetic clips extracted with their descriptions.

For each encoder, the CMP-trained one of the checkpoint and one of the same architecture built
from the checkpoint's model configuration with a fixed seed (nothing trained):

1. **Inputs.** Each frame normalised as the model was trained (the checkpoint's mean and std)
   and padded at the bottom and right to a multiple of the encoder's stride, as
   :func:`cmpmodel.data.eval_inputs` pads (the padding never scored).
2. **Batch norm** (:data:`BN_RULE`): the running statistics of every BN layer are recomputed on
   the probe's training frames, the same way for both encoders: momentum ``None`` (the
   cumulative average), statistics reset, the training frames passed once, one frame a batch,
   under ``no_grad`` with the BN layers in train mode (dropout stays off), then back to eval.
   A random encoder's initial statistics (mean 0, variance 1) do not fit its activations, and
   a CMP encoder's were gathered on other frames; both now describe the probe's frames.
3. **Features.** The frozen encoder's stride-8 map of every training and validation frame,
   computed once and cached.
4. **Head** (:func:`fit_head`): one 1x1 ``Conv2d`` (features -> 2 classes), trained with Adam
   on the cached training cells for a fixed number of steps, cross-entropy against the labels
   downsampled to the feature grid by :data:`LABEL_RULE` (the majority of each 8x8 block).
5. **Score** (:data:`SCORE_RULE`): on the validation split (other clips), the head's logits
   up-sampled bilinearly to the padded frame and cropped back to it, the arg-max class at
   every frame pixel; intersection and union of each class summed over the whole split, then
   IoU per class and their mean (mIoU, %).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmpdata.errors import ConfigError, UsageError
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import ShardError
from cmpdata.synth.truth import read_truth
from cmpmodel.data import RGB_MEAN, RGB_STD, cut_window, padded_size
from cmpmodel.model import ImageEncoder, ModelConfig, build_model
from cmpmodel.train import load_model

CLASSES = ("background", "object")
BATCH_CELLS = 4096  # feature cells (one per 8x8 block) per step of the head
STEPS = 500  # Adam steps of the head
LR = 0.01  # Adam learning rate of the head
BN_RULE = (
    "BN running statistics recomputed on the probe's training frames for both encoders "
    "(momentum None, reset, one pass in train mode under no_grad, dropout off; then eval)"
)
LABEL_RULE = (
    "a feature cell's label is the majority of its 8x8 block of frame pixels (padding left "
    "out; a tie is background)"
)
SCORE_RULE = (
    "logits up-sampled bilinearly (align_corners=False) to the padded frame, cropped to it; "
    "IoU per class over every val pixel, mean of the two"
)
_NO_OBJECTS = "no object ids (probe needs synthetic clips extracted with their descriptions)"


@dataclass(frozen=True, eq=False)
class ProbeFrame:
    """One frame of the probe: the encoder's input and the truth at every frame pixel."""

    image: Tensor  # float32 (3, H', W'): normalised RGB, padded to multiples of the stride
    labels: np.ndarray  # bool (H, W): True on a moving object, at the unpadded size


def load_frames(
    data_dirs: Sequence[str | Path],
    split: str,
    stride: int,
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
    max_samples: int | None = None,
) -> list[ProbeFrame]:
    """The first ``max_samples`` (default: all) frames of ``split`` over ``data_dirs``.

    Raises :class:`UsageError` naming the directory when a sample holds no object ids, or
    when the split holds no sample; :class:`ShardError` naming the shard when a sample's
    ground truth is damaged (incomplete, or not of the frame's size).
    """
    frames: list[ProbeFrame] = []
    for root in data_dirs:
        dataset = ShardDataset(root, split=split)
        for index in range(len(dataset)):
            if max_samples is not None and len(frames) >= max_samples:
                break
            sample = dataset[index]
            h, w = sample.image.shape[:2]
            try:
                truth = read_truth(sample.extras, (h, w))
            except ValueError as exc:
                raise ShardError(dataset.locate(index)[0], f"{sample.sample_id}: {exc}") from None
            if truth is None:
                raise UsageError(f"{root}: {_NO_OBJECTS}")
            padded_h, padded_w = padded_size(h, w, stride)
            image, _, _ = cut_window(sample, 0, 0, padded_h, padded_w, mean, std)
            frames.append(ProbeFrame(torch.from_numpy(image), truth.objects > 0))
    if not frames:
        raise UsageError(f"{', '.join(map(str, data_dirs))}: no {split} samples to probe")
    return frames


def cell_labels(labels: np.ndarray, stride: int) -> np.ndarray:
    """The class of each ``stride`` x ``stride`` block of a bool (H, W) label map padded at
    the bottom and right to multiples of ``stride``: int64 (ceil(H/s), ceil(W/s)), 1 where
    more than half of the block's frame pixels are object, 0 otherwise (:data:`LABEL_RULE`)."""
    h, w = labels.shape
    rows, cols = -(-h // stride), -(-w // stride)
    objects = np.zeros((rows * stride, cols * stride), np.int64)
    pixels = np.zeros_like(objects)
    objects[:h, :w] = labels
    pixels[:h, :w] = 1
    blocks = (rows, stride, cols, stride)
    return (2 * objects.reshape(blocks).sum((1, 3)) > pixels.reshape(blocks).sum((1, 3))).astype(
        np.int64
    )


def confusion(predicted: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The 2 x 2 confusion counts, int64 (row: true class, column: predicted), of two bool
    or 0/1 maps of the same shape; ``ValueError`` if the shapes differ."""
    if predicted.shape != labels.shape:
        raise ValueError(f"prediction {predicted.shape} and labels {labels.shape} differ in shape")
    codes = 2 * labels.astype(np.int64).ravel() + predicted.astype(np.int64).ravel()
    return np.bincount(codes, minlength=4).reshape(2, 2)


def iou_scores(counts: np.ndarray) -> dict[str, float]:
    """``{"miou", "iou_background", "iou_object"}`` in % from summed :func:`confusion` counts.

    A class's IoU is its intersection over its union, both summed over every scored pixel; a
    class absent from both the labels and the prediction has no IoU (NaN) and is left out of
    the mean.
    """
    intersection = np.diag(counts).astype(np.float64)
    union = counts.sum(0) + counts.sum(1) - intersection
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, 100.0 * intersection / union, np.nan)
    defined = iou[~np.isnan(iou)]
    return {
        "miou": float(defined.mean()) if len(defined) else float("nan"),
        **{f"iou_{name}": float(v) for name, v in zip(CLASSES, iou, strict=True)},
    }


def recompute_bn_stats(encoder: nn.Module, images: Iterable[Tensor]) -> int:
    """Replace the running statistics of every BN layer of ``encoder`` by their average over
    ``images`` (each (3, H, W), one a batch) as :data:`BN_RULE` says; returns the number of BN
    layers. ``encoder`` is left in eval mode."""
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    encoder.eval()
    for norm in norms:
        norm.momentum = None
        norm.reset_running_stats()
        norm.train()
    if norms:
        device = next(encoder.parameters()).device
        with torch.no_grad():
            for image in images:
                encoder(image[None].to(device))
    encoder.eval()
    return len(norms)


def encode(encoder: ImageEncoder, frames: Sequence[ProbeFrame]) -> list[Tensor]:
    """The frozen encoder's output (C, H'/s, W'/s) of every frame, in eval mode; raises
    ``ValueError`` when the encoder's map is not the padded frame's size over its stride."""
    encoder.eval()
    device = next(encoder.parameters()).device
    features = []
    with torch.no_grad():
        for frame in frames:
            out = encoder(frame.image[None].to(device))[0]
            expected = tuple(side // encoder.stride for side in frame.image.shape[1:])
            if tuple(out.shape[1:]) != expected:
                raise ValueError(
                    f"encoder gives {tuple(out.shape)} for an image {tuple(frame.image.shape)}, "
                    f"expected (C, {expected[0]}, {expected[1]}) at stride {encoder.stride}"
                )
            features.append(out)
    return features


def fit_head(
    features: Tensor, labels: Tensor, steps: int, lr: float, seed: int = 0
) -> tuple[nn.Conv2d, float]:
    """A 1x1 ``Conv2d`` (C -> 2) fitted to ``features`` (N, C) of ``labels`` (N,) int64 (0, 1).

    Adam at ``lr``, ``steps`` steps of cross-entropy, each on :data:`BATCH_CELLS` cells drawn
    with replacement from a generator seeded with ``seed`` (all cells when there are fewer).
    The head starts at zero (a convex problem: no init to seed). The features are standardised
    per channel while fitting and the standardisation is folded into the returned convolution,
    which takes raw features: encoders whose features differ in scale get the same optimiser.
    Returns the head (on the features' device, no gradients) and the mean loss over the last
    tenth of the steps. Raises ``ValueError`` for mismatched shapes or labels outside 0, 1.
    """
    if features.ndim != 2 or labels.shape != features.shape[:1]:
        raise ValueError(
            f"features must be (N, C) and labels (N,), got {tuple(features.shape)} and "
            f"{tuple(labels.shape)}"
        )
    if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) <= 1:
        raise ValueError("labels must be 0 (background) or 1 (object)")
    mean = features.mean(0)
    scale = features.std(0).clamp_min(1e-6)
    standard = (features - mean) / scale
    linear = nn.Linear(features.shape[1], len(CLASSES)).to(features.device)
    nn.init.zeros_(linear.weight)
    nn.init.zeros_(linear.bias)
    optimizer = torch.optim.Adam(linear.parameters(), lr=lr)
    generator = torch.Generator(device=features.device).manual_seed(seed)
    whole = len(labels) <= BATCH_CELLS
    losses = []
    for _ in range(steps):
        if whole:
            x, y = standard, labels
        else:
            pick = torch.randint(
                len(labels), (BATCH_CELLS,), generator=generator, device=features.device
            )
            x, y = standard[pick], labels[pick]
        loss = F.cross_entropy(linear(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    head = nn.Conv2d(features.shape[1], len(CLASSES), 1).to(features.device)
    with torch.no_grad():
        # w . (f - m) / s + b  =  (w / s) . f + (b - w . (m / s))
        weight = linear.weight / scale
        head.weight.copy_(weight[:, :, None, None])
        head.bias.copy_(linear.bias - weight @ mean)
    head.requires_grad_(False)
    tail = losses[-max(1, steps // 10) :]
    return head, float(np.mean(tail))


def predict(head: nn.Conv2d, features: Tensor, size: tuple[int, int], stride: int) -> np.ndarray:
    """The head's class, bool (H, W) (True: object), at every pixel of a frame of ``size``
    whose padded image gave ``features`` (C, h, w) at ``stride``: the logits up-sampled
    bilinearly to (stride h, stride w), cropped to ``size`` (:data:`SCORE_RULE`)."""
    h, w = features.shape[1:]
    with torch.no_grad():
        logits = head(features[None])
        full = F.interpolate(
            logits, size=(stride * h, stride * w), mode="bilinear", align_corners=False
        )
    return (full[0, 1] > full[0, 0])[: size[0], : size[1]].cpu().numpy()


def probe_encoder(
    encoder: ImageEncoder,
    train_frames: Sequence[ProbeFrame],
    val_frames: Sequence[ProbeFrame],
    steps: int,
    lr: float,
    seed: int = 0,
) -> dict[str, float]:
    """Steps 2 to 5 of the module docstring for one encoder (left with recomputed BN
    statistics, in eval mode): ``{"miou", "iou_background", "iou_object"}`` (%) on
    ``val_frames`` and ``"train_loss"``, the head's final cross-entropy."""
    recompute_bn_stats(encoder, (f.image for f in train_frames))
    stride = encoder.stride
    cells, targets = [], []
    for frame, feature in zip(train_frames, encode(encoder, train_frames), strict=True):
        labelled = torch.from_numpy(cell_labels(frame.labels, stride)).to(feature.device)
        cells.append(feature.flatten(1).T)
        targets.append(labelled.flatten())
    head, loss = fit_head(torch.cat(cells), torch.cat(targets), steps, lr, seed)
    counts = np.zeros((2, 2), np.int64)
    for frame, feature in zip(val_frames, encode(encoder, val_frames), strict=True):
        counts += confusion(predict(head, feature, frame.labels.shape, stride), frame.labels)
    return {**iou_scores(counts), "train_loss": loss}


def random_encoder(model_config: dict[str, Any], seed: int) -> ImageEncoder:
    """The image encoder of ``build_model(ModelConfig(**model_config))`` initialised after
    ``torch.manual_seed(seed)``, without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(ModelConfig(**model_config)).image_encoder


def probe(
    data_dirs: str | Path | Sequence[str | Path],
    checkpoint: str | Path,
    steps: int = STEPS,
    lr: float = LR,
    max_samples: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """The linear probe of the module docstring: the checkpoint's encoder against the same
    architecture at random init (built with ``seed``), head trained on the ``train`` split of
    ``data_dirs`` and scored on its ``val`` split, at most ``max_samples`` frames of each.

    Returns ``{"encoders": {"cmp": scores, "random": scores}, "checkpoint", "step", "arch",
    "steps", "lr", "seed", "batch_cells", "num_train_samples", "num_val_samples",
    "num_train_pixels", "num_train_cells", "num_val_pixels", "object_fraction_train",
    "object_fraction_val", "bn_rule", "label_rule", "score_rule"}``, scores as
    :func:`probe_encoder` gives them. Raises :class:`ConfigError` for a bad ``steps``, ``lr``
    or ``max_samples``, :class:`~cmpmodel.train.CheckpointError` for a bad checkpoint,
    :class:`UsageError` for data without object ids or an empty split (all before any work),
    and :class:`ShardError` for a damaged shard.
    """
    if steps < 1:
        raise ConfigError(f"steps must be >= 1, got {steps}")
    if not lr > 0:
        raise ConfigError(f"lr must be positive, got {lr}")
    if max_samples is not None and max_samples < 1:
        raise ConfigError(f"max_samples must be None or >= 1, got {max_samples}")
    dirs = [data_dirs] if isinstance(data_dirs, (str, Path)) else list(data_dirs)
    model, ckpt = load_model(checkpoint)
    transform = ckpt.get("transform_config", {})
    mean_std = {k: transform[k] for k in ("mean", "std") if k in transform}
    stride = model.stride
    train_frames = load_frames(dirs, "train", stride, **mean_std, max_samples=max_samples)
    val_frames = load_frames(dirs, "val", stride, **mean_std, max_samples=max_samples)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    encoders = {
        "cmp": model.image_encoder,
        "random": random_encoder(ckpt["model_config"], seed),
    }
    scores = {}
    for name, encoder in encoders.items():
        encoder.to(device).requires_grad_(False)
        scores[name] = probe_encoder(encoder, train_frames, val_frames, steps, lr, seed)
        encoder.cpu()
    train_pixels = sum(f.labels.size for f in train_frames)
    val_pixels = sum(f.labels.size for f in val_frames)
    return {
        "encoders": scores,
        "checkpoint": str(checkpoint),
        "step": ckpt["step"],
        "arch": ckpt["model_config"]["arch"],
        "steps": steps,
        "lr": lr,
        "seed": seed,
        "batch_cells": BATCH_CELLS,
        "num_train_samples": len(train_frames),
        "num_val_samples": len(val_frames),
        "num_train_pixels": train_pixels,
        "num_train_cells": sum(cell_labels(f.labels, stride).size for f in train_frames),
        "num_val_pixels": val_pixels,
        "object_fraction_train": sum(int(f.labels.sum()) for f in train_frames) / train_pixels,
        "object_fraction_val": sum(int(f.labels.sum()) for f in val_frames) / val_pixels,
        "bn_rule": BN_RULE,
        "label_rule": LABEL_RULE,
        "score_rule": SCORE_RULE,
    }


def format_probe(result: dict[str, Any]) -> str:
    """The result of :func:`probe` as an aligned text table, one row per encoder."""
    names = {"cmp": f"CMP (step {result['step']})", "random": "random init"}
    lines = [
        f"linear probe of the {result['arch']} encoder: {result['num_train_samples']} train "
        f"frames ({result['num_train_cells']} cells), {result['num_val_samples']} val frames "
        f"({result['num_val_pixels']} px, {100 * result['object_fraction_val']:.1f} % object); "
        f"1x1 conv head, Adam lr {result['lr']:g}, {result['steps']} steps, seed {result['seed']}",
        f"{result['bn_rule']}",
        f"{'encoder':<16} {'mIoU %':>8} {'IoU bg %':>9} {'IoU object %':>13}",
    ]
    for key, scores in result["encoders"].items():
        lines.append(
            f"{names.get(key, key):<16} {scores['miou']:>8.1f} {scores['iou_background']:>9.1f} "
            f"{scores['iou_object']:>13.1f}"
        )
    return "\n".join(lines)
