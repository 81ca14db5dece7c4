"""Training CMP: one file, top to bottom (REFERENCE.md, "Training").

::

    config = TrainConfig(data=["data/yfcc"], out="runs/r50", iters=70_000)
    train(config)           # or: cmpmodel train --data data/yfcc --out runs/r50

SGD with momentum 0.9 and weight decay 1e-4; the learning rate is a pure function of the step
(:func:`lr_at`): the paper's 0.1 for a total batch of 160, scaled linearly with the total
batch, divided by 10 at 57% and again at 86% of the run, after an optional linear warm-up.
Mixed precision (bfloat16) is one ``torch.autocast`` context, on CUDA only. Distributed data
parallel training switches on when ``torchrun`` sets ``WORLD_SIZE`` > 1: one process per GPU
(NCCL) or per CPU worker (gloo); rank 0 alone logs and writes.

Everything goes to ``config.out``: ``log.csv`` (step, epoch, loss, lr, samples/s, and the
validation EPEs at the steps that have them), ``pictures/step-NNNNNNN.png`` (input with
guidance | predicted flow | target flow), ``checkpoint.pt`` (written atomically) and, unless
``config.tensorboard`` is off, ``tensorboard/`` (the same scalars and pictures, when the
``tensorboard`` package is installed; a warning says so when it is not).

With ``config.val_every``, every that many steps and at the last one the model's and the
nearest-guide baseline's mean end-point error (px) on a fixed validation subset are logged
(:class:`Validation`): the first ``config.val_samples`` samples of the val split, whole
frames, scored as ``cmpmodel eval`` scores them. Validation leaves the random state alone,
so a run with it trains exactly as one without it.

A checkpoint holds only tensors and plain Python values (``torch.load(...,
weights_only=True)`` reads it): the model, the optimizer, the step, the position in the
epoch, the RNG states and the configs as dicts. ``resume=True`` continues from it: the data
order is a function of (seed, epoch), so the batches already consumed in the current epoch
are skipped and the run goes on exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import math
import os
import pickle
import re
import struct
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from cmpdata.errors import ConfigError, FileError, UsageError
from cmpdata.paths import check_output_dir, stopped_by_failed_write
from cmpdata.records import Guidance
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.shards import ShardError
from cmpdata.viz import draw_guidance, flow_to_color, panel, save_png
from cmpmodel.data import (
    DamagedItem,
    TrainTransform,
    TrainTransformConfig,
    eval_inputs,
    expand,
    make_train_loader,
)
from cmpmodel.loss import cmp_loss, dense_flow
from cmpmodel.model import (
    ARCHS,
    CMP,
    MODEL_FORMAT,
    ModelConfig,
    ResNet50Encoder,
    arch_settings,
    build_model,
    image_encoder_state_dict,
    resnet50_backbone_state_dict,
)

CHECKPOINT = "checkpoint.pt"
# What training stopped by a damaged shard or sample says to do next.
_DAMAGED = "check the data with cmpdata verify, or train with --skip-damaged to leave it out"
# What a run stopped by a failed write (disk full) says to do next.
_RESUME = "the last checkpoint written is kept: free space and rerun with --resume to go on"
_UNSUPPORTED = re.compile(r"Unsupported global: GLOBAL (\S+)")
LOG = "log.csv"
PICTURES = "pictures"
PAPER_LR = 0.1  # the paper's learning rate ...
PAPER_BATCH = 160  # ... for this total batch (10 per GPU on 16 GPUs)
LOG_COLUMNS = ("step", "epoch", "loss", "lr", "samples_per_s", "val_epe", "val_epe_nearest")
TENSORBOARD = "tensorboard"  # the directory of the TensorBoard events in the run directory
# The guidance seed of validation: the default of ``cmpmodel eval``, so the two report alike.
VAL_GUIDANCE_SEED = 0


class CheckpointError(FileError, UsageError):
    """A checkpoint is missing, unreadable, or does not fit the model or run it is loaded into."""


@dataclass
class TrainConfig:
    """One training run; the defaults are the paper's ResNet-50 setting (REFERENCE.md)."""

    data: list[str] = field(default_factory=list)  # dataset directories (or shard files)
    out: str = "runs/cmp"  # run directory: log.csv, pictures/, checkpoint.pt
    arch: str = "resnet50"  # image encoder: alexnet, resnet50, tiny
    skip: bool = False  # decoder with encoder skip features (the annotation-demo variant)
    tiny_width: int = 32  # channel width of the tiny encoder (tests, demos)
    decoder_width: int = 128  # channels of each decoder branch
    iters: int = 70_000  # optimizer steps in the whole run
    batch_size: int = 10  # samples per process (per GPU); the total is this x world size
    lr: float | None = None  # base lr; None: 0.1 x total batch / 160 (the paper, scaled)
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # SGD weight decay (L2), on every parameter
    lr_steps: tuple[float, ...] = (0.57, 0.86)  # fractions of iters where the lr is cut
    lr_decay: float = 0.1  # factor applied to the lr at each step in lr_steps
    warmup_iters: int = 0  # linear warm-up from lr / warmup_iters to lr over these steps
    grad_clip: float | None = None  # max global gradient norm; None: no clipping
    crop: int | None = None  # training crop side, px (multiple of 8); None: the arch's (320/384)
    loss_stride: int = 1  # score every n-th pixel only (cmp_loss stride): 1 is the paper's
    flip: bool = True  # random horizontal flips
    use_stored_guidance: bool = False  # crop the extraction's guidance instead of redrawing it
    random_guides: int = 0  # > 0: k random guides a crop, k uniform in 1..this (0: the paper's)
    skip_damaged: bool = False  # leave damaged shards out (with a warning) instead of failing
    workers: int = 4  # DataLoader worker processes per training process
    seed: int = 0  # seeds the model init, the data order, crops, flips and guidance
    amp: bool = True  # bfloat16 autocast on CUDA (ignored on CPU)
    log_every: int = 20  # steps between log.csv rows and TensorBoard scalars (+ validations)
    ckpt_every: int = 1000  # steps between checkpoints (and one at the end)
    keep_checkpoints: bool = False  # also keep checkpoint-<step>.pt at every checkpoint
    picture_every: int = 1000  # steps between pictures in out/pictures; 0: none
    val_every: int = 0  # steps between validations (and one at the end); 0: none
    val_samples: int = 16  # validate on the first this many samples of the val split
    tensorboard: bool = True  # also write out/tensorboard (when the package is installed)
    resume: bool = False  # continue from out/checkpoint.pt

    def __post_init__(self) -> None:
        if isinstance(self.data, (str, os.PathLike)):
            self.data = [self.data]
        self.data = [str(d) for d in self.data]
        self.out = str(self.out)
        self.lr_steps = tuple(float(f) for f in self.lr_steps)
        ARCHS.get(self.arch)
        for name in (
            "iters",
            "batch_size",
            "log_every",
            "ckpt_every",
            "loss_stride",
            "val_samples",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_iters", "workers", "picture_every", "val_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.lr is not None and not self.lr > 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be positive, got {self.grad_clip}")
        if not all(0 < f <= 1 for f in self.lr_steps):
            raise ConfigError(f"lr_steps must be fractions in (0, 1], got {self.lr_steps}")

    def model_config(self) -> ModelConfig:
        return ModelConfig(
            arch=self.arch,
            skip=self.skip,
            tiny_width=self.tiny_width,
            decoder_width=self.decoder_width,
        )

    def transform_config(self) -> TrainTransformConfig:
        settings = arch_settings(self.arch)
        return TrainTransformConfig(
            crop=settings.crop_size if self.crop is None else self.crop,
            flip=self.flip,
            guidance=settings.guidance,
            use_stored_guidance=self.use_stored_guidance,
            random_guides=self.random_guides,
            seed=self.seed,
        )


def base_lr(config: TrainConfig, world_size: int = 1) -> float:
    """``config.lr``, or the paper's 0.1 scaled linearly to the total batch."""
    if config.lr is not None:
        return config.lr
    return PAPER_LR * config.batch_size * world_size / PAPER_BATCH


def lr_at(step: int, config: TrainConfig, world_size: int = 1) -> float:
    """The learning rate of optimizer step ``step`` (0-based) of a run with ``world_size``
    processes: :func:`base_lr`, times ``lr_decay`` for each fraction ``f`` of ``lr_steps``
    with ``step >= round(f * iters)``, times ``(step + 1) / warmup_iters`` during warm-up."""
    lr = base_lr(config, world_size)
    lr *= config.lr_decay ** sum(step >= round(f * config.iters) for f in config.lr_steps)
    if step < config.warmup_iters:
        lr *= (step + 1) / config.warmup_iters
    return lr


# ------------------------------------------------------------------------------- checkpoints


def plain(value: Any) -> Any:
    """``value`` with tuples as lists and dataclasses as dicts: what ``weights_only`` loads."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain(dataclasses.asdict(value))
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def save_atomic(obj: dict[str, Any], path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over
    ``path``: a crash or a kill, even in the middle of the write, leaves the previous
    checkpoint whole."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


REQUIRED_KEYS = ("model", "model_config", "config", "step")


def read_torch_file(path: str | Path) -> Any:
    """What ``torch.load(path, weights_only=True)`` reads, onto the CPU; raises
    :class:`CheckpointError` naming ``path`` if it is missing or not such a file (corrupt,
    truncated, or holding more than tensors and plain values)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    # Bytes that are no pickle at all stop torch's unpickler in any of these ways.
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        ValueError,
        OSError,
        IndexError,
        KeyError,
        struct.error,
    ) as exc:
        # torch's message on a file holding other objects goes on to explain how to load it
        # unsafely: that is not advice to pass on.
        if found := _UNSUPPORTED.search(str(exc)):
            reason = f"it holds objects other than tensors and plain values ({found.group(1)})"
            raise CheckpointError(path, f"not loaded: {reason}; not a checkpoint") from None
        if isinstance(exc, IndexError | KeyError | struct.error):
            # Their own text is a bare index or key of the unpickler, which tells a user nothing.
            reason = "not a PyTorch file"
        else:
            reason = str(exc).strip().split(". ")[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(path, f"not a readable checkpoint ({reason[:200]})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint of this project read with :func:`read_torch_file`.

    Raises :class:`CheckpointError` naming ``path`` as that does, or when it lacks a key or
    was written by an earlier version of the model (:data:`~cmpmodel.model.MODEL_FORMAT`).
    """
    checkpoint = read_torch_file(path)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(path, f"not a checkpoint (holds a {type(checkpoint).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in checkpoint]
    if missing:
        if {"state_dict", "step"} <= set(checkpoint):
            raise CheckpointError(
                path,
                "a checkpoint of the original CMP code: convert it first with "
                "cmpmodel convert-original CKPT --out FILE.pt",
            )
        raise CheckpointError(path, f"not a cmpmodel checkpoint (missing {', '.join(missing)})")
    if checkpoint.get("model_format", 1) != MODEL_FORMAT:
        raise CheckpointError(
            path,
            f"written by an earlier cmpmodel (model format {checkpoint.get('model_format', 1)}, "
            f"this one reads {MODEL_FORMAT}): the network now has the original CMP's layers "
            "(1x1 encoder outputs with a bias, decoders that pool with floor and up-sample with "
            "the corners aligned, the original's skip decoder, bins of 2R/n) and its old "
            "weights do not fit them; train it again",
        )
    return checkpoint


def load_model(path: str | Path) -> tuple[CMP, dict[str, Any]]:
    """The model stored in checkpoint ``path`` (on the CPU, eval mode) and the checkpoint.

    Raises :class:`CheckpointError` naming ``path`` as :func:`load_checkpoint` does, or when
    its weights do not fit the model its configuration describes.
    """
    checkpoint = load_checkpoint(path)
    try:
        model = build_model(ModelConfig(**checkpoint["model_config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(path, f"bad model configuration ({exc})") from None
    load_weights(model, checkpoint["model"], path)
    return model.eval(), checkpoint


def load_weights(model: nn.Module, state: Mapping[str, Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state)``, strict; :class:`CheckpointError` naming ``path`` if
    the keys or shapes differ."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise CheckpointError(path, f"weights do not fit the model: {detail}") from None


def export_encoder(checkpoint: str | Path, out: str | Path) -> list[str]:
    """Write the trained image encoder's weights to ``out`` (``torch.save`` of a state dict).

    ResNet-50: the backbone under torchvision's names (loads into
    ``torchvision.models.resnet50()`` with ``strict=False``, only ``fc`` missing); other
    encoders: the encoder's own state dict. Returns the keys written. Raises
    :class:`CheckpointError` for a bad checkpoint.
    """
    model, _ = load_model(checkpoint)
    encoder = model.image_encoder
    if isinstance(encoder, ResNet50Encoder):
        state = resnet50_backbone_state_dict(encoder)
    else:
        state = image_encoder_state_dict(model)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(dict(state), out)
    return list(state)


# ---------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class Distributed:
    """Where this process stands: its rank among ``world_size`` and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the process group that ``torchrun``'s environment describes (NCCL on CUDA, gloo
    on CPU), or run alone when ``WORLD_SIZE`` is unset or 1."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available()
    if world_size <= 1:
        return Distributed(0, 1, torch.device("cuda" if cuda else "cpu"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    return Distributed(dist.get_rank(), dist.get_world_size(), device)


def mean_over_ranks(value: Tensor, ctx: Distributed) -> float:
    """The mean of a scalar tensor over every process (itself when alone)."""
    value = value.detach()
    if ctx.enabled:
        value = value.clone()
        dist.all_reduce(value)
        value /= ctx.world_size
    return float(value)


# ------------------------------------------------------------------------------- the loop


def skip_batches(loader: DataLoader, count: int) -> DataLoader:
    """``loader`` without its first ``count`` batches, skipped at the sampler (no sample of
    them is read)."""
    if count == 0:
        return loader
    indices = list(loader.sampler)[count * loader.batch_size :]
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=indices,
        num_workers=loader.num_workers,
        drop_last=loader.drop_last,
        pin_memory=loader.pin_memory,
        collate_fn=loader.collate_fn,
    )


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def guidance_of_map(sparse: np.ndarray) -> Guidance:
    """The guidance a rasterised (4, H, W) map (the model's input) holds: one point (x, y)
    per marked pixel, sorted by (y, x), with the vector (px) stored there."""
    ys, xs = np.nonzero(sparse[2])
    return Guidance(
        np.stack([xs, ys], axis=1).astype(np.float32),
        np.ascontiguousarray(sparse[:2, ys, xs].T, dtype=np.float32),
    )


def training_picture(
    batch: Mapping[str, Tensor], logits: Tensor, config: TrainConfig
) -> np.ndarray:
    """The first item of ``batch``: input with guidance | predicted flow | target flow, both
    flows coloured on the target's scale."""
    transform = config.transform_config()
    image = batch["image"][0].detach().cpu().float().numpy().transpose(1, 2, 0)
    image = np.clip(image * transform.std + np.float32(transform.mean), 0, 255).astype(np.uint8)
    guidance = guidance_of_map(batch["sparse"][0].cpu().numpy())
    flow_range = config.model_config().flow_range
    predicted = dense_flow(logits[:1].detach(), image.shape[:2], flow_range)[0]
    target = batch["flow"][0].cpu().numpy().transpose(1, 2, 0).astype(np.float32)
    predicted = predicted.cpu().numpy().transpose(1, 2, 0).astype(np.float32)
    magnitude = np.hypot(target[..., 0], target[..., 1])[batch["valid"][0].cpu().numpy()]
    scale = max(float(magnitude.max()) if magnitude.size else 0.0, 1.0)
    return panel(
        [
            draw_guidance(image, guidance),
            flow_to_color(predicted, scale),
            flow_to_color(target, scale),
        ],
        [f"input + {len(guidance)} guides", "predicted", f"target (max {scale:.3g} px)"],
    )


def open_tensorboard(path: Path, resume_step: int | None) -> Any:
    """A ``torch.utils.tensorboard.SummaryWriter`` on ``path``, or None, with one warning
    saying how to get it, when the ``tensorboard`` package is missing. On resume the events a
    crashed run wrote after step ``resume_step`` are dropped, as ``log.csv``'s rows are."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        warnings.warn(
            f"no TensorBoard logging, the tensorboard package is missing ({exc}): log.csv and "
            "pictures/ are the record; pip install tensorboard (make test and make demo "
            "install it) to have them in TensorBoard too",
            stacklevel=3,
        )
        return None
    purge_step = None if resume_step is None else resume_step + 1
    return SummaryWriter(str(path), purge_step=purge_step)


class RunLog:
    """What rank 0 records of a run: ``log.csv`` (its rows up to the resumed step kept on
    resume), ``pictures/`` and, with ``tensorboard``, the same scalars and pictures in
    ``out/tensorboard`` (:func:`open_tensorboard`)."""

    def __init__(self, out: Path, resume_step: int | None, tensorboard: bool) -> None:
        self.out = out
        path = out / LOG
        kept: list[list[str]] = []
        if resume_step is not None and path.exists():
            # Rows a crashed run logged after its last checkpoint are redone by this one.
            with path.open(newline="") as f:
                kept = [row for row in csv.reader(f)][1:]
            kept = [row for row in kept if row and int(row[0]) <= resume_step]
        self.file = path.open("w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerows([LOG_COLUMNS, *kept])
        self.file.flush()
        self.tensorboard = open_tensorboard(out / TENSORBOARD, resume_step) if tensorboard else None

    def write(
        self,
        step: int,
        epoch: int,
        loss: float,
        lr: float,
        samples_per_s: float,
        val: tuple[float, float] | None = None,
    ) -> None:
        """One row: ``val`` is (model EPE, nearest-guide EPE), px, at a validation step."""
        epes = ["", ""] if val is None else [repr(v) for v in val]
        with stopped_by_failed_write(self.out / LOG, _RESUME):
            self.writer.writerow([step, epoch, repr(loss), repr(lr), f"{samples_per_s:.2f}", *epes])
            self.file.flush()
        if self.tensorboard is not None:
            scalars = {"loss": loss, "lr": lr, "samples_per_s": samples_per_s}
            if val is not None:
                scalars.update(val_epe=val[0], val_epe_nearest=val[1])
            for name, value in scalars.items():
                self.tensorboard.add_scalar(name, value, step)

    def picture(self, step: int, picture: np.ndarray) -> None:
        """``pictures/step-NNNNNNN.png`` and the TensorBoard image ``picture`` at ``step``."""
        with stopped_by_failed_write(self.out / PICTURES, _RESUME):
            save_png(self.out / PICTURES / f"step-{step:07d}.png", picture)
        if self.tensorboard is not None:
            self.tensorboard.add_image("picture", picture, step, dataformats="HWC")

    def close(self) -> None:
        self.file.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def read_log(out: str | Path) -> list[dict[str, float]]:
    """The rows of ``out/log.csv`` as dicts of numbers; an empty cell (the validation EPEs at
    a step without validation) is NaN."""
    with (Path(out) / LOG).open(newline="") as f:
        return [
            {k: float(v) if v else math.nan for k, v in row.items()} for row in csv.DictReader(f)
        ]


class Validation:
    """The model's and the nearest-guide baseline's mean end-point errors (px) on a fixed
    validation subset: the first ``config.val_samples`` samples of the val split of
    ``shards``, whole frames, with guidance drawn by the training guidance settings and
    :data:`VAL_GUIDANCE_SEED`, scored as ``cmpmodel eval`` scores its paper-sampler setting
    (pixel-weighted over the valid pixels, against a synthetic sample's exact flow where it
    has one; :mod:`cmpmodel.evaluate`).

    It leaves every random state alone: the guidance comes from generators seeded per sample,
    and the model runs in eval mode (no dropout, batch-norm statistics untouched), so a run
    that validates trains exactly as one that does not. Raises :class:`UsageError` when the
    val split is empty.
    """

    def __init__(self, config: TrainConfig, shards: Sequence[str | Path]) -> None:
        self.dataset = ShardDataset(list(shards), split="val")
        if len(self.dataset) == 0:
            raise UsageError(
                f"{', '.join(config.data)}: no val samples to validate on every "
                f"{config.val_every} steps; give data with a val split, or val_every 0"
            )
        self.count = min(config.val_samples, len(self.dataset))
        self.transform = config.transform_config()
        self.flow_range = config.model_config().flow_range

    def __call__(self, model: CMP, device: torch.device) -> tuple[float, float]:
        """(model EPE, nearest-guide EPE), px, NaN without valid pixels; ``model`` is left in
        train mode. Raises :class:`ShardError` naming the shard of a damaged sample."""
        # cmpmodel.evaluate imports this module.
        from cmpmodel.evaluate import Tally, model_flow, reference_of, score_sample

        tally = Tally()
        model.eval()
        try:
            for index in range(self.count):
                try:
                    sample = self.dataset[index]
                except ShardError as exc:
                    raise ShardError(exc.path, f"{exc.reason}; {_DAMAGED}") from None
                reference, objects, _ = reference_of(sample)
                inputs = eval_inputs(
                    reference,
                    self.transform.guidance,
                    VAL_GUIDANCE_SEED,
                    mean=self.transform.mean,
                    std=self.transform.std,
                    multiple=model.stride,
                    min_side=model.min_side,
                )
                prediction = model_flow(model, inputs, self.flow_range, device)
                score_sample(tally, inputs, objects, prediction)
        finally:
            model.train()
        methods = tally.result()["methods"]
        return methods["model"]["epe"], methods["nearest"]["epe"]

    def close(self) -> None:
        self.dataset.close()


def batches(
    dataset: ShardDataset, config: TrainConfig, ctx: Distributed, epoch: int, position: int
) -> Iterator[tuple[int, int, dict[str, Any]]]:
    """``(epoch, position after the batch, batch)`` forever, from batch ``position`` of
    ``epoch`` on; every epoch's order is a function of (seed, epoch)."""
    while True:
        loader = make_train_loader(
            dataset,
            config.batch_size,
            epoch,
            num_workers=config.workers,
            distributed=ctx.enabled,
            pin_memory=ctx.device.type == "cuda",
        )
        for index, batch in enumerate(skip_batches(loader, position), start=position + 1):
            if isinstance(batch, DamagedItem):
                raise ShardError(batch.path, f"{batch.reason}; {_DAMAGED}")
            yield epoch, index, batch
        epoch, position = epoch + 1, 0


def build_dataset(config: TrainConfig, ctx: Distributed) -> ShardDataset:
    """The training split of ``config.data`` with the training transform; raises
    :class:`CmpDataError` when there is no data or too little for one batch per process."""
    if not config.data:
        raise UsageError("no training data: give at least one dataset directory")
    try:
        dataset = ShardDataset(
            config.data,
            split="train",
            transform=TrainTransform(config.transform_config()),
            skip_damaged=config.skip_damaged,
        )
    except ShardError as exc:
        raise ShardError(exc.path, f"{exc.reason}; {_DAMAGED}") from None
    needed = config.batch_size * ctx.world_size
    if len(dataset) < needed:
        raise UsageError(
            f"{', '.join(config.data)}: {len(dataset)} training samples, fewer than one batch "
            f"({config.batch_size} x {ctx.world_size} processes)"
        )
    return dataset


def train(config: TrainConfig) -> dict[str, Any]:
    """Run (or, with ``config.resume``, continue) training; returns a summary: the final
    ``step``, the last logged ``loss``, the ``checkpoint`` path, ``samples_per_s``,
    ``val_epe`` and ``val_epe_nearest`` (px, of the last validation; None without one) and
    ``skipped_shards`` (``"path: reason"`` of each damaged shard left out with
    ``config.skip_damaged``).

    Raises :class:`CmpDataError` for missing or damaged data, :class:`UsageError` for
    ``config.val_every`` without val samples, :class:`CheckpointError` for a missing, corrupt
    or mismatched checkpoint on resume, ``ValueError`` for a bad config.
    """
    ctx = setup_distributed()
    try:
        return _train(config, ctx)
    finally:
        if ctx.enabled:
            dist.destroy_process_group()


def _train(config: TrainConfig, ctx: Distributed) -> dict[str, Any]:
    out = check_output_dir(config.out)
    ckpt_path = out / CHECKPOINT
    dataset = build_dataset(config, ctx)
    # Built in every process, so that all of them refuse an empty val split; rank 0 runs it.
    validation = Validation(config, dataset.shards) if config.val_every else None
    torch.manual_seed(config.seed)  # the same initial weights in every process
    model_config = config.model_config()
    transform = config.transform_config()
    model = build_model(model_config).to(ctx.device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=lr_at(0, config, ctx.world_size),
        momentum=config.momentum,
        weight_decay=config.weight_decay,
    )
    step, epoch, position = 0, 0, 0
    if config.resume:
        checkpoint = load_checkpoint(ckpt_path)
        if checkpoint["model_config"] != plain(model_config):
            raise CheckpointError(
                ckpt_path,
                f"was trained with {checkpoint['model_config']}, this run asks for "
                f"{plain(model_config)}",
            )
        stored_batch = (checkpoint["config"].get("batch_size"), checkpoint.get("world_size"))
        if stored_batch != (config.batch_size, ctx.world_size):
            # The position within the epoch counts batches of the stored size.
            raise CheckpointError(
                ckpt_path,
                f"was written by {stored_batch[1]} processes of batch {stored_batch[0]}; "
                f"resume with the same, not {ctx.world_size} of {config.batch_size}",
            )
        load_weights(model, checkpoint["model"], ckpt_path)
        try:
            optimizer.load_state_dict(checkpoint["optimizer"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(ckpt_path, f"optimizer state does not fit ({exc})") from None
        step, epoch, position = checkpoint["step"], checkpoint["epoch"], checkpoint["position"]
        set_rng_state(checkpoint["rng"])
    else:
        torch.manual_seed(config.seed + ctx.rank)  # dropout differs across processes
    net: nn.Module = model
    if ctx.enabled:
        net = DistributedDataParallel(
            model, device_ids=[ctx.device.index] if ctx.device.type == "cuda" else None
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if config.amp and ctx.device.type == "cuda"
        else contextlib.nullcontext()
    )

    def save(step: int, epoch: int, position: int) -> None:
        state = {
            "model": model.state_dict(),
            "model_format": MODEL_FORMAT,
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "position": position,
            "world_size": ctx.world_size,
            "rng": rng_state(),
            "config": plain(config),
            "model_config": plain(model_config),
            "transform_config": plain(config.transform_config()),
        }
        with stopped_by_failed_write(ckpt_path, _RESUME):
            save_atomic(state, ckpt_path)
            if config.keep_checkpoints:
                save_atomic(state, out / f"checkpoint-{step:07d}.pt")

    total_batch = config.batch_size * ctx.world_size
    last_loss, samples_per_s = math.nan, 0.0
    val: tuple[float, float] | None = None
    data = batches(dataset, config, ctx, epoch, position)
    # Closed in reverse order, also on error: the progress bar, the log, the val and train data.
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(data.close)
        if validation is not None:
            cleanup.callback(validation.close)
        log = None
        if ctx.is_main:
            with stopped_by_failed_write(out, _RESUME):
                out.mkdir(parents=True, exist_ok=True)
                log = RunLog(out, step if config.resume else None, config.tensorboard)
            cleanup.callback(log.close)
        progress = cleanup.enter_context(
            tqdm(
                total=config.iters,
                initial=step,
                desc="train",
                disable=not ctx.is_main,
                unit="it",
                dynamic_ncols=True,
            )
        )
        model.train()
        tick, tick_step = time.perf_counter(), step
        while step < config.iters:
            epoch, position, batch = next(data)
            lr = lr_at(step, config, ctx.world_size)
            for group in optimizer.param_groups:
                group["lr"] = lr
            inputs = expand(batch, ctx.device, transform.mean, transform.std)
            with autocast:
                logits = net(inputs["image"], inputs["sparse"])
            loss = cmp_loss(
                logits, inputs["flow"], inputs["valid"], model_config.flow_range, config.loss_stride
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            step += 1
            progress.update(1)
            last = step == config.iters
            validate = validation is not None and (step % config.val_every == 0 or last)
            # Every process takes part in the loss's mean, so all decide alike to log.
            if validate or step % config.log_every == 0 or last:
                last_loss = mean_over_ranks(loss, ctx)
                now = time.perf_counter()
                samples_per_s = (step - tick_step) * total_batch / max(now - tick, 1e-9)
                scores = validation(model, ctx.device) if validate and ctx.is_main else None
                if scores is not None:
                    val = scores
                # Validation's time is not training's: the next interval starts after it.
                tick, tick_step = time.perf_counter(), step
                if log is not None:
                    log.write(step, epoch, last_loss, lr, samples_per_s, scores)
                postfix = {"loss": f"{last_loss:.4f}", "samples_s": f"{samples_per_s:.1f}"}
                if val is not None:
                    postfix["val_epe"] = f"{val[0]:.3f}"
                progress.set_postfix(postfix)
            if log is not None and config.picture_every and step % config.picture_every == 0:
                log.picture(step, training_picture(inputs, logits, config))
            if ctx.is_main and (step % config.ckpt_every == 0 or last):
                save(step, epoch, position)
    return {
        "step": step,
        "loss": last_loss,
        "checkpoint": str(ckpt_path),
        "samples_per_s": samples_per_s,
        "val_epe": None if val is None else val[0],
        "val_epe_nearest": None if val is None else val[1],
        "skipped_shards": [f"{path}: {reason}" for path, reason in dataset.skipped],
    }
