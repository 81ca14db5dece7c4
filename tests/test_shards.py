"""The shard format (schema 2): writer and reader against each other on awkward values, the
digest as a function of the stored bytes alone, and shards of another schema."""

from __future__ import annotations

import dataclasses
import json
import pickle
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.errors import FileError
from cmpdata.store.codec import FlowCodec, encode_mask
from cmpdata.store.shards import (
    SCHEMA_VERSION,
    EncodedSample,
    ShardError,
    ShardReader,
    check_written,
    encode_image,
    file_sha256,
    with_common_parts,
    write_shard,
)

ATTRS = {"shard_index": 3, "config": {"seed": 0}, "flow_backend": {"name": "x"}, "codec": {}}


def awkward_sample(i: int, rng: np.random.Generator, extras: bool = False) -> EncodedSample:
    """Odd sizes, non-dyadic scales, empty and non-empty guidance and masks, extreme ints."""
    h, w = (37, 53) if i % 2 else (416, 979)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    flow = rng.normal(0, 30, (h, w, 2)).astype(np.float32)
    k = [0, 1, 17][i % 3]
    return EncodedSample(
        sample_id=f"dir/ü video {i}.mp4#{i:06d}-{i + 3:06d}",
        source_id=f"dir/ü video {i}.mp4",
        t0=2**31 - 4 if i == 4 else i,
        t1=2**31 - 1 if i == 4 else i + 3,
        split=("train", "val")[i % 2],
        guide_seed=2**63 - 1 - i,
        image=encode_image(image, 90),
        size=(h, w),
        flow=FlowCodec().encode(flow),
        valid=encode_mask(flow[..., 0] > 0) if i % 2 else b"",
        crop=(i, 2 * i, w + i, h + 2 * i),
        scale=(979 / 640, 416 / 272),
        points=rng.uniform(0, min(h, w) - 1, (k, 2)).astype(np.float32),
        vectors=rng.normal(0, 1e6, (k, 2)).astype(np.float32),
        extras={"exact_flow": bytes(rng.integers(0, 256, i * 7, dtype=np.uint8))} if extras else {},
    )


@pytest.fixture(scope="module")
def samples() -> list[EncodedSample]:
    rng = np.random.default_rng(0)
    return [awkward_sample(i, rng) for i in range(6)]


@pytest.fixture(scope="module")
def shard(samples, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("shards") / "shard-00003.h5"
    info = write_shard(path, samples, ATTRS)
    assert info.sha256 == file_sha256(path) and info.bytes == path.stat().st_size
    check_written(path, info, [s.sample_id for s in samples])
    return path


def same(a: EncodedSample, b: EncodedSample) -> bool:
    fields = (
        "sample_id",
        "source_id",
        "t0",
        "t1",
        "split",
        "guide_seed",
        "image",
        "size",
        "flow",
        "valid",
        "crop",
        "scale",
    )
    return (
        all(getattr(a, f) == getattr(b, f) for f in fields)
        and np.array_equal(a.points, b.points)
        and np.array_equal(a.vectors, b.vectors)
        and dict(a.extras) == dict(b.extras)
    )


def test_what_is_written_reads_back_exactly(samples, shard):
    with ShardReader(shard) as reader:
        assert len(reader) == len(samples)
        assert reader.attrs["schema_version"] == SCHEMA_VERSION
        assert reader.attrs["parts"] == ["image", "flow", "valid", "guidance"]
        for i, written in enumerate(samples):
            read = reader.encoded(i)
            assert same(read, written), i
            # The scale comes back as the float64 it was, not rounded to float32.
            assert read.scale == (979 / 640, 416 / 272)
            assert read.digest() == written.digest() == reader.stored_digest(i)
            stored = reader.read(i)
            assert stored.image.shape[:2] == written.size == stored.flow.shape[:2]
            assert (stored.valid is None) == (written.valid == b"")
            assert len(stored.guidance) == len(written.points)
        ids, stored_digests, recomputed = reader.digests()
    assert ids == [s.sample_id for s in samples]
    assert stored_digests == recomputed == [s.digest() for s in samples]


def test_the_digest_is_recomputed_with_h5py_and_hashlib_alone(samples, shard):
    # The recipe of the README's shard-format section, in a process that imports nothing else.
    script = """
import hashlib, json, sys
import h5py
out = []
with h5py.File(sys.argv[1], "r") as f:
    for i in range(f["meta"].shape[0]):
        h = hashlib.sha256()
        lo, hi = f["data_offsets"][i], f["data_offsets"][i + 1]
        for field in (f["sample_id"][i], f["source_id"][i], f["meta"][i].tobytes(),
                      f["data"][lo:hi].tobytes()):
            h.update(len(field).to_bytes(8, "little"))
            h.update(field)
        out.append([h.hexdigest(), f["digest"][i].decode()])
assert not any(name.startswith("cmpdata") for name in sys.modules)
print(json.dumps(out))
"""
    proc = subprocess.run(
        [sys.executable, "-c", script, str(shard)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    pairs = json.loads(proc.stdout)
    assert [a for a, _ in pairs] == [b for _, b in pairs] == [s.digest() for s in samples]


def test_optional_parts_are_stored_read_and_digested(tmp_path):
    rng = np.random.default_rng(1)
    samples = [awkward_sample(i, rng, extras=True) for i in range(3)]
    path = tmp_path / "shard-00000.h5"
    write_shard(path, samples, ATTRS)
    with ShardReader(path) as reader:
        assert reader.attrs["parts"] == ["image", "flow", "valid", "guidance", "exact_flow"]
        for i, written in enumerate(samples):
            assert same(reader.encoded(i), written)
            # Sample 0's part is empty: read back as none.
            expected = {"exact_flow": written.extras["exact_flow"]} if i else {}
            assert reader.read(i).extras == expected
    # The optional part is covered by the digest like any other.
    changed = EncodedSample(**{**samples[1].__dict__, "extras": {"exact_flow": b"other"}})
    assert changed.digest() != samples[1].digest()
    with pytest.raises(ValueError, match="optional part"):
        EncodedSample(**{**samples[0].__dict__, "extras": {"image": b""}})


def test_samples_with_different_optional_parts_share_a_shard(tmp_path):
    # Synthetic clips (with truth parts) and real videos (without) in one extract.
    rng = np.random.default_rng(2)
    plain = awkward_sample(3, rng)
    truth = awkward_sample(5, rng, extras=True)
    other = dataclasses.replace(awkward_sample(1, rng), extras={"objects": b"\x00\x01"})
    samples = [plain, truth, other]
    path = tmp_path / "shard-00000.h5"
    info = write_shard(path, samples, ATTRS)
    check_written(path, info, [s.sample_id for s in samples])
    stored = with_common_parts(samples)
    assert [sorted(s.extras) for s in stored] == [["exact_flow", "objects"]] * 3
    assert list(info.digests) == [s.digest() for s in stored]
    assert info.digests[0] != plain.digest()  # the digest is of the sample as stored
    with ShardReader(path) as reader:
        assert reader.attrs["parts"][4:] == ["exact_flow", "objects"]
        for i, (written, padded) in enumerate(zip(samples, stored, strict=True)):
            assert same(reader.encoded(i), padded)
            assert reader.read(i).extras == written.extras
        assert reader.read(0).extras == {}


def test_an_empty_shard(tmp_path):
    path = tmp_path / "shard-00000.h5"
    info = write_shard(path, [], ATTRS)
    check_written(path, info, [])
    with ShardReader(path) as reader:
        assert len(reader) == 0 and reader.digests() == ([], [], [])


@settings(max_examples=20, deadline=None)
@given(
    h=st.integers(1, 40),
    w=st.integers(1, 40),
    sx=st.floats(1e-3, 1e3, allow_subnormal=False),
    sy=st.floats(1e-3, 1e3, allow_subnormal=False),
    k=st.integers(0, 5),
    seed=st.integers(0, 2**63 - 1),
)
def test_round_trip_property(tmp_path_factory, h, w, sx, sy, k, seed):
    rng = np.random.default_rng(seed % 2**32)
    sample = EncodedSample(
        "s#000000-000001",
        "s",
        0,
        1,
        "train",
        seed,
        b"\xff\xd8jpeg",
        (h, w),
        b"flow",
        b"",
        (0, 0, w, h),
        (sx, sy),
        rng.random((k, 2)).astype(np.float32),
        rng.random((k, 2)).astype(np.float32),
    )
    path = tmp_path_factory.mktemp("prop") / "shard.h5"
    info = write_shard(path, [sample], ATTRS)
    check_written(path, info, [sample.sample_id])
    with ShardReader(path) as reader:
        assert same(reader.encoded(0), sample)


def test_a_changed_sample_fails_the_read_back(samples, shard, tmp_path):
    copy = tmp_path / shard.name
    info = write_shard(copy, samples, ATTRS)
    with h5py.File(copy, "r+") as f:
        meta = f["meta"][2]
        meta["t0"] += 1
        f["meta"][2] = meta
    with pytest.raises(ShardError, match=r"read back, sample 2 .*digest of the stored bytes"):
        check_written(copy, info, [s.sample_id for s in samples])
    with pytest.raises(ShardError, match=r"read back, row 0 holds"):
        check_written(shard, info, ["other", *[s.sample_id for s in samples[1:]]])
    with ShardReader(copy) as reader, pytest.raises(ShardError, match=r"sample 2 .*content digest"):
        reader.read(2)


def test_a_shard_of_another_schema_is_one_line(shard, tmp_path):
    old = tmp_path / "old.h5"
    old.write_bytes(shard.read_bytes())
    with h5py.File(old, "r+") as f:
        f.attrs["schema_version"] = 1
    with ShardReader(old) as reader, pytest.raises(ShardError) as error:
        len(reader)
    message = str(error.value)
    assert "\n" not in message and "schema 1" in message and "extract the dataset again" in message


def test_shard_errors_survive_pickling():
    error = ShardError("/data/shard-00001.h5", "sample 3: unreadable")
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is ShardError and isinstance(again, FileError)
    assert (again.path, again.reason, str(again)) == (error.path, error.reason, str(error))


def test_the_reader_reads_the_small_columns_once_then_one_slice_a_sample(
    samples, shard, monkeypatch
):
    reads: list[str] = []
    real_getitem = h5py.Dataset.__getitem__

    def spy(self, key):
        reads.append(self.name)
        return real_getitem(self, key)

    monkeypatch.setattr(h5py.Dataset, "__getitem__", spy)
    with ShardReader(shard) as reader:
        assert reader.read(0).sample_id == samples[0].sample_id
        assert sorted(reads) == sorted(f"/{n}" for n in (*ShardReader.INDEX_COLUMNS, "data"))
        reads.clear()
        for i in range(1, len(samples)):
            assert reader.read(i).sample_id == samples[i].sample_id
            assert reader.encoded(i).digest() == samples[i].digest() == reader.stored_digest(i)
        assert reads == ["/data"] * (2 * (len(samples) - 1))
        reader.close()
        reads.clear()
        reader.read(1)  # the file opened again: its columns are read again
        assert sorted(reads) == sorted(f"/{n}" for n in (*ShardReader.INDEX_COLUMNS, "data"))
