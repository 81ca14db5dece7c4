"""``DIR/manifest.json`` and ``DIR/failures.jsonl``: what a dataset directory holds.

The manifest is the dataset's table of contents, written atomically: at the start of a run
with ``"complete": false`` (so a rerun can check it is the same dataset) and again at the end.

==================  =========================================================================
key                 meaning
==================  =========================================================================
schema_version      version of this layout and of the shard format
complete            true once every planned shard is written
creator             ``cmp <version>``
config              the extraction configuration (what decides the samples' content)
flow_backend        name, parameters and weights sha256 of the flow estimator
codec               the flow codec's parameters
plan_fingerprint    sha256 over the ordered planned sample ids, the configuration and the flow
                    backend's identity: the definition of the dataset
content_digest      sha256 over the ids and per-sample digests of the samples written, in plan
                    order: equal digests mean equal stored bytes
num_planned         pairs in the plan
num_samples         samples written
num_dropped         planned pairs not written (each in ``failures.jsonl``)
splits              samples per split, ``{"train": n, "val": n}``
sources             per source id: ``planned``, ``written``, ``dropped`` counts, ``skipped``
                    (the reason, when the whole source was unusable, else null),
                    ``decoder`` (what read it: ``decord``, ``ffmpeg`` or ``frames``; part of
                    the plan fingerprint) and ``note`` (what the probe did not take as the
                    file claimed, e.g. a frame count the file cannot hold, else null)
shards              list of ``{"name", "index", "num_samples", "sha256", "bytes"}``
stats               ``bytes_per_sample``, ``seconds``, ``pairs_per_second`` of the last run
==================  =========================================================================

``failures.jsonl`` holds one JSON object a line, ``{"source_id", "t0", "t1", "stage",
"reason"}``, for every skipped source (``t0 = t1 = -1``, stage ``source``), every source used
but not as its header claims (``t0 = t1 = -1``, stage ``probe``: the reason says what was
done instead) and every dropped pair.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cmpdata.errors import CmpDataError, UsageError
from cmpdata.records import Dropped

MANIFEST = "manifest.json"
FAILURES = "failures.jsonl"


def content_digest(pairs: Iterable[tuple[str, str]]) -> str:
    """sha256 (hex) over ``"sample_id\\tdigest\\n"`` for each (sample id, sample digest) pair,
    in the order given: the ``content_digest`` of a manifest (see the module docstring)."""
    h = hashlib.sha256()
    for sample_id, digest in pairs:
        h.update(f"{sample_id}\t{digest}\n".encode())
    return h.hexdigest()


def write_atomic(path: str | Path, data: bytes | memoryview) -> None:
    """Write ``data`` to a temporary file beside ``path`` (``.NAME.tmp-PID``), fsync it, then
    rename it over ``path``: readers see the old file or the new one, never a part. On failure
    (disk full) the temporary file is removed and the ``OSError`` raised."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    """:func:`write_atomic` of ``text`` as UTF-8."""
    write_atomic(path, text.encode())


def write_json_atomic(path: str | Path, data: Any) -> None:
    """:func:`write_text_atomic` of ``data`` as indented JSON with sorted keys."""
    write_text_atomic(path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def read_manifest(directory: str | Path) -> dict[str, Any]:
    """The manifest of a dataset directory; :class:`CmpDataError` naming the file if absent."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"{path}: no manifest: not a cmp dataset directory") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CmpDataError(f"{path}: unreadable manifest ({exc})") from None


def write_failures(directory: str | Path, failures: Iterable[Dropped]) -> None:
    """``directory/failures.jsonl``, one JSON object a line, written atomically."""
    lines = [json.dumps(asdict(d), sort_keys=True) + "\n" for d in failures]
    write_text_atomic(Path(directory) / FAILURES, "".join(lines))


def read_failures(directory: str | Path) -> list[Dropped]:
    path = Path(directory) / FAILURES
    if not path.exists():
        return []
    return [Dropped(**json.loads(line)) for line in path.read_text().splitlines() if line]
