"""Optical flow: speed and end-point error of every backend on the same synthetic pairs.

Pairs: the default pairs (t, t + 3, every 10 frames) of the synthetic clips, decoded from
their mp4 files at 416 x 560 (the default short side), with the clips' exact flow.

- OpenCV backends (DIS ``ultrafast``, ``fast``, ``medium``; Farneback) on one OpenCV thread,
  as in the pipeline's workers: pairs/s over whole passes over the pairs, and the mean
  end-point error (px, every pixel; the error on pixels still visible in the second frame is
  in the details). The zero flow's error is the yardstick.
- RAFT small and large (torchvision) on the CPU, one pair per forward pass, 12 updates, torch
  on its default threads: pairs/s with random weights (speed does not depend on them; the
  error would mean nothing). With weights (``--raft-small-weights FILE``,
  ``--raft-large-weights FILE``) the speed is that of the trained model and its error is
  measured on the first :data:`RAFT_EPE_PAIRS` pairs.

``python -m benchmarks.flow``.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from benchmarks.common import Bench, TruthPair, interleaved, measured, stopwatch
from cmpdata.flow import FlowBackend, build_flow

PART = "flow"
CPU_BACKENDS: dict[str, tuple[str, dict[str, Any]]] = {
    "dis ultrafast": ("dis", {"preset": "ultrafast"}),
    "dis fast": ("dis", {"preset": "fast"}),
    "dis medium": ("dis", {"preset": "medium"}),
    "farneback": ("farneback", {}),
}
RAFT_VARIANTS = ("raft-small", "raft-large")
RAFT_EPE_PAIRS = 4


def errors(flows: Sequence[np.ndarray], truth: Sequence[TruthPair]) -> dict[str, list[float]]:
    """Mean end-point error (px) of each flow against the exact one: every pixel, and the
    pixels still visible in the second frame."""
    out: dict[str, list[float]] = {"all": [], "visible": []}
    for flow, t in zip(flows, truth, strict=True):
        error = np.linalg.norm(flow - t.flow, axis=-1)
        out["all"].append(float(error.mean()))
        out["visible"].append(float(error[t.valid].mean()))
    return out


def pass_rate(backend: FlowBackend, truth: Sequence[TruthPair]) -> Callable[[], float]:
    """A timed pass of ``backend`` over the pairs of ``truth``, returning pairs/s."""
    frames0 = [t.pair.frame0 for t in truth]
    frames1 = [t.pair.frame1 for t in truth]
    return lambda: len(truth) / stopwatch(lambda: backend(frames0, frames1))


def cpu_figures(truth: list[TruthPair], repeats: int) -> tuple[list[dict[str, Any]], dict]:
    backends = {name: build_flow(kind, **options) for name, (kind, options) in CPU_BACKENDS.items()}
    frames0 = [t.pair.frame0 for t in truth]
    frames1 = [t.pair.frame1 for t in truth]
    errs = {name: errors(b(frames0, frames1), truth) for name, b in backends.items()}
    # The error pass above warmed every backend up.
    rates = interleaved({name: pass_rate(b, truth) for name, b in backends.items()}, repeats, 0)
    figures = []
    for name in backends:
        key = name.replace(" ", "_")
        figures.append(
            measured(PART, f"{name} speed", rates[name], "pairs/s", key=f"flow.{key}.pairs_per_s")
        )
        figures.append(
            measured(
                PART,
                f"{name} error",
                errs[name]["all"],
                "px EPE",
                stat="mean",
                note="range over pairs",
            )
        )
    zero = errors([np.zeros_like(t.flow) for t in truth], truth)
    figures.append(
        measured(PART, "zero flow error", zero["all"], "px EPE", stat="mean", note="the yardstick")
    )
    details = {
        name: {
            "epe_all_px": e["all"],
            "epe_visible_px": e["visible"],
            "epe_visible_mean_px": float(np.mean(e["visible"])),
        }
        for name, e in {**errs, "zero flow": zero}.items()
    }
    return figures, details


def raft_figures(
    truth: list[TruthPair], weights: dict[str, str | None], repeats: int, warmup: int
) -> tuple[list[dict[str, Any]], dict]:
    backends, figures, details = {}, [], {}
    for variant in RAFT_VARIANTS:
        given = weights.get(variant)
        source = {"weights": given} if given else {"random_init": True}
        backends[variant] = build_flow(variant, device="cpu", batch_size=1, **source)
    rates = interleaved({v: pass_rate(b, truth[:1]) for v, b in backends.items()}, repeats, warmup)
    for variant, backend in backends.items():
        trained = bool(weights.get(variant))
        seconds = 1 / statistics.median(rates[variant])
        weights_note = "trained weights" if trained else "random weights: speed only"
        note = f"{seconds:.1f} s a pair; {weights_note}"
        figures.append(
            measured(
                PART,
                f"{variant} speed (CPU)",
                rates[variant],
                "pairs/s",
                note=note,
                key=f"flow.{variant}.pairs_per_s",
            )
        )
        if trained:
            some = truth[:RAFT_EPE_PAIRS]
            e = errors(backend([t.pair.frame0 for t in some], [t.pair.frame1 for t in some]), some)
            figures.append(
                measured(
                    PART,
                    f"{variant} error",
                    e["all"],
                    "px EPE",
                    stat="mean",
                    note=f"{len(some)} pairs",
                )
            )
            details[variant] = {"epe_all_px": e["all"], "epe_visible_px": e["visible"]}
    return figures, details


def measure(bench: Bench) -> dict[str, Any]:
    """Pairs/s and end-point error of every backend (module docstring)."""
    import torch

    cv2.setNumThreads(1)
    truth = bench.truth_pairs
    repeats = 1 if bench.quick else 3
    figures, details = cpu_figures(truth, repeats)
    # A CPU forward pass of RAFT at 416p takes seconds: few calls.
    raft_repeats, raft_warmup = (1, 0) if bench.quick else (2, 1)
    raft, raft_details = raft_figures(truth, bench.weights, raft_repeats, raft_warmup)
    h, w = truth[0].pair.size
    conditions = {
        "pairs": len(truth),
        "size_hw": [h, w],
        "source": "synthetic clips' mp4, decoded; exact flow as the truth",
        "opencv_threads": 1,
        "repeats": repeats,
        "raft": {
            "device": "cpu",
            "batch_size": 1,
            "num_flow_updates": 12,
            "torch_threads": torch.get_num_threads(),
            "pairs_timed": 1,
            "repeats": raft_repeats,
            "warmup": raft_warmup,
            "weights": {v: bench.weights.get(v) for v in RAFT_VARIANTS},
        },
    }
    return {
        "figures": figures + raft,
        "conditions": conditions,
        "details": {**details, **raft_details},
    }


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import run_part

    run_part(PART, argv)


if __name__ == "__main__":
    main()
