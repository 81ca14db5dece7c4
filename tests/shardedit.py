"""Changing a written shard the way damage would: a sample's content altered after its digest
was stored (the tests that check the damage is caught use this)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py

from cmpdata.store.shards import ShardReader, write_shard


def tamper(path: Path, row: int, **changes: object) -> None:
    """Rewrite shard ``path`` with sample ``row``'s fields replaced by ``changes`` (fields of
    :class:`~cmpdata.store.shards.EncodedSample`), keeping the digests stored before the change."""
    with ShardReader(path) as reader:
        samples = [reader.encoded(i) for i in range(len(reader))]
        _, digests, _ = reader.digests()
        attrs = reader.attrs
    samples[row] = dataclasses.replace(samples[row], **changes)
    write_shard(path, samples, attrs)
    with h5py.File(path, "r+") as f:
        f["digest"][...] = digests
