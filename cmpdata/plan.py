"""The extraction plan: which samples a dataset holds, decided before any frame is decoded.

The plan lists the usable sources in id order and, for each, its frame pairs in frame order;
that ordered list is the definition of the dataset. Shard ``i`` holds planned samples
``[i * shard_size, (i + 1) * shard_size)``. The plan's fingerprint is a hash over the
ordered sample ids, the configuration, the flow backend's identity and the shard schema: two
runs with the same fingerprint are meant to produce the same dataset, whatever the number of
workers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tqdm import tqdm

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError
from cmpdata.io.decoders import close_decord_servers
from cmpdata.io.pairs import PairConfig, decoders, pair_indices
from cmpdata.io.sources import check_source_size, probe
from cmpdata.records import Dropped, Source, VideoInfo, make_sample_id
from cmpdata.seeding import stable_hash
from cmpdata.store.shards import SCHEMA_VERSION

SPLIT_SALT = "cmp-split"


def split_of(source_id: str, val_fraction: float) -> str:
    """``"val"`` for a stable ``val_fraction`` of sources (by a hash of the id), else ``"train"``.

    All pairs of one video fall on one side, so validation never sees a training video.
    """
    return "val" if stable_hash(SPLIT_SALT, source_id) / 2**64 < val_fraction else "train"


@dataclass(frozen=True)
class PlannedSample:
    source_id: str
    t0: int
    t1: int
    split: str

    @property
    def sample_id(self) -> str:
        return make_sample_id(self.source_id, self.t0, self.t1)


@dataclass
class Plan:
    """The ordered samples of a dataset and the sources they come from."""

    config: ExtractConfig
    flow_identity: dict[str, Any]
    sources: dict[str, Source]  # usable sources by id, in id order
    infos: dict[str, VideoInfo]
    skipped: list[Dropped]  # sources left out at planning, with the reason
    samples: list[PlannedSample]
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = plan_fingerprint(
                self.samples, self.config, self.flow_identity, self.decoders
            )

    @property
    def decoders(self) -> dict[str, str]:
        """The decoder that reads each source (``"frames"`` for a frame folder)."""
        chosen = self.config.pairs.decoder
        return {
            sid: decoders(source, chosen, self.infos[sid])[0]
            for sid, source in self.sources.items()
        }

    @property
    def notes(self) -> list[Dropped]:
        """Sources used, but not as their header claims (e.g. a frame count the file cannot
        hold), as ``Dropped(stage="probe")`` records whose reason says what was done."""
        return [
            Dropped(sid, -1, -1, "probe", info.note)
            for sid, info in self.infos.items()
            if info.note
        ]

    @property
    def num_shards(self) -> int:
        return -(-len(self.samples) // self.config.shard_size)

    def shard(self, index: int) -> list[PlannedSample]:
        size = self.config.shard_size
        return self.samples[index * size : (index + 1) * size]


def plan_fingerprint(
    samples: Sequence[PlannedSample],
    config: ExtractConfig,
    flow_identity: dict[str, Any],
    decoders: dict[str, str] | None = None,
) -> str:
    h = hashlib.sha256()
    # The shard schema is part of the definition: a resumed run never mixes two schemas.
    head = {"config": config.to_dict(), "flow": flow_identity, "schema": SCHEMA_VERSION}
    h.update(json.dumps(head, sort_keys=True).encode())
    # So is the decoder of each video (decoders differ in RGB on some pixel formats).
    for source_id, decoder in sorted((decoders or {}).items()):
        h.update(f"{source_id}\tdecoder {decoder}\n".encode())
    for s in samples:
        h.update(f"{s.sample_id}\t{s.split}\n".encode())
    return h.hexdigest()


def unusable(
    source: Source, info: VideoInfo, config: PairConfig, where: str | None = None
) -> Dropped | None:
    """Why ``source`` cannot give pairs under ``config`` (too small, fewer frames than
    ``gap + 1``), as a source-level :class:`Dropped`, or ``None`` when it can. ``where``
    names the source in the reason (default: its path)."""
    try:
        check_source_size(source, info, config.min_side)
    except CmpDataError as exc:
        return Dropped(source.id, -1, -1, "source", str(exc))
    if info.num_frames < config.gap + 1:
        where = where or str(source.path)
        reason = f"{where}: {info.num_frames} frames, fewer than gap + 1 = {config.gap + 1}"
        return Dropped(source.id, -1, -1, "source", reason)
    return None


def _probe_one(source: Source, config: PairConfig) -> VideoInfo | Dropped:
    try:
        info = probe(source, timeout=config.timeout)
    except CmpDataError as exc:
        return Dropped(source.id, -1, -1, "source", str(exc))
    return unusable(source, info, config) or info


def plan_dataset(
    sources: Sequence[Source],
    config: ExtractConfig,
    flow_identity: dict[str, Any],
    probe_threads: int = 8,
    progress: bool = True,
) -> Plan:
    """Probe every source (in threads: probing waits on subprocesses) and list the pairs.

    Sources that cannot be used (unreadable, too small, too short) are recorded in
    ``Plan.skipped`` with the reason, not raised.
    """
    ordered = sorted(sources, key=lambda s: s.id)
    with ThreadPoolExecutor(max_workers=max(1, probe_threads)) as pool:
        results = list(
            tqdm(
                pool.map(lambda s: _probe_one(s, config.pairs), ordered),
                total=len(ordered),
                desc="probing sources",
                unit="source",
                disable=not progress or None,
            )
        )
    close_decord_servers()  # one a probing thread: not needed once planning is done
    usable: dict[str, Source] = {}
    infos: dict[str, VideoInfo] = {}
    skipped: list[Dropped] = []
    samples: list[PlannedSample] = []
    p = config.pairs
    for source, result in zip(ordered, results, strict=True):
        if isinstance(result, Dropped):
            skipped.append(result)
            continue
        usable[source.id] = source
        infos[source.id] = result
        split = split_of(source.id, config.val_fraction)
        for t0, t1 in pair_indices(result.num_frames, p.gap, p.stride, p.max_pairs_per_video):
            samples.append(PlannedSample(source.id, t0, t1, split))
    return Plan(config, flow_identity, usable, infos, skipped, samples)
