"""The benchmark runner: every part in one process, on the same inputs, one table, one JSON.

``make bench`` runs ``python -m benchmarks``; ``python -m benchmarks flow codec`` runs some
parts; ``python -m benchmarks.<part>`` runs one (and writes ``bench-out/<part>.json``).
Inputs: synthetic clips written to a temporary directory (``--clips``, ``--frames``) and any
``--videos``; nothing is downloaded. Parts, in order:

==========  ===================================================================
decode      frames/s of the project's decoders, decord and OpenCV
flow        pairs/s and end-point error of DIS, Farneback, RAFT (CPU)
guidance    the watershed + grid sampler against the original's structure
codec       flow bytes and error, ours against the original CMP format
storage     shard bytes per sample, write and read speeds
loading     DataLoader samples/s with 0-2 workers; data wait of training steps
extract     ``cmpdata extract`` against an in-process loop; 1 -> 2 workers
gpu         RAFT and the pipeline on a GPU (``benchmarks.gpu``), when CUDA is there
==========  ===================================================================

``results.json`` holds the machine, the versions, every part's figures (see
:mod:`benchmarks.common`), conditions and details, GPU results saved on another machine
(``--gpu-json``, by default ``bench-out/gpu*.json``; included with the ``gpu`` part, labelled
with that machine, when this one has no GPU) and the projections for the paper's dataset
sizes. A part that fails is reported as such and the others still run; the exit status is
then 1.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    Bench,
    Figure,
    figure,
    format_table,
    machine,
    make_bench,
    number,
    versions,
    write_result,
)

PARTS = ("decode", "flow", "guidance", "codec", "storage", "loading", "extract", "gpu")
OUT = Path("bench-out")
CLIPS, CLIPS_QUICK = 6, 2
#: the paper's dataset sizes, in frame pairs (REFERENCE.md)
PAPER_SIZES = {
    "YFCC": 1_260_000,
    "YFCC + YouTube": 3_220_000,
    "YFCC + YouTube + VIP + MPII": 4_570_000,
}
#: figure keys the projections read: the rate, and what it was measured on
RATES = {
    "2 cores (extract 2w, whole runs)": "extract.extract_2w.pairs_per_s",
    "2 cores (extract 2w, pipeline only)": "extract.extract_2w.pipeline_pairs_per_s",
    "1 GPU (extract, one GPU actor, whole run)": "gpu.pipeline_1gpu.pairs_per_s",
    "1 GPU (extract, one GPU actor, marginal)": "gpu.pipeline_1gpu.marginal_pairs_per_s",
}
CORES_KEY = "extract.extract_2w.pairs_per_s"


def median_figure(
    part: str, name: str, rate: dict[str, float], unit: str, **options: Any
) -> Figure:
    """A figure of the median of a :func:`~benchmarks.common.spread` saved in a result, with its
    range; ``options`` are :func:`~benchmarks.common.figure`'s keywords."""
    spread = {k: rate[k] for k in ("min", "max") if k in rate}
    return figure(part, name, rate["median"], unit, stat="median", spread=spread, **options)


def gpu_figures(result: dict[str, Any], part: str) -> list[Figure]:
    """The figures of :func:`benchmarks.gpu.measure`'s result: RAFT pairs/s per variant,
    precision and batch, untuned and tuned; the pipeline's runs; training. Issue 16's GPU goals
    (:data:`benchmarks.gpu.GOAL_RAFT` and the others) go on their figures. Rows it does not
    recognise are left out (the result is kept whole in ``results.json``)."""
    from benchmarks.gpu import (
        GOAL_PIPELINE_SHARE,
        GOAL_RAFT,
        GOAL_TRAIN_SAMPLES,
        GOAL_TRAIN_WAIT,
        PIPELINE_PAIRS,
    )

    figures = []
    bare = None  # batched fp16 RAFT-small, the rate a GPU run of extract is held against
    # Untuned rows, then the tuned ones (``tuning`` names the tuning; a failed one has ``error``).
    for row in [*result.get("raft", []), *result.get("tuning", [])]:
        rate, tuning = row.get("pairs_per_s", {}), row.get("tuning")
        variant, batch = row.get("variant"), row.get("batch_size", 1)
        name = f"{variant} {row.get('precision')}, batch {batch}" + (
            f", {tuning}" if tuning else ""
        )
        if "median" not in rate:
            if "error" in row:
                figures.append(figure(part, name, None, "", note=f"failed: {row['error']}"))
            continue
        notes = []
        if "speed_up" in row:
            notes.append(f"{row['speed_up']:.2f}x batch 1 fp32")
        if "over_untuned" in row:
            notes.append(f"{row['over_untuned']:.2f}x untuned")
        if "epe_px" in row:
            notes.append(f"EPE {row['epe_px']:.3f} px")
        if "first_pass_s" in row:
            notes.append(f"first pass {row['first_pass_s']:.1f} s")
        if (variant, row.get("precision"), tuning) == ("raft-small", "fp16", None) and batch > 1:
            bare = rate["median"]
        target = GOAL_RAFT.get(variant) if batch > 1 else None
        figures.append(
            median_figure(
                part,
                name,
                rate,
                "pairs/s",
                note="; ".join(notes),
                goal=(">=", target) if target else None,
            )
        )
    pipeline = result.get("pipeline", {})
    for name, run in pipeline.get("runs", {}).items():
        # The run with a GPU actor feeds the projections.
        gpu = "gpu" in name.lower()
        key = "gpu.pipeline_1gpu" if gpu else None
        rates = {"pairs_per_s": "", "marginal_pairs_per_s": ", marginal"}
        for field, suffix in rates.items():
            if field in run:
                figures.append(
                    figure(
                        part,
                        f"extract: {name}{suffix}",
                        run[field],
                        "pairs/s",
                        note=f"{run.get('pairs')} pairs" if not suffix else "a long run's rate",
                        key=f"{key}.{field}" if key else None,
                    )
                )
        if gpu and bare and "pairs_per_s" in run:
            pairs = run.get("pairs", 0)
            figures.append(
                figure(
                    part,
                    f"extract: {name}, whole run / bare batched RAFT",
                    run["pairs_per_s"] / bare,
                    "x",
                    note=f"{pairs} pairs; the goal asks for {PIPELINE_PAIRS}+"
                    if pairs < PIPELINE_PAIRS
                    else f"{pairs} pairs, bare {bare:.0f} pairs/s",
                    goal=(">=", GOAL_PIPELINE_SHARE),
                )
            )
    if "skipped" in pipeline:
        figures.append(figure(part, "extract", None, "", note=f"skipped: {pipeline['skipped']}"))
    training = result.get("train", {})
    if "median" in training.get("samples_per_s", {}):
        rate = training["samples_per_s"]
        name = f"{training.get('arch')} training, {training.get('workers')} workers"
        figures += [
            median_figure(
                part,
                f"{name}: samples/s",
                rate,
                "samples/s",
                note=f"batch {training.get('batch_size')}, {training.get('steps')} steps",
                goal=(">=", GOAL_TRAIN_SAMPLES),
            ),
            figure(
                part,
                f"{name}: data wait",
                training["wait"]["steady"],
                "of a step",
                note=f"overall {training['wait']['overall']:.2f} with each epoch's start",
                goal=("<=", GOAL_TRAIN_WAIT),
            ),
        ]
    return figures


def measure_gpu(bench: Bench) -> dict[str, Any]:
    """:func:`benchmarks.gpu.measure` when it imports and CUDA is there; else skipped."""
    import torch

    try:
        gpu = importlib.import_module("benchmarks.gpu")
    except ImportError as exc:
        return {"skipped": f"benchmarks.gpu does not import ({exc})"}
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device"}
    options: dict[str, Any] = {"quick": bench.quick}
    if "weights" in inspect.signature(gpu.measure).parameters:
        options["weights"] = bench.weights
    result = gpu.measure(**options)
    if "skipped" in result:
        return {"skipped": result["skipped"]}
    conditions = {
        k: result[k] for k in ("device", "conditions", "machine", "versions") if k in result
    }
    return {"figures": gpu_figures(result, "gpu"), "conditions": conditions, "details": result}


def measure_function(part: str) -> Callable[[Bench], dict[str, Any]]:
    if part == "gpu":
        return measure_gpu
    return importlib.import_module(f"benchmarks.{part}").measure


def saved_gpu(path: Path) -> dict[str, Any] | None:
    """A GPU result saved by ``python -m benchmarks.gpu`` on another machine, labelled with
    that machine; None when the file is absent or holds a skip. Raises ``ValueError`` for a
    file that is not such a result."""
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a saved GPU result ({exc})") from None
    if not isinstance(result, dict):
        raise ValueError(f"{path}: not a saved GPU result (a JSON object was expected)")
    if "skipped" in result:
        return None
    device = result.get("device", "an unnamed GPU")
    return {
        "file": str(path),
        "measured_on": {"device": device, **result.get("machine", {})},
        "figures": gpu_figures(result, f"gpu (saved: {device})"),
        "result": result,
    }


def projections(figures: Sequence[Figure]) -> dict[str, Any]:
    """Hours to extract the paper's datasets at the measured rates, with the arithmetic.

    A rate is read from the figure with its key (:data:`RATES`); rates not measured are left
    out. Whole runs include planning and the start and end of a small job, which a long job
    pays once: the pipeline-only rate is nearer what a long job sustains. N nodes of c cores
    are projected from the whole-run 2-core rate per core, assuming linear scaling (what
    ``scaling 1 -> 2 workers`` measures on one node).
    """
    values = {f["key"]: f["value"] for f in figures if f.get("key") and f["value"] is not None}
    rates = {label: values[key] for label, key in RATES.items() if key in values}
    out: dict[str, Any] = {"rates_pairs_per_s": rates, "datasets": {}}
    for name, pairs in PAPER_SIZES.items():
        rows = {}
        for label, rate in rates.items():
            hours = pairs / rate / 3600
            rows[label] = {
                "hours": hours,
                "arithmetic": f"{pairs:,} / {number(rate)} / 3600 = {number(hours)} h",
            }
        out["datasets"][f"{name} ({pairs / 1e6:.2f}M pairs)"] = rows
    if CORES_KEY in values:
        per_core = values[CORES_KEY] / 2
        out["per_core_pairs_per_s"] = per_core
        out["nodes"] = (
            f"hours on N nodes of c cores = pairs / ({number(per_core)} x c x N) / "
            "3600, assuming linear scaling"
        )
    return out


def conditions_line(part: str, conditions: dict[str, Any]) -> str:
    """The scalar conditions of a part, on one line (nested ones are in the JSON)."""
    simple = {
        k: v
        for k, v in conditions.items()
        if isinstance(v, (str, int, float, list)) and len(str(v)) < 60
    }
    return f"[{part}] " + ", ".join(f"{k} {v}" for k, v in simple.items())


def print_report(results: dict[str, Any]) -> None:
    m, v = results["machine"], results["versions"]
    print(
        f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']} GB, {m['os']}, "
        f"GPU {m['gpu'] or 'none'}; load {m['load_average'][0]} at the start, "
        f"{results['load_average_end'][0]} at the end"
    )
    print("versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val))
    print(
        f"median of the repeats unless noted; range = min-max (count); "
        f"{results['seconds']:.0f} s in all\n"
    )
    print(format_table(results["figures"]))
    print()
    for part, result in results["parts"].items():
        if "conditions" in result:
            print(conditions_line(part, result["conditions"]))
    for saved in results.get("gpu_saved", []):
        print(f"[gpu (saved)] from {saved['file']}, measured on {saved['measured_on']}")
    print("\nprojections for the paper's datasets:")
    for dataset, rows in results["projections"]["datasets"].items():
        for label, row in rows.items():
            print(f"  {dataset}, {label}: {row['arithmetic']}")
    if "nodes" in results["projections"]:
        print(f"  {results['projections']['nodes']}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the parts ``args`` names; print the table, write the JSON; the results."""
    parts = args.parts or list(PARTS)
    weights = {"raft-small": args.raft_small_weights, "raft-large": args.raft_large_weights}
    start = time.perf_counter()
    about = {"machine": machine(), "versions": versions(), "command": sys.argv}
    results: dict[str, Any] = {**about, "parts": {}, "figures": []}
    clips = args.clips if args.clips is not None else (CLIPS_QUICK if args.quick else CLIPS)
    with tempfile.TemporaryDirectory(prefix="cmp-bench-") as tmp:
        print(f"writing {clips} synthetic clips ...", flush=True)
        bench = make_bench(Path(tmp), clips, args.frames, args.videos, args.quick, weights)
        for part in parts:
            print(f"[{part}] ...", flush=True)
            part_start = time.perf_counter()
            try:
                result = measure_function(part)(bench)
            except Exception as exc:  # one failed part must not cost the others' figures
                traceback.print_exc()
                result = {"error": f"{type(exc).__name__}: {exc}"}
            result["seconds"] = time.perf_counter() - part_start
            print(f"[{part}] {result['seconds']:.0f} s", flush=True)
            results["parts"][part] = result
            if "skipped" in result or "error" in result:
                reason = result.get("skipped") or f"FAILED: {result['error']}"
                results["figures"].append(figure(part, "-", None, "", note=reason))
            results["figures"] += result.get("figures", [])
    gpu_ran = any(f["part"] == "gpu" and f["value"] is not None for f in results["figures"])
    if "gpu" in parts and not gpu_ran:
        results["gpu_saved"] = []
        for path in sorted(OUT.glob("gpu*.json")) if args.gpu_json is None else args.gpu_json:
            try:
                saved = saved_gpu(path)
            except ValueError as exc:  # the figures measured so far matter more than this file
                print(f"left out: {exc}", file=sys.stderr)
                continue
            if saved is not None:
                results["gpu_saved"].append(saved)
                results["figures"] += saved["figures"]
    results["projections"] = projections(results["figures"])
    results["seconds"] = time.perf_counter() - start
    results["load_average_end"] = list(machine()["load_average"])
    print_report(results)
    write_result(results, args.out)
    return results


def build_parser(part: str | None = None) -> argparse.ArgumentParser:
    """The options of the runner, or of one part run alone (``part``)."""
    prog = f"python -m benchmarks.{part}" if part else "python -m benchmarks"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    if part is None:
        parser.add_argument(
            "parts",
            nargs="*",
            metavar="PART",
            help=f"parts to run (default: all): {', '.join(PARTS)}",
        )
    else:
        parser.set_defaults(parts=[part])
    parser.add_argument(
        "--videos",
        type=Path,
        nargs="+",
        default=[],
        metavar="FILE",
        help="video files to measure too",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="fewer clips and repeats: for trying the benchmarks out",
    )
    parser.add_argument(
        "--clips", type=int, help=f"synthetic clips (default {CLIPS}, {CLIPS_QUICK} with --quick)"
    )
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic clip")
    parser.add_argument(
        "--raft-small-weights",
        metavar="FILE",
        help="raft_small checkpoint: also measure its end-point error",
    )
    parser.add_argument(
        "--raft-large-weights",
        metavar="FILE",
        help="raft_large checkpoint: also measure its end-point error",
    )
    parser.add_argument(
        "--gpu-json",
        type=Path,
        nargs="+",
        metavar="FILE",
        help="GPU results saved by `python -m benchmarks.gpu` on another machine, included "
        f"with the gpu part when this one has no GPU (default: {OUT}/gpu*.json)",
    )
    parser.add_argument("--out", type=Path, default=OUT / f"{part or 'results'}.json")
    return parser


def exit_status(results: dict[str, Any]) -> int:
    """1 when a part failed, else 0."""
    return int(any("error" in r for r in results["parts"].values()))


def checked(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """``args``, after refusing (exit 2, one line) unknown parts, missing videos or no clips."""
    unknown = [p for p in args.parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    missing = [str(v) for v in args.videos if not v.is_file()]
    if missing:
        parser.error(f"no such video file: {', '.join(missing)}")
    if args.clips is not None and args.clips < 1:
        parser.error(f"--clips must be at least 1, got {args.clips}")
    return args


def run_part(part: str, argv: list[str] | None = None) -> None:
    """``python -m benchmarks.<part>``: the runner on that part alone."""
    parser = build_parser(part)
    sys.exit(exit_status(run(checked(parser, parser.parse_args(argv)))))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    sys.exit(exit_status(run(checked(parser, parser.parse_args(argv)))))
