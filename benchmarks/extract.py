"""End-to-end extraction speed: the Ray pipeline (:mod:`pipelines.extract`) against a loop.

Inputs: the run's synthetic clips (416 x 560, 40 frames each by default: with the default
pairs, gap 3 and stride 10, 4 pairs a clip), the real camera clips of the test data
(:attr:`benchmarks.common.Bench.camera`: bikes and carphone, 37 pairs, brought to 416 px on
the short side) and any ``--videos``. Every run gets the same
inputs and the same :class:`ExtractConfig` (the defaults: DIS flow, the default filters,
guidance and codec) and writes to a fresh directory.

Measured, 5 times each (once with ``--quick``), interleaved so that a busy spell of the
(shared) machine slows them alike:

- ``loop``: the same stages in this process (:func:`benchmarks.common.extract_in_process`:
  :func:`cmpdata.stages.process_source` -- decode, frame filters, flow, flow filters,
  guidance -- then :func:`cmpdata.store.shards.encode_sample`; then
  :func:`cmpdata.store.shards.write_shard` in ``shard_size`` chunks of the planned pairs), OpenCV
  on one thread as in the pipeline's workers;
- ``extract`` through a local Ray with 1 and with 2 workers. Ray is started once, before any
  timing (its start-up is reported on its own), so every run reuses it. Its first run, while
  Ray's worker processes start and import the stages, is also reported on its own, not in the
  repeats. A run's time is the whole :func:`pipelines.extract.extract` call, planning
  included, and is split into planning (:func:`cmpdata.plan.plan_dataset`: probing the
  sources) and the pipeline (from the start of :func:`pipelines.extract.run_pipeline` to its
  last result and the last shard written).

Then the loop's time is split by stage (:func:`stage_budget`, two passes, on the real clips
and ``--videos`` only: the synthetic clips' exact flow and object ids would be encoded too):
milliseconds per pair of probing the source (as planning does), decoding, the frame
filters, the flow, the flow filters, the guidance and the encoding (JPEG frame, flow codec);
the goal is on their sum without the flow (:data:`GOAL_NON_FLOW_MS`).

The driver's own cost a pair (:func:`driver_cost`: its CPU time in whole runs of small clips,
on the CPU path and on the GPU path with a fake GPU) gives the most pairs a second one driver
can take, whatever the cluster: the ceiling. The shard writer tasks' own cost a pair
(:func:`writer_task_cost`), work the driver no longer does, is measured beside it.

Throughput is planned pairs per second (dropped pairs count: they were decoded too). The
loop's content digest (:func:`cmpdata.store.manifest.content_digest` over its encoded samples
in plan order) is compared with each manifest's ``content_digest``: the same stages and config must
give the same dataset (on inputs that decode: the loop leaves out a source whose decoding
fails, where the pipeline keeps the pairs it got).

``python -m benchmarks.extract``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import cv2
import ray

import pipelines.extract as pipeline
from benchmarks.common import (
    Bench,
    extract_in_process,
    figure,
    measured,
    ratios,
    shard_attrs,
)
from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError
from cmpdata.filters import flow_rejection, frames_rejection
from cmpdata.flow import build_flow
from cmpdata.guidance import build_sampler
from cmpdata.io.decoders import decord_frame_count
from cmpdata.io.pairs import PairConfig, iter_pairs
from cmpdata.io.sources import find_sources, probe
from cmpdata.plan import Plan, PlannedSample
from cmpdata.records import Dropped
from cmpdata.stages import compute_flows, guide
from cmpdata.store.directory import write_part, write_shard_from_parts
from cmpdata.store.manifest import content_digest
from cmpdata.store.shards import EncodedSample, encode_sample, shard_name, write_shard
from cmpdata.synth.clips import make_clips

PART = "extract"
WORKERS = (1, 2)
GOAL_RATIO = 1.4  # extract with 2 workers (pipeline only) against the loop
GOAL_NON_FLOW_MS = 25.0  # every stage but the flow, a pair, on real 416p footage


def run_loop(inputs: list[str], config: ExtractConfig, out: Path) -> dict[str, Any]:
    """The stages in this process, writing shards to ``out``: seconds, pairs, content digest."""
    start = time.perf_counter()
    results = extract_in_process(inputs, config)
    attrs = shard_attrs(config)
    size = config.shard_size
    digests: list[tuple[str, str]] = []  # of the samples as stored
    for index, first in enumerate(range(0, len(results), size)):
        chunk = [r for r in results[first : first + size] if isinstance(r, EncodedSample)]
        info = write_shard(out / shard_name(index), chunk, {**attrs, "shard_index": index})
        digests += zip((s.sample_id for s in chunk), info.digests, strict=True)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "pairs": len(results),
        "written": len(digests),
        "content_digest": content_digest(digests),
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
    # One GPU as far as Ray knows, for the driver's run of the GPU path (driver_cost); the
    # CPU path asks for none.
    ray.init(
        address="local",
        num_cpus=cpus,
        num_gpus=1,
        include_dashboard=False,
        log_to_driver=False,
        logging_level="ERROR",
    )
    return time.perf_counter() - start


STAGES = ("probe", "decode", "frame filters", "flow", "flow filters", "guidance", "encode")


def stage_budget(inputs: list[str], config: ExtractConfig) -> dict[str, float]:
    """Milliseconds per decoded pair that each stage of the loop takes, in this process.

    Probing (what planning does) and decoding are timed per source and shared over the
    source's pairs; a pair the frame filters drop costs no later stage. The decord server
    (:mod:`cmpdata.io.decoders`), which a process starts once, is started before.
    """
    cv2.setNumThreads(1)
    with contextlib.suppress(CmpDataError):  # a file decord cannot open starts it too
        decord_frame_count(inputs[0])
    flow = build_flow(config.flow, **config.flow_options)
    sampler = build_sampler(config.guidance)
    seconds = dict.fromkeys(STAGES, 0.0)
    count = 0

    def timed(stage: str, fn: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        out = fn()
        seconds[stage] += time.perf_counter() - start
        return out

    for source in find_sources(inputs):
        info = timed("probe", lambda s=source: probe(s, config.pairs.timeout))
        items = timed(
            "decode",
            lambda s=source, i=info: list(iter_pairs(s, config.pairs, i, config.filters.crop)),
        )
        for pair in items:
            if isinstance(pair, Dropped):
                continue
            count += 1
            if timed("frame filters", lambda p=pair: frames_rejection(p, config.filters)):
                continue
            (sample,) = timed("flow", lambda p=pair: compute_flows([p], flow, config.consistency))
            if timed("flow filters", lambda s=sample: flow_rejection(s, config.filters)):
                continue
            guided = timed("guidance", lambda s=sample: guide(s, sampler, config.seed))
            timed(
                "encode",
                lambda g=guided: encode_sample(g, "train", config.codec, config.jpeg_quality),
            )
    return {stage: 1e3 * s / max(count, 1) for stage, s in seconds.items()}


DRIVER_PAIRS = 2048  # encoded samples through the shard writer's task
GOAL_DRIVER_PAIRS_PER_S = 5000.0  # about 25 GPUs at 200 pairs/s each
# The driver's runs: clips small enough for 2 cores to make pairs as fast as they can (DIS
# ultrafast on 64 x 96 frames, every pair of gap 3), so that the driver's share is as large
# as this machine can make it: 12 clips of 120 frames, 1,404 pairs.
DRIVER_CLIPS: dict[str, Any] = {"count": 12, "height": 64, "width": 96, "num_frames": 120}


def writer_task_cost(
    samples: Sequence[EncodedSample], pairs: int, config: ExtractConfig, out: Path
) -> float:
    """Milliseconds a pair that a shard's writer task costs, run here
    (:func:`cmpdata.store.directory.write_shard_from_parts`: the parts read, the file, its
    read-back check) on ``pairs`` encoded samples (``samples`` cycled, with distinct ids) in
    ``shard_size`` shards, from parts of ``batch_size`` samples (the GPU path's grain): work
    that ``extract`` spreads over the cluster's workers."""
    planned = [PlannedSample("bench.mp4", 10 * k, 10 * k + 3, "train") for k in range(pairs)]
    plan = Plan(config, {}, {}, {}, [], planned)
    cycled = [
        dataclasses.replace(s, sample_id=p.sample_id)
        for p, s in zip(planned, itertools.cycle(samples), strict=False)
    ]
    batch = pipeline.RunSettings().batch_size
    parts = {
        index: [
            write_part(out, index, shard[first : first + batch])
            for first in range(0, len(shard), batch)
        ]
        for index in range(plan.num_shards)
        if (shard := cycled[index * config.shard_size : (index + 1) * config.shard_size])
    }
    attrs = shard_attrs(config)
    start = time.process_time()
    for index, names in parts.items():
        write_shard_from_parts(out, index, names, [p.sample_id for p in plan.shard(index)], attrs)
    return 1e3 * (time.process_time() - start) / pairs


def driver_cost(clips: Path, scratch: Path) -> dict[str, dict[str, float]]:
    """The driver's CPU time (this process, all its threads) a pair in whole ``extract`` runs
    of the ``clips`` (:data:`DRIVER_CLIPS`), on the CPU path and on the GPU path (one fake GPU:
    Ray is told of one, and the flow actor runs DIS), with the run's pairs/s: everything the
    driver does (planning, starting a task a work item and waiting on it, gathering the
    summaries, the bookkeeping, starting the writer tasks, the done markers, the manifest)."""
    config = ExtractConfig(
        pairs=PairConfig(gap=3, stride=1, short_side=None), flow_options={"preset": "ultrafast"}
    )
    results = {}
    for path, run in (
        ("cpu", pipeline.RunSettings(progress=False)),
        ("gpu", pipeline.RunSettings(num_gpus=1, progress=False)),
    ):
        cpu, wall = time.process_time(), time.perf_counter()
        result = pipeline.extract(
            [str(clips / "*.mp4")], tempfile.mkdtemp(dir=scratch), config, run
        )
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
        results[path] = {
            "ms_per_pair": 1e3 * cpu / result.computed,
            "pairs_per_s": result.computed / wall,
            "pairs": result.computed,
        }
    return results


def one_run(
    workers: int | None, inputs: list[str], config: ExtractConfig, out: Path
) -> dict[str, Any]:
    """One run into ``out``: the loop (``workers`` None) or ``extract``; with the load before."""
    load = os.getloadavg()[0]
    if workers is None:
        result = run_loop(inputs, config, out)
    else:
        result = run_extract(inputs, config, workers, out)
    return result | {"load_1min_before": load}


def measure(bench: Bench) -> dict[str, Any]:
    """The loop and ``extract`` with 1 and 2 workers on the same inputs (module docstring)."""
    config = ExtractConfig()
    repeats = 1 if bench.quick else 5
    real = [str(p) for p in [*bench.camera, *bench.videos]]
    inputs = [str(p) for p in bench.clip_videos] + real
    scratch = Path(tempfile.mkdtemp(prefix="extract-", dir=bench.root))
    ray_seconds = start_ray(max(WORKERS))
    try:
        # The first run after Ray's start waits for its worker processes to start and import
        # the stages: shown apart, so that the repeats compare the variants alike.
        first = one_run(max(WORKERS), inputs, config, Path(tempfile.mkdtemp(dir=scratch)))
        variants = {"loop": None} | {f"extract {w}w": w for w in WORKERS}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for repeat in range(repeats):
            for name, workers in variants.items():
                result = one_run(workers, inputs, config, Path(tempfile.mkdtemp(dir=scratch)))
                runs[name].append(result | {"repeat": repeat})
        clips = scratch / "driver-clips"
        make_clips(clips, **DRIVER_CLIPS)
        driver = [driver_cost(clips, scratch) for _ in range(1 if bench.quick else 2)]
    finally:
        ray.shutdown()
    budgets = [stage_budget(real, config) for _ in range(1 if bench.quick else 2)]
    encoded = [r for r in extract_in_process(real, config) if isinstance(r, EncodedSample)]
    task = [
        writer_task_cost(encoded, DRIVER_PAIRS, config, Path(tempfile.mkdtemp(dir=scratch)))
        for _ in range(1 if bench.quick else 3)
    ]
    pairs = runs["loop"][0]["pairs"]
    rate = {name: [r["pairs"] / r["seconds"] for r in rs] for name, rs in runs.items()}
    figures = [
        measured(
            PART,
            f"{name}, whole run",
            rate[name],
            "pairs/s",
            key=f"extract.{name.replace(' ', '_')}.pairs_per_s",
        )
        for name in variants
    ]
    for w in WORKERS:
        rs = runs[f"extract {w}w"]
        plan = sum(r["plan_seconds"] for r in rs) / len(rs)
        figures.append(
            measured(
                PART,
                f"extract {w}w, pipeline only",
                [r["pairs"] / r["pipeline_seconds"] for r in rs],
                "pairs/s",
                note=f"planning {plan:.1f} s a run",
                key=f"extract.extract_{w}w.pipeline_pairs_per_s",
            )
        )
    loop_digest = runs["loop"][0]["content_digest"]
    digests = {r["content_digest"] for rs in [*runs.values(), [first]] for r in rs}
    match = (
        "content digests of all runs match"
        if digests == {loop_digest}
        else "CONTENT DIGESTS DIFFER"
    )
    pipeline_rate = [r["pairs"] / r["pipeline_seconds"] for r in runs["extract 2w"]]
    figures += [
        measured(
            PART,
            "extract 2w / loop",
            ratios(rate["extract 2w"], rate["loop"]),
            "x",
            note=f"whole runs; {match}",
            key="extract.ratio_2w_loop",
        ),
        measured(
            PART,
            "extract 2w pipeline only / loop",
            ratios(pipeline_rate, rate["loop"]),
            "x",
            goal=(">=", GOAL_RATIO),
            note="planning and Ray's start-up excluded",
            key="extract.ratio_2w_pipeline_loop",
        ),
        measured(
            PART,
            "scaling 1 -> 2 workers",
            ratios(rate["extract 2w"], rate["extract 1w"]),
            "x",
            key="extract.scaling_1w_2w",
        ),
        figure(PART, "Ray start-up", ray_seconds, "s", note="once per command"),
        figure(
            PART,
            "first extract after start-up",
            first["seconds"],
            "s",
            note=f"{max(WORKERS)} workers starting; not in the figures above",
        ),
    ]
    total = sum(statistics.median(b[stage] for b in budgets) for stage in STAGES)
    for stage in STAGES:
        ms = [b[stage] for b in budgets]
        share = f"{100 * statistics.median(ms) / total:.0f} % of {total:.0f} ms"
        figures.append(
            measured(
                PART,
                f"loop stage: {stage}",
                ms,
                "ms/pair",
                note=share,
                key=f"extract.stage.{stage.replace(' ', '_')}_ms",
            )
        )
    figures.append(
        measured(
            PART,
            "loop stages but the flow",
            [sum(ms for stage, ms in b.items() if stage != "flow") for b in budgets],
            "ms/pair",
            goal=("<=", GOAL_NON_FLOW_MS),
            note="real clips" + (" and --videos" if bench.videos else ""),
            key="extract.stage.non_flow_ms",
        )
    )
    figures.append(
        measured(
            PART,
            "shard writer task",
            task,
            "ms/pair",
            note="parts read, the file, its read-back: on the workers, not the driver",
            key="extract.writer_task_ms",
        )
    )
    for path in ("cpu", "gpu"):
        where = {
            "cpu": "CPU path (a task a work item)",
            "gpu": "GPU path (a task a work item and a flow actor, fake GPU)",
        }
        runs_of = [d[path] for d in driver]
        figures += [
            measured(
                PART,
                f"driver, {path} path",
                [d["ms_per_pair"] for d in runs_of],
                "ms/pair",
                note=f"{where[path]}: its CPU time in whole runs of {runs_of[0]['pairs']} "
                f"pairs at {statistics.median(d['pairs_per_s'] for d in runs_of):.0f} pairs/s",
                key=f"extract.driver.{path}_ms",
            ),
            measured(
                PART,
                f"driver ceiling, {path} path",
                [1e3 / d["ms_per_pair"] for d in runs_of],
                "pairs/s",
                goal=(">=", GOAL_DRIVER_PAIRS_PER_S),
                note="1 / the driver's CPU time a pair",
                key=f"extract.driver.{path}_ceiling_pairs_per_s",
            ),
        ]
    conditions = {
        "pairs": pairs,
        "inputs": {"synthetic_clips": len(bench.clips), "videos": [str(p) for p in bench.videos]},
        "config": config.to_dict(),
        "repeats": repeats,
        "opencv_threads": 1,
        "ray_init": {"num_cpus": max(WORKERS), "num_gpus": 1, "include_dashboard": False},
        "batch_size": pipeline.RunSettings().batch_size,
    }
    details = {
        "driver": driver,
        "driver_clips": DRIVER_CLIPS,
        "writer_task_ms_per_pair": task,
        "first_extract": first,
        "runs": runs,
        "digests_match": digests == {loop_digest},
        "stage_budget_ms_per_pair": budgets,
    }
    return {"figures": figures, "conditions": conditions, "details": details}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import run_part

    run_part(PART, argv)


if __name__ == "__main__":
    main()
