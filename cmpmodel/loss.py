"""Flow <-> bins, and the CMP training loss. Pure functions on tensors; no state.

CMP treats each flow component as a classification over ``num_bins`` bins rather than a
regression: the network outputs ``2 * num_bins`` channels per pixel, the first ``num_bins``
scoring the x component and the last ``num_bins`` the y component. Units are pixels of the
*target* flow (the flow the loss compares against), x to the right, y downwards.

The bins split ``[-R, R]`` (``R = flow_range``) into ``n`` equal cells, as the original CMP
code does (its ``DiscreteLoss`` and ``Fuser``): the step is ``2R / n``, bin ``k`` covers
``[-R + k * step, -R + (k + 1) * step)`` and is read back as its centre
``-R + (k + 1/2) * step``. With the paper's ``n = 99, R = 50`` the step is ``100 / 99 ~= 1.01``
px, the centres are ``-49.49, ..., 0 (bin 49), ..., 49.49`` and anything beyond +-50 px falls
into the end bins. Logits below full resolution are up-sampled bilinearly with the corners
aligned, as there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

NUM_BINS = 99  # the paper's bins per flow component
FLOW_RANGE = 50.0  # the paper's half-range of the bins, px


def _check_bins(num_bins: int, flow_range: float) -> None:
    if num_bins < 2:
        raise ValueError(f"num_bins must be at least 2, got {num_bins}")
    if not flow_range > 0:
        raise ValueError(f"flow_range must be positive, got {flow_range}")


def _check_flow(flow: Tensor) -> None:
    if flow.ndim != 4 or flow.shape[1] != 2 or not flow.is_floating_point():
        raise ValueError(
            f"flow must be a float (B, 2, H, W) tensor in px, got {flow.dtype} {tuple(flow.shape)}"
        )


def _split_logits(logits: Tensor) -> tuple[Tensor, Tensor]:
    """The x and y halves of ``(B, 2n, h, w)`` logits, each ``(B, n, h, w)``."""
    if logits.ndim != 4 or logits.shape[1] % 2 or logits.shape[1] < 4:
        raise ValueError(
            f"logits must be (B, 2 * num_bins, h, w) with num_bins >= 2, got {tuple(logits.shape)}"
        )
    return logits.chunk(2, dim=1)


def bin_centres(
    num_bins: int = NUM_BINS, flow_range: float = FLOW_RANGE, device: torch.device | None = None
) -> Tensor:
    """The ``(num_bins,)`` float32 bin centres in px: ``-R + (k + 1/2) * 2R / n``.

    Raises ``ValueError`` for ``num_bins < 2`` or ``flow_range <= 0``.
    """
    _check_bins(num_bins, flow_range)
    # in float64: the middle centre of an odd number of bins is exactly 0
    k = torch.arange(num_bins, dtype=torch.float64)
    return ((2 * k + 1) * flow_range / num_bins - flow_range).float().to(device)


def flow_to_bins(flow: Tensor, num_bins: int = NUM_BINS, flow_range: float = FLOW_RANGE) -> Tensor:
    """Quantise a ``(B, 2, H, W)`` float flow in px into ``(B, 2, H, W)`` long bin indices.

    Each component goes to the bin whose cell holds it, ``floor((v + R) / step)``; values at or
    beyond ``+-R`` go to the end bins (the original clamps to ``R - 0.001`` first). 0 px is
    bin ``(num_bins - 1) / 2`` when ``num_bins`` is odd (49 for 99 bins). Raises
    ``ValueError`` for a malformed flow or bin setting.
    """
    _check_bins(num_bins, flow_range)
    _check_flow(flow)
    position = (flow.clamp(-flow_range, flow_range) + flow_range) * (num_bins / (2 * flow_range))
    return torch.floor(position).long().clamp_(0, num_bins - 1)


def bins_to_flow(
    logits: Tensor, mode: str = "expectation", flow_range: float = FLOW_RANGE
) -> Tensor:
    """Turn ``(B, 2n, h, w)`` logits (x bins, then y bins) into a ``(B, 2, h, w)`` flow in px.

    ``mode="expectation"`` (the default) returns the softmax-weighted mean of the bin centres;
    ``mode="argmax"`` returns the centre of the highest-scoring bin. The number of bins ``n``
    is read from the channel count.

    Why expectation: argmax can only ever answer a bin centre, so it adds quantisation error
    on top of the network's own: with 99 bins over +-50 px the step is ``100 / 99 ~= 1.01``
    px and, for values spread uniformly between centres, the nearest centre is off by a
    quarter step on average (~0.25 px mean absolute error), and the answer jumps from one
    centre to the next. The expectation interpolates between neighbouring bins wherever the
    network hedges between them, is smooth in the logits (differentiable), and is the
    squared-error-optimal estimate under the predicted distribution. Its caveat: for a
    two-peaked distribution (at a motion boundary) it lands between the peaks, where argmax
    picks one of them.

    Raises ``ValueError`` for malformed logits or an unknown ``mode``.
    """
    x_logits, y_logits = _split_logits(logits)
    num_bins = x_logits.shape[1]
    centres = bin_centres(num_bins, flow_range, device=logits.device).view(1, num_bins, 1, 1)
    if mode == "expectation":
        components = [
            (part.float().softmax(dim=1) * centres).sum(dim=1) for part in (x_logits, y_logits)
        ]
    elif mode == "argmax":
        components = [centres.view(-1)[part.argmax(dim=1)] for part in (x_logits, y_logits)]
    else:
        raise ValueError(f"unknown bins_to_flow mode {mode!r}; choose one of: argmax, expectation")
    return torch.stack(components, dim=1)


def dense_flow(logits: Tensor, size: tuple[int, int], flow_range: float = FLOW_RANGE) -> Tensor:
    """The ``(B, 2, H, W)`` flow in px that ``(B, 2n, h, w)`` logits predict at ``size``
    ``(H, W)``: :func:`bins_to_flow` (expectation) at the logits' resolution, then up-sampled
    bilinearly with the corners aligned, as the original's evaluation does."""
    flow = bins_to_flow(logits.float(), flow_range=flow_range)
    if tuple(flow.shape[-2:]) == tuple(size):
        return flow
    return F.interpolate(flow, size=tuple(size), mode="bilinear", align_corners=True)


def _upsampled(logits: Tensor, height: int, width: int, stride: int) -> Tensor:
    """``logits`` bilinearly upsampled to ``(height, width)`` (``align_corners=True``), at
    every ``stride``-th row and column from ``stride // 2`` only."""
    if stride == 1:
        return F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=True)
    # grid_sample's normalised coordinate of pixel i of n, corners aligned, is 2i / (n - 1) - 1:
    # it samples exactly what interpolate computes there.
    offset = stride // 2
    ys = 2 * torch.arange(offset, height, stride, device=logits.device) / max(height - 1, 1) - 1
    xs = 2 * torch.arange(offset, width, stride, device=logits.device) / max(width - 1, 1) - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).to(logits.dtype)
    grid = grid.expand(logits.shape[0], *grid.shape)
    return F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=True)


def cmp_loss(
    logits: Tensor,
    flow: Tensor,
    valid: Tensor | None = None,
    flow_range: float = FLOW_RANGE,
    stride: int = 1,
) -> Tensor:
    """The CMP loss: per-component cross-entropy over flow bins, summed, mean over valid pixels.

    ``logits`` ``(B, 2n, h, w)`` (x bins, then y bins; any resolution, usually stride 8) are
    first upsampled bilinearly (corners aligned) to the target's ``(H, W)`` (as the paper does),
    then each pixel contributes ``CE(x logits, x bin) + CE(y logits, y bin)`` in nats, the
    targets being ``flow_to_bins(flow, n, flow_range)`` of the ``(B, 2, H, W)`` flow in px. The
    result is the mean of that per-pixel sum over the pixels where ``valid`` ``(B, H, W)`` bool
    is True (``None``: every pixel), across the whole batch, so every valid pixel weighs the
    same whatever its image. With no valid pixel at all the loss is 0 (and its gradient zero). A
    random-init network starts near ``2 * ln(n)`` (9.19 for 99 bins).

    ``stride`` > 1 scores a subset of the pixels instead: rows and columns ``stride // 2``,
    ``stride // 2 + stride``, ..., each with exactly the logits the full-resolution upsampling
    gives it (sampled there with ``grid_sample``, not upsampled everywhere). Nearly all of
    the loss's cost is upsampling 2n channels and their softmax at every pixel, so ``stride``
    4 makes it about 16x cheaper; it matters on a CPU, where at full resolution the loss
    costs several times the tiny model's forward and backward passes (at a 128 px crop, batch
    8, one thread: a step took 1.1 s with stride 1 and 0.41 s with stride 4). 1 (every pixel)
    is the paper's.

    Raises ``ValueError`` for malformed or mismatched shapes or a ``stride`` under 1.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    x_logits, _ = _split_logits(logits)
    num_bins = x_logits.shape[1]
    _check_flow(flow)
    batch, _, height, width = flow.shape
    if logits.shape[0] != batch:
        raise ValueError(
            f"logits {tuple(logits.shape)} and flow {tuple(flow.shape)} differ in batch size"
        )
    if valid is not None and (valid.dtype != torch.bool or valid.shape != (batch, height, width)):
        raise ValueError(
            f"valid must be a bool (B, H, W) = {(batch, height, width)} tensor, got "
            f"{valid.dtype} {tuple(valid.shape)}"
        )
    # In float32: a half-precision softmax over 99 bins rounds the small probabilities away.
    logits = _upsampled(logits.float(), height, width, stride)
    if stride > 1:
        offset = stride // 2
        flow = flow[:, :, offset::stride, offset::stride]
        valid = None if valid is None else valid[:, offset::stride, offset::stride]
    target = flow_to_bins(flow, num_bins, flow_range)
    x_logits, y_logits = logits.chunk(2, dim=1)
    per_pixel = F.cross_entropy(x_logits, target[:, 0], reduction="none") + F.cross_entropy(
        y_logits, target[:, 1], reduction="none"
    )
    if valid is None:
        return per_pixel.mean()
    return (per_pixel * valid).sum() / valid.sum().clamp(min=1)
