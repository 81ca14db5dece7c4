"""A shard writer that writes in the calling process, for tests that replace the Ray stages:
the shards are written by the same function as ``extract``'s Ray tasks
(:func:`cmpdata.store.directory.write_shard_from_parts`), so a test can stop, patch or kill
that process at a moment of the write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmpdata.store.directory import write_shard_from_parts
from cmpdata.store.shards import ShardInfo


class InlineShardWriter:
    """:class:`pipelines.extract.ShardWriter`'s interface, writing each shard on submission."""

    def __init__(self, out: Path, attrs: dict[str, Any]) -> None:
        self.out, self.attrs = out, attrs
        self.written: list[tuple[int, ShardInfo, list[list[str]]]] = []

    def submit(self, index: int, parts: Sequence[str], order: Sequence[str]) -> None:
        self.written.append(
            (index, *write_shard_from_parts(self.out, index, parts, order, self.attrs))
        )

    def finished(self, wait: bool = False) -> list[tuple[int, ShardInfo, list[list[str]]]]:
        written, self.written = self.written, []
        return written

    def close(self) -> None:
        pass
