"""Loading for training: what :class:`ShardDataset` with the training transforms delivers, and
how long real training steps wait for it.

Data: the training set of the run (the synthetic clips extracted with the default
configuration, cycled to 120 samples, 40 with ``--quick``; 416 x 560 frames).

- Loader speed: the trainer's DataLoader (:func:`cmpmodel.data.make_train_loader`: shuffled,
  batch 10, the default) over ``ShardDataset`` with :class:`cmpmodel.data.TrainTransform` at
  its defaults (320 px crop, flips, watershed + grid guidance drawn on the crop; its batches
  packed: 8-bit crops and guidance points, which the trainer expands on its device), with 0, 1 and
  2 worker processes, torch on one thread (:data:`TORCH_THREADS`, what DataLoader workers
  get). One epoch per repeat. The first batch (worker start-up and the first reads) is timed
  on its own; samples/s counts the batches after it. The goal is :data:`GOAL_SAMPLES`
  samples/s in one process (0 workers); a figure compares that with the
  :data:`BEFORE_SAMPLES` measured before the reader kept a shard's small columns and the crop
  took a table look-up and OpenCV's mirror (issue 16).
- Data wait: :func:`cmpmodel.train.train` of the ``tiny`` arch (its 96 px crop, batch 10,
  SGD) on the CPU for :data:`STEPS` steps, with 2 workers and with none, torch on one thread
  (:data:`TORCH_THREADS`: the workers hold the cores). The trainer's batch iterator is wrapped
  to time how long each step waits for its batch; the fraction is that wait over the time
  between batches.
  The DataLoader starts its workers anew each epoch (no persistent workers: they would keep
  the epoch's seed), so the first batch of every epoch waits for the start-up: the steady
  fraction leaves those batches out, the overall one counts them (an epoch of the paper's
  datasets is 10^5 batches, this one 12).

``python -m benchmarks.loading``.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

import cmpmodel.train as trainer
from benchmarks.common import Bench, figure, interleaved, measured
from cmpdata.store.dataset import ShardDataset
from cmpmodel.data import TrainTransform, TrainTransformConfig, make_train_loader
from cmpmodel.train import TrainConfig

PART = "loading"
BATCH = TrainConfig().batch_size
WORKERS = (0, 1, 2)
STEPS, STEPS_QUICK = 24, 8
ARCH = "tiny"
# With two threads a step took 0.5 to 8 s on the shared 2-core machine (each thread waiting
# for the other's core); with one it is steady. The same holds for the loader's collation
# (torch.stack of 37 MB a batch): with no workers and a core busy elsewhere, two threads gave
# 19-198 samples/s where one gave 88-249, interleaved in one process.
TORCH_THREADS = 1
GOAL_WAIT = 0.05  # "the model does not wait": at most 5 % of a step spent waiting for data
GOAL_SAMPLES = 150.0  # samples/s one process delivers (0 workers)
BEFORE_SAMPLES = 54.0  # samples/s per process before issue 16 (15 h5py look-ups a sample)

Wait = tuple[int, float, float]  # position of the batch in its epoch, when asked (s), waited (s)


def loader_rate(
    dataset: ShardDataset, workers: int, first_batch: list[float]
) -> Callable[[], float]:
    """One epoch per call, a new one each time: samples/s after the first batch, whose
    seconds go to ``first_batch``."""
    epochs = itertools.count()

    def run() -> float:
        loader = make_train_loader(dataset, BATCH, next(epochs), num_workers=workers)
        start = time.perf_counter()
        batches = iter(loader)
        next(batches)
        first = time.perf_counter()
        count = sum(len(batch["sample_id"]) for batch in batches)
        first_batch.append(first - start)
        return count / (time.perf_counter() - first)

    return run


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch on ``count`` threads inside the block, as many as before after it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def recorded_waits(record: list[Wait]) -> Iterator[None]:
    """While inside, every batch the trainer takes from ``cmpmodel.train.batches`` is timed
    into ``record``. The trainer looks the function up in its module, so that is where it is
    wrapped."""
    original = trainer.batches

    def timed(*args: Any, **kwargs: Any) -> Iterator[tuple[int, int, dict[str, Any]]]:
        with contextlib.closing(original(*args, **kwargs)) as inner:
            while True:
                asked = time.perf_counter()
                item = next(inner, None)
                if item is None:
                    return
                record.append((item[1], asked, time.perf_counter() - asked))
                yield item

    trainer.batches = timed
    try:
        yield
    finally:
        trainer.batches = original


def wait_fractions(waits: list[Wait]) -> dict[str, Any]:
    """Wait over step time, overall and without the first batch of each epoch.

    Step ``k`` runs from the trainer asking for batch ``k`` to it asking for batch ``k + 1``;
    the last batch has no end, so it is left out. Raises ``ValueError`` with fewer than two
    batches or no step outside an epoch's first batch.
    """
    if len(waits) < 2:
        raise ValueError(f"need at least two batches to time a step, got {len(waits)}")
    steps = [
        (position, after[1] - asked, waited)
        for (position, asked, waited), after in itertools.pairwise(waits)
    ]
    steady = [(s, w) for position, s, w in steps if position != 1]
    if not steady:
        raise ValueError("every timed step starts an epoch: no steady state to measure")
    return {
        "overall": sum(w for _, _, w in steps) / sum(s for _, s, _ in steps),
        "steady": sum(w for _, w in steady) / sum(s for s, _ in steady),
        "steady_step_s": [s for s, _ in steady],
        "steady_wait_s": [w for _, w in steady],
        "epoch_start_wait_s": [w for position, _, w in steps if position == 1],
    }


def train_waits(
    training_set: Path,
    workers: int,
    steps: int,
    out: Path,
    arch: str = ARCH,
    batch_size: int = BATCH,
) -> list[Wait]:
    """Train ``arch`` (the tiny model by default) for ``steps`` steps of ``batch_size``
    samples, on the GPU when there is one; the timed batches."""
    config = TrainConfig(
        data=[str(training_set)],
        out=str(out),
        arch=arch,
        iters=steps,
        batch_size=batch_size,
        workers=workers,
        picture_every=0,
        ckpt_every=steps,
        log_every=steps,
    )
    waits: list[Wait] = []
    # The trainer's progress bar would break into the benchmark's own output.
    with (
        torch_threads(TORCH_THREADS),
        recorded_waits(waits),
        contextlib.redirect_stderr(io.StringIO()),
    ):
        trainer.train(config)
    return waits


def measure(bench: Bench) -> dict[str, Any]:
    """Loader samples/s with 0, 1, 2 workers; the data wait of training steps."""
    transform_config = TrainTransformConfig()
    dataset = ShardDataset(
        bench.training_set, split="train", transform=TrainTransform(transform_config)
    )
    repeats = 1 if bench.quick else 3
    first: dict[str, list[float]] = {}
    variants = {}
    for w in WORKERS:
        name = f"{w} worker{'s' * (w != 1)}"
        first[name] = []
        variants[name] = loader_rate(dataset, w, first[name])
    with torch_threads(TORCH_THREADS):
        rates = interleaved(variants, repeats, warmup=0)
    crop = transform_config.crop
    figures = []
    for name, values in rates.items():
        figures.append(
            measured(
                PART,
                f"loader, {name}",
                values,
                "samples/s",
                note=f"{crop} px crops; first batch {statistics.median(first[name]):.1f} s",
                goal=((">=", GOAL_SAMPLES) if name == "0 workers" else None),
                key=f"loading.{name.split()[0]}w.samples_per_s",
            )
        )
    figures.append(
        measured(
            PART,
            "loader, 0 workers: over before issue 16",
            [rate / BEFORE_SAMPLES for rate in rates["0 workers"]],
            "x",
            note=f"{BEFORE_SAMPLES:.0f} samples/s a process before",
            key="loading.0w.speedup_over_before",
        )
    )
    steps = STEPS_QUICK if bench.quick else STEPS
    training: dict[str, Any] = {}
    for w in (2, 0):
        with tempfile.TemporaryDirectory(dir=bench.root) as out:
            fractions = wait_fractions(train_waits(bench.training_set, w, steps, Path(out)))
        training[f"{w} workers"] = fractions
        compute = [
            s - x
            for s, x in zip(fractions["steady_step_s"], fractions["steady_wait_s"], strict=True)
        ]
        figures += [
            figure(
                PART,
                f"{ARCH} training, {w} workers: data wait",
                fractions["steady"],
                "of a step",
                goal=(("<=", GOAL_WAIT) if w == 2 else None),
                note=f"overall {fractions['overall']:.2f} with each epoch's start",
                key=f"loading.train_{w}w.wait_fraction",
            ),
            measured(
                PART,
                f"{ARCH} training, {w} workers: step",
                fractions["steady_step_s"],
                "s",
                note=f"batch {BATCH}; model alone {sum(compute) / len(compute):.2f} s",
            ),
        ]
    conditions = {
        "samples": len(dataset),
        "batch_size": BATCH,
        "transform": asdict(transform_config),
        "loader_repeats": repeats,
        "loader_torch_threads": TORCH_THREADS,
        "training": {
            "arch": ARCH,
            "crop": trainer.arch_settings(ARCH).crop_size,
            "steps": steps,
            "torch_threads": TORCH_THREADS,
            "device": "cpu",
        },
    }
    details = {"first_batch_s": first, "training": training}
    return {"figures": figures, "conditions": conditions, "details": details}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import run_part

    run_part(PART, argv)


if __name__ == "__main__":
    main()
