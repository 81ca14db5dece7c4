"""Reading a dataset directory for training: a torch ``Dataset`` over the samples of its shards.

A dataset directory holds ``shard-00000.h5, shard-00001.h5, ...`` (format:
:mod:`cmpdata.store.shards`) and ``manifest.json`` (:mod:`cmpdata.store.manifest`). When the
manifest says the dataset is complete, its list of shards is authoritative and its sample
counts and file sizes are checked against the files; otherwise (no manifest, or a run still
going) the shard files present are read.

No HDF5 file stays open after construction: each process (the main one and every DataLoader
worker) opens the shards it reads on first use, so no handle is ever shared across a fork.
"""

from __future__ import annotations

import operator
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from cmpdata.errors import CmpDataError, UsageError
from cmpdata.store.manifest import MANIFEST, read_manifest
from cmpdata.store.shards import (
    SPLITS,
    ShardError,
    ShardReader,
    StoredSample,
    check_schema,
    file_sha256,
)

SHARD_GLOB = "shard-*.h5"


@dataclass(frozen=True)
class ListedShard:
    """A shard file of a dataset and what the manifest says of it (None when unknown)."""

    path: Path
    num_samples: int | None = None
    bytes: int | None = None
    sha256: str | None = None


def list_shards(root: str | Path) -> tuple[list[ListedShard], dict[str, Any] | None]:
    """The shards of a dataset directory (or the single shard file ``root``) and its manifest.

    A complete manifest's ``shards`` list is used as is (a listed file may be missing); without
    a manifest, or with an incomplete one, the ``shard-*.h5`` files present are listed in name
    order. Raises :class:`CmpDataError` naming ``root`` when it does not exist, holds no shard,
    or its manifest is unreadable, and :class:`ShardError` when the manifest names another
    shard schema (one line saying to extract again, instead of one error a shard).
    """
    root = Path(root)
    if root.is_file():
        return [ListedShard(root)], None
    if not root.is_dir():
        raise UsageError(f"{root}: no such dataset directory or shard file")
    manifest = read_manifest(root) if (root / MANIFEST).exists() else None
    if manifest is not None:
        check_schema(root, manifest.get("schema_version"))
    if manifest is not None and manifest.get("complete"):
        listed = [
            ListedShard(root / s["name"], int(s["num_samples"]), int(s["bytes"]), s.get("sha256"))
            for s in manifest.get("shards", [])
        ]
    else:
        listed = [ListedShard(p) for p in sorted(root.glob(SHARD_GLOB))]
    if not listed:
        raise UsageError(f"{root}: no shards ({SHARD_GLOB}) found")
    return listed, manifest


def read_columns(path: str | Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Whole columns of one shard (:data:`~cmpdata.store.shards.DATASETS`), then close.

    String columns come back as object arrays of ``str``. Raises :class:`ShardError` naming
    the file when it is missing, not HDF5, of another schema, lacks a dataset, is corrupt, or a
    column has the wrong length.
    """
    with ShardReader(path) as reader:
        return reader.columns(names)


def check_listed(
    shard: ListedShard, names: Sequence[str], checksum: bool = False
) -> dict[str, np.ndarray]:
    """:func:`read_columns` after checking the file against the manifest's size and count,
    and with ``checksum`` its sha256 (reading every byte; before the file is opened, since
    damaged HDF5 metadata can crash the HDF5 library).

    Raises :class:`ShardError` naming the file when it is damaged or disagrees with the
    manifest (truncated, changed, or holding another number of samples).
    """
    if shard.bytes is not None:
        try:
            size = shard.path.stat().st_size
        except FileNotFoundError:
            raise ShardError(shard.path, "no such file") from None
        if size != shard.bytes:
            raise ShardError(shard.path, f"{size} bytes, the manifest lists {shard.bytes}")
    if checksum and shard.sha256 is not None and file_sha256(shard.path) != shard.sha256:
        raise ShardError(shard.path, "sha256 differs from the manifest's: the file changed")
    columns = read_columns(shard.path, ["meta", *names])
    n = len(columns["meta"])
    if shard.num_samples is not None and n != shard.num_samples:
        raise ShardError(shard.path, f"holds {n} samples, the manifest lists {shard.num_samples}")
    return columns


class ShardDataset(Dataset):
    """The samples of one split of one or more dataset directories, in shard order.

    ``root`` is a dataset directory, a single shard file, or a sequence of them. ``split`` is
    ``"train"``, ``"val"`` or None (every sample). Item ``i`` is ``transform(sample)``, or the
    :class:`~cmpdata.store.shards.StoredSample` itself without a transform.

    Construction opens every shard once, reads its small ``meta`` column and closes it again.
    A damaged shard (missing, truncated, not HDF5, lacking a dataset, or disagreeing with the
    manifest) raises :class:`ShardError` naming it; with ``skip_damaged`` it is left out with a
    warning and listed in :attr:`skipped` as ``(path, reason)``, and each shard's sha256 is
    also checked against the manifest (reading every byte once), so that a shard with flipped
    bytes is left out too. Without ``skip_damaged`` such a shard is found when one of its
    samples is read: reading raises :class:`ShardError` naming the shard and the sample.

    Raises :class:`CmpDataError` when a root holds no shard or every shard is damaged, and
    ``ValueError`` for an unknown split.
    """

    def __init__(
        self,
        root: str | Path | Sequence[str | Path],
        split: str | None = "train",
        transform: Callable[[StoredSample], Any] | None = None,
        skip_damaged: bool = False,
    ) -> None:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        roots = [root] if isinstance(root, (str, os.PathLike)) else list(root)
        if not roots:
            raise ValueError("ShardDataset needs at least one dataset directory or shard file")
        self.split = split
        self.transform = transform
        self.shards: list[Path] = []
        self.skipped: list[tuple[Path, str]] = []
        rows: list[np.ndarray] = []
        for r in roots:
            listed, manifest = list_shards(r)
            if manifest is not None and not manifest.get("complete"):
                warnings.warn(
                    f"{r}: incomplete dataset (manifest.json says complete: false); "
                    f"reading the {len(listed)} shard files present",
                    stacklevel=2,
                )
            for shard in listed:
                try:
                    splits = check_listed(shard, [], checksum=skip_damaged)["meta"]["split"]
                except ShardError as exc:
                    if not skip_damaged:
                        raise
                    warnings.warn(f"skipping damaged shard {exc}", stacklevel=2)
                    self.skipped.append((shard.path, exc.reason))
                    continue
                keep = np.arange(len(splits), dtype=np.int64)
                rows.append(keep if split is None else keep[splits == SPLITS.index(split)])
                self.shards.append(shard.path)
        if not self.shards:
            names = ", ".join(str(r) for r in roots)
            raise CmpDataError(f"{names}: every shard is damaged ({len(self.skipped)} skipped)")
        # Items are grouped by shard: items offsets[k] .. offsets[k + 1] - 1 are in shard k.
        self._offsets = np.cumsum([0, *(len(r) for r in rows)])
        self._rows = np.concatenate(rows)
        self._readers = [ShardReader(p) for p in self.shards]

    def __len__(self) -> int:
        return len(self._rows)

    def _position(self, index: int) -> tuple[int, int]:
        i = operator.index(index)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range: the dataset holds {n} samples")
        i %= n
        return int(np.searchsorted(self._offsets, i, side="right")) - 1, int(self._rows[i])

    def locate(self, index: int) -> tuple[Path, int]:
        """``(shard path, row in it)`` of item ``index``; ``IndexError`` when out of range."""
        shard, row = self._position(index)
        return self.shards[shard], row

    def read(self, index: int) -> StoredSample:
        """Sample ``index`` as stored, without the transform; raises ``IndexError`` when out of
        range and :class:`ShardError` naming the shard when the sample cannot be read."""
        shard, row = self._position(index)
        return self._readers[shard].read(row)

    def __getitem__(self, index: int) -> Any:
        """Item ``index``: :meth:`read` through the transform, if any."""
        sample = self.read(index)
        return sample if self.transform is None else self.transform(sample)

    def sample_ids(self) -> list[str]:
        """The sample ids of the items, in item order (reads each shard's ``sample_id`` column)."""
        ids: list[str] = []
        for k, path in enumerate(self.shards):
            if self._offsets[k] == self._offsets[k + 1]:
                continue
            column = read_columns(path, ["sample_id"])["sample_id"]
            ids.extend(column[self._rows[self._offsets[k] : self._offsets[k + 1]]].tolist())
        return ids

    def close(self) -> None:
        """Close the files this process opened (they reopen on the next read)."""
        for reader in self._readers:
            reader.close()

    def __getstate__(self) -> dict[str, Any]:
        # Open h5py files cannot be pickled (spawn / forkserver workers): send fresh readers.
        state = self.__dict__.copy()
        state["_readers"] = [ShardReader(p) for p in self.shards]
        return state
