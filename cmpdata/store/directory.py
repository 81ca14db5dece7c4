"""The rules of a dataset directory: one writer at a time, one dataset per directory, which
shards are finished, and how a shard is written with its done marker.

A directory being built holds ``.lock`` (an OS file lock held by the one ``extract`` writing
it), ``manifest.json`` and ``failures.jsonl`` (:mod:`cmpdata.store.manifest`), and for each
finished shard ``shard-NNNNN.h5`` (:mod:`cmpdata.store.shards`) and its done marker
``shard-NNNNN.json``, written only after the shard has been read back from disk as written.
Every file is written to a temporary name beside it (``.NAME.tmp-PID``) and renamed into
place; a temporary file found while holding the lock was left by a run that was killed.

While a shard is being made, the workers that encode its samples leave them in part files
(``.shard-NNNNN.h5.part-KEY``, pickled :class:`~cmpdata.store.shards.EncodedSample` lists);
the shard's writer, a task of its own, gathers them into the shard and removes them. Parts
are temporary files too: a rerun removes those a killed run left and computes their shards
again.

The done marker holds the plan fingerprint the shard was made for, the shard's name, sample
count, sha256, size and index, its samples as ``[sample id, digest, split]`` and its dropped
pairs (as ``failures.jsonl`` lines). A shard counts as finished when its file and marker are
present, the marker's fingerprint is the plan's, and the file has the size it records.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pickle
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cmpdata.errors import UsageError
from cmpdata.paths import check_output_dir, stopped_by_failed_write
from cmpdata.records import Dropped
from cmpdata.store.manifest import FAILURES, MANIFEST, read_manifest, write_json_atomic
from cmpdata.store.shards import (
    EncodedSample,
    ShardError,
    ShardInfo,
    check_written,
    schema_problem,
    shard_name,
    write_shard,
)

LOCK = ".lock"
TEMPORARY = (".shard-*.tmp-*", ".shard-*.part-*", f".{MANIFEST}.tmp-*", f".{FAILURES}.tmp-*")
# What a run stopped by a failed write (disk full) says to do next.
_FINISH = (
    "the shards already written are kept: free space (or raise the file-size limit) "
    "and rerun the same command to finish the dataset"
)


@contextlib.contextmanager
def locked(out: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``out`` for the run; the OS drops it if the process dies.

    Raises :class:`UsageError` when another process holds it.
    """
    handle = open(out / LOCK, "a+")  # noqa: SIM115 (held for the whole run)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{out}: another cmpdata extract is writing to this directory; "
                "wait for it to finish or choose another --out"
            ) from None
        yield
    finally:
        handle.close()


def prepare_output(out: Path) -> None:
    """Create ``out`` and prove it is writable, before any work starts."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot create the output directory ({exc.strerror})") from None
    check_output_dir(out)


def write_errors(path: Path) -> contextlib.AbstractContextManager[None]:
    """:func:`cmpdata.paths.stopped_by_failed_write` with the advice of an extraction."""
    return stopped_by_failed_write(path, _FINISH)


def marker_path(out: Path, index: int) -> Path:
    """The done marker of shard ``index``."""
    return out / shard_name(index).replace(".h5", ".json")


def read_marker(out: Path, index: int) -> dict[str, Any]:
    """The done marker of shard ``index`` (module docstring)."""
    return json.loads(marker_path(out, index).read_text())


def _remove(out: Path, patterns: Sequence[str]) -> None:
    for pattern in patterns:
        for path in out.glob(pattern):
            path.unlink()


def remove_temporary(out: Path) -> None:
    """Remove the temporary files a killed run left (call it holding the lock)."""
    _remove(out, TEMPORARY)


def clear(out: Path) -> None:
    """Remove every file of a dataset from ``out`` (``--overwrite``)."""
    _remove(out, ("shard-*.h5", "shard-*.json", MANIFEST, FAILURES, *TEMPORARY))


def finished_shards(out: Path, fingerprint: str, num_shards: int) -> set[int]:
    """The shards among ``range(num_shards)`` finished for the plan ``fingerprint``."""
    done = set()
    for index in range(num_shards):
        marker, shard = marker_path(out, index), out / shard_name(index)
        if not marker.exists() or not shard.exists():
            continue
        try:
            data = json.loads(marker.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if data.get("fingerprint") == fingerprint and shard.stat().st_size == data.get("bytes"):
            done.add(index)
    return done


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): data}


def differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable ``key: old -> new`` lines for two (nested) configurations."""
    a, b = _flatten(old), _flatten(new)
    keys = sorted(a.keys() | b.keys())
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys if a.get(k) != b.get(k)]


def check_existing(
    out: Path, fingerprint: str, identity: dict[str, Any], num_planned: int, overwrite: bool
) -> None:
    """Refuse to mix two datasets in one directory, unless ``overwrite`` (which clears it).

    ``fingerprint`` is the new plan's; ``identity`` its ``{"config", "flow_backend"}``, compared
    with the manifest's to name the differences. Raises :class:`UsageError` for a directory
    holding shards but no manifest, a dataset of another shard schema, or another dataset.
    """
    if not (out / MANIFEST).exists():
        if any(out.glob("shard-*.h5")) and not overwrite:
            raise UsageError(
                f"{out}: holds shards but no manifest; use --overwrite to replace them"
            )
        if overwrite:
            clear(out)
        return
    old = read_manifest(out)
    problem = schema_problem(old.get("schema_version"))
    if old.get("plan_fingerprint") == fingerprint and not problem:
        return
    if overwrite:
        clear(out)
        return
    if problem:
        raise UsageError(f"{out}: holds a dataset {problem}")
    lines = differences({key: old.get(key) for key in identity}, identity)
    if not lines:
        lines = [
            f"the planned samples differ: {old.get('num_planned')} -> {num_planned} "
            "(other input videos, or their frame counts changed)"
        ]
    raise UsageError(
        f"{out} holds a dataset made with other options; use --overwrite to replace it, "
        "or another --out. Differences:\n  " + "\n  ".join(lines)
    )


def part_name(index: int, sample_ids: Sequence[str]) -> str:
    """The name of the part file of shard ``index`` holding ``sample_ids``: named by its content,
    so that a retried task writes the same part again instead of a second copy."""
    key = hashlib.sha256("\n".join(sample_ids).encode()).hexdigest()[:20]
    return f".{shard_name(index)}.part-{key}"


def write_part(out: Path, index: int, samples: Sequence[EncodedSample]) -> str:
    """Write encoded samples of shard ``index`` to a part file in ``out`` for the shard's writer
    to gather (:func:`write_shard_from_parts`); returns its name.

    A part lives only until its shard is written: it is renamed into place whole (so another
    node never reads half of one) but not synced, since a run that dies computes unfinished
    shards again. Raises :class:`~cmpdata.errors.RunStopped` when it cannot be written.
    """
    name = part_name(index, [s.sample_id for s in samples])
    path = out / name
    tmp = out / f"{name}.tmp-{uuid.uuid4().hex}"
    with write_errors(path):
        try:
            tmp.write_bytes(pickle.dumps(list(samples), protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    return name


def write_shard_from_parts(
    out: Path, index: int, parts: Sequence[str], order: Sequence[str], attrs: dict[str, Any]
) -> tuple[ShardInfo, list[list[str]]]:
    """Write shard ``index`` from its part files: the samples in ``order`` (sample ids, the
    plan's order), atomically, read back; then remove the parts.

    Returns the shard's :class:`ShardInfo` and its samples as ``[sample id, digest, split]``
    for the done marker, which the caller writes (:func:`write_marker`). A part that is
    missing or does not hold what ``order`` asks for raises :class:`ShardError`; a shard that
    does not read back as written is removed and :class:`ShardError` raised; a failed write
    (disk full) raises :class:`~cmpdata.errors.RunStopped`, leaving no partial file.
    """
    path = out / shard_name(index)
    samples: dict[str, EncodedSample] = {}
    for name in parts:
        try:
            samples.update((s.sample_id, s) for s in pickle.loads((out / name).read_bytes()))
        except FileNotFoundError:
            raise ShardError(path, f"its part {name} is missing") from None
    if samples.keys() != set(order):
        raise ShardError(path, f"its parts hold {len(samples)} samples, {len(order)} expected")
    ordered = [samples[sample_id] for sample_id in order]
    with write_errors(path):
        info = write_shard(path, ordered, {**attrs, "shard_index": index})
    # A shard that does not read back as written is never counted as finished.
    try:
        check_written(path, info, order)
    except ShardError:
        path.unlink()
        raise
    for name in parts:
        (out / name).unlink(missing_ok=True)
    rows = [[s.sample_id, d, s.split] for s, d in zip(ordered, info.digests, strict=True)]
    return info, rows


def write_marker(
    out: Path,
    index: int,
    info: ShardInfo,
    rows: Sequence[Sequence[str]],
    dropped: Sequence[Dropped],
    fingerprint: str,
) -> None:
    """Write the done marker of the written shard ``index`` (module docstring); when it cannot
    be written the shard is removed too, and :class:`~cmpdata.errors.RunStopped` raised: no
    shard without its marker, the rerun writes both again."""
    marker = {
        "fingerprint": fingerprint,
        **info.record(),
        "index": index,
        "samples": [list(row) for row in rows],
        "dropped": [asdict(d) for d in dropped],
    }
    try:
        with write_errors(marker_path(out, index)):
            write_json_atomic(marker_path(out, index), marker)
    except BaseException:
        (out / shard_name(index)).unlink(missing_ok=True)
        raise
