"""``cmpdata demo``: the stages end to end on synthetic clips, with pictures to look at.

Synthetic clips have exact ground-truth flow, so the demo can say how good the estimated
flow is (end-point error against the zero-flow baseline) as well as show it.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmpdata.config import ExtractConfig
from cmpdata.flow import build_flow, resize_flow
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.io.pairs import PairConfig
from cmpdata.io.sources import find_sources
from cmpdata.records import Dropped, GuidedSample
from cmpdata.stages import process_source
from cmpdata.synth.clips import load_ground_truth, make_clips
from cmpdata.synth.metrics import endpoint_error
from cmpdata.viz import color_wheel_legend, draw_guidance, flow_to_color, panel, save_png


def ground_truth_for(sample: GuidedSample, clips_dir: Path) -> np.ndarray:
    """The synthetic ground truth of a sample, cropped and resized as its frames were."""
    pair = sample.sample.pair
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
    flow = sample.sample.flow
    top = float(max(np.linalg.norm(gt, axis=-1).max(), 1.0))
    return panel(
        [
            draw_guidance(sample.sample.pair.frame0, sample.guidance, scale=3.0),
            flow_to_color(flow, max_magnitude=top),
            flow_to_color(gt, max_magnitude=top),
            color_wheel_legend(size=160, max_magnitude=top),
        ],
        [
            f"{sample.sample.sample_id}: {len(sample.guidance)} guidance points, arrows x3",
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
    sources = find_sources([str(clips_dir / "*.mp4")])[:staged]
    for source in tqdm(sources, desc="demo clips", unit="clip"):
        for item in process_source(source, backend, sampler, config):
            if isinstance(item, Dropped):
                dropped.append(item)
                continue
            gt = ground_truth_for(item, clips_dir)
            flow_field = item.sample.flow
            rows.append(
                {
                    "sample_id": item.sample.sample_id,
                    "epe": endpoint_error(flow_field, gt),
                    "epe_zero": endpoint_error(np.zeros_like(gt), gt),
                    "valid_fraction": float(item.sample.valid.mean()),
                    "guidance_points": len(item.guidance),
                }
            )
            name = item.sample.sample_id.replace("/", "_").replace("#", "_")
            save_png(out / "pictures" / f"{name}.png", sample_picture(item, gt, backend.name))
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
