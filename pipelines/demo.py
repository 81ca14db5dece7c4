"""``make demo``: the whole job on synthetic clips, with pictures and figures to look at.

1. the per-sample stages on synthetic clips, with their error against ground truth
   (:func:`run_stage_demo`);
2. ``extract`` of those clips into a dataset of shards through the local Ray; a hash of the
   clip's name holds some clips out (val), the others are for training;
3. ``verify`` of that dataset and ``show`` pictures of a few of its samples;
4. a short CPU training run of the ``tiny`` CMP model on the train split (``train/``);
5. its evaluation on the held-out clip against the zero, nearest and IDW baselines
   (``eval.json``);
6. propagation of three guide vectors over a held-out frame (``propagate.png``).

Everything goes to ``summary.json`` too, with the seconds each part took.

How big each part is comes from a :class:`DemoSettings`; :data:`PROFILES` names two:
``quick`` (``make demo``: 500 clips of 6 frames of 192 x 256, 3,000 training steps, about four
and a half minutes on 2 cores) and ``cpu-15min`` (the model experiment: 600 clips of 9 frames
and a training run that fits a 15-minute budget on 2 CPU cores, evaluated on the held-out
clips). Both draw their clips from the same synthetic world (:mod:`cmpdata.synth.clips`).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError, ConfigError
from cmpdata.flow import build_flow, resize_flow
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.io.pairs import PairConfig
from cmpdata.io.sources import find_sources
from cmpdata.records import Dropped, GuidedSample
from cmpdata.stages import write_pictures
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.reports import format_verify, show_sample, verify_dataset
from cmpdata.store.shards import StoredSample
from cmpdata.synth.clips import load_ground_truth, make_clips
from cmpdata.synth.metrics import endpoint_error
from cmpdata.viz import color_wheel_legend, draw_guidance, flow_to_color, panel, save_png
from cmpmodel.data import valid_mask
from cmpmodel.evaluate import evaluate, format_table, plot_curve
from cmpmodel.propagate import propagate
from cmpmodel.train import TrainConfig, train
from pipelines.extract import RunSettings, extract


@dataclass(frozen=True)
class DemoSettings:
    """How big the demo is: its synthetic clips, their pairs and the training run."""

    # Many short clips rather than a few long ones: a model trained on a few clips learns
    # their camera motion and textures (on the 3 clips of 40 frames an earlier demo made, it
    # ended worse than zero flow on the held-out one).
    clips: int = 500  # synthetic clips (at least 2: one is held out)
    frames: int = 6  # frames per clip
    height: int = 192  # clip frame size (px); frames keep it (no resize)
    width: int = 256
    staged: int | None = 3  # clips that the stage demo runs on and pictures (None: all)
    pair_stride: int = 3  # every 3rd frame starts a pair: one pair per 6-frame clip
    # With 0.2, the split hash holds about a fifth of the clips out (val); with 2 clips,
    # clip000 alone.
    val_fraction: float = 0.2
    crop: int = 96  # training crop (px), the tiny model's
    batch_size: int = 8
    iters: int = 3000  # training steps
    # Far above the paper's rate (0.005 at batch 8): a few hundred steps have to get somewhere.
    lr: float = 0.05
    loss_stride: int = 4  # cmp_loss stride: 4 scores one pixel in 16, ~2.5x faster steps on CPU
    # k random guides a crop, k uniform in 1..16 (0: the paper's sampler): the model learns
    # to spread one guide as well as many, and scores as well at the paper's density
    random_guides: int = 16
    decoder_width: int = 64  # channels of each decoder branch: half the default, as good here
    loader_workers: int = 0  # DataLoader workers beside the training process

    def __post_init__(self) -> None:
        if self.clips < 2:
            raise ConfigError(f"the demo needs at least 2 clips (one held out), got {self.clips}")


PROFILES: dict[str, DemoSettings] = {
    "quick": DemoSettings(),
    "cpu-15min": DemoSettings(
        clips=600,
        frames=9,
        staged=6,
        iters=12000,
    ),
}
NUM_GUIDES = 3
GUIDE_SPACING = 0.2  # minimum distance between guide points, as a fraction of the short side


def pick_guides(
    sample: StoredSample, count: int = NUM_GUIDES
) -> list[tuple[float, float, float, float]]:
    """``count`` guides ``(x, y, dx, dy)`` (px) on moving objects of ``sample``: the valid
    pixels whose stored flow differs most from the median (camera) flow, at least
    :data:`GUIDE_SPACING` of the short side apart, each with its stored flow vector."""
    flow = sample.flow
    h, w = flow.shape[:2]
    valid = valid_mask(sample)
    background = np.median(flow[valid], axis=0)
    deviation = np.where(valid, np.linalg.norm(flow - background, axis=-1), -1.0)
    spacing = GUIDE_SPACING * min(h, w)
    guides: list[tuple[float, float, float, float]] = []
    for index in np.argsort(deviation, axis=None)[::-1]:
        y, x = divmod(int(index), w)
        if deviation[y, x] < 0:
            break
        if all(np.hypot(x - gx, y - gy) >= spacing for gx, gy, _, _ in guides):
            guides.append((float(x), float(y), float(flow[y, x, 0]), float(flow[y, x, 1])))
            if len(guides) == count:
                break
    return guides


# The per-sample stages on the clips ---------------------------------------------------------


def ground_truth_for(sample: GuidedSample, clips_dir: Path) -> np.ndarray:
    """The synthetic ground truth of a sample, cropped and resized as its frames were."""
    pair = sample.flow_sample.pair
    name = Path(pair.source_id).stem
    pairs, flows, _ = load_ground_truth(clips_dir / f"{name}.flow.npz")
    row = np.flatnonzero((pairs[:, 0] == pair.t0) & (pairs[:, 1] == pair.t1))
    if row.size == 0:
        raise ValueError(f"{name}: no ground truth for frames {pair.t0}->{pair.t1}")
    gt = np.asarray(flows[row[0]], dtype=np.float32)
    if pair.crop is not None:
        x0, y0, x1, y1 = pair.crop
        gt = gt[y0:y1, x0:x1]
    return resize_flow(np.ascontiguousarray(gt), pair.size)


def sample_picture(sample: GuidedSample, gt: np.ndarray, flow_name: str) -> np.ndarray:
    """Frame with guidance | estimated flow | ground truth | colour legend (shared scale)."""
    flow = sample.flow_sample.flow
    top = float(max(np.linalg.norm(gt, axis=-1).max(), 1.0))
    return panel(
        [
            draw_guidance(sample.flow_sample.pair.frame0, sample.guidance, scale=3.0),
            flow_to_color(flow, max_magnitude=top),
            flow_to_color(gt, max_magnitude=top),
            color_wheel_legend(size=160, max_magnitude=top),
        ],
        [
            f"{sample.sample_id}: {len(sample.guidance)} guidance points, arrows x3",
            f"estimated flow ({flow_name})",
            "ground truth",
            "colour = direction",
        ],
    )


def run_stage_demo(
    out_dir: str | Path,
    clips: int = 3,
    seed: int = 0,
    flow: str = "dis",
    max_pairs_per_video: int = 4,
    size: tuple[int, int] = (416, 560),
    frames: int = 40,
    staged: int | None = None,
) -> dict[str, Any]:
    """Generate ``clips`` clips of ``frames`` frames of ``size`` (H, W) px, run the stages on
    the mp4 files of the first ``staged`` of them (``None``: all) at that size, write
    pictures and a summary."""
    out = Path(out_dir)
    clips_dir = out / "clips"
    make_clips(clips_dir, clips, seed=seed, height=size[0], width=size[1], num_frames=frames)
    backend = build_flow(flow)
    guidance = GuidanceConfig()
    sampler = build_sampler(guidance)
    config = ExtractConfig(
        pairs=PairConfig(max_pairs_per_video=max_pairs_per_video, short_side=None),
        seed=seed,
        consistency=True,
    )
    rows: list[dict[str, Any]] = []
    dropped: list[Dropped] = []

    def picture(sample: GuidedSample) -> np.ndarray:
        gt = ground_truth_for(sample, clips_dir)
        rows.append(
            {
                "sample_id": sample.sample_id,
                "epe": endpoint_error(sample.flow_sample.flow, gt),
                "epe_zero": endpoint_error(np.zeros_like(gt), gt),
                "valid_fraction": float(sample.flow_sample.valid.mean()),
                "guidance_points": len(sample.guidance),
            }
        )
        return sample_picture(sample, gt, backend.name)

    sources = find_sources([str(clips_dir / "*.mp4")])[:staged]
    results = write_pictures(sources, backend, sampler, config, out / "pictures", picture)
    for item, _ in tqdm(results, desc="demo pairs", unit="pair"):
        if isinstance(item, Dropped):
            dropped.append(item)
    summary = {
        "flow": backend.identity(),
        "guidance": asdict(guidance),
        "pairs": len(rows),
        "epe_mean": float(np.mean([r["epe"] for r in rows])) if rows else None,
        "epe_zero_mean": float(np.mean([r["epe_zero"] for r in rows])) if rows else None,
        "samples": rows,
        "dropped": [asdict(d) for d in dropped],
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


# The whole demo ------------------------------------------------------------------------------


def run_demo(
    out_dir: str | Path, settings: DemoSettings | None = None, seed: int = 0, flow: str = "dis"
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the figures (also in ``summary.json``).

    Raises :class:`CmpDataError` when the dataset has no train or no val sample and
    ``ValueError`` for bad settings.
    """
    settings = settings or DemoSettings()
    out = Path(out_dir)
    seconds: dict[str, float] = {}
    start = time.perf_counter()
    summary = run_stage_demo(
        out,
        clips=settings.clips,
        seed=seed,
        flow=flow,
        size=(settings.height, settings.width),
        frames=settings.frames,
        staged=settings.staged,
    )
    seconds["clips_and_stages"] = time.perf_counter() - start
    print(
        f"stages: {summary['pairs']} pairs, mean end-point error {summary['epe_mean']:.3f} px "
        f"({flow}) against {summary['epe_zero_mean']:.3f} px for zero flow"
    )
    dataset = out / "dataset"
    pairs = PairConfig(stride=settings.pair_stride, short_side=None)
    config = ExtractConfig(
        flow=flow,
        seed=seed,
        shard_size=8 if settings.clips < 8 else 64,
        val_fraction=settings.val_fraction,
        pairs=pairs,
    )
    start = time.perf_counter()
    result = extract([str(out / "clips" / "*.mp4")], dataset, config, RunSettings(overwrite=True))
    seconds["extract"] = time.perf_counter() - start
    print(result.summary())
    report = verify_dataset(dataset)
    print(format_verify(report))
    pictures = [
        show_sample(dataset, i, out / f"show-{i:02d}.png", guidance_scale=3.0)
        for i in (0, result.written // 2)
    ]
    print("pictures: " + ", ".join(str(p) for p in pictures))
    val = ShardDataset(dataset, split="val")
    num_train = len(ShardDataset(dataset, split="train"))
    if num_train == 0 or len(val) == 0:
        raise CmpDataError(
            f"{dataset}: {num_train} train and {len(val)} val samples; the model part needs both"
        )

    threads = torch.get_num_threads()
    # The loader's workers take cores of their own: torch gets the rest (one at least). A
    # step measured 1.3x faster on 2 threads than on 1 with the other core idle, and about
    # 4x slower when a loader worker held the other core.
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - settings.loader_workers))
    iters = settings.iters
    try:
        start = time.perf_counter()
        trained = train(
            TrainConfig(
                data=[str(dataset)],
                out=str(out / "train"),
                arch="tiny",
                decoder_width=settings.decoder_width,
                iters=iters,
                batch_size=min(settings.batch_size, num_train),
                lr=settings.lr,
                warmup_iters=iters // 10,
                crop=settings.crop,
                loss_stride=settings.loss_stride,
                random_guides=settings.random_guides,
                workers=settings.loader_workers,
                seed=seed,
                log_every=max(iters // 10, 1),
                ckpt_every=iters,
                picture_every=iters,
            )
        )
        seconds["train"] = time.perf_counter() - start
        print(
            f"training: {trained['step']} steps on {num_train} train samples, last loss "
            f"{trained['loss']:.3f}; {trained['checkpoint']}, {out / 'train' / 'log.csv'}"
        )
        start = time.perf_counter()
        scores = evaluate([dataset], trained["checkpoint"], split="val")
        seconds["eval"] = time.perf_counter() - start
        (out / "eval.json").write_text(json.dumps(scores, indent=2) + "\n")
        curve = plot_curve(scores, out / "eval.png", title="held-out synthetic clips")
        print(format_table(scores))
        print(f"evaluation: {out / 'eval.json'}, {curve}")
        sample = val[0]
        image_path = save_png(out / "propagate-input.png", sample.image)
        guides = pick_guides(sample)
        propagated = propagate(trained["checkpoint"], image_path, guides, out / "propagate.png")
    finally:
        torch.set_num_threads(threads)
    error = np.linalg.norm(propagated - sample.flow, axis=-1)[valid_mask(sample)]
    propagate_epe = float(error.mean())
    print(
        f"propagation: {len(guides)} guides over {sample.sample_id} ({image_path}), "
        f"end-point error {propagate_epe:.3f} px against its stored flow; {out / 'propagate.png'}"
    )
    summary.update(
        dataset=str(dataset),
        verified=report.ok,
        content_digest=result.manifest["content_digest"],
        train_samples=num_train,
        val_samples=len(val),
        settings=asdict(settings),
        seconds=seconds,
        train={**trained, "iters": iters, "log": str(out / "train" / "log.csv")},
        eval=scores["methods"],
        propagate={
            "sample_id": sample.sample_id,
            "input": str(image_path),
            "picture": str(out / "propagate.png"),
            "guides": guides,
            "epe": propagate_epe,
        },
    )
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
