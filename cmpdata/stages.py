"""The per-sample stages chained in one process: frame pairs -> flow -> filters -> guidance.

This is the plain-Python path through the stages, used by ``cmpdata preview`` and the demo
(:func:`write_pictures`: a picture a sample), and as the baseline the Ray pipeline is
measured against. The Ray pipeline runs the same
stage functions, spread over workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from cmpdata.config import ExtractConfig
from cmpdata.errors import SourceError
from cmpdata.filters import flow_rejection, frames_rejection
from cmpdata.flow import FlowBackend
from cmpdata.flow.consistency import forward_backward
from cmpdata.guidance import GuidanceSampler
from cmpdata.io.pairs import iter_pairs
from cmpdata.records import Dropped, FlowSample, FramePair, GuidedSample, Source
from cmpdata.seeding import sample_rng, sample_seed
from cmpdata.viz import flow_figure, save_png


def compute_flows(
    pairs: Sequence[FramePair], flow: FlowBackend, consistency: bool
) -> list[FlowSample]:
    """Dense flow for a batch of pairs, with validity masks when ``consistency`` is set."""
    frames0 = [p.frame0 for p in pairs]
    frames1 = [p.frame1 for p in pairs]
    if consistency:
        return [
            FlowSample(p, f, v)
            for p, (f, v) in zip(pairs, forward_backward(flow, frames0, frames1), strict=True)
        ]
    return [FlowSample(p, f) for p, f in zip(pairs, flow(frames0, frames1), strict=True)]


def guide(sample: FlowSample, sampler: GuidanceSampler, seed: int) -> GuidedSample:
    """Draw the guidance of one sample from its own seeded generator."""
    guidance = sampler(sample.flow, sample_rng(seed, sample.sample_id), sample.valid)
    return GuidedSample(sample, guidance, sample_seed(seed, sample.sample_id))


def finish_sample(
    sample: FlowSample, sampler: GuidanceSampler, config: ExtractConfig
) -> GuidedSample | Dropped:
    """The flow-based filters, then the guidance, of one sample."""
    dropped = flow_rejection(sample, config.filters)
    return dropped if dropped is not None else guide(sample, sampler, config.seed)


def finish_batch(
    pairs: Sequence[FramePair],
    flow: FlowBackend,
    sampler: GuidanceSampler,
    config: ExtractConfig,
) -> Iterator[GuidedSample | Dropped]:
    """Flow, flow-based filters and guidance for a batch of pairs that passed the frame filters."""
    for sample in compute_flows(pairs, flow, config.consistency):
        yield finish_sample(sample, sampler, config)


def process_source(
    source: Source,
    flow: FlowBackend,
    sampler: GuidanceSampler,
    config: ExtractConfig,
    batch_size: int = 8,
) -> Iterator[GuidedSample | Dropped]:
    """Every sample of one source, in frame order, or the reason each pair was dropped.

    Raises :class:`cmpdata.errors.SourceError` (or a subclass) when the source as a whole
    cannot be used: missing, corrupt, too small, shorter than the gap.
    """
    batch: list[FramePair] = []
    for item in iter_pairs(source, config.pairs, crop=config.filters.crop):
        dropped = item if isinstance(item, Dropped) else frames_rejection(item, config.filters)
        if dropped is not None:
            yield dropped
            continue
        batch.append(item)
        if len(batch) >= batch_size:
            yield from finish_batch(batch, flow, sampler, config)
            batch = []
    yield from finish_batch(batch, flow, sampler, config)


def picture_name(sample_id: str) -> str:
    """The file name of a sample's picture: its id with ``/`` and ``#`` replaced by ``_``."""
    return sample_id.replace("/", "_").replace("#", "_") + ".png"


def sample_figure(sample: GuidedSample) -> np.ndarray:
    """Frame with guidance | flow | colour legend, titled with the sample id."""
    s = sample.flow_sample
    return flow_figure(s.pair.frame0, s.flow, sample.guidance, valid=s.valid, title=s.sample_id)


def write_pictures(
    sources: Sequence[Source],
    flow: FlowBackend,
    sampler: GuidanceSampler,
    config: ExtractConfig,
    out: Path,
    picture: Callable[[GuidedSample], np.ndarray] = sample_figure,
) -> Iterator[tuple[GuidedSample | Dropped, Path | None]]:
    """Every sample of ``sources`` through the stages, with its picture (``picture(sample)``)
    written to ``out/<picture_name>``: yields ``(sample, path)``, or ``(Dropped, None)`` for a
    pair dropped and for a source that cannot be used (``t0 = t1 = -1``, stage ``source``)."""
    for source in sources:
        try:
            for item in process_source(source, flow, sampler, config):
                if isinstance(item, Dropped):
                    yield item, None
                    continue
                yield item, save_png(out / picture_name(item.sample_id), picture(item))
        except SourceError as exc:
            yield Dropped(source.id, -1, -1, "source", str(exc)), None
