"""GPU figures: RAFT speed per pair against batched half precision, and the pipeline's GPU path.

Needs a CUDA device; without one, :func:`measure` returns ``{"skipped": "no CUDA device"}``.

Inputs are synthetic frames (:class:`cmpdata.synth.clips.SyntheticClip`, 416 x 560, the default
short side) made in memory, so nothing has to be decoded or downloaded. RAFT runs with random
weights (``random_init``): speed does not depend on the weights, and its error would mean
nothing. Given weights (``--weights-small`` / ``--weights-large`` / ``--weights-liteflownet``),
the end-point error on the
clips' exact ground truth is measured too.

Measured, ``repeats`` times each after one warm-up pass (cuDNN picks its kernels then):

- ``raft-small`` and ``raft-large`` (12 refinement updates) and ``liteflownet`` (its pairs/s
  at 416p next to RAFT's), numpy frames in and numpy flows
  out (host transfers included, as in the pipeline): one pair per forward pass in fp32 (the
  way per-pair tools run it) against ``batch_size`` pairs per pass in fp16 and bf16 autocast
  (the pipeline's path);
- when Ray is importable: ``extract`` with one GPU flow actor (``--num-gpus 1``, raft-small,
  fp16, random weights) on JPEG frame folders of synthetic clips (40 frames, every pair of
  gap 3), with the other CPUs decoding and encoding; and, on the same machine and clips,
  ``extract`` with DIS on every CPU (:func:`pipeline_figures`). Random weights give noisy
  flows that cost the codec more than smooth ones (one 416 x 560 pair on this project's
  2-core machine: 62 ms against 11 ms for the DIS flow), so the GPU figure is a lower bound.
  Without ``--quick`` the larger run holds over :data:`PIPELINE_PAIRS` pairs;
- ``train``: :func:`cmpmodel.train.train` of ResNet-50 (bf16 autocast, :data:`TRAIN_BATCH`
  samples a step, 320 px crops, the DataLoader's workers on the CPUs but one) on the dataset
  the DIS run wrote (made for it when ``pipeline`` is not asked for): samples/s per step and
  the share of a step spent waiting for data, leaving out each epoch's first batch (the
  workers' start; see :mod:`benchmarks.loading`);
- ``tuning`` (last, so that the other parts' figures are in the file before it starts):
  batched fp16 RAFT-small and RAFT-large again with each of :data:`TUNINGS` applied to the
  network (``channels_last`` weights; ``compile``: ``torch.compile``; ``cuda-graphs``:
  ``torch.compile(mode="reduce-overhead")``, which replays CUDA graphs), its first pass
  (compilation included) timed apart, the speed-up over the untuned run beside it. A tuning
  that fails is recorded with its error, and the next one runs.

Issue 16's GPU goals, each a figure with its verdict in ``make bench`` on a GPU machine
(:func:`benchmarks.runner.gpu_figures`): batched RAFT-small at :data:`GOAL_RAFT` pairs/s and
RAFT-large likewise; the whole ``extract`` run with one GPU actor at
:data:`GOAL_PIPELINE_SHARE` of batched fp16 RAFT-small's bare rate; ResNet-50 training at
:data:`GOAL_TRAIN_SAMPLES` samples/s, waiting for data at most :data:`GOAL_TRAIN_WAIT` of a
step.

Run ``python -m benchmarks.gpu [--quick] [--parts raft pipeline train tuning] [--tunings
channels_last compile cuda-graphs] [--weights-small FILE] [--weights-large FILE]``: prints a
table and writes ``bench-out/gpu.json``, after each part (a run cut short keeps what it
measured). The default parts are ``raft pipeline train``, and ``tuning`` with
``channels_last`` only: compiling RAFT takes minutes.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import machine, spread, write_result
from cmpdata.flow import build_flow
from cmpdata.synth.clips import SynthConfig, SyntheticClip

HEIGHT, WIDTH = 416, 560
GAP = 3
VARIANTS = ("raft-small", "raft-large", "liteflownet")
PIPELINE_FRAMES = 40  # frames a synthetic clip of the pipeline runs: 37 pairs of gap 3
PIPELINE_PAIRS = 5000  # the larger run holds at least this many pairs (not with --quick)
TRAIN_ARCH = "resnet50"
TRAIN_BATCH = 64  # samples a training step on the GPU
TRAIN_STEPS, TRAIN_STEPS_QUICK = 150, 30
GOAL_RAFT = {"raft-small": 300.0, "raft-large": 150.0}  # pairs/s batched, 416p, one GPU
GOAL_PIPELINE_SHARE = 0.85  # a whole extract run's pairs/s over bare batched RAFT-small's
GOAL_TRAIN_SAMPLES = 800.0  # ResNet-50 training samples/s on one GPU
GOAL_TRAIN_WAIT = 0.05  # at most this share of a training step spent waiting for data
TUNINGS = ("channels_last", "compile", "cuda-graphs")  # ways to run RAFT, tried one by one
TUNED = ("raft-small", "raft-large")  # the variants with a goal


Pair = tuple[np.ndarray, np.ndarray, np.ndarray]  # frame t, frame t + GAP, exact flow


def synthetic_pairs(count: int, frames_per_clip: int = 20) -> list[Pair]:
    """``count`` pairs (frame t, frame t + GAP, exact flow) from synthetic 416 x 560 clips."""
    pairs = []
    seed = 0
    while len(pairs) < count:
        clip = SyntheticClip(
            SynthConfig(height=HEIGHT, width=WIDTH, num_frames=frames_per_clip, seed=seed)
        )
        for t in range(frames_per_clip - GAP):
            if len(pairs) == count:
                break
            pairs.append((clip.frame(t), clip.frame(t + GAP), clip.flow(t, t + GAP)))
        seed += 1
    return pairs


def pairs_per_second(
    flow: Any, frames0: list[np.ndarray], frames1: list[np.ndarray], repeats: int
) -> dict[str, float]:
    """:func:`~benchmarks.common.spread` of ``flow``'s pairs/s over ``repeats`` passes, after
    one warm-up."""
    import torch

    flow(frames0, frames1)
    rates = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        flow(frames0, frames1)
        rates.append(len(frames0) / (time.perf_counter() - start))
    return spread(rates)


def end_point_error(flow: Any, pairs: list[Pair]) -> float:
    estimates = flow([a for a, _, _ in pairs], [b for _, b, _ in pairs])
    return float(
        np.mean(
            [
                np.linalg.norm(e - gt, axis=-1).mean()
                for e, (_, _, gt) in zip(estimates, pairs, strict=True)
            ]
        )
    )


def raft_figures(
    pairs: list[Pair], repeats: int, batch_size: int, weights: dict[str, str | None]
) -> list[dict[str, Any]]:
    """One row per (variant, way of running it)."""
    frames0 = [a for a, _, _ in pairs]
    frames1 = [b for _, b, _ in pairs]
    ways = (("fp32", 1), ("fp16", batch_size), ("bf16", batch_size))
    rows = []
    for variant in VARIANTS:
        for precision, batch in ways:
            flow = build_flow(
                variant, random_init=True, device="cuda", precision=precision, batch_size=batch
            )
            row = {
                "variant": variant,
                "precision": precision,
                "batch_size": batch,
                "pairs_per_s": pairs_per_second(flow, frames0, frames1, repeats),
            }
            if weights.get(variant):
                trained = build_flow(
                    variant,
                    weights=weights[variant],
                    device="cuda",
                    precision=precision,
                    batch_size=batch,
                )
                row["epe_px"] = end_point_error(trained, pairs)
            rows.append(row)
        base = rows[-3]["pairs_per_s"]["median"]
        for row in rows[-3:]:
            row["speed_up"] = row["pairs_per_s"]["median"] / base
    return rows


def tune(flow: Any, tuning: str) -> None:
    """Apply ``tuning`` (one of :data:`TUNINGS`) to ``flow``'s network."""
    import torch

    if tuning == "channels_last":
        flow.model.to(memory_format=torch.channels_last)
    elif tuning == "compile":
        flow.model = torch.compile(flow.model)
    elif tuning == "cuda-graphs":
        flow.model = torch.compile(flow.model, mode="reduce-overhead")
    else:
        raise ValueError(f"unknown tuning {tuning!r}; choose from {TUNINGS}")


def tuning_figures(
    pairs: list[Pair],
    repeats: int,
    batch_size: int,
    tunings: tuple[str, ...],
    untuned: list[dict[str, Any]],
    device: str = "cuda",
) -> list[dict[str, Any]]:
    """One row per (variant of :data:`TUNED`, tuning): batched fp16 on ``device`` (fp32 off
    CUDA, for tests), the first pass's seconds (compilation), pairs/s after it and, where
    ``untuned`` (:func:`raft_figures`' rows) has the same variant, precision and batch, the
    speed-up over it. A tuning that raises gives a row with ``error`` instead."""
    import torch

    frames0 = [a for a, _, _ in pairs]
    frames1 = [b for _, b, _ in pairs]
    precision = "fp16" if device == "cuda" else "fp32"
    rows = []
    for variant in TUNED:
        base = next(
            (
                r["pairs_per_s"]["median"]
                for r in untuned
                if (r["variant"], r["precision"], r["batch_size"])
                == (variant, precision, batch_size)
            ),
            None,
        )
        for tuning in tunings:
            row: dict[str, Any] = {
                "variant": variant,
                "precision": precision,
                "batch_size": batch_size,
                "tuning": tuning,
            }
            try:
                flow = build_flow(
                    variant,
                    random_init=True,
                    device=device,
                    precision=precision,
                    batch_size=batch_size,
                )
                tune(flow, tuning)
                start = time.perf_counter()
                flow(frames0[:batch_size], frames1[:batch_size])
                row["first_pass_s"] = time.perf_counter() - start
                row["pairs_per_s"] = pairs_per_second(flow, frames0, frames1, repeats)
            except Exception as exc:  # a tuning torch cannot apply here is a finding, not a crash
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
            else:
                if base:
                    row["over_untuned"] = row["pairs_per_s"]["median"] / base
            rows.append(row)
            if tuning in ("compile", "cuda-graphs"):
                torch._dynamo.reset()  # the next compiled network starts from a clean cache
    return rows


def write_frame_folder(folder: Path, seed: int, frames: int) -> str:
    """Synthetic clip ``seed`` as a folder of JPEG frames (no ffmpeg needed): its path."""
    clip = SyntheticClip(SynthConfig(height=HEIGHT, width=WIDTH, num_frames=frames, seed=seed))
    folder.mkdir(parents=True)
    for t in range(frames):
        image = cv2.cvtColor(clip.frame(t), cv2.COLOR_RGB2BGR)
        cv2.imwrite(str(folder / f"{t:05d}.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return str(folder)


def write_frame_folders(root: Path, clips: int, frames: int) -> list[str]:
    """``clips`` synthetic clips as JPEG frame folders under ``root``, drawn on every CPU (a
    frame takes ~20 ms: 5,000 of them would take minutes on one core); their paths."""
    folders = [root / f"clip{i:03d}" for i in range(clips)]
    # Spawned, not forked: this process may hold CUDA and Ray's threads by now.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(clips, os.cpu_count() or 1), mp_context=context) as pool:
        return list(pool.map(write_frame_folder, folders, range(clips), [frames] * clips))


def pipeline_figures(root: Path, clips: int, frames: int, batch_size: int) -> dict[str, Any]:
    """``extract`` pairs/s with one GPU flow actor (raft-small fp16) and with DIS on the CPUs.

    Each way runs on the first half of the clips and on all of them, each run into a fresh
    directory under ``root`` (after one untimed run that starts Ray's workers). A run's time
    includes what does not grow with the input (planning, the flow actor's start: CUDA and the
    model), so besides each run's rate the *marginal* rate is reported: the extra pairs of the
    larger run over its extra seconds, the rate a long extraction approaches. The result's
    ``"dis_dataset"`` is the directory of DIS's run on all the clips.
    """
    import ray

    from cmpdata.config import ExtractConfig
    from cmpdata.io.pairs import PairConfig
    from pipelines.extract import RunSettings, ensure_ray, extract

    cpus = os.cpu_count() or 1
    start = time.perf_counter()
    ensure_ray(None, cpus)
    ray_start = time.perf_counter() - start
    pairs = PairConfig(gap=GAP, stride=1)
    ways = {
        "raft-small fp16, 1 GPU actor": (
            ExtractConfig(
                pairs=pairs,
                flow="raft-small",
                flow_options={"random_init": True, "precision": "fp16"},
            ),
            RunSettings(workers=cpus, num_gpus=1, batch_size=batch_size, progress=False),
        ),
        f"dis medium, {cpus} CPU workers": (
            ExtractConfig(pairs=pairs),
            RunSettings(workers=cpus, progress=False),
        ),
    }
    result: dict[str, Any] = {"ray_start_s": ray_start, "cpus": cpus, "runs": {}}
    inputs = write_frame_folders(root / "clips", clips, frames)
    runs = (("warm-up", inputs[:1]), ("half", inputs[: clips // 2]), ("all", inputs))
    for name, (config, run) in ways.items():
        timed = {}
        for label, chosen in runs:
            start = time.perf_counter()
            done = extract(chosen, root / f"{name.split()[0]}-{label}", config, run)
            timed[label] = (done.written, time.perf_counter() - start, done.complete)
        (half, half_s, _), (pairs_all, all_s, complete) = timed["half"], timed["all"]
        result["runs"][name] = {
            "pairs": pairs_all,
            "seconds": all_s,
            "pairs_per_s": pairs_all / all_s,
            "marginal_pairs_per_s": (pairs_all - half) / (all_s - half_s),
            "complete": complete,
        }
    result["dis_dataset"] = str(root / "dis-all")
    ray.shutdown()
    return result


def train_figures(dataset: Path, out: Path, steps: int, arch: str = TRAIN_ARCH) -> dict[str, Any]:
    """Samples/s and data wait of ``steps`` training steps of ``arch`` on ``dataset``, with
    :data:`TRAIN_BATCH` samples a step and a DataLoader worker on every CPU but one."""
    from benchmarks.loading import train_waits, wait_fractions

    workers = max(1, (os.cpu_count() or 1) - 1)
    waits = train_waits(dataset, workers, steps, out, arch=arch, batch_size=TRAIN_BATCH)
    fractions = wait_fractions(waits)
    return {
        "arch": arch,
        "batch_size": TRAIN_BATCH,
        "workers": workers,
        "steps": steps,
        "samples_per_s": spread([TRAIN_BATCH / s for s in fractions["steady_step_s"]]),
        "wait": {k: fractions[k] for k in ("steady", "overall")},
    }


PARTS = ("raft", "pipeline", "train", "tuning")


def training_set(root: Path, clips: int) -> Path:
    """A DIS dataset of ``clips`` synthetic clips written under ``root`` with every CPU, for
    the ``train`` part when the ``pipeline`` part did not write one."""
    import ray

    from cmpdata.config import ExtractConfig
    from cmpdata.io.pairs import PairConfig
    from pipelines.extract import RunSettings, extract

    inputs = write_frame_folders(root / "train-clips", clips, PIPELINE_FRAMES)
    config = ExtractConfig(pairs=PairConfig(gap=GAP, stride=1))
    extract(inputs, root / "train-set", config, RunSettings(progress=False))
    ray.shutdown()
    return root / "train-set"


def measure(
    quick: bool = False,
    weights: dict[str, str | None] | None = None,
    parts: tuple[str, ...] = PARTS,
    tunings: tuple[str, ...] = ("channels_last",),
    out: Path | None = None,
) -> dict[str, Any]:
    """The GPU figures of ``parts``, or ``{"skipped": reason}`` without a CUDA device; the
    result so far is written to ``out`` (when given) after each part."""
    import torch

    if not torch.cuda.is_available():
        result = {"skipped": "no CUDA device"}
        save(result, out)
        return result
    count, repeats, batch_size = (32, 2, 16) if quick else (96, 3, 16)
    pairs = synthetic_pairs(count if {"raft", "tuning"} & set(parts) else 0)
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(0),
        "machine": machine(),
        "versions": {"torch": torch.__version__, "cuda": torch.version.cuda},
    }
    if "raft" in parts:
        result["conditions"] = (
            f"{count} synthetic pairs of {HEIGHT}x{WIDTH}, 12 RAFT updates, random weights, "
            f"{repeats} timed passes after a warm-up"
        )
        result["raft"] = raft_figures(pairs, repeats, batch_size, weights or {})
        save(result, out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "pipeline" in parts:
            clips = 8 if quick else -(-PIPELINE_PAIRS // (PIPELINE_FRAMES - GAP))
            result["pipeline"] = pipeline_figures(root, clips, PIPELINE_FRAMES, batch_size)
            save(result, out)
        if "train" in parts:
            dataset = result.get("pipeline", {}).get("dis_dataset") or training_set(root, 8)
            steps = TRAIN_STEPS_QUICK if quick else TRAIN_STEPS
            result["train"] = train_figures(Path(dataset), root / "train-run", steps)
            save(result, out)
    if "tuning" in parts and tunings:
        untuned = result.get("raft", [])
        result["tuning"] = tuning_figures(pairs, repeats, batch_size, tunings, untuned)
        save(result, out)
    return result


def save(result: dict[str, Any], out: Path | None) -> None:
    if out is not None:
        write_result(result, out)


def print_table(result: dict[str, Any]) -> None:
    if "skipped" in result:
        print(f"GPU: skipped ({result['skipped']})")
        return
    print(f"GPU: {result['device']}; {result.get('conditions', '')}")
    print(
        f"{'variant':<12} {'precision':<9} {'batch':>5} {'pairs/s':>9} {'range':>15} "
        f"{'speed-up':>8} {'EPE px':>7}"
    )
    for row in result.get("raft", []):
        rate = row["pairs_per_s"]
        epe = f"{row['epe_px']:.3f}" if "epe_px" in row else "-"
        print(
            f"{row['variant']:<12} {row['precision']:<9} {row['batch_size']:>5} "
            f"{rate['median']:>9.1f} {rate['min']:>7.1f}-{rate['max']:<7.1f} "
            f"{row['speed_up']:>7.2f}x {epe:>7}"
        )
    for row in result.get("tuning", []):
        name = f"{row['variant']} {row['precision']} batch {row['batch_size']}, {row['tuning']}"
        if "error" in row:
            print(f"{name}: failed ({row['error']})")
            continue
        rate = row["pairs_per_s"]
        over = f", {row['over_untuned']:.2f}x untuned" if "over_untuned" in row else ""
        print(
            f"{name}: {rate['median']:.1f} pairs/s ({rate['min']:.1f}-{rate['max']:.1f}){over}; "
            f"first pass {row['first_pass_s']:.1f} s"
        )
    pipeline = result.get("pipeline", {"skipped": "not asked for"})
    if "skipped" in pipeline:
        print(f"pipeline: skipped ({pipeline['skipped']})")
    else:
        print(f"pipeline (Ray start {pipeline['ray_start_s']:.1f} s, {pipeline['cpus']} CPUs):")
        for name, run in pipeline["runs"].items():
            print(
                f"  {name:<32} {run['pairs']:>5} pairs {run['seconds']:>7.1f} s "
                f"{run['pairs_per_s']:>7.1f} pairs/s, marginal "
                f"{run['marginal_pairs_per_s']:>7.1f} pairs/s"
            )
    training = result.get("train")
    if training:
        rate, wait = training["samples_per_s"], training["wait"]
        print(
            f"training {training['arch']}, batch {training['batch_size']}, "
            f"{training['workers']} workers: {rate['median']:.0f} samples/s "
            f"({rate['min']:.0f}-{rate['max']:.0f}), data wait {wait['steady']:.1%} of a step "
            f"({wait['overall']:.1%} with each epoch's start)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="fewer pairs and repeats")
    parser.add_argument("--weights-small", help="raft-small weights file: also measure its error")
    parser.add_argument("--weights-large", help="raft-large weights file: also measure its error")
    parser.add_argument(
        "--weights-liteflownet", help="network-*.pytorch file: also measure LiteFlowNet's error"
    )
    parser.add_argument(
        "--parts", nargs="+", choices=PARTS, default=list(PARTS), help="default: %(default)s"
    )
    parser.add_argument(
        "--tunings",
        nargs="*",
        choices=TUNINGS,
        default=["channels_last"],
        help="ways of running batched fp16 RAFT tried in the part tuning (default: %(default)s)",
    )
    parser.add_argument("--out", type=Path, default=Path("bench-out/gpu.json"))
    args = parser.parse_args(argv)
    weights = {
        "raft-small": args.weights_small,
        "raft-large": args.weights_large,
        "liteflownet": args.weights_liteflownet,
    }
    # measure writes args.out after each part
    result = measure(args.quick, weights, tuple(args.parts), tuple(args.tunings), args.out)
    print_table(result)


if __name__ == "__main__":
    main()
