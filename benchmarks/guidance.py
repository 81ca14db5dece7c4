"""Guidance sampling speed: the project's ``watershed,grid`` sampler against a plain reference.

The reference follows the structure of the original CMP code with numpy/scipy, one call per
step: ``scipy.ndimage.sobel`` on each channel, ``distance_transform_edt``, ``maximum_filter``,
``np.where`` for the maxima, removal of the one-pixel image border, then a Python loop over the
close pairs of maxima that drops one of each pair at random, then the grid. Both run in this
process on the same synthetic flows (:mod:`cmpdata.synth`, 416 x 555 by default: moving
textured objects over a translating background, exact flow).

Run ``python -m benchmarks.guidance [--quick]``: prints a table and writes
``bench-out/guidance.json``. OpenCV is limited to one thread (``--threads``) so that both sides
use one core, as a data-loading worker does.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import cv2
import numpy as np
from scipy import ndimage

from benchmarks.common import write_result
from cmpdata.guidance import GuidanceConfig, Watershed, build_sampler
from cmpdata.seeding import sample_rng
from cmpdata.synth import SynthConfig, SyntheticClip

GOAL_SPEEDUP = 20.0


def reference_distance(flow: np.ndarray) -> np.ndarray:
    """Exact distance (px) of every pixel of a (H, W, 2) flow to the nearest motion edge."""
    edge = np.zeros(flow.shape[:2])
    for c in range(2):
        gx = ndimage.sobel(flow[..., c], axis=1, mode="reflect")
        gy = ndimage.sobel(flow[..., c], axis=0, mode="reflect")
        edge += np.sqrt(gx**2 + gy**2)
    edge /= max(edge.max(), 0.01)
    return ndimage.distance_transform_edt(edge <= 0.1)


def reference_watershed(
    flow: np.ndarray, rng: np.random.Generator, nms_ks: int = 15
) -> tuple[np.ndarray, np.ndarray]:
    """The original's ``watershed`` points, rows and columns, with its random thinning."""
    h, w = flow.shape[:2]
    ds = max(1, max(h, w) // 400)
    distance = reference_distance(flow[::ds, ::ds])
    peaks = (distance == ndimage.maximum_filter(distance, size=nms_ks)) & (distance > 0)
    peaks[0, :] = peaks[-1, :] = peaks[:, 0] = peaks[:, -1] = False
    ys, xs = np.where(peaks)
    radius = (nms_ks - 1) / 2
    close = (np.abs(ys[:, None] - ys[None, :]) < radius) & (
        np.abs(xs[:, None] - xs[None, :]) < radius
    )
    keep = np.ones(len(ys), bool)
    for i, j in zip(*np.nonzero(close), strict=True):
        if i != j and keep[i] and keep[j]:
            keep[i if rng.random() > 0.5 else j] = False
    return ys[keep] * ds, xs[keep] * ds


def reference_points(
    flow: np.ndarray, rng: np.random.Generator, nms_ks: int = 15, bg_ratio: float = 1 / 6400
) -> np.ndarray:
    """``watershed`` + ``grid`` the straightforward way: (K, 2) int64 (x, y) pixel positions."""
    h, w = flow.shape[:2]
    ys, xs = reference_watershed(flow, rng, nms_ks)
    stride = int(np.sqrt(1 / bg_ratio))
    gy, gx = np.meshgrid(
        np.arange((h % stride) // 2, h, stride), np.arange((w % stride) // 2, w, stride)
    )
    ys = np.concatenate([ys, gy.ravel()])
    xs = np.concatenate([xs, gx.ravel()])
    return np.unique(np.stack([xs, ys], axis=1), axis=0)


def watershed_quality(flows: list[np.ndarray]) -> dict[str, dict[str, float]]:
    """Watershed points alone: how many, and how far (px) from the nearest motion edge."""
    variants = {
        "cmp": Watershed(),
        "cmp exact": Watershed(exact=True),
        "reference": lambda f, rng: np.stack(reference_watershed(f, rng)[::-1], axis=1),
    }
    out = {}
    for name, watershed in variants.items():
        counts, distances = [], []
        for i, flow in enumerate(flows):
            xy = watershed(flow, sample_rng(0, str(i)))
            counts.append(len(xy))
            distances.append(reference_distance(flow)[xy[:, 1], xy[:, 0]])
        d = np.concatenate(distances)
        out[name] = {
            "points_mean": float(np.mean(counts)),
            "edge_distance_median_px": float(np.median(d)),
            "edge_distance_p5_px": float(np.percentile(d, 5)),
            "edge_distance_min_px": float(d.min()),
        }
    return out


def make_flows(count: int, size: tuple[int, int]) -> list[np.ndarray]:
    """``count`` synthetic flows of ``size`` (H, W), 3 frames apart, different scenes."""
    h, w = size
    return [
        SyntheticClip(SynthConfig(height=h, width=w, num_frames=4, num_objects=5, seed=s)).flow(
            0, 3
        )
        for s in range(count)
    ]


def time_per_flow(
    samplers: dict[str, Callable[[np.ndarray, np.random.Generator], object]],
    flows: list[np.ndarray],
    repeats: int,
) -> dict[str, np.ndarray]:
    """Milliseconds per call of each sampler, (repeats, len(flows)), after one warm-up pass.

    Each repeat runs every sampler over all the flows in turn, so a busy spell of the machine
    slows them alike, while a sampler still finds the caches as it left them.
    """
    times = {name: np.zeros((repeats, len(flows))) for name in samplers}
    for r in range(-1, repeats):
        for name, sampler in samplers.items():
            for i, flow in enumerate(flows):
                rng = sample_rng(r, str(i))
                start = time.perf_counter()
                sampler(flow, rng)
                if r >= 0:
                    times[name][r, i] = (time.perf_counter() - start) * 1e3
    return times


def summary(ms: np.ndarray) -> dict[str, float]:
    """Median and spread (25th-75th percentile, min, max) of a timing table, in ms."""
    q25, q50, q75 = np.percentile(ms, [25, 50, 75])
    return {
        "median_ms": float(q50),
        "p25_ms": float(q25),
        "p75_ms": float(q75),
        "min_ms": float(ms.min()),
        "max_ms": float(ms.max()),
    }


def run(num_flows: int, repeats: int, size: tuple[int, int], threads: int) -> dict[str, object]:
    """Time the samplers on the same flows; compare their point counts and placement."""
    cv2.setNumThreads(threads)
    flows = make_flows(num_flows, size)
    config = GuidanceConfig.resnet()
    samplers = {
        "cmp": build_sampler(config),
        "cmp exact": build_sampler(replace(config, watershed_exact=True)),
        "reference": reference_points,
    }
    times = time_per_flow(samplers, flows, repeats)
    rows: dict[str, dict[str, object]] = {}
    for name, sampler in samplers.items():
        points = [len(sampler(f, sample_rng(0, str(i)))) for i, f in enumerate(flows)]
        rows[name] = {**summary(times[name]), "points": points}
    reference = rows["reference"]["median_ms"]
    for row in rows.values():
        row["speedup"] = reference / row["median_ms"]
    return {
        "size_hw": list(size),
        "num_flows": num_flows,
        "repeats": repeats,
        "opencv_threads": threads,
        "config": asdict(config),
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "samplers": rows,
        "watershed_only": watershed_quality(flows),
        "goal_speedup": GOAL_SPEEDUP,
    }


def print_table(result: dict[str, object]) -> None:
    h, w = result["size_hw"]
    print(
        f"guidance watershed+grid on {result['num_flows']} flows of {h}x{w}, "
        f"{result['repeats']} repeats, OpenCV threads {result['opencv_threads']}"
    )
    print(
        f"{'sampler':<12}{'median ms':>10}{'p25':>8}{'p75':>8}{'min':>8}{'max':>8}"
        f"{'speed-up':>10}{'points':>16}"
    )
    for name, row in result["samplers"].items():
        counts = row["points"]
        points = f"{np.mean(counts):.1f} ({min(counts)}-{max(counts)})"
        print(
            f"{name:<12}{row['median_ms']:>10.2f}{row['p25_ms']:>8.2f}{row['p75_ms']:>8.2f}"
            f"{row['min_ms']:>8.2f}{row['max_ms']:>8.2f}{row['speedup']:>9.1f}x{points:>16}"
        )
    print("watershed points alone: count, distance to the nearest motion edge (px)")
    for name, row in result["watershed_only"].items():
        print(
            f"{name:<12}{row['points_mean']:>6.1f} points, "
            f"median {row['edge_distance_median_px']:.1f}, "
            f"5th percentile {row['edge_distance_p5_px']:.1f}, "
            f"min {row['edge_distance_min_px']:.1f}"
        )
    speedup = result["samplers"]["cmp"]["speedup"]
    verdict = "met" if speedup >= GOAL_SPEEDUP else "NOT met"
    print(f"cmp speed-up (median): {speedup:.1f}x (goal {GOAL_SPEEDUP:.0f}x: {verdict})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 flows x 2 repeats")
    parser.add_argument("--flows", type=int, default=10, help="number of different flows")
    parser.add_argument("--repeats", type=int, default=5, help="timed passes over the flows")
    parser.add_argument("--height", type=int, default=416)
    parser.add_argument("--width", type=int, default=555)
    parser.add_argument("--threads", type=int, default=1, help="OpenCV threads")
    parser.add_argument("--out", type=Path, default=Path("bench-out/guidance.json"))
    args = parser.parse_args(argv)
    flows, repeats = (3, 2) if args.quick else (args.flows, args.repeats)
    result = run(flows, repeats, (args.height, args.width), args.threads)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
