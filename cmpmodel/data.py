"""Model inputs from stored samples: crop, flip, guidance and normalisation.

A :class:`~cmpdata.store.shards.StoredSample` (full frame, flow, mask, stored guidance) becomes
a dict of tensors the model and the loss read (REFERENCE.md, "Model" and "Training")::

    "image"      float32 (3, S, S)  RGB, (pixel - mean) / std on the 0-255 scale
    "sparse"     float32 (4, S, S)  guidance: flow x, y (px) at the points, 0 elsewhere;
                                    then the mask of the points, twice
    "flow"       float32 (2, S, S)  target flow x, y in pixels
    "valid"      bool (S, S)        True where the target is trusted: the stored mask (all
                                    True without one), False on padding
    "sample_id"  str                (the default collate makes a list of them)

Three ways to build them:

- :class:`TrainTransform`: a random S x S crop and a random horizontal flip, then guidance
  drawn again on the crop with the configured sampler, as the paper did. Every draw comes from
  ``sample_rng(seed, sample_id, epoch)``: a sample gets the same crop, flip and guidance at the
  same epoch whatever the worker or the order, and new ones the next epoch.
- :class:`EvalTransform`: the centre S x S crop, no flip, guidance from
  ``sample_rng(seed, sample_id)``: the same inputs every epoch (a validation loss).
- :func:`eval_inputs`: the whole frame, padded to a multiple of 8, with guidance drawn on the
  unpadded flow from ``sample_rng(seed, sample_id)``: every method evaluated with the same seed
  and guidance settings sees the same points.

Padding: where a window passes the bottom or right edge of the frame (a frame smaller than the
crop, or :func:`eval_inputs` rounding up to a multiple of 8), the image is 0 after
normalisation (the mean colour), the flow 0 and "valid" False; no guidance point lies there.
A flip mirrors the whole window, so a flipped crop has its padding on the left.

The training loader (:func:`make_train_loader`) carries the same inputs packed, and the trainer
unpacks them on its device with :func:`expand` (the tensors above, bit for bit: a test
compares). The image travels as 8-bit and the guidance as its points, and both the image and
the flow keep the frame's channels-last layout, so a worker neither normalises, transposes nor
draws the 4-channel map, and a sample takes 1.2 MB from the host to the device instead of
3.7 MB at 320 px. A packed item (:meth:`TrainTransform.pack`)::

    "image"      uint8 (S, S, 3)    RGB 0-255, 0 on padding
    "extent"     int64 (3,)         rows and columns of the frame inside the window, and the
                                    window column where it starts (the rest is padding)
    "guide"      float32 (K, 4)     x, y (whole pixels of the window), then the vector x, y
    "flow"       float32 (S, S, 2)  target flow x, y in pixels
    "valid", "sample_id"            as above

and a packed batch (:func:`collate`) stacks them, except "guide": every item's points in one
(N, 4) array, with "guide_item" int64 (N,), the item each point belongs to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from cmpdata.errors import ConfigError
from cmpdata.guidance import (
    GuidanceConfig,
    GuidanceSampler,
    build_sampler,
    guidance_pixels,
    rasterize,
)
from cmpdata.records import Guidance
from cmpdata.seeding import sample_rng
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import ShardError, StoredSample

RGB_MEAN = (123.675, 116.28, 103.53)
RGB_STD = (58.395, 57.12, 57.375)
#: the encoders' output stride: crops are multiples of it, eval_inputs pads frames to one
STRIDE = 8


@dataclass(frozen=True)
class TrainTransformConfig:
    """How stored samples become training inputs; the defaults are the paper's ResNet-50 ones.

    The AlexNet setting is ``TrainTransformConfig(crop=384, guidance=GuidanceConfig.alexnet())``.
    ``guidance`` may be given as a dict of :class:`GuidanceConfig` fields and ``mean`` / ``std``
    as lists, so ``TrainTransformConfig(**dataclasses.asdict(config))`` (a config saved in a
    checkpoint or read from YAML) builds the same config. Raises ``ValueError`` for a crop that
    is not a positive multiple of 8 (the model's stride), a mean or std that is not three
    numbers, or a std that is not positive.
    """

    crop: int = 320  # side of the square crop, px, multiple of 8 (paper: 320 ResNet, 384 AlexNet)
    flip: bool = True  # mirror half of the crops left-right (flow x negated, guidance redrawn)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig.resnet)  # redraw settings
    use_stored_guidance: bool = False  # crop/mirror the extraction's guidance instead of redrawing
    # > 0: instead of ``guidance``, k guides drawn uniformly among a crop's valid pixels, k
    # uniform in 1..random_guides per crop (a model for a few guides; the paper's sampler: 0)
    random_guides: int = 0
    seed: int = 0  # with the sample id and the epoch, seeds every crop, flip and guidance draw
    mean: tuple[float, float, float] = RGB_MEAN  # RGB mean subtracted, 0-255 scale
    std: tuple[float, float, float] = RGB_STD  # RGB standard deviation divided by, 0-255 scale

    def __post_init__(self) -> None:
        if isinstance(self.guidance, Mapping):
            object.__setattr__(self, "guidance", GuidanceConfig(**self.guidance))
        if not isinstance(self.guidance, GuidanceConfig):
            raise ConfigError(f"guidance must be a GuidanceConfig, got {type(self.guidance)}")
        if self.crop < STRIDE or self.crop % STRIDE:
            raise ConfigError(f"crop must be a positive multiple of {STRIDE} px, got {self.crop}")
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ConfigError(f"{name} must hold 3 values (R, G, B), got {values}")
            object.__setattr__(self, name, values)
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {self.std}")
        if self.random_guides < 0:
            raise ConfigError(f"random_guides must be >= 0, got {self.random_guides}")


def valid_mask(sample: StoredSample) -> np.ndarray:
    """The pixels whose stored flow is trusted, bool (H, W): all of them without a mask."""
    return np.ones(sample.flow.shape[:2], bool) if sample.valid is None else sample.valid


def padded_size(h: int, w: int, multiple: int, min_side: int = 1) -> tuple[int, int]:
    """(H, W) rounded up to multiples of ``multiple`` px, each at least ``min_side``."""
    return max(-(-h // multiple) * multiple, min_side), max(-(-w // multiple) * multiple, min_side)


def normalise(
    images: torch.Tensor,
    extents: torch.Tensor,
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
) -> torch.Tensor:
    """float32 (B, 3, H, W) ``(image - mean) / std`` of uint8 images (B, H, W, 3), 0 outside
    each image's ``extents`` (B, 3): rows, columns and first column of the frame in the window
    (the padding of the module docstring). The arithmetic is float32 on any device, so it gives
    the same bits on the CPU and on a GPU."""
    device = images.device
    shape = (1, 3, 1, 1)
    mean_t = torch.tensor(tuple(mean), dtype=torch.float32, device=device).view(shape)
    std_t = torch.tensor(tuple(std), dtype=torch.float32, device=device).view(shape)
    out = (images.permute(0, 3, 1, 2).contiguous().float() - mean_t) / std_t
    rows, cols, first = (e.view(-1, 1, 1) for e in extents.unbind(1))
    ys = torch.arange(out.shape[2], device=device).view(1, -1, 1)
    xs = torch.arange(out.shape[3], device=device).view(1, 1, -1)
    inside = (ys < rows) & (xs >= first) & (xs < first + cols)
    return torch.where(inside[:, None], out, torch.zeros((), device=device))


def _window(
    sample: StoredSample, top: int, left: int, height: int, width: int, flip: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, int, int]]:
    """:func:`cut_window` without the normalisation: the image uint8 (height, width, 3), 0 on
    padding; the flow; the validity; the extent (rows, columns, first column) of the frame."""
    h, w = sample.flow.shape[:2]
    if sample.image.shape[:2] != (h, w) or (
        sample.valid is not None and sample.valid.shape != (h, w)
    ):
        raise ValueError(
            f"{sample.sample_id}: image {sample.image.shape}, flow {sample.flow.shape} and "
            f"valid {None if sample.valid is None else sample.valid.shape} sizes disagree"
        )
    if sample.image.dtype != np.uint8:
        raise ValueError(f"{sample.sample_id}: image is {sample.image.dtype}, expected uint8")
    if not (0 <= top < h and 0 <= left < w):
        raise ValueError(f"{sample.sample_id}: window at ({top}, {left}) outside {h} x {w}")
    rows, cols = min(height, h - top), min(width, w - left)
    source = np.s_[top : top + rows, left : left + cols]
    # OpenCV mirrors several times faster than numpy's reversed copies.
    window = sample.image[source]
    first = width - cols if flip else 0  # a mirrored window has its padding on the left
    if (rows, cols) == (height, width):
        image = cv2.flip(window, 1) if flip else window.copy()
    else:
        image = np.zeros((height, width, 3), np.uint8)
        image[:rows, first : first + cols] = cv2.flip(window, 1) if flip else window
    flow = sample.flow[source]
    valid = np.ones((rows, cols), np.bool_) if sample.valid is None else sample.valid[source]
    if (rows, cols) != (height, width):
        flow, valid = (
            np.pad(a, [(0, height - rows), (0, width - cols)] + [(0, 0)] * (a.ndim - 2))
            for a in (flow, valid)
        )
    if flip:
        flow, valid = cv2.flip(flow, 1), valid[:, ::-1]
        flow[..., 0] *= -1
    elif (rows, cols) == (height, width):  # views of the sample, copied (padding made copies)
        flow, valid = flow.copy(), valid.copy()
    flow, valid = np.ascontiguousarray(flow, np.float32), np.ascontiguousarray(valid, np.bool_)
    return image, flow, valid, (rows, cols, first)


def cut_window(
    sample: StoredSample,
    top: int,
    left: int,
    height: int,
    width: int,
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
    flip: bool = False,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``height`` x ``width`` window of ``sample`` whose top-left pixel is (``top``, ``left``),
    mirrored left-right with ``flip`` (the flow's x negated).

    Returns the normalised image float32 (3, height, width), channels first as the model reads
    it, the flow float32 (height, width, 2) in pixels and the validity bool (height, width).
    Where the window passes the bottom or right edge of the frame it is padded (image 0, flow
    0, valid False), before the mirroring: a mirrored window has its padding on the left (and
    its padded flow x is -0.0). Raises ``ValueError`` naming the sample when its image is not
    8-bit, its image, flow and mask sizes disagree or the window starts outside it.
    """
    image, flow, valid, extent = _window(sample, top, left, height, width, flip)
    normalised = normalise(torch.from_numpy(image)[None], torch.tensor([extent]), mean, std)
    return normalised[0].numpy(), flow, valid


def window_guidance(
    guidance: Guidance, top: int, left: int, rows: int, cols: int, flip_width: int | None
) -> Guidance:
    """Stored ``guidance`` in the coordinates of a window at (``top``, ``left``).

    Points (rounded to pixels, as :func:`rasterize` does) outside the ``rows`` x ``cols`` part
    of the frame the window covers are dropped. With ``flip_width`` (the window's width) the
    points are mirrored and the vectors' x negated, as :func:`cut_window` does to the flow.
    """
    xy = np.rint(guidance.points) - np.float32([left, top])
    keep = (xy[:, 0] >= 0) & (xy[:, 0] < cols) & (xy[:, 1] >= 0) & (xy[:, 1] < rows)
    points, vectors = xy[keep], guidance.vectors[keep].copy()
    if flip_width is not None:
        points[:, 0] = flip_width - 1 - points[:, 0]
        vectors[:, 0] *= -1
    return Guidance(points.astype(np.float32), vectors.astype(np.float32))


def model_inputs(
    sample_id: str, image: np.ndarray, flow: np.ndarray, valid: np.ndarray, guidance: Guidance
) -> dict[str, Any]:
    """The dict of tensors described in the module docstring, from the (3, H, W) image of
    :func:`cut_window` and (H, W, ...) arrays."""
    return {
        "image": torch.from_numpy(image),
        "sparse": torch.from_numpy(rasterize(guidance, valid.shape)),
        "flow": torch.from_numpy(np.ascontiguousarray(flow.transpose(2, 0, 1))),
        "valid": torch.from_numpy(np.ascontiguousarray(valid)),
        "sample_id": sample_id,
    }


def guidance_at(flow: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> Guidance:
    """The guidance of the pixels (``xs``, ``ys``): their vectors of ``flow`` (H, W, 2) px."""
    points = np.stack([xs, ys], axis=1).astype(np.float32)
    return Guidance(points, np.ascontiguousarray(flow[ys, xs], dtype=np.float32))


def random_guidance(
    flow: np.ndarray, valid: np.ndarray, count: int, rng: np.random.Generator
) -> Guidance:
    """``count`` distinct pixels drawn uniformly among the ``valid`` ones (all of them when
    fewer), each with its vector of ``flow`` (float32 (H, W, 2) px)."""
    ys, xs = np.nonzero(valid)
    chosen = np.sort(rng.choice(len(ys), size=min(count, len(ys)), replace=False))
    return guidance_at(flow, ys[chosen], xs[chosen])


def packed_item(
    sample_id: str,
    image: np.ndarray,
    flow: np.ndarray,
    valid: np.ndarray,
    extent: tuple[int, int, int],
    guidance: Guidance,
) -> dict[str, Any]:
    """A packed item (module docstring) from :func:`_window`'s arrays and the guidance.

    Points are rounded to pixels and checked as :func:`rasterize` does; of two on one pixel
    only the later is kept, as its map would hold only the later one's vector.
    """
    xs, ys = guidance_pixels(guidance, valid.shape)
    pixel = ys * valid.shape[1] + xs
    _, last = np.unique(pixel[::-1], return_index=True)
    keep = np.sort(len(pixel) - 1 - last)
    guide = np.empty((len(keep), 4), np.float32)
    guide[:, 0], guide[:, 1], guide[:, 2:] = xs[keep], ys[keep], guidance.vectors[keep]
    return {
        "image": torch.from_numpy(image),
        "extent": torch.tensor(extent),
        "guide": guide,
        "flow": torch.from_numpy(flow),
        "valid": torch.from_numpy(valid),
        "sample_id": sample_id,
    }


def pack_inputs(
    sample: StoredSample,
    config: TrainTransformConfig,
    top: int,
    left: int,
    flip: bool,
    rng: np.random.Generator,
    sampler: GuidanceSampler,
) -> dict[str, Any]:
    """The packed inputs of the ``config.crop`` square window at (``top``, ``left``), mirrored
    when ``flip``; the guidance is drawn on the window with ``sampler`` and ``rng`` (invalid and
    padded pixels excluded), or at random (``config.random_guides``), or is the stored one
    when ``config.use_stored_guidance``."""
    size = config.crop
    image, flow, valid, extent = _window(sample, top, left, size, size, flip)
    if config.use_stored_guidance:
        rows, cols = extent[:2]
        guidance = window_guidance(sample.guidance, top, left, rows, cols, size if flip else None)
    elif config.random_guides:
        count = int(rng.integers(1, config.random_guides + 1))
        guidance = random_guidance(flow, valid, count, rng)
    else:
        guidance = sampler(flow, rng, valid)
    return packed_item(sample.sample_id, image, flow, valid, extent, guidance)


def expand(
    batch: Mapping[str, Any],
    device: torch.device | str = "cpu",
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
) -> dict[str, Any]:
    """The model inputs (module docstring, with a batch dimension) of a packed batch, on
    ``device``: the image normalised with ``mean`` and ``std``, the guidance drawn into its
    4-channel map. Host tensors are copied without blocking (pinned ones overlap the copy)."""
    device = torch.device(device)

    def moved(name: str) -> torch.Tensor:
        return batch[name].to(device, non_blocking=True)

    image = normalise(moved("image"), moved("extent"), mean, std)
    sparse = torch.zeros((image.shape[0], 4, *image.shape[2:]), device=device)
    guide, item = moved("guide"), moved("guide_item")
    ones = torch.ones_like(guide[:, 2])
    columns = torch.stack([guide[:, 2], guide[:, 3], ones, ones], 1)
    sparse[item, :, guide[:, 1].long(), guide[:, 0].long()] = columns
    return {
        "image": image,
        "sparse": sparse,
        "flow": moved("flow").permute(0, 3, 1, 2).contiguous(),
        "valid": moved("valid"),
        "sample_id": batch["sample_id"],
    }


def unpacked(item: dict[str, Any], config: TrainTransformConfig) -> dict[str, Any]:
    """The model inputs of one packed item, on the CPU (what :meth:`TrainTransform.__call__`
    returns)."""
    inputs = expand(collate([item]), "cpu", config.mean, config.std)
    return {key: value[0] for key, value in inputs.items()}


class TrainTransform:
    """Random crop, random horizontal flip, fresh guidance: a training item (module docstring).

    Crop position, flip and guidance come from ``sample_rng(config.seed, sample_id, epoch)``.
    A frame smaller than the crop along an axis is placed at the start of that axis and padded.

    DataLoader workers get a copy of the transform when an iterator is created (every epoch
    unless ``persistent_workers=True``), so call :meth:`set_epoch` before creating the epoch's
    iterator, and do not use persistent workers: they would keep the epoch they started with.
    """

    def __init__(self, config: TrainTransformConfig | None = None, epoch: int = 0) -> None:
        self.config = config if config is not None else TrainTransformConfig()
        self.sampler = build_sampler(self.config.guidance)
        self.epoch = epoch

    def set_epoch(self, epoch: int) -> None:
        """Draw the crops, flips and guidance of ``epoch`` from now on."""
        self.epoch = int(epoch)

    def pack(self, sample: StoredSample) -> dict[str, Any]:
        """The training inputs of ``sample``, packed (module docstring); ``ValueError`` if its
        arrays disagree in size."""
        rng = sample_rng(self.config.seed, sample.sample_id, self.epoch)
        h, w = sample.flow.shape[:2]
        top = int(rng.integers(0, max(h - self.config.crop, 0) + 1))
        left = int(rng.integers(0, max(w - self.config.crop, 0) + 1))
        flip = self.config.flip and bool(rng.random() < 0.5)
        return pack_inputs(sample, self.config, top, left, flip, rng, self.sampler)

    def __call__(self, sample: StoredSample) -> dict[str, Any]:
        """The training inputs of ``sample`` (module docstring); ``ValueError`` if its arrays
        disagree in size."""
        return unpacked(self.pack(sample), self.config)


class EvalTransform:
    """The centre crop of ``config.crop`` px, never flipped, with guidance drawn from
    ``sample_rng(config.seed, sample_id)``: the same inputs every epoch, for a validation loss
    that batches like training. ``config.flip`` is ignored; padding as in the module docstring.
    """

    def __init__(self, config: TrainTransformConfig | None = None) -> None:
        self.config = config if config is not None else TrainTransformConfig()
        self.sampler = build_sampler(self.config.guidance)

    def pack(self, sample: StoredSample) -> dict[str, Any]:
        """The validation inputs of ``sample``, packed; ``ValueError`` if its arrays disagree
        in size."""
        h, w = sample.flow.shape[:2]
        top, left = max(h - self.config.crop, 0) // 2, max(w - self.config.crop, 0) // 2
        rng = sample_rng(self.config.seed, sample.sample_id)
        return pack_inputs(sample, self.config, top, left, False, rng, self.sampler)

    def __call__(self, sample: StoredSample) -> dict[str, Any]:
        """The validation inputs of ``sample``; ``ValueError`` if its arrays disagree in size."""
        return unpacked(self.pack(sample), self.config)


def eval_inputs(
    sample: StoredSample,
    guidance_config: GuidanceConfig | None,
    seed: int,
    *,
    mean: Sequence[float] = RGB_MEAN,
    std: Sequence[float] = RGB_STD,
    multiple: int = STRIDE,
    min_side: int = 1,
    guidance: Guidance | None = None,
) -> dict[str, Any]:
    """The whole frame of ``sample`` as model inputs, with the guidance every method shares.

    The guidance is drawn on the unpadded flow (invalid pixels excluded) with
    ``build_sampler(guidance_config)`` and ``sample_rng(seed, sample_id)``, no epoch; with
    ``guidance_config=None`` it is the guidance stored at extraction; a ``guidance`` given is
    used as it is (``guidance_config`` and ``seed`` then play no part). The tensors (module
    docstring) are padded at the bottom and right to multiples of ``multiple`` px (the model's
    stride) and to at least ``min_side`` (the model's), padding invalid; the
    dict also holds ``"size"``, the unpadded (H, W), to crop predictions back, and
    ``"guidance"``, the :class:`Guidance` itself (frame coordinates). Raises ``ValueError`` if
    the sample's arrays disagree in size.
    """
    h, w = sample.flow.shape[:2]
    if guidance is None and guidance_config is None:
        guidance = sample.guidance
    elif guidance is None:
        sampler = build_sampler(guidance_config)
        guidance = sampler(sample.flow, sample_rng(seed, sample.sample_id), sample.valid)
    padded_h, padded_w = padded_size(h, w, multiple, min_side)
    image, flow, valid = cut_window(sample, 0, 0, padded_h, padded_w, mean, std)
    inputs = model_inputs(sample.sample_id, image, flow, valid, guidance)
    return {**inputs, "size": (h, w), "guidance": guidance}


@dataclass(frozen=True)
class DamagedItem:
    """What the training loader yields instead of a batch holding a sample that could not be
    read: the shard and the reason. (An error raised in a DataLoader worker reaches the main
    process only as a traceback text; this record crosses whole.)"""

    path: str
    reason: str


class _Packed(Dataset):
    """The packed training items of ``dataset`` (a :class:`ShardDataset` with a
    :class:`TrainTransform`); unreadable samples come out as :class:`DamagedItem`."""

    def __init__(self, dataset: ShardDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset.transform.pack(self.dataset.read(index))
        except ShardError as exc:
            return DamagedItem(exc.path, exc.reason)


def collate(items: Sequence[Any]) -> Any:
    """The packed batch of packed ``items`` (module docstring), or the first
    :class:`DamagedItem` among them."""
    damaged = next((item for item in items if isinstance(item, DamagedItem)), None)
    if damaged is not None:
        return damaged
    guides = [item["guide"] for item in items]
    batch = default_collate([{k: v for k, v in item.items() if k != "guide"} for item in items])
    batch["guide"] = torch.from_numpy(np.concatenate(guides))
    counts = [len(guide) for guide in guides]
    batch["guide_item"] = torch.from_numpy(np.repeat(np.arange(len(items)), counts))
    return batch


def make_train_loader(
    dataset: ShardDataset,
    batch_size: int,
    epoch: int,
    num_workers: int = 0,
    distributed: bool = False,
    drop_last: bool = True,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader over one epoch of ``dataset`` (a :class:`~cmpdata.store.dataset.ShardDataset`
    whose transform is a :class:`TrainTransform`); build one per epoch.

    It sets the transform's epoch and shuffles with a permutation seeded by the transform's
    ``config.seed`` and ``epoch``, so an epoch's batches are the same whatever
    ``num_workers``. Its batches are packed (module docstring: :func:`expand` gives the model
    inputs); a batch holding a sample that cannot be read comes out as a
    :class:`DamagedItem` naming it.
    With ``distributed``, each process of the initialised ``torch.distributed`` group reads its
    own share (``DistributedSampler``); ``drop_last`` drops the last incomplete batch. Raises
    ``ValueError`` if the dataset's transform is not a :class:`TrainTransform`.
    """
    transform = getattr(dataset, "transform", None)
    if not isinstance(transform, TrainTransform):
        raise ValueError(f"the dataset's transform must be a TrainTransform, got {transform!r}")
    transform.set_epoch(epoch)
    # One process alone is a group of one: the same epoch-seeded permutation either way.
    group = {} if distributed else {"num_replicas": 1, "rank": 0}
    sampler = DistributedSampler(dataset, shuffle=True, seed=transform.config.seed, **group)
    sampler.set_epoch(epoch)
    return DataLoader(
        _Packed(dataset),
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        collate_fn=collate,
    )
