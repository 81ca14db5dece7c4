"""Deterministic per-sample randomness.

Every random choice made for a sample comes from a generator seeded by (global seed,
sample id[, epoch]) through a cryptographic hash, never from global state: the same sample
gets the same draw whatever the worker, the process or the order of work.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stable_hash(*parts: object) -> int:
    """A 64-bit integer hash of ``parts`` that is the same on every machine and run."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def sample_seed(seed: int, sample_id: str, epoch: int | None = None) -> int:
    """The seed of one sample's draws (63-bit, so it fits signed int64 storage)."""
    parts: tuple[object, ...] = (seed, sample_id) if epoch is None else (seed, sample_id, epoch)
    return stable_hash(*parts) >> 1


def sample_rng(seed: int, sample_id: str, epoch: int | None = None) -> np.random.Generator:
    """A fresh generator for one sample; see :func:`sample_seed`."""
    return np.random.default_rng(sample_seed(seed, sample_id, epoch))
