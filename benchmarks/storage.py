"""Shard storage: bytes per sample, and how fast shards are written and read back.

Samples: the synthetic clips extracted in this process with the default configuration (DIS
``medium``, default filters and guidance, our flow codec, JPEG quality 95 for the frame),
cycled to the training set's size, each copy under its own source id; one shard (the default
shard size, 1000, holds them all).

- bytes per sample: the shard file's size over its samples; the details split it into the
  JPEG frame, the flow, the mask (empty: no consistency check by default) and the guidance;
- write MB/s: :func:`cmpdata.store.shards.write_shard` of the encoded samples into a fresh file
  (HDF5, fsync, sha256 of the file), file bytes per second;
- read MB/s: :meth:`ShardReader.encoded` of every sample through a fresh reader: the stored
  bytes, not decoded (from the page cache: the file was just written);
- read and decode: :meth:`ShardReader.read` of every sample (JPEG, flow and mask decoded,
  the content digest checked), samples per second;
- read-back check: :func:`cmpdata.store.shards.check_written` on the shard, what ``extract`` does
  before each done marker (columns read in bulk, every digest recomputed from the stored
  bytes), ms per sample and as a share of one pair's time through every stage (the
  extraction of the clips in this process).

``python -m benchmarks.storage``.
"""

from __future__ import annotations

import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import (
    Bench,
    figure,
    interleaved,
    measured,
    shard_attrs,
    stopwatch,
    write_shards,
)
from cmpdata.config import ExtractConfig
from cmpdata.store.shards import EncodedSample, ShardInfo, ShardReader, check_written

PART = "storage"


def field_bytes(samples: list[EncodedSample]) -> dict[str, float]:
    """Mean bytes per sample of each stored field that grows with the content."""
    return {
        "image_jpeg": float(np.mean([len(s.image) for s in samples])),
        "flow": float(np.mean([len(s.flow) for s in samples])),
        "mask": float(np.mean([len(s.valid) for s in samples])),
        "guidance": float(np.mean([s.points.nbytes + s.vectors.nbytes for s in samples])),
    }


def measure(bench: Bench) -> dict[str, Any]:
    """Bytes per sample and shard write / read speeds (module docstring)."""
    cv2.setNumThreads(1)
    samples = bench.training_samples
    config = ExtractConfig()
    attrs = shard_attrs(config)
    repeats = 1 if bench.quick else 3
    scratch = Path(tempfile.mkdtemp(prefix="storage-", dir=bench.root))
    sizes: list[int] = []

    def write() -> float:
        out = Path(tempfile.mkdtemp(dir=scratch))
        seconds = stopwatch(lambda: write_shards(out, samples, config.shard_size, attrs))
        size = sum(p.stat().st_size for p in out.glob("*.h5"))
        sizes.append(size)
        return size / 1e6 / seconds

    def read(step: Callable[[ShardReader, int], object]) -> Callable[[], float]:
        """A pass over every sample with ``step``: samples/s."""

        def run() -> float:
            paths = sorted(bench.training_set.glob("*.h5"))
            readers = [ShardReader(p) for p in paths]

            def all_samples() -> None:
                for reader in readers:
                    for i in range(len(reader)):
                        step(reader, i)

            seconds = stopwatch(all_samples)
            for reader in readers:
                reader.close()
            return len(samples) / seconds

        return run

    def read_back() -> float:
        """check_written on every shard of the training set: ms per sample."""
        paths = sorted(bench.training_set.glob("*.h5"))
        checks = []
        for path in paths:
            with ShardReader(path) as reader:
                ids, stored, _ = reader.digests()
            info = ShardInfo(path.name, len(ids), "", path.stat().st_size, tuple(stored))
            checks.append((path, info, ids))
        seconds = stopwatch(lambda: [check_written(*c) for c in checks])
        return seconds * 1e3 / len(samples)

    rates = interleaved(
        {
            "write": write,
            "read": read(ShardReader.encoded),
            "decode": read(ShardReader.read),
            "read_back": read_back,
        },
        repeats,
    )
    pair_ms = bench.pair_seconds * 1e3
    per_sample = sizes[-1] / len(samples)
    fields = field_bytes(samples)
    read_mb = [r * per_sample / 1e6 for r in rates["read"]]
    figures = [
        figure(
            PART,
            "shard bytes per sample",
            per_sample / 1e3,
            "KB",
            note=", ".join(f"{k} {v / 1e3:.1f}" for k, v in fields.items() if v),
            key="storage.kb_per_sample",
        ),
        measured(
            PART,
            "shard write",
            rates["write"],
            "MB/s",
            note=f"{statistics.median(rates['write']) * 1e6 / per_sample:.0f} samples/s",
        ),
        measured(
            PART,
            "shard read (stored bytes)",
            read_mb,
            "MB/s",
            note=f"{statistics.median(rates['read']):.0f} samples/s; page cache",
        ),
        measured(
            PART,
            "shard read and decode",
            rates["decode"],
            "samples/s",
            note="JPEG + flow + mask decoded, digest checked",
            key="storage.read_decode.samples_per_s",
        ),
        measured(
            PART,
            "read-back check before a done marker",
            rates["read_back"],
            "ms/sample",
            note=f"{statistics.median(rates['read_back']) / pair_ms:.2%} of a pair's "
            f"{pair_ms:.0f} ms through every stage",
            key="storage.read_back.ms_per_sample",
        ),
    ]
    conditions = {
        "samples": len(samples),
        "distinct_samples": len(bench.samples),
        "shard_size": config.shard_size,
        "repeats": repeats,
        "opencv_threads": 1,
        "jpeg_quality": config.jpeg_quality,
        "codec": config.codec.params(),
    }
    details = {
        "bytes_per_sample": per_sample,
        "field_bytes_per_sample": fields,
        "shard_bytes": sizes[-1],
    }
    return {"figures": figures, "conditions": conditions, "details": details}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import run_part

    run_part(PART, argv)


if __name__ == "__main__":
    main()
