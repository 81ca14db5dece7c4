"""What runs inside the Ray workers of ``cmpdata extract``: work items and the stages they go
through (decode -> flow -> filters, guidance, encoding).

One Ray task takes a work item through every stage (:func:`item_stage`), a batch of pairs at a
time. On CPU it computes the flows itself; with GPUs it sends each batch of frame pairs to a
flow actor (:class:`FlowActor`, one a GPU) and finishes the previous batch while the GPU works
on this one (:func:`flowed_batches`). The task leaves its encoded samples in a part file of
the output directory (:func:`cmpdata.store.directory.write_part`) and returns the driver only
a :class:`Stored` summary a shard: the samples' bytes never travel to the driver. The stage
functions are :mod:`cmpdata.stages`'; this module only moves records between them.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError
from cmpdata.filters import frames_rejection
from cmpdata.flow import FlowBackend, build_flow
from cmpdata.guidance import GuidanceSampler, build_sampler
from cmpdata.io.media import MAX_REASON, clip_text
from cmpdata.io.pairs import iter_pairs
from cmpdata.plan import split_of
from cmpdata.records import Dropped, FramePair, Source, VideoInfo
from cmpdata.stages import compute_flows, finish_sample
from cmpdata.store.directory import write_part
from cmpdata.store.shards import EncodedSample, encode_sample


@dataclass(frozen=True)
class WorkItem:
    shard: int
    source: Source
    info: VideoInfo
    pairs: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class Stored:
    """What the driver hears of some of a shard's pairs: the part file holding those encoded
    (its name in the output directory; None when all were dropped), their sample ids, and the
    pairs dropped."""

    part: str | None
    sample_ids: tuple[str, ...]
    dropped: tuple[Dropped, ...]

    def __len__(self) -> int:
        return len(self.sample_ids) + len(self.dropped)


def store_records(out: str, shard: int, records: Sequence[object]) -> Stored:
    """A work item's encoded samples and dropped pairs of ``shard`` -> a part file
    (:func:`~cmpdata.store.directory.write_part`, none when every pair was dropped) and its
    :class:`Stored` summary."""
    samples = [r for r in records if isinstance(r, EncodedSample)]
    part = write_part(Path(out), shard, samples) if samples else None
    dropped = tuple(r for r in records if isinstance(r, Dropped))
    return Stored(part, tuple(s.sample_id for s in samples), dropped)


def _limit_threads() -> None:
    # One worker, one core: Ray runs as many workers as cores, and OpenCV would otherwise
    # start a thread per core in each of them.
    import cv2

    cv2.setNumThreads(1)


def decode_item(item: WorkItem, config: ExtractConfig) -> Iterator[FramePair | Dropped]:
    """One work item's frame pairs (after the frame filters) and dropped pairs, streamed: a
    consumer that takes them a batch at a time holds one batch of frames, however long the
    item.

    When decoding stops part-way, every pair not yet given is dropped with the reason: a
    :class:`~cmpdata.errors.CmpDataError` (a corrupt file, a hang) as it says; anything else
    raised while decoding (a crash in a decoding library) as an unexpected error with the
    last frames of its traceback, so that it must not end a long run. The frame filters run
    outside that net: an error of theirs is a bug and keeps its traceback.
    """
    seen: set[tuple[int, int]] = set()
    pairs = iter_pairs(item.source, config.pairs, item.info, config.filters.crop, item.pairs)
    with contextlib.closing(pairs):
        while True:
            try:
                x = next(pairs)
            except StopIteration:
                return
            except CmpDataError as exc:
                stage, reason = "decode", str(exc)
                break
            except Exception as exc:
                stage, reason = "error", unexpected(exc)
                break
            seen.add((x.t0, x.t1))
            dropped = x if isinstance(x, Dropped) else frames_rejection(x, config.filters)
            yield dropped if dropped is not None else x
    for t0, t1 in item.pairs:
        if (t0, t1) not in seen:
            yield Dropped(item.source.id, t0, t1, stage, reason)


def decoded_batches(
    item: WorkItem, config: ExtractConfig, batch_size: int
) -> Iterator[list[FramePair | Dropped]]:
    """:func:`decode_item`'s records in lists of up to ``batch_size``: the frames of one batch
    at a time are held, however long the item."""
    with contextlib.closing(decode_item(item, config)) as records:
        while batch := list(itertools.islice(records, batch_size)):
            yield batch


def unexpected(exc: BaseException) -> str:
    """``unexpected error: Type: message (at file:line in function, ...)``: the error and the
    last three frames of its traceback, innermost last, cut to a few hundred characters."""
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    where = ", ".join(f"{Path(f.filename).name}:{f.lineno} in {f.name}" for f in frames)
    return clip_text(f"unexpected error: {type(exc).__name__}: {exc} (at {where})", MAX_REASON)


def flow_records(
    records: Sequence[object], backend: FlowBackend, consistency: bool
) -> list[object]:
    """Each FramePair -> its FlowSample (computed as one batch); other records pass through."""
    out = list(records)
    todo = [i for i, r in enumerate(out) if isinstance(r, FramePair)]
    if not todo:  # every pair of the batch was dropped
        return out
    flows = compute_flows([out[i] for i in todo], backend, consistency)
    for i, sample in zip(todo, flows, strict=True):
        out[i] = sample
    return out


class FlowActor:
    """A Ray actor holding one GPU: builds the flow backend once, then computes the flows of
    the batches that the item tasks send it, one batch at a time."""

    def __init__(self, config: ExtractConfig, options: dict[str, Any]) -> None:
        _limit_threads()
        self.backend: FlowBackend = build_flow(config.flow, **options)
        self.consistency = config.consistency

    def flows(self, records: Sequence[object]) -> list[object]:
        """:func:`flow_records` of one batch."""
        return flow_records(records, self.backend, self.consistency)


def finish_records(
    records: Sequence[object], sampler: GuidanceSampler, config: ExtractConfig
) -> list[object]:
    """Flow filters, guidance and encoding: each FlowSample -> EncodedSample (or Dropped)."""
    out: list[object] = []
    for record in records:
        result = record if isinstance(record, Dropped) else finish_sample(record, sampler, config)
        if not isinstance(result, Dropped):
            split = split_of(result.flow_sample.pair.source_id, config.val_fraction)
            result = encode_sample(result, split, config.codec, config.jpeg_quality)
        out.append(result)
    return out


_BACKENDS: dict[str, FlowBackend] = {}  # per worker process: Ray reuses its task workers


def flowed_batches(
    batches: Iterable[Sequence[object]],
    submit: Callable[[Sequence[object]], Any],
    get: Callable[[Any], list[object]],
) -> Iterator[list[object]]:
    """``get(submit(batch))`` of each batch in turn, one batch ahead: the next batch is taken
    (decoded) and submitted before the previous one's result is got, so that the flow actor
    works while the task decodes and finishes; at most two batches are out at a time."""
    pending = None
    for batch in batches:
        ahead = submit(batch)
        if pending is not None:
            yield get(pending)
        pending = ahead
    if pending is not None:
        yield get(pending)


def item_stage(
    item: WorkItem,
    config: ExtractConfig,
    options: dict[str, Any],
    batch_size: int,
    out: str,
    actor: Any = None,
) -> tuple[int, Stored]:
    """A Ray task: one work item through every stage, a batch of pairs at a time, its encoded
    samples stored in a part file (:func:`store_records`); returns (its shard, the summary).
    The flows are computed here (``actor`` None: a CPU backend, built once per worker process)
    or by ``actor``, the handle of a :class:`FlowActor`."""
    _limit_threads()
    # Frames are decoded a batch at a time: an item of a long video never holds all its frames.
    batches = decoded_batches(item, config, batch_size)
    if actor is None:
        key = json.dumps([config.flow, options], sort_keys=True, default=str)
        if key not in _BACKENDS:
            _BACKENDS[key] = build_flow(config.flow, **options)
        backend = _BACKENDS[key]
        flowed = (flow_records(batch, backend, config.consistency) for batch in batches)
    else:
        import ray

        flowed = flowed_batches(batches, actor.flows.remote, ray.get)
    sampler = build_sampler(config.guidance)
    records = [r for batch in flowed for r in finish_records(batch, sampler, config)]
    return item.shard, store_records(out, item.shard, records)
