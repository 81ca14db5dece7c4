"""End-to-end extraction speed: the Ray pipeline (:mod:`pipelines.extract`) against a loop.

Inputs: ``--clips`` synthetic clips (:func:`cmpdata.synth.make_clips`, 416 x 560, ``--frames``
frames each; with the default pairs, gap 3 and stride 10, a 40-frame clip gives 4 pairs) and
any ``--videos``. Every run gets the same inputs and the same :class:`ExtractConfig` (the
defaults: DIS flow, the default filters, guidance and codec) and writes to a fresh directory.

Measured, ``--repeats`` times each, interleaved so that a busy spell of the (shared) machine
slows them alike:

- ``loop``: the same stages in this process (:func:`cmpdata.process.process_source`: decode,
  frame filters, flow, flow filters, guidance; then :func:`cmpdata.shards.encode_sample` and
  :func:`cmpdata.shards.write_shard` in ``shard_size`` chunks of the planned pairs), OpenCV on
  one thread as in the pipeline's workers;
- ``extract`` through a local Ray with 1 and with 2 workers. Ray is started once, before any
  timing (its start-up is reported on its own), so every run reuses it. Its first run, while
  Ray's worker processes start and import the stages, is also reported on its own, not in the
  repeats. A run's time is the whole :func:`pipelines.extract.extract` call, planning
  included, and is split into planning (:func:`cmpdata.plan.plan_dataset`: probing the
  sources) and the pipeline (from the start of :func:`pipelines.extract.run_pipeline` to its
  last result, the driver's shard writing included).

Throughput is planned pairs per second (dropped pairs count: they were decoded too). The
loop's content digest (:func:`cmpdata.manifest.content_digest` over its encoded samples in plan
order) is compared with each manifest's ``content_digest``: the same stages and config must
give the same dataset (on inputs that decode: the loop leaves out a source whose decoding
fails, where the pipeline keeps the pairs it got).

Run ``python -m benchmarks.extract [--videos PATH...] [--clips N] [--repeats R] [--quick]``:
prints a table and writes ``bench-out/extract.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import ray

import pipelines.extract as pipeline
from benchmarks.common import write_result
from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError
from cmpdata.flow import build_flow
from cmpdata.guidance import build_sampler
from cmpdata.manifest import content_digest
from cmpdata.plan import split_of
from cmpdata.process import process_source
from cmpdata.records import Dropped
from cmpdata.shards import EncodedSample, encode_sample, shard_name, write_shard
from cmpdata.sources import find_sources
from cmpdata.synth import make_clips

HEIGHT, WIDTH = 416, 560  # synthetic clip size (px): short side 416, the default resize
WORKERS = (1, 2)
GOAL_RATIO = 1.0  # extract with 2 workers at least as fast as the loop


def run_loop(inputs: list[str], config: ExtractConfig, out: Path) -> dict[str, Any]:
    """The stages in this process, writing shards to ``out``: seconds, pairs, content digest.

    Sources are taken in id order and each one's pairs in frame order: the plan's order. A
    source that cannot be used is left out, as the plan leaves it out.
    """
    start = time.perf_counter()
    cv2.setNumThreads(1)
    flow = build_flow(config.flow, **config.flow_options)
    sampler = build_sampler(config.guidance)
    results: list[EncodedSample | Dropped] = []
    for source in find_sources(inputs):
        split = split_of(source.id, config.val_fraction)
        done: list[EncodedSample | Dropped] = []
        try:
            for r in process_source(source, flow, sampler, config):
                done.append(r if isinstance(r, Dropped) else
                            encode_sample(r, split, config.codec, config.jpeg_quality))  # fmt: skip
        except CmpDataError:
            continue
        # Frame-filter drops come out ahead of their batch; the plan orders pairs by frame.
        results += sorted(done, key=lambda r: r.t0)
    attrs = {"config": config.to_dict(), "flow_backend": flow.identity(),
             "codec": config.codec.params()}  # fmt: skip
    size = config.shard_size
    samples = [r for r in results if isinstance(r, EncodedSample)]
    for index, first in enumerate(range(0, len(results), size)):
        chunk = [r for r in results[first : first + size] if isinstance(r, EncodedSample)]
        write_shard(out / shard_name(index), chunk, {**attrs, "shard_index": index})
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": len(results),
        "written": len(samples),
        "content_digest": content_digest((s.sample_id, s.digest()) for s in samples),
    }


@contextlib.contextmanager
def timing(name: str, generator: bool, record: dict[str, float]) -> Iterator[None]:
    """Time each call of ``pipelines.extract.<name>`` into ``record[name]`` (seconds).

    ``extract`` calls the module's own names, so wrapping them there is the way to see its
    planning and its pipeline apart; a generator is timed until it is exhausted.
    """
    original: Callable[..., Any] = getattr(pipeline, name)

    def plain(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            record[name] = record.get(name, 0.0) + time.perf_counter() - start

    def streamed(*args: Any, **kwargs: Any) -> Iterator[Any]:
        start = time.perf_counter()
        try:
            yield from original(*args, **kwargs)
        finally:
            record[name] = record.get(name, 0.0) + time.perf_counter() - start

    setattr(pipeline, name, streamed if generator else plain)
    try:
        yield
    finally:
        setattr(pipeline, name, original)


def run_extract(
    inputs: list[str], config: ExtractConfig, workers: int, out: Path
) -> dict[str, Any]:
    """One ``extract`` call into ``out``: seconds (whole, planning, pipeline), pairs, digest."""
    record: dict[str, float] = {}
    settings = pipeline.RunSettings(workers=workers, progress=False)
    with timing("plan_dataset", False, record), timing("run_pipeline", True, record):
        start = time.perf_counter()
        result = pipeline.extract(inputs, out, config, settings)
        seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "plan_seconds": record["plan_dataset"],
        "pipeline_seconds": record["run_pipeline"],
        "pairs": result.computed,
        "written": result.written,
        "content_digest": result.manifest["content_digest"],
    }


def start_ray(cpus: int) -> float:
    """Start the local Ray that every ``extract`` run reuses; seconds it took."""
    # As extract itself would: Ray's C++ core logs recoverable conditions to stderr.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    start = time.perf_counter()
    # "local": a Ray of our own, even when another one runs on this (shared) machine.
    ray.init(address="local", num_cpus=cpus, include_dashboard=False, log_to_driver=False,
             logging_level="ERROR")  # fmt: skip
    return time.perf_counter() - start


def spread(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values),
            "values": values}  # fmt: skip


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread of a variant's runs: seconds and pairs/s, whole and by part."""
    out: dict[str, Any] = {"pairs": runs[0]["pairs"], "written": runs[0]["written"]}
    for key in ("seconds", "plan_seconds", "pipeline_seconds"):
        if key in runs[0]:
            out[key] = spread([r[key] for r in runs])
    out["pairs_per_s"] = spread([r["pairs"] / r["seconds"] for r in runs])
    if "pipeline_seconds" in runs[0]:
        out["pipeline_pairs_per_s"] = spread([r["pairs"] / r["pipeline_seconds"] for r in runs])
    return out


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "ray": ray.__version__,
        "opencv": cv2.__version__,
        "numpy": np.__version__,
    }


def measured(workers: int | None, inputs: list[str], config: ExtractConfig, out: Path
             ) -> dict[str, Any]:  # fmt: skip
    """One run into ``out``: the loop (``workers`` None) or ``extract``; with the load before."""
    load = os.getloadavg()[0]
    if workers is None:
        result = run_loop(inputs, config, out)
    else:
        result = run_extract(inputs, config, workers, out)
    return result | {"load_1min_before": load}


def run(videos: list[Path], clips: int, frames: int, repeats: int) -> dict[str, Any]:
    config = ExtractConfig()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="cmp-bench-extract-") as tmp:
        inputs = [str(p) for p in videos]
        if clips:
            files = make_clips(Path(tmp) / "clips", clips, height=HEIGHT, width=WIDTH,
                               num_frames=frames, gap=config.pairs.gap)  # fmt: skip
            inputs += [str(f.video) for f in files]
        ray_seconds = start_ray(max(WORKERS))
        # The first run after Ray's start waits for its worker processes to start and import
        # the stages: shown apart, so that the repeats compare the variants alike.
        first = measured(max(WORKERS), inputs, config, Path(tempfile.mkdtemp(dir=tmp)))
        print(f"  extract {max(WORKERS)}w first run: {first['seconds']:.1f} s", flush=True)
        variants = {"loop": None} | {f"extract {w}w": w for w in WORKERS}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for repeat in range(repeats):
            for name, workers in variants.items():
                result = measured(workers, inputs, config, Path(tempfile.mkdtemp(dir=tmp)))
                runs[name].append(result | {"repeat": repeat})
                print(f"  {name:<12} repeat {repeat}: {result['seconds']:.1f} s, "
                      f"load {result['load_1min_before']:.1f}", flush=True)  # fmt: skip
        ray.shutdown()
    summary = {name: summarise(r) for name, r in runs.items()}
    loop_digest = runs["loop"][0]["content_digest"]
    digests = {r["content_digest"] for rs in [*runs.values(), [first]] for r in rs}
    rate = {name: s["pairs_per_s"]["median"] for name, s in summary.items()}
    return {
        "inputs": {
            "synthetic_clips": clips,
            "frames_per_clip": frames,
            "size_hw": [HEIGHT, WIDTH],
            "videos": [str(p) for p in videos],
        },
        "config": config.to_dict(),
        "conditions": {
            "repeats": repeats,
            "opencv_threads": 1,
            "ray_init": {"num_cpus": max(WORKERS), "include_dashboard": False},
            "batch_size": pipeline.RunSettings().batch_size,
            "pairs_per_item": pipeline.PAIRS_PER_ITEM,
            "load_avg_start": list(load_start),
            "load_avg_end": list(os.getloadavg()),
        },
        "machine": machine(),
        "ray_start_seconds": ray_seconds,
        "first_extract": first,
        "summary": summary,
        "scaling_2w_over_1w": rate["extract 2w"] / rate["extract 1w"],
        "extract_2w_over_loop": rate["extract 2w"] / rate["loop"],
        "goal_ratio": GOAL_RATIO,
        "loop_content_digest": loop_digest,
        "digests_match": digests == {loop_digest},
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> None:
    inputs, summary, first = result["inputs"], result["summary"], result["first_extract"]
    h, w = inputs["size_hw"]
    print(
        f"extraction of {summary['loop']['pairs']} pairs: {inputs['synthetic_clips']} synthetic "
        f"clips ({h}x{w}, {inputs['frames_per_clip']} frames) + {len(inputs['videos'])} videos, "
        f"{result['config']['flow']} flow, {result['machine']['cpus']} CPUs; "
        f"median (min-max) of {result['conditions']['repeats']} runs"
    )
    print(f"Ray start-up (ray.init, in no figure below): {result['ray_start_seconds']:.1f} s")
    print(
        f"first extract run after it (worker processes starting, not in the table): "
        f"{first['seconds']:.1f} s, {first['pairs'] / first['seconds']:.2f} pairs/s"
    )
    header = (
        f"{'run':<12}{'pairs/s':>20}{'run s':>7}{'plan s':>8}{'pipeline s':>12}"
        f"{'pipeline pairs/s':>18}"
    )
    print(header)
    print("-" * len(header))

    def cell(x: dict[str, Any], digits: int = 2) -> str:
        return f"{x['median']:.{digits}f} ({x['min']:.{digits}f}-{x['max']:.{digits}f})"

    for name, s in summary.items():
        line = f"{name:<12}{cell(s['pairs_per_s']):>20}{s['seconds']['median']:>7.1f}"
        if "plan_seconds" in s:
            line += (f"{s['plan_seconds']['median']:>8.1f}{s['pipeline_seconds']['median']:>12.1f}"
                     f"{cell(s['pipeline_pairs_per_s']):>18}")  # fmt: skip
        print(line)
    ratio = result["extract_2w_over_loop"]
    verdict = "met" if ratio >= result["goal_ratio"] else "NOT met"
    print(f"scaling 2 workers / 1 worker: {result['scaling_2w_over_1w']:.2f}x")
    print(
        f"extract (2 workers) / loop: {ratio:.2f}x (goal >= {result['goal_ratio']:.1f}: {verdict})"
    )
    match = "match" if result["digests_match"] else "DIFFER"
    print(f"content digests of the loop and of every extract run: {match}")
    start, end = result["conditions"]["load_avg_start"], result["conditions"]["load_avg_end"]
    print(f"load average (1 min): {start[0]:.1f} at the start, {end[0]:.1f} at the end")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--videos", type=Path, nargs="*", default=[], help="more video files")
    parser.add_argument("--clips", type=int, default=6, help="synthetic clips (0: none)")
    parser.add_argument("--frames", type=int, default=40, help="frames per synthetic clip")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant")
    parser.add_argument("--quick", action="store_true", help="2 clips, 1 run of each variant")
    parser.add_argument("--out", type=Path, default=Path("bench-out/extract.json"))
    args = parser.parse_args(argv)
    clips, repeats = (min(args.clips, 2), 1) if args.quick else (args.clips, args.repeats)
    if clips < 1 and not args.videos:
        parser.error("nothing to extract: give --clips >= 1 or --videos")
    result = run(args.videos, clips, args.frames, repeats)
    print_table(result)
    write_result(result, args.out)


if __name__ == "__main__":
    main()
