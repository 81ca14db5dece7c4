"""The HDF5 shard format: one source of truth for what a dataset file holds.

One file per shard, ``shard-00000.h5``, random access by sample index. Every per-sample
field is a dataset of length N (the number of samples in the shard); variable-length byte
strings (JPEG, encoded flow) are ``vlen uint8`` datasets. Guidance points of all samples are
concatenated, ``guide_offsets`` (N + 1) tells where each sample's run starts and ends.

==================  ===============  ==========================================================
dataset             dtype, shape     meaning
==================  ===============  ==========================================================
``sample_id``       str (N,)         ``<source id>#<t0:06d>-<t1:06d>``
``source_id``       str (N,)         the source's path relative to the root it was found under
``frames``          int32 (N, 2)     decoded frame indices t0, t1 (0-based, no fps resampling)
``split``           uint8 (N,)       0 = train, 1 = val (by a hash of the source id)
``guide_seed``      int64 (N,)       seed that drew this sample's guidance
``image``           vlen uint8 (N,)  first frame, JPEG bytes (RGB, as stored by OpenCV)
``size``            int32 (N, 2)     H, W of the image and of the flow, pixels
``flow``            vlen uint8 (N,)  forward flow t0 -> t1, :mod:`cmpdata.codec` bytes
``valid``           vlen uint8 (N,)  validity mask, :func:`cmpdata.codec.encode_mask` bytes;
                                     empty when no mask was computed
``crop``            int32 (N, 4)     x0, y0, x1, y1 kept from the decoded frame (letterbox)
``scale``           float32 (N, 2)   sx, sy from the crop to the stored size
``guide_offsets``   int64 (N + 1,)   sample i's guidance is rows [off[i], off[i+1])
``guide_points``    float32 (M, 2)   guidance positions x, y in pixels of the stored image
``guide_vectors``   float32 (M, 2)   flow at those points, pixels
``digest``          str (N,)         sha256 of the sample's content (see ``EncodedSample``)
==================  ===============  ==========================================================

File attributes: ``schema_version`` (int), ``config`` (JSON: the full extraction
configuration), ``flow_backend`` (JSON: name, parameters, weights sha256), ``codec`` (JSON:
the flow codec's parameters), ``shard_index`` (int), ``num_samples`` (int), ``creator``
(``cmp <version>``).

Files are written to a temporary name in the same folder and renamed when complete, so a
shard is either whole or absent. :meth:`ShardReader.read` checks each sample against its
stored digest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from cmpdata import __version__
from cmpdata.codec import FlowCodec, decode_flow, decode_mask, encode_mask
from cmpdata.errors import CmpDataError
from cmpdata.records import Guidance, GuidedSample

SCHEMA_VERSION = 1
_ERRNO = re.compile(r"errno = (\d+)")
SPLITS = ("train", "val")
_VLEN_BYTES = h5py.vlen_dtype(np.uint8)
_STR = h5py.string_dtype("utf-8")


class ShardError(CmpDataError):
    """A shard file is missing, truncated, corrupt or of another schema."""

    def __init__(self, path: object, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


@dataclass(frozen=True, eq=False)
class EncodedSample:
    """A sample as stored: bytes and small arrays, cheap to ship between processes."""

    sample_id: str
    source_id: str
    t0: int
    t1: int
    split: str
    guide_seed: int
    image: bytes
    size: tuple[int, int]
    flow: bytes
    valid: bytes
    crop: tuple[int, int, int, int]
    scale: tuple[float, float]
    points: np.ndarray
    vectors: np.ndarray

    def digest(self) -> str:
        """sha256 over everything the sample stores, in a fixed order."""
        h = hashlib.sha256()
        for part in (
            self.sample_id,
            self.source_id,
            self.t0,
            self.t1,
            self.split,
            self.guide_seed,
            self.size,
            self.crop,
            self.scale,
        ):
            h.update(repr(part).encode())
        for blob in (
            self.image,
            self.flow,
            self.valid,
            np.ascontiguousarray(self.points, np.float32).tobytes(),
            np.ascontiguousarray(self.vectors, np.float32).tobytes(),
        ):
            h.update(len(blob).to_bytes(8, "little"))
            h.update(blob)
        return h.hexdigest()


@dataclass(frozen=True, eq=False)
class StoredSample:
    """A sample read back and decoded."""

    sample_id: str
    source_id: str
    t0: int
    t1: int
    split: str
    guide_seed: int
    image: np.ndarray  # uint8 (H, W, 3) RGB
    flow: np.ndarray  # float32 (H, W, 2) pixels
    valid: np.ndarray | None  # bool (H, W)
    guidance: Guidance
    crop: tuple[int, int, int, int]
    scale: tuple[float, float]


def encode_image(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if bgr is None:
        raise ValueError("not a decodable JPEG")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def encode_sample(
    sample: GuidedSample, split: str, codec: FlowCodec, jpeg_quality: int = 95
) -> EncodedSample:
    """Compress a guided sample for storage (JPEG frame, coded flow and mask)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    s = sample.sample
    pair = s.pair
    h, w = pair.size
    return EncodedSample(
        sample_id=pair.sample_id,
        source_id=pair.source_id,
        t0=pair.t0,
        t1=pair.t1,
        split=split,
        guide_seed=sample.seed,
        image=encode_image(pair.frame0, jpeg_quality),
        size=(h, w),
        flow=codec.encode(s.flow),
        valid=b"" if s.valid is None else encode_mask(s.valid),
        crop=pair.crop if pair.crop is not None else (0, 0, w, h),
        scale=pair.scale,
        points=sample.guidance.points,
        vectors=sample.guidance.vectors,
    )


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a written shard."""

    name: str
    num_samples: int
    sha256: str
    bytes: int


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _vlen(blobs: Sequence[bytes]) -> np.ndarray:
    arr = np.empty(len(blobs), dtype=object)
    for i, b in enumerate(blobs):
        arr[i] = np.frombuffer(b, np.uint8)
    return arr


def write_shard(
    path: str | Path, samples: Sequence[EncodedSample], attrs: dict[str, Any]
) -> ShardInfo:
    """Write ``samples`` to ``path`` atomically (temporary file, fsync, rename).

    ``attrs`` must hold ``config``, ``flow_backend``, ``codec`` (JSON-serialisable) and
    ``shard_index``. A shard may hold no sample (all of its planned pairs were dropped).
    Raises ``OSError`` (with its ``errno``) when the file cannot be written, e.g. on a full
    disk; the temporary file is removed, so no partial shard is left behind.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    n = len(samples)
    counts = np.array([len(s.points) for s in samples], np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["schema_version"] = SCHEMA_VERSION
            f.attrs["creator"] = f"cmp {__version__}"
            f.attrs["num_samples"] = n
            f.attrs["shard_index"] = int(attrs["shard_index"])
            for key in ("config", "flow_backend", "codec"):
                f.attrs[key] = json.dumps(attrs[key], sort_keys=True)
            f.create_dataset("sample_id", data=[s.sample_id for s in samples], dtype=_STR)
            f.create_dataset("source_id", data=[s.source_id for s in samples], dtype=_STR)
            f.create_dataset(
                "frames", data=np.array([(s.t0, s.t1) for s in samples], np.int32).reshape(n, 2)
            )
            f.create_dataset(
                "split", data=np.array([SPLITS.index(s.split) for s in samples], np.uint8)
            )
            f.create_dataset("guide_seed", data=np.array([s.guide_seed for s in samples], np.int64))
            f.create_dataset("image", data=_vlen([s.image for s in samples]), dtype=_VLEN_BYTES)
            f.create_dataset(
                "size", data=np.array([s.size for s in samples], np.int32).reshape(n, 2)
            )
            f.create_dataset("flow", data=_vlen([s.flow for s in samples]), dtype=_VLEN_BYTES)
            f.create_dataset("valid", data=_vlen([s.valid for s in samples]), dtype=_VLEN_BYTES)
            f.create_dataset(
                "crop", data=np.array([s.crop for s in samples], np.int32).reshape(n, 4)
            )
            f.create_dataset(
                "scale", data=np.array([s.scale for s in samples], np.float32).reshape(n, 2)
            )
            f.create_dataset("guide_offsets", data=offsets)
            pts = [s.points for s in samples]
            vec = [s.vectors for s in samples]
            f.create_dataset(
                "guide_points",
                data=np.concatenate(pts).astype(np.float32) if n else np.zeros((0, 2), np.float32),
            )
            f.create_dataset(
                "guide_vectors",
                data=np.concatenate(vec).astype(np.float32) if n else np.zeros((0, 2), np.float32),
            )
            f.create_dataset("digest", data=[s.digest() for s in samples], dtype=_STR)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        size = tmp.stat().st_size
        digest = file_sha256(tmp)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # h5py reports some failed writes (those found when the file is closed) as a
        # RuntimeError whose text holds the system's errno: raise them as the OSError they are.
        found = _ERRNO.search(str(exc)) if isinstance(exc, RuntimeError) else None
        if found:
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(path)) from exc
        raise
    return ShardInfo(path.name, n, digest, size)


_DATASETS = (
    "sample_id",
    "source_id",
    "frames",
    "split",
    "guide_seed",
    "image",
    "size",
    "flow",
    "valid",
    "crop",
    "scale",
    "guide_offsets",
    "guide_points",
    "guide_vectors",
    "digest",
)


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ShardReader:
    """Random access to the samples of one shard.

    The file is opened on first use, not in the constructor, so a reader made before a
    DataLoader forks its workers opens its own handle in each worker. Every failure to read
    raises :class:`ShardError` naming the file (and the sample index where it applies).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r")
            except FileNotFoundError:
                raise ShardError(self.path, "no such file") from None
            except OSError as exc:
                raise ShardError(self.path, f"not a readable HDF5 file ({exc})") from None
            version = f.attrs.get("schema_version")
            if version != SCHEMA_VERSION:
                f.close()
                raise ShardError(
                    self.path, f"schema version {version}, this reader reads {SCHEMA_VERSION}"
                )
            missing = [name for name in _DATASETS if name not in f]
            if missing:
                f.close()
                raise ShardError(self.path, f"missing datasets: {', '.join(missing)}")
            self._file, self._pid = f, os.getpid()
        return self._file

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None

    def __len__(self) -> int:
        return int(self._open()["sample_id"].shape[0])

    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in self._open().attrs.items():
            if key in ("config", "flow_backend", "codec"):
                out[key] = json.loads(value)
            else:
                out[key] = value.item() if hasattr(value, "item") else value
        return out

    def _check_index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"{self.path}: sample {i} out of range (shard holds {n})")
        return i % n if n else i

    def encoded(self, i: int) -> EncodedSample:
        """Sample ``i`` as stored (bytes, not decoded)."""
        i = self._check_index(i)
        f = self._open()
        try:
            lo, hi = (int(v) for v in f["guide_offsets"][i : i + 2])
            t0, t1 = (int(v) for v in f["frames"][i])
            return EncodedSample(
                sample_id=_text(f["sample_id"][i]),
                source_id=_text(f["source_id"][i]),
                t0=t0,
                t1=t1,
                split=SPLITS[int(f["split"][i])],
                guide_seed=int(f["guide_seed"][i]),
                image=f["image"][i].tobytes(),
                size=tuple(int(v) for v in f["size"][i]),
                flow=f["flow"][i].tobytes(),
                valid=f["valid"][i].tobytes(),
                crop=tuple(int(v) for v in f["crop"][i]),
                scale=tuple(float(v) for v in f["scale"][i]),
                points=np.asarray(f["guide_points"][lo:hi], np.float32),
                vectors=np.asarray(f["guide_vectors"][lo:hi], np.float32),
            )
        except (OSError, KeyError, IndexError, ValueError) as exc:
            raise ShardError(self.path, f"sample {i}: unreadable ({exc})") from None

    def stored_digest(self, i: int) -> str:
        return _text(self._open()["digest"][self._check_index(i)])

    def read(self, i: int, check: bool = True) -> StoredSample:
        """Sample ``i`` decoded: image, flow, mask and guidance as arrays.

        Raises :class:`ShardError` naming the file and the sample when it cannot be decoded,
        or, with ``check``, when its content no longer matches the digest stored with it (a
        damaged file never yields a wrong sample).
        """
        e = self.encoded(i)
        try:
            image = decode_image(e.image)
            flow = decode_flow(e.flow)
            valid = decode_mask(e.valid) if e.valid else None
        except ValueError as exc:
            raise ShardError(self.path, f"sample {i} ({e.sample_id}): {exc}") from None
        if check and (recomputed := e.digest()) != (stored := self.stored_digest(i)):
            raise ShardError(
                self.path,
                f"sample {i} ({e.sample_id}): content digest {recomputed} differs from the "
                f"stored {stored}: the sample changed after it was written",
            )
        if image.shape[:2] != e.size or flow.shape[:2] != e.size:
            raise ShardError(
                self.path,
                f"sample {i} ({e.sample_id}): image {image.shape[:2]} "
                f"and flow {flow.shape[:2]} do not match size {e.size}",
            )
        return StoredSample(
            e.sample_id,
            e.source_id,
            e.t0,
            e.t1,
            e.split,
            e.guide_seed,
            image,
            flow,
            valid,
            Guidance(e.points, e.vectors),
            e.crop,
            e.scale,
        )

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
