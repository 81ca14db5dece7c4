"""The HDF5 shard format (schema 2): one source of truth for what a dataset file holds.

One file per shard, ``shard-00000.h5``, random access by sample index. A sample is a small
fixed-size record (``meta``) and its *parts*, byte strings stored back to back in one
``data`` array. :class:`ShardReader` reads a shard's small columns (everything but ``data``)
whole, once per open file; then reading a sample takes one look-up, its slice of ``data``.

==================  ===================  ======================================================
dataset             dtype, shape         meaning
==================  ===================  ======================================================
``sample_id``       str (N,)             ``<source id>#<t0:06d>-<t1:06d>`` (UTF-8)
``source_id``       str (N,)             the source's path relative to the root it was found
                                         under (UTF-8)
``meta``            compound (N,)        one packed little-endian record per sample, below
``data_offsets``    int64 (N + 1,)       sample i's parts are ``data[off[i]:off[i + 1]]``
``data``            uint8 (total,)       every sample's parts, in the order of the ``parts``
                                         attribute, each ``meta["bytes_<part>"]`` long
``digest``          str (N,)             sha256 (hex) of the sample as stored, below
==================  ===================  ======================================================

``meta`` fields, in this order, packed (no padding), little-endian:

==================  =========  ================================================================
field               dtype      meaning
==================  =========  ================================================================
``t0``, ``t1``      int32      decoded frame indices of the pair (0-based, no fps resampling)
``split``           uint8      0 = train, 1 = val (by a hash of the source id)
``guide_seed``      int64      seed that drew this sample's guidance
``height``          int32      H of the image and of the flow, pixels
``width``           int32      W
``crop``            int32 (4)  x0, y0, x1, y1 kept from the decoded frame (letterbox)
``scale``           float64 (2)  sx, sy from the crop to the stored size
``bytes_<part>``    int64      length of each part in ``data``, one field per part
==================  =========  ================================================================

Parts (``parts`` attribute, a JSON list): always ``image`` (the first frame, JPEG bytes, RGB
as stored by OpenCV), ``flow`` (forward flow t0 -> t1, :mod:`cmpdata.store.codec` bytes), ``valid``
(validity mask, :func:`cmpdata.store.codec.encode_mask` bytes; empty when no mask was computed),
``guidance`` (K points as float32 little-endian rows ``x, y, dx, dy``: positions in pixels of
the stored image and the flow there; 16 K bytes), in this order; then optional parts, in name
order, present for every sample of the shard (empty where a sample has none, e.g. a real
video's sample in a shard that also holds synthetic clips), e.g. exact flow or object ids
of synthetic clips for evaluation.

The digest of sample i is a function of the stored bytes alone: sha256 over four fields, each
preceded by its length as 8 bytes little-endian: the UTF-8 ``sample_id``, the UTF-8
``source_id``, the ``meta`` record's bytes, and ``data[off[i]:off[i + 1]]``. With h5py and
hashlib only::

    h = hashlib.sha256()
    for field in (f["sample_id"][i], f["source_id"][i], f["meta"][i].tobytes(),
                  f["data"][f["data_offsets"][i]:f["data_offsets"][i + 1]].tobytes()):
        h.update(len(field).to_bytes(8, "little")); h.update(field)
    assert h.hexdigest() == f["digest"][i].decode()

File attributes: ``schema_version`` (int, 2), ``parts`` (JSON list), ``config`` (JSON: the
full extraction configuration), ``flow_backend`` (JSON: name, parameters, weights sha256),
``codec`` (JSON: the flow codec's parameters), ``shard_index`` (int), ``num_samples`` (int),
``creator`` (``cmp <version>``).

Files are written to a temporary name in the same folder and renamed when complete, so a
shard is either whole or absent. :meth:`ShardReader.read` checks each sample against its
stored digest; :meth:`ShardReader.check` checks a whole shard reading its columns in bulk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import h5py
import numpy as np

from cmpdata import __version__
from cmpdata.errors import FileError
from cmpdata.records import Guidance, GuidedSample
from cmpdata.store.codec import FlowCodec, decode_flow, decode_mask, encode_mask
from cmpdata.store.manifest import write_atomic

SCHEMA_VERSION = 2
SPLITS = ("train", "val")
PARTS = ("image", "flow", "valid", "guidance")  # every sample has these, in this order
_EXTRA_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_STR = h5py.string_dtype("utf-8")
_GUIDE_ROW = np.dtype("<f4")  # x, y, dx, dy
_META_FIELDS: list[tuple[Any, ...]] = [
    ("t0", "<i4"),
    ("t1", "<i4"),
    ("split", "u1"),
    ("guide_seed", "<i8"),
    ("height", "<i4"),
    ("width", "<i4"),
    ("crop", "<i4", (4,)),
    ("scale", "<f8", (2,)),
]
DATASETS = ("sample_id", "source_id", "meta", "data_offsets", "data", "digest")


class ShardError(FileError):
    """A shard file is missing, truncated, corrupt or of another schema."""


def schema_problem(version: object) -> str | None:
    """What is wrong with a shard (or dataset) of schema ``version``, or None for this one."""
    if version == SCHEMA_VERSION:
        return None
    return (
        f"written with shard schema {version}; this cmp reads schema {SCHEMA_VERSION}: "
        "extract the dataset again (cmpdata extract ... --overwrite, or another --out)"
    )


def check_schema(path: str | Path, version: object) -> None:
    """Raise :class:`ShardError` naming ``path`` (a shard or a dataset directory) unless
    ``version`` is the schema this code reads."""
    if problem := schema_problem(version):
        raise ShardError(path, problem)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.h5"


def meta_dtype(parts: Sequence[str]) -> np.dtype:
    """The packed little-endian ``meta`` record of a shard holding ``parts``."""
    return np.dtype([*_META_FIELDS, *((f"bytes_{p}", "<i8") for p in parts)])


def sample_digest(sample_id: bytes, source_id: bytes, meta: bytes, data: bytes) -> str:
    """sha256 (hex) of one sample as stored: each field preceded by its 8-byte length."""
    h = hashlib.sha256()
    for part in (sample_id, source_id, meta, data):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def _guidance_bytes(points: np.ndarray, vectors: np.ndarray) -> bytes:
    rows = np.concatenate([np.reshape(points, (-1, 2)), np.reshape(vectors, (-1, 2))], axis=1)
    return np.ascontiguousarray(rows, _GUIDE_ROW).tobytes()


def _guidance_arrays(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    if len(data) % (4 * _GUIDE_ROW.itemsize):
        raise ValueError(f"guidance part of {len(data)} bytes is not rows of 4 float32")
    rows = np.frombuffer(data, _GUIDE_ROW).reshape(-1, 4).astype(np.float32)
    return np.ascontiguousarray(rows[:, :2]), np.ascontiguousarray(rows[:, 2:])


@dataclass(frozen=True, eq=False)
class EncodedSample:
    """A sample as stored: bytes and small arrays, cheap to ship between processes.

    ``extras`` holds optional parts by name (lower-case letters, digits, ``_``); their
    encoding is the producer's, stated where they are made.
    """

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
    extras: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {self.split!r}")
        for name in self.extras:
            if name in PARTS or not _EXTRA_NAME.match(name):
                raise ValueError(f"bad name for an optional part: {name!r}")

    @property
    def parts(self) -> tuple[str, ...]:
        """The names of the parts, in storage order."""
        return (*PARTS, *sorted(self.extras))

    def part_bytes(self) -> list[bytes]:
        """The parts' bytes, in the order of :attr:`parts`."""
        required = [self.image, self.flow, self.valid, _guidance_bytes(self.points, self.vectors)]
        return required + [bytes(self.extras[name]) for name in sorted(self.extras)]

    def meta(self, blobs: Sequence[bytes] | None = None) -> np.ndarray:
        """The ``meta`` record (a 0-d structured array); ``blobs`` are :meth:`part_bytes`."""
        blobs = self.part_bytes() if blobs is None else blobs
        row = np.zeros((), meta_dtype(self.parts))
        row["t0"], row["t1"] = self.t0, self.t1
        row["split"] = SPLITS.index(self.split)
        row["guide_seed"] = self.guide_seed
        row["height"], row["width"] = self.size
        row["crop"], row["scale"] = self.crop, self.scale
        for name, blob in zip(self.parts, blobs, strict=True):
            row[f"bytes_{name}"] = len(blob)
        return row

    def digest(self) -> str:
        """sha256 of the sample as it is stored (module docstring)."""
        blobs = self.part_bytes()
        return sample_digest(
            self.sample_id.encode(),
            self.source_id.encode(),
            self.meta(blobs).tobytes(),
            b"".join(blobs),
        )


@dataclass(frozen=True, eq=False)
class StoredSample:
    """A sample read back and decoded (``extras``: the optional parts' bytes, by name; the
    parts stored empty for this sample left out)."""

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
    extras: Mapping[str, bytes] = field(default_factory=dict)


def encode_image(image: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {image.shape}")
    return buf.tobytes()


def decode_image(data: bytes) -> np.ndarray:
    # Decoded straight to RGB: the same bits as BGR then cvtColor (checked on real frames at
    # several qualities and sizes), without the conversion's pass over the image.
    rgb = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if rgb is None:
        raise ValueError("not a decodable JPEG")
    return rgb


def encode_sample(
    sample: GuidedSample,
    split: str,
    codec: FlowCodec,
    jpeg_quality: int = 95,
    extras: Mapping[str, bytes] | None = None,
) -> EncodedSample:
    """Compress a guided sample for storage (JPEG frame, coded flow and mask); the pair's
    ``extras`` and ``extras`` are optional parts stored with it (see the module docstring)."""
    s = sample.flow_sample
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
        extras={**pair.extras, **(extras or {})},
    )


@dataclass(frozen=True)
class ShardInfo:
    """What the manifest records of a written shard (and the digests of its samples)."""

    name: str
    num_samples: int
    sha256: str
    bytes: int
    digests: tuple[str, ...] = ()

    def record(self) -> dict[str, Any]:
        """The manifest's entry for the shard."""
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "sha256": self.sha256,
            "bytes": self.bytes,
        }


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def with_common_parts(samples: Sequence[EncodedSample]) -> list[EncodedSample]:
    """``samples`` as one shard stores them: each with every optional part that any of them
    has, empty where it has none (the reader leaves empty optional parts out of
    :attr:`StoredSample.extras`)."""
    names = sorted({name for s in samples for name in s.extras})
    return [
        s
        if len(s.extras) == len(names)
        else dataclasses.replace(s, extras={name: s.extras.get(name, b"") for name in names})
        for s in samples
    ]


def write_shard(
    path: str | Path, samples: Sequence[EncodedSample], attrs: dict[str, Any]
) -> ShardInfo:
    """Write ``samples`` to ``path`` atomically (temporary file, fsync, rename).

    ``attrs`` must hold ``config``, ``flow_backend``, ``codec`` (JSON-serialisable) and
    ``shard_index``. A shard may hold no sample (all of its planned pairs were dropped).
    Samples may have different optional parts (synthetic clips beside real videos): each is
    stored with every optional part of the shard, empty where it has none
    (:func:`with_common_parts`), and its digest is of the sample as stored. Raises
    ``OSError`` (with its ``errno``) when the file cannot be written, e.g. on a full disk; the
    temporary file is removed, so no partial shard is left behind. The returned
    :class:`ShardInfo` holds the file's sha256 and size and each sample's digest.
    """
    path = Path(path)
    samples = with_common_parts(samples)
    parts = samples[0].parts if samples else PARTS
    n = len(samples)
    blobs = [s.part_bytes() for s in samples]
    meta = np.empty(n, meta_dtype(parts))
    for k, (s, b) in enumerate(zip(samples, blobs, strict=True)):
        meta[k] = s.meta(b)
    sizes = [sum(len(part) for part in b) for b in blobs]
    offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    data = np.frombuffer(b"".join(part for b in blobs for part in b), np.uint8)
    digests = [
        sample_digest(s.sample_id.encode(), s.source_id.encode(), m.tobytes(), b"".join(b))
        for s, m, b in zip(samples, meta, blobs, strict=True)
    ]
    # The file is built in memory and written with plain file I/O: a failed write (disk full)
    # is then an ordinary OSError, where HDF5 itself can crash closing a file it failed to
    # write (seen with a file-size limit).
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        f.attrs["schema_version"] = SCHEMA_VERSION
        f.attrs["creator"] = f"cmp {__version__}"
        f.attrs["num_samples"] = n
        f.attrs["shard_index"] = int(attrs["shard_index"])
        f.attrs["parts"] = json.dumps(list(parts))
        for key in ("config", "flow_backend", "codec"):
            f.attrs[key] = json.dumps(attrs[key], sort_keys=True)
        f.create_dataset("sample_id", data=[s.sample_id for s in samples], dtype=_STR)
        f.create_dataset("source_id", data=[s.source_id for s in samples], dtype=_STR)
        f.create_dataset("meta", data=meta)
        f.create_dataset("data_offsets", data=offsets)
        f.create_dataset("data", data=data)
        f.create_dataset("digest", data=digests, dtype=_STR)
    image = buffer.getbuffer()
    write_atomic(path, image)
    digest, size = hashlib.sha256(image).hexdigest(), len(image)
    return ShardInfo(path.name, n, digest, size, tuple(digests))


def check_written(path: str | Path, info: ShardInfo, sample_ids: Sequence[str]) -> None:
    """Read a freshly written shard back, its columns in bulk through :class:`ShardReader`,
    and raise :class:`ShardError` unless it holds ``sample_ids`` with the digests the writer
    computed (``info.digests``), each equal to the digest recomputed from the stored bytes."""
    with ShardReader(path) as reader:
        ids, stored, recomputed = reader.digests()
    found_rows = zip(ids, stored, strict=True)
    expected = zip(sample_ids, info.digests, strict=True)
    for row, (found, want) in enumerate(itertools.zip_longest(found_rows, expected)):
        if found != want:
            raise ShardError(path, f"read back, row {row} holds {found}, written was {want}")
    for row, (sid, old, new) in enumerate(zip(ids, stored, recomputed, strict=True)):
        if old != new:
            raise ShardError(
                path,
                f"read back, sample {row} ({sid}): digest of the stored "
                f"bytes {new} differs from the one written {old}",
            )


def _text(value: object) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _raw(value: object) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


# What h5py raises, beyond what ShardReader turns into ShardError itself, when the HDF5
# structures of a file are corrupt (found by flipping each byte of a shard in turn).
CORRUPT_FILE_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError, IndexError)


@contextlib.contextmanager
def h5_errors(path: str | Path, where: str | None = None) -> Iterator[None]:
    """Turn what h5py raises inside the block for a corrupt file into :class:`ShardError`
    naming ``path`` (and ``where`` in it). Only reads of the file belong in the block: our own
    decoding and checks raise their own errors."""
    try:
        yield
    except ShardError:
        raise
    except CORRUPT_FILE_ERRORS as exc:
        prefix = f"{where}: " if where else ""
        raise ShardError(path, f"{prefix}unreadable ({type(exc).__name__}: {exc})") from None


class ShardReader:
    """Random access to the samples of one shard, and its columns in bulk.

    The file is opened on first use, not in the constructor, so a reader made before a
    DataLoader forks its workers opens its own handle in each worker. The first sample read
    from an open file reads the file's :attr:`INDEX_COLUMNS` whole (a few hundred bytes a sample)
    and keeps them until the file is closed, so a sample read takes one look-up, its slice of
    ``data`` (and :meth:`read` still checks the sample against its stored digest). Every
    failure to read raises :class:`ShardError` naming the file (and the sample index where it
    applies); errors of our own code keep their traceback.
    """

    #: what :meth:`read` and :meth:`encoded` take from the columns: everything but ``data``
    INDEX_COLUMNS = ("sample_id", "source_id", "meta", "data_offsets", "digest")

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: h5py.File | None = None
        self._pid: int | None = None
        # INDEX_COLUMNS and the data dataset of the open file, once a sample was read
        self._index: tuple[dict[str, np.ndarray], h5py.Dataset] | None = None
        self.parts: tuple[str, ...] = PARTS

    def _open(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            try:
                f = h5py.File(self.path, "r")
            except FileNotFoundError:
                raise ShardError(self.path, "no such file") from None
            except OSError as exc:
                raise ShardError(self.path, f"not a readable HDF5 file ({exc})") from None
            try:
                with h5_errors(self.path):
                    self.parts = self._check_layout(f)
            except BaseException:
                f.close()
                raise
            self._file, self._pid = f, os.getpid()
            self._index = None
        return self._file

    def _check_layout(self, f: h5py.File) -> tuple[str, ...]:
        check_schema(self.path, f.attrs.get("schema_version"))
        missing = [name for name in DATASETS if name not in f]
        if missing:
            raise ShardError(self.path, f"missing datasets: {', '.join(missing)}")
        try:
            parts = tuple(json.loads(f.attrs["parts"]))
        except (KeyError, TypeError, ValueError):
            raise ShardError(self.path, "no readable parts attribute") from None
        if parts[: len(PARTS)] != PARTS:
            raise ShardError(self.path, f"parts {list(parts)} do not start with {list(PARTS)}")
        if f["meta"].dtype != meta_dtype(parts):
            raise ShardError(self.path, f"meta record {f['meta'].dtype} is not schema 2's")
        return parts

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = self._index = None

    def __len__(self) -> int:
        f = self._open()
        with self._damage():
            return int(f["sample_id"].shape[0])

    @property
    def attrs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        f = self._open()
        with self._damage():
            for key, value in f.attrs.items():
                if key in ("config", "flow_backend", "codec", "parts"):
                    out[key] = json.loads(value)
                else:
                    out[key] = value.item() if hasattr(value, "item") else value
        return out

    def columns(self, names: Iterable[str]) -> dict[str, np.ndarray]:
        """Whole datasets (:data:`DATASETS`), one read each; strings as object arrays of str.

        Raises :class:`ShardError` when the file is damaged or a column has the wrong length.
        """
        f = self._open()
        n = len(self)
        out: dict[str, np.ndarray] = {}
        with self._damage():
            for name in names:
                ds = f[name]
                column = ds.asstr()[()] if h5py.check_string_dtype(ds.dtype) else ds[()]
                expected = {"data_offsets": n + 1, "data": None}.get(name, n)
                if expected is not None and len(column) != expected:
                    raise ShardError(
                        self.path, f"dataset {name!r} has {len(column)} rows, expected {expected}"
                    )
                out[name] = column
        return out

    def digests(self) -> tuple[list[str], list[str], list[str]]:
        """Sample ids, stored digests, and digests recomputed from the stored bytes (the
        columns read in bulk, nothing decoded); :class:`ShardError` when the file cannot be
        read whole."""
        cols = self.columns(DATASETS)
        offsets, data = cols["data_offsets"], cols["data"]
        if offsets[0] != 0 or offsets[-1] != len(data) or np.any(np.diff(offsets) < 0):
            raise ShardError(self.path, "data_offsets do not divide the data array")
        recomputed = [
            sample_digest(_raw(sid), _raw(src), meta.tobytes(), data[lo:hi].tobytes())
            for sid, src, meta, lo, hi in zip(
                cols["sample_id"],
                cols["source_id"],
                cols["meta"],
                offsets[:-1],
                offsets[1:],
                strict=True,
            )
        ]
        return [str(v) for v in cols["sample_id"]], [str(v) for v in cols["digest"]], recomputed

    def _indexed(self) -> tuple[dict[str, np.ndarray], h5py.Dataset]:
        """:data:`INDEX_COLUMNS` of the open file and its ``data`` dataset, read on first use."""
        f = self._open()
        if self._index is None:
            columns = self.columns(self.INDEX_COLUMNS)
            with self._damage():
                self._index = columns, f["data"]
        return self._index

    def _check_index(self, i: int) -> int:
        n = len(self._indexed()[0]["sample_id"])
        if not -n <= i < n:
            raise IndexError(f"{self.path}: sample {i} out of range (shard holds {n})")
        return i % n if n else i

    def _damage(self, i: int | None = None) -> contextlib.AbstractContextManager[None]:
        return h5_errors(self.path, None if i is None else f"sample {i}")

    def _raw_sample(self, i: int) -> tuple[bytes, bytes, np.void, bytes]:
        index, data = self._indexed()
        lo, hi = (int(v) for v in index["data_offsets"][i : i + 2])
        if not 0 <= lo <= hi:
            raise ShardError(self.path, f"sample {i}: bad data offsets {lo}, {hi}")
        with self._damage(i):
            blob = data[lo:hi].tobytes()
        return _raw(index["sample_id"][i]), _raw(index["source_id"][i]), index["meta"][i], blob

    def encoded(self, i: int) -> EncodedSample:
        """Sample ``i`` as stored (bytes, not decoded)."""
        i = self._check_index(i)
        return self._encoded(i, *self._raw_sample(i))

    def _encoded(self, i: int, sid: bytes, src: bytes, meta: np.void, blob: bytes) -> EncodedSample:
        lengths = [int(meta[f"bytes_{p}"]) for p in self.parts]
        if any(n < 0 for n in lengths) or sum(lengths) != len(blob):
            raise ShardError(
                self.path, f"sample {i}: part lengths {lengths} do not fit its {len(blob)} bytes"
            )
        ends = np.cumsum(lengths)
        pieces = dict(
            zip(
                self.parts,
                (blob[e - n : e] for e, n in zip(ends, lengths, strict=True)),
                strict=True,
            )
        )
        split = int(meta["split"])
        if split >= len(SPLITS):
            raise ShardError(self.path, f"sample {i}: split code {split}")
        try:
            points, vectors = _guidance_arrays(pieces["guidance"])
        except ValueError as exc:
            raise ShardError(self.path, f"sample {i}: {exc}") from None
        return EncodedSample(
            sample_id=_text(sid),
            source_id=_text(src),
            t0=int(meta["t0"]),
            t1=int(meta["t1"]),
            split=SPLITS[split],
            guide_seed=int(meta["guide_seed"]),
            image=pieces["image"],
            size=(int(meta["height"]), int(meta["width"])),
            flow=pieces["flow"],
            valid=pieces["valid"],
            crop=tuple(int(v) for v in meta["crop"]),
            scale=tuple(float(v) for v in meta["scale"]),
            points=points,
            vectors=vectors,
            extras={p: pieces[p] for p in self.parts[len(PARTS) :]},
        )

    def stored_digest(self, i: int) -> str:
        i = self._check_index(i)
        return _text(self._indexed()[0]["digest"][i])

    def read(self, i: int, check: bool = True) -> StoredSample:
        """Sample ``i`` decoded: image, flow, mask and guidance as arrays.

        Raises :class:`ShardError` naming the file and the sample when it cannot be decoded,
        or, with ``check``, when the digest of its stored bytes differs from the one stored
        with it (a damaged file never yields a wrong sample).
        """
        i = self._check_index(i)
        raw = self._raw_sample(i)
        e = self._encoded(i, *raw)
        if check and (recomputed := sample_digest(raw[0], raw[1], raw[2].tobytes(), raw[3])) != (
            stored := self.stored_digest(i)
        ):
            raise ShardError(
                self.path,
                f"sample {i} ({e.sample_id}): content digest {recomputed} differs from the "
                f"stored {stored}: the sample changed after it was written",
            )
        try:
            image = decode_image(e.image)
            flow = decode_flow(e.flow)
            valid = decode_mask(e.valid) if e.valid else None
        except ValueError as exc:
            raise ShardError(self.path, f"sample {i} ({e.sample_id}): {exc}") from None
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
            {name: data for name, data in e.extras.items() if data},
        )

    def __enter__(self) -> ShardReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
