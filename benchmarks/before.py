"""Issue 16's two "2x" goals, before and after, alternated on this machine: the loop's stage
budget (everything but the flow) and the loader's samples/s, of this code against an earlier
revision (by default :data:`REV`, the code before issue 16's changes).

The earlier revision is checked out in a temporary git worktree. Each side is measured by its
own code, in child processes started in turn (a busy spell of the shared machine slows both
sides alike):

- the stage budget: that side's ``benchmarks.extract.stage_budget`` (milliseconds a pair of
  each stage of the in-process loop) on the real camera clips of the test data and any
  ``--videos``, two passes a run;
- the loader: that side's ``ShardDataset``, ``TrainTransform`` and ``make_train_loader`` (no
  worker, batch 10, 320 px crops, torch and OpenCV on one thread) over one training set that
  this code writes (the bench's synthetic clips, cycled to 120 samples), three epochs a run,
  each without its first batch; a run's figure is the median of its epochs.

Figures are medians over all runs. A ratio is before over now for the budget, now over
before for the loader, with the range of the ratios of the runs made one after the other.
The goal is :data:`GOAL_RATIO` on both.

``python -m benchmarks.before [--rev REV] [--repeats 12] [--videos a.mp4 ...] [--quick]``
prints a table and writes ``bench-out/before.json``: about 7 minutes on 2 cores. It needs a
git checkout that holds REV. It is not part of ``make bench``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import (
    REPO,
    Bench,
    Figure,
    format_table,
    interleaved,
    machine,
    make_bench,
    measured,
    ratios,
    versions,
    write_result,
)
from benchmarks.extract import STAGES
from benchmarks.runner import CLIPS, OUT

PART = "before"
REV = "8fc37c0"  # the code before issue 16's changes
GOAL_RATIO = 2.0
FRAMES = 40  # frames a synthetic clip, as make bench writes them
REPEATS, REPEATS_QUICK = 12, 3
TIMEOUT_S = 900  # one child run

# Lines of results start with this tag: whatever else a side prints is not parsed.
TAG = "RESULT "
BUDGET = f"""
import json, sys
from benchmarks.extract import stage_budget
from cmpdata.config import ExtractConfig
for _ in range(2):
    print({TAG!r} + json.dumps(stage_budget(sys.argv[1:], ExtractConfig())), flush=True)
"""
LOADER = f"""
import json, statistics, sys, time
import cv2, torch
torch.set_num_threads(1)
cv2.setNumThreads(1)
from cmpdata.store.dataset import ShardDataset
from cmpmodel.data import TrainTransform, make_train_loader
dataset = ShardDataset(sys.argv[1], split="train", transform=TrainTransform())
rates = []
for epoch in range(3):
    batches = iter(make_train_loader(dataset, 10, epoch))
    next(batches)
    start = time.perf_counter()
    count = sum(len(batch["sample_id"]) for batch in batches)
    rates.append(count / (time.perf_counter() - start))
print({TAG!r} + json.dumps(statistics.median(rates)), flush=True)
"""


def child(tree: Path, script: str, args: Sequence[str]) -> list[Any]:
    """What ``script`` reports, run in a child process with ``tree``'s packages first on the
    path. Raises ``RuntimeError`` with the end of its stderr when it fails."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    if done.returncode:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    lines = [line[len(TAG) :] for line in done.stdout.splitlines() if line.startswith(TAG)]
    return [json.loads(line) for line in lines]


@contextlib.contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` of this checkout in a temporary git worktree, removed afterwards.

    Raises ``RuntimeError`` when this is not a git checkout or it does not hold ``rev``.
    """
    scratch = Path(tempfile.mkdtemp(prefix="cmp-before-"))
    tree = scratch / "tree"
    git = ["git", "-C", str(REPO)]
    try:
        done = subprocess.run(
            [*git, "worktree", "add", "--detach", str(tree), rev], capture_output=True, text=True
        )
        reason = done.stderr.strip() if done.returncode else ""
    except FileNotFoundError:
        reason = "git is not installed"
    if reason:
        shutil.rmtree(scratch, ignore_errors=True)
        raise RuntimeError(f"cannot check out {rev} from {REPO}: {reason}")
    try:
        yield tree
    finally:
        subprocess.run([*git, "worktree", "remove", "--force", str(tree)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)


def non_flow(budget: dict[str, float]) -> float:
    """Milliseconds a pair of every stage but the flow."""
    return sum(ms for stage, ms in budget.items() if stage != "flow")


def speedup(
    name: str, numerators: Sequence[float], denominators: Sequence[float], how: str, key: str
) -> Figure:
    """The ratios of paired runs ``numerators[i] / denominators[i]`` against
    :data:`GOAL_RATIO`, with the ratio of the medians in the note."""
    of_medians = statistics.median(numerators) / statistics.median(denominators)
    return measured(
        PART,
        name,
        ratios(numerators, denominators),
        "x",
        note=f"{how}; ratio of the medians {of_medians:.2f}",
        goal=(">=", GOAL_RATIO),
        key=key,
    )


def measure(bench: Bench, rev: str, repeats: int) -> dict[str, Any]:
    """Both goals' figures, this code against ``rev``, ``repeats`` alternated runs each."""
    with worktree(rev) as before:
        inputs = [str(path) for path in (*bench.camera, *bench.videos)]
        training_set = str(bench.training_set)
        sides = {"before": before, "now": REPO}
        budgets = interleaved(
            {side: lambda t=tree: child(t, BUDGET, inputs) for side, tree in sides.items()},
            repeats,
            warmup=0,
        )
        loaders = interleaved(
            {
                side: lambda t=tree: child(t, LOADER, [training_set])[0]
                for side, tree in sides.items()
            },
            repeats,
            warmup=0,
        )
    passes = {side: [p for run in runs for p in run] for side, runs in budgets.items()}
    totals = {side: [non_flow(p) for p in ps] for side, ps in passes.items()}
    figures: list[Figure] = []
    for stage in STAGES:
        for side in sides:
            values = [p[stage] for p in passes[side]]
            figures.append(measured(PART, f"stage {stage}: {side}", values, "ms/pair"))
    clips = f"{len(inputs)} real clips, {len(passes['now'])} passes a side"
    figures += [
        measured(PART, f"stages but the flow: {side}", totals[side], "ms/pair", note=clips)
        for side in sides
    ]
    figures.append(
        speedup(
            "stages but the flow: before / now",
            totals["before"],
            totals["now"],
            f"{rev} over this code, pass by pass",
            "before.non_flow_ratio",
        )
    )
    figures += [
        measured(PART, f"loader, 0 workers: {side}", loaders[side], "samples/s") for side in sides
    ]
    figures.append(
        speedup(
            "loader, 0 workers: now / before",
            loaders["now"],
            loaders["before"],
            f"this code over {rev}, run by run",
            "before.loader_ratio",
        )
    )
    conditions = {"rev": rev, "repeats": repeats, "inputs": inputs, "training_set": training_set}
    return {"figures": figures, "conditions": conditions, "details": {"passes": passes}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.before",
        description="Issue 16's 2x goals: the stage budget and the loader of this code against "
        "an earlier revision, alternated on this machine.",
    )
    parser.add_argument("--rev", default=REV, help=f"the earlier revision (default: {REV})")
    parser.add_argument(
        "--repeats", type=int, default=None, help=f"alternated runs a side (default: {REPEATS})"
    )
    parser.add_argument("--videos", nargs="*", type=Path, default=[], help="more real clips")
    parser.add_argument("--quick", action="store_true", help=f"{REPEATS_QUICK} runs a side")
    parser.add_argument("--out", type=Path, default=OUT / f"{PART}.json", help="the JSON written")
    args = parser.parse_args(argv)
    repeats = args.repeats or (REPEATS_QUICK if args.quick else REPEATS)
    if repeats < 1:
        parser.error(f"--repeats must be at least 1, got {repeats}")
    with tempfile.TemporaryDirectory(prefix="cmp-bench-") as root:
        try:
            bench = make_bench(Path(root), CLIPS, FRAMES, args.videos)
            result = measure(bench, args.rev, repeats)
        except (RuntimeError, ValueError) as exc:
            sys.exit(f"benchmarks.before: {exc}")
    print(format_table(result["figures"]))
    write_result({"machine": machine(), "versions": versions(), **result}, args.out)


if __name__ == "__main__":
    main()
