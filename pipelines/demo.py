"""``make demo``: the whole job on synthetic clips, with pictures and figures to look at.

1. the per-sample stages on three synthetic clips, with their error against ground truth
   (:func:`cmpdata.demo.run_stage_demo`);
2. ``extract`` of those clips into a dataset of shards through the local Ray;
3. ``verify`` of that dataset and ``show`` pictures of a few of its samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cmpdata.config import ExtractConfig
from cmpdata.demo import run_stage_demo
from cmpdata.tools import format_verify, show_sample, verify_dataset
from pipelines.extract import RunSettings, extract


def run_demo(
    out_dir: str | Path, clips: int = 3, seed: int = 0, flow: str = "dis"
) -> dict[str, Any]:
    """Run the demo into ``out_dir``; returns the figures (also in ``summary.json``)."""
    out = Path(out_dir)
    summary = run_stage_demo(out, clips=clips, seed=seed, flow=flow)
    print(f"stages: {summary['pairs']} pairs, mean end-point error {summary['epe_mean']:.3f} px "
          f"({flow}) against {summary['epe_zero_mean']:.3f} px for zero flow")  # fmt: skip
    config = ExtractConfig(flow=flow, seed=seed, shard_size=8, val_fraction=0.34)
    result = extract([str(out / "clips" / "*.mp4")], out / "dataset", config,
                     RunSettings(overwrite=True))  # fmt: skip
    print(result.summary())
    report = verify_dataset(out / "dataset")
    print(format_verify(report))
    pictures = [show_sample(out / "dataset", i, out / f"show-{i:02d}.png", guidance_scale=3.0)
                for i in (0, result.written // 2)]  # fmt: skip
    print("pictures: " + ", ".join(str(p) for p in pictures))
    return {**summary, "dataset": str(out / "dataset"), "verified": report.ok,
            "content_digest": result.manifest["content_digest"]}  # fmt: skip
