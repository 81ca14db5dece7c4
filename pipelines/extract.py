"""``cmpdata extract``, the driver: videos in, a directory of HDF5 shards out, through Ray.

The run, in order:

1. check everything a user can get wrong before creating anything: the output path, the
   inputs, the flow backend (its identity goes into the fingerprint, and a missing weights
   file fails here), the Ray cluster and its GPUs; lock the output directory if it exists (a
   second run on it refuses);
2. plan (:mod:`cmpdata.plan`): the ordered samples and their shards;
3. compare with what the directory already holds (:mod:`cmpdata.store.directory`): same
   plan -> resume (finished shards are kept), different -> refuse naming the differences,
   unless ``overwrite``;
4. run the unfinished shards' work on Ray (:mod:`pipelines.stages`): one plain Ray task per
   work item, at most one a worker at a time, takes its pairs through decoding, flow,
   filters, guidance and encoding, a batch at a time. On CPU the task computes the flows
   itself, so that frames stay in the worker that decoded them (measured in
   ``benchmarks/extract.py``: passing each pair's frames through the object store and
   starting flow actors made 2 workers slower than a plain loop on 2 cores). With GPUs it
   sends each batch to a flow actor (one a GPU, batched) and finishes the previous batch
   meanwhile. The driver handles one task a work item, not a record a pair: its cost a pair
   is what bounds the cluster (measured in ``benchmarks/extract.py``; through Ray Data, whose
   executor runs in the driver, the GPU path cost it about nine times as much);
5. gather: the workers leave their encoded samples in part files of the output directory
   and send the driver a summary (:class:`~pipelines.stages.Stored`); when a shard's last
   planned sample has arrived, a Ray task writes the shard from its parts (atomic file, read
   back: :func:`~cmpdata.store.directory.write_shard_from_parts`) and the driver then writes
   its ``shard-NNNNN.json`` done marker. The driver never holds the samples' bytes, so it does
   not bound the cluster's rate (measured in ``benchmarks/extract.py``);
6. write ``failures.jsonl`` and the completed ``manifest.json``.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from cmpdata import __version__
from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError, ConfigError, UsageError
from cmpdata.flow import FLOW_BACKENDS, build_flow
from cmpdata.io.sources import find_sources
from cmpdata.paths import check_output_dir
from cmpdata.plan import Plan, plan_dataset
from cmpdata.records import Dropped
from cmpdata.store.directory import (
    check_existing,
    finished_shards,
    locked,
    prepare_output,
    read_marker,
    remove_temporary,
    write_errors,
    write_marker,
    write_shard_from_parts,
)
from cmpdata.store.manifest import (
    FAILURES,
    MANIFEST,
    content_digest,
    read_failures,
    write_failures,
    write_json_atomic,
)
from cmpdata.store.shards import SCHEMA_VERSION, ShardInfo, shard_name
from pipelines.stages import FlowActor, Stored, WorkItem, item_stage

# A work item is a run of pairs of one source within one shard. Each item decodes its video
# from the start, so long videos should not be cut into many items; but a small dataset needs
# enough items to keep every worker busy. Items hold at least MIN_PAIRS_PER_ITEM pairs and
# are made small enough that there are about ITEMS_PER_WORKER items per worker.
MIN_PAIRS_PER_ITEM = 16
ITEMS_PER_WORKER = 4


@dataclass(frozen=True)
class RunSettings:
    """How to run: none of this changes the dataset's content."""

    workers: int | None = None  # CPU workers; None: every CPU of the (local) Ray
    num_gpus: int = 0  # GPUs in total; one flow actor per GPU
    batch_size: int = 8  # pairs per flow batch
    address: str | None = None  # Ray cluster to join ("auto" or HOST:PORT); None: local Ray
    overwrite: bool = False  # replace a dataset made with other options
    flow_weights: str | None = None  # weights file of a learned flow estimator (RAFT, LiteFlowNet)
    progress: bool = True  # progress bar on stderr
    connect_timeout: float = 20.0  # seconds to wait for a cluster at ``address`` to answer

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ConfigError(f"workers must be >= 1 (or unset: every CPU), got {self.workers}")
        if self.num_gpus < 0:
            raise ConfigError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if not self.connect_timeout > 0:
            raise ConfigError(f"connect_timeout must be > 0 s, got {self.connect_timeout}")


@dataclass
class ExtractResult:
    """What ``extract`` did; :meth:`summary` is what the command prints."""

    out: Path
    plan: Plan
    complete: bool
    written: int
    dropped: list[Dropped]
    errors: int  # unexpected failures (bugs, crashes), not expected bad input
    bytes: int
    seconds: float
    computed: int  # samples processed in this run (not resumed)
    manifest: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [
            f"{self.written} pairs written to {self.out} "
            f"({self.plan.num_shards} shards, {len(self.plan.samples)} planned)",
            f"{len(self.plan.sources)} sources used, {len(self.plan.skipped)} skipped",
        ]
        for d in self.plan.skipped:
            lines.append(f"  skipped {d.source_id}: {d.reason}")
        for d in self.plan.notes:
            lines.append(f"  note on {d.source_id}: {d.reason}")
        pair_drops = [d for d in self.dropped if d.t0 >= 0]
        by_stage = Counter(d.stage for d in pair_drops)
        lines.append(f"{len(pair_drops)} pairs dropped" + (":" if by_stage else ""))
        for stage, n in sorted(by_stage.items()):
            example = next(d for d in pair_drops if d.stage == stage)
            lines.append(f"  {stage}: {n} (e.g. {example.sample_id}: {example.reason})")
        if self.written:
            lines.append(f"{self.bytes / self.written / 1000:.1f} KB per pair")
        rate = self.computed / self.seconds if self.seconds > 0 else 0.0
        lines.append(
            f"{self.computed} pairs processed in {self.seconds:.1f} s ({rate:.2f} pairs/s, "
            "Ray start-up and planning included)"
        )
        if self.errors:
            lines.append(f"{self.errors} unexpected errors: see {self.out / FAILURES}")
        lines.append(f"details: {self.out / MANIFEST}, {self.out / FAILURES}")
        return "\n".join(lines)


# ---------------------------------------------------------------- driver


def work_items(plan: Plan, shards: Sequence[int], workers: int) -> list[WorkItem]:
    """The unfinished shards' samples as work items (see MIN_PAIRS_PER_ITEM)."""
    total = sum(len(plan.shard(i)) for i in shards)
    size = max(MIN_PAIRS_PER_ITEM, -(-total // (ITEMS_PER_WORKER * max(1, workers))))
    items: list[WorkItem] = []
    for index in shards:
        by_source: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for s in plan.shard(index):
            by_source[s.source_id].append((s.t0, s.t1))
        for source_id, pairs in by_source.items():
            for k in range(0, len(pairs), size):
                items.append(
                    WorkItem(
                        index,
                        plan.sources[source_id],
                        plan.infos[source_id],
                        tuple(pairs[k : k + size]),
                    )
                )
    return items


# Joins the cluster in a child process, so that an address where no Ray answers (Ray itself
# retries without end) costs at most the time limit, then reports the cluster's resources.
_JOIN_CHILD = (
    "import json, sys, ray; ray.init(address=sys.argv[1], log_to_driver=False, "
    "logging_level='ERROR'); print(json.dumps(ray.cluster_resources()))"
)


def cluster_resources(address: str, timeout: float) -> dict[str, float]:
    """The resources of the Ray cluster at ``address`` (``auto``, ``HOST:PORT`` or
    ``ray://HOST:PORT``), asked from a child process; :class:`UsageError` when nothing answers
    there within ``timeout`` seconds or Ray refuses to join it."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if address != "auto":
        if not host or not port.isdigit():
            raise UsageError(f"--address {address!r}: expected auto or HOST:PORT")
        try:
            socket.create_connection((host, int(port)), timeout=timeout).close()
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise UsageError(f"--address {address}: nothing answers there ({reason})") from None
    env = {**os.environ, "RAY_BACKEND_LOG_LEVEL": "fatal"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", _JOIN_CHILD, address],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UsageError(
            f"--address {address}: no Ray cluster answered within {timeout:g} s "
            "(is it the cluster's GCS address, e.g. HOST:6379?)"
        ) from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        reason = lines[-1][:300] if lines else f"exit code {done.returncode}"
        raise UsageError(f"--address {address}: cannot join the Ray cluster ({reason})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def ensure_ray(address: str | None, workers: int | None) -> None:
    """Join the cluster at ``address`` (checked first with :func:`check_resources`), or start a
    local Ray sized to this machine."""
    import ray

    if ray.is_initialized():
        return
    # Ray's C++ core logs recoverable conditions to stderr, which would bury our messages.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        # "local": always a new Ray of our own, never one that happens to run on this machine.
        ray.init(
            address="local",
            num_cpus=workers or os.cpu_count(),
            include_dashboard=False,
            log_to_driver=False,
            logging_level="ERROR",
        )


def check_resources(run: RunSettings) -> None:
    """Before any work: refuse a cluster address that does not answer within
    ``run.connect_timeout`` and more GPUs than the cluster (or this machine) has."""
    import ray

    if run.address:
        have = cluster_resources(run.address, run.connect_timeout)
    else:
        ensure_ray(None, run.workers)
        have = ray.cluster_resources()
    gpus = have.get("GPU", 0.0)
    if run.num_gpus > gpus:
        where = f"the Ray cluster at {run.address}" if run.address else "this machine"
        raise UsageError(f"--num-gpus {run.num_gpus}: {where} has {gpus:g} GPUs")


def _flow_options(config: ExtractConfig, run: RunSettings) -> dict[str, Any]:
    options = dict(config.flow_options)
    if FLOW_BACKENDS.get(config.flow).takes_weights:
        options.update(
            weights=run.flow_weights,
            batch_size=run.batch_size,
            device="cuda" if run.num_gpus else "cpu",
        )
    elif run.flow_weights:
        raise UsageError(f"--flow-weights applies to the learned estimators, not {config.flow!r}")
    return options


def flow_identity(config: ExtractConfig, run: RunSettings = RunSettings()) -> dict[str, Any]:
    """The flow backend's identity as ``extract`` records it (it is part of the fingerprint).

    Raises :class:`CmpDataError` for missing or misplaced weights.
    """
    return build_flow(config.flow, **_flow_options(config, run)).identity()


def run_pipeline(
    plan: Plan, shards: Sequence[int], run: RunSettings, options: dict[str, Any], out: Path
) -> Iterator[tuple[int, Stored]]:
    """Stream (shard index, :class:`~pipelines.stages.Stored`) until every planned pair of
    ``shards`` is stored in a part file in ``out`` or dropped."""
    import ray

    ensure_ray(run.address, run.workers)
    workers = run.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
    items = work_items(plan, shards, workers)
    actors: list[Any] = []
    if run.num_gpus:
        # An actor's own CPU work (batching frames, copies to and from its GPU) is light
        # beside its GPU's: it takes no CPU from the tasks' count, which would leave a core
        # of a small machine idle (2 cores, a fake GPU running DIS: 179-209 pairs/s against
        # 85-128 with a CPU set aside for it).
        actor = ray.remote(num_gpus=1, num_cpus=0)(FlowActor)
        actors = [actor.remote(plan.config, options) for _ in range(run.num_gpus)]
    # One plain task a work item through every stage. Plain tasks rather than Ray Data: its
    # executor notices a finished task up to 0.1 s late (it polls), a gap between two items
    # of each worker, and its bookkeeping of every task and block runs in the driver; here
    # the driver waits on the tasks themselves and starts the next item as soon as one ends,
    # `workers` at a time (Ray may have more CPUs than the workers asked for). Each task keeps
    # to one flow actor, the actors taken in turn.
    task = ray.remote(num_cpus=1)(item_stage)
    queue = collections.deque(items)
    running: list[Any] = []
    turn = itertools.count()
    try:
        while queue or running:
            while queue and len(running) < workers:
                flows = actors[next(turn) % len(actors)] if actors else None
                args = (queue.popleft(), plan.config, options, run.batch_size, str(out), flows)
                running.append(task.remote(*args))
            (done,), running = ray.wait(running, num_returns=1)
            yield task_result(done)
    finally:
        for ref in running:
            ray.cancel(ref)
        for flows in actors:
            ray.kill(flows)


def task_result(ref: Any) -> Any:
    """``ray.get(ref)``; a task's :class:`CmpDataError` (a failed write, a missing part) is
    raised as itself, one line, anything else as Ray's task error with its traceback."""
    import ray
    from ray.exceptions import RayTaskError

    try:
        return ray.get(ref)
    except RayTaskError as exc:
        if isinstance(exc.cause, CmpDataError):
            raise exc.cause from None
        raise


class ShardWriter:
    """Writes whole shards from their parts in Ray tasks and hands back what their done
    markers need; the driver writes the markers."""

    def __init__(self, out: Path, attrs: dict[str, Any]) -> None:
        import ray

        self.out, self.attrs = out, attrs
        # A light task (file I/O and hashing), spread over the nodes; it takes no CPU from
        # the stages' count, so that a shard is written as soon as it is whole.
        self.task = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(write_shard_from_parts)
        self.running: dict[Any, int] = {}

    def submit(self, index: int, parts: Sequence[str], order: Sequence[str]) -> None:
        """Start writing shard ``index`` from ``parts``, its samples in ``order``."""
        ref = self.task.remote(self.out, index, list(parts), list(order), self.attrs)
        self.running[ref] = index

    def finished(self, wait: bool = False) -> list[tuple[int, ShardInfo, list[list[str]]]]:
        """The shards written since the last call (all still running, with ``wait``):
        ``(index, info, marker rows)``. A write that failed raises its error
        (:func:`task_result`)."""
        import ray

        if not self.running:
            return []
        refs = list(self.running)
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=None if wait else 0)
        return [(self.running.pop(ref), *task_result(ref)) for ref in done]

    def close(self) -> None:
        """Wait for the writes still running (after an error: none is left writing into a
        directory whose lock is about to be released), whatever their outcome."""
        import ray

        if self.running:
            ray.wait(list(self.running), num_returns=len(self.running), timeout=120)
            self.running.clear()


class ShardCollector:
    """Tracks each shard's pairs on the driver; has the shard written when it is whole, then
    writes its done marker."""

    def __init__(self, out: Path, plan: Plan, writer: ShardWriter, shards: Sequence[int]) -> None:
        self.out, self.plan, self.writer = out, plan, writer
        self.expected = {i: {s.sample_id: k for k, s in enumerate(plan.shard(i))} for i in shards}
        self.seen: dict[int, set[str]] = {i: set() for i in shards}
        self.parts: dict[int, list[str]] = {i: [] for i in shards}
        self.dropped: dict[int, list[Dropped]] = {i: [] for i in shards}

    def add(self, shard: int, stored: Stored) -> None:
        """Take one summary of ``shard``'s pairs; start the shard's writer when it is whole,
        and write the done markers of the shards written meanwhile."""
        if shard not in self.seen:
            raise RuntimeError(f"shard {shard}: samples after the shard was whole")
        seen, expected = self.seen[shard], self.expected[shard]
        for sample_id in (*stored.sample_ids, *(d.sample_id for d in stored.dropped)):
            if sample_id not in expected or sample_id in seen:
                raise RuntimeError(f"shard {shard}: unexpected or repeated sample {sample_id}")
            seen.add(sample_id)
        self.parts[shard] += [stored.part] if stored.part else []
        self.dropped[shard] += stored.dropped
        if len(seen) == len(expected):
            dropped = {d.sample_id for d in self.dropped[shard]}
            order = sorted(set(expected) - dropped, key=expected.__getitem__)
            self.writer.submit(shard, self.parts.pop(shard), order)
            del self.seen[shard]  # a long run's driver keeps no ids of the shards handed on
        self.mark(self.writer.finished())

    def mark(self, written: Sequence[tuple[int, ShardInfo, list[list[str]]]]) -> None:
        """Write the done markers of shards whose files are written."""
        for index, info, rows in written:
            order = self.expected[index]
            dropped = sorted(self.dropped.pop(index), key=lambda d: order[d.sample_id])
            write_marker(self.out, index, info, rows, dropped, self.plan.fingerprint)
            del self.expected[index]

    def finish(self) -> None:
        """Wait for the shards being written and mark them."""
        self.mark(self.writer.finished(wait=True))

    @property
    def pending(self) -> list[int]:
        return sorted(self.expected)


def _manifest(out: Path, plan: Plan, attrs: dict[str, Any], complete: bool) -> dict[str, Any]:
    shards, ids, dropped = [], [], []
    splits: Counter[str] = Counter()
    decoders = plan.decoders
    per_source = {
        sid: {
            "planned": 0,
            "written": 0,
            "dropped": 0,
            "skipped": None,
            "decoder": decoders[sid],
            "note": info.note,
        }
        for sid, info in plan.infos.items()
    }
    for d in plan.skipped:
        per_source[d.source_id] = {
            "planned": 0,
            "written": 0,
            "dropped": 0,
            "skipped": d.reason,
            "decoder": None,
            "note": None,
        }
    for s in plan.samples:
        per_source[s.source_id]["planned"] += 1
    if complete:
        for index in range(plan.num_shards):
            data = read_marker(out, index)
            shards.append({k: data[k] for k in ("name", "num_samples", "sha256", "bytes", "index")})
            for sample_id, digest, split in data["samples"]:
                ids.append((sample_id, digest))
                splits[split] += 1
                per_source[sample_id.rsplit("#", 1)[0]]["written"] += 1
            for d in data["dropped"]:
                dropped.append(Dropped(**d))
                per_source[d["source_id"]]["dropped"] += 1
        write_failures(out, [*plan.skipped, *plan.notes, *dropped])
    return {
        "schema_version": SCHEMA_VERSION,
        "complete": complete,
        "creator": f"cmp {__version__}",
        "config": plan.config.to_dict(),
        "flow_backend": plan.flow_identity,
        "codec": attrs["codec"],
        "plan_fingerprint": plan.fingerprint,
        "content_digest": content_digest(ids) if complete else None,
        "num_planned": len(plan.samples),
        "num_samples": len(ids),
        "num_dropped": len(dropped),
        "splits": {"train": splits["train"], "val": splits["val"]},
        "sources": per_source,
        "shards": shards,
        "stats": {},
    }


def extract(
    inputs: Sequence[str],
    out: str | Path,
    config: ExtractConfig,
    run: RunSettings = RunSettings(),
    plan: Plan | None = None,
) -> ExtractResult:
    """Build (or finish) the dataset of ``inputs`` in ``out``; see the module docstring.

    ``plan``, when given (a recipe's), is built as it is instead of planning ``inputs`` (then
    only recorded); it must have been made with ``config`` and this flow backend.
    Raises :class:`CmpDataError` for problems found before work starts: no usable input,
    an unwritable output, a directory in use or holding another dataset, missing weights;
    and when a write fails during the run (disk full): the shards written are kept, and
    rerunning finishes the dataset.
    """
    start = time.monotonic()
    out = Path(out)
    # Everything a user can get wrong is checked before anything is created in ``out``.
    check_output_dir(out)
    sources = find_sources(inputs) if plan is None else []
    options = _flow_options(config, run)
    identity = flow_identity(config, run)
    with contextlib.ExitStack() as held:
        if out.exists():  # a second run refuses at once, before it plans
            held.enter_context(locked(out))
        if run.address or run.num_gpus:
            check_resources(run)
        if plan is None:
            plan = plan_dataset(sources, config, identity, progress=run.progress)
        elif plan.config != config or plan.flow_identity != identity:
            raise UsageError("the plan given was made with another configuration or flow backend")
        if not plan.samples:
            reasons = "; ".join(d.reason for d in plan.skipped[:5])
            found = len(plan.sources) + len(plan.skipped)
            raise UsageError(f"no frame pairs to extract from {found} sources: {reasons}")
        if not out.exists():
            prepare_output(out)
            held.enter_context(locked(out))
        remove_temporary(out)
        defines = {"config": plan.config.to_dict(), "flow_backend": plan.flow_identity}
        check_existing(out, plan.fingerprint, defines, len(plan.samples), run.overwrite)
        attrs = {
            "config": {**plan.config.to_dict(), "inputs": list(inputs)},
            "flow_backend": identity,
            "codec": config.codec.params(),
        }
        with write_errors(out / MANIFEST):
            write_json_atomic(out / MANIFEST, _manifest(out, plan, attrs, complete=False))
        done = finished_shards(out, plan.fingerprint, plan.num_shards)
        todo = [i for i in range(plan.num_shards) if i not in done]
        writer = ShardWriter(out, attrs)
        held.callback(writer.close)
        collector = ShardCollector(out, plan, writer, todo)
        total = sum(len(plan.shard(i)) for i in todo)
        computed, errors = 0, 0
        bar = tqdm(total=total, desc="extracting", unit="pair", disable=not run.progress or None)
        with bar, contextlib.closing(run_pipeline(plan, todo, run, options, out)) as results:
            if todo:
                for shard, stored in results:
                    collector.add(shard, stored)
                    computed += len(stored)
                    errors += sum(d.stage == "error" for d in stored.dropped)
                    bar.update(len(stored))
                collector.finish()
        if not collector.pending:
            # What no shard took (the temporary file of a part whose task Ray killed and
            # retried) goes with the run.
            remove_temporary(out)
        seconds = time.monotonic() - start
        complete = not collector.pending
        total_bytes = sum(
            (out / shard_name(i)).stat().st_size
            for i in range(plan.num_shards)
            if (out / shard_name(i)).exists()
        )
        with write_errors(out):
            manifest = _manifest(out, plan, attrs, complete)
            written = manifest["num_samples"]
            manifest["stats"] = {
                "seconds": round(seconds, 3),
                "pairs_computed": computed,
                "pairs_per_second": round(computed / seconds, 3) if seconds > 0 else None,
                "bytes_per_sample": round(total_bytes / written, 1) if written else None,
            }
            write_json_atomic(out / MANIFEST, manifest)
    return ExtractResult(
        out,
        plan,
        complete,
        manifest["num_samples"],
        read_failures(out),
        errors,
        total_bytes,
        seconds,
        computed,
        manifest,
    )
