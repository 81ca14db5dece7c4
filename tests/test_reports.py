"""inspect / verify / show on tiny dataset directories built by ``test_dataset.make_dataset``."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from shardedit import tamper
from test_dataset import drop_dataset, edit_manifest, make_dataset, truncate

from cmpdata.errors import CmpDataError
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.manifest import MANIFEST
from cmpdata.store.reports import (
    content_digest,
    format_inspect,
    format_verify,
    inspect_dataset,
    show_sample,
    verify_dataset,
)
from cmpdata.store.shards import ShardError, ShardReader, file_sha256, h5_errors
from cmpdata.viz import flow_figure


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("tools") / "data"
    return root, make_dataset(root)


@pytest.fixture
def dataset_dir(built, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built[0], tmp_path / "data"))


def relist(directory: Path, name: str) -> None:
    """Make the manifest agree with the file ``name`` as it now is (size and sha256)."""
    path = directory / name
    size, sha = path.stat().st_size, file_sha256(path)

    def update(manifest: dict) -> None:
        for entry in manifest["shards"]:
            if entry["name"] == name:
                entry.update(bytes=size, sha256=sha)

    edit_manifest(directory, update)


def problems(report) -> list[tuple[str | None, int | None, str]]:
    return [(p.shard, p.index, p.message) for p in report.problems]


def test_content_digest_is_sha256_of_id_digest_lines():
    pairs = [("a.mp4#000000-000003", "d1"), ("b.mp4#000010-000013", "d2")]
    expected = hashlib.sha256(b"a.mp4#000000-000003\td1\nb.mp4#000010-000013\td2\n").hexdigest()
    assert content_digest(pairs) == expected
    assert content_digest(reversed(pairs)) != expected


def test_clean_dataset_verifies(built):
    root, written = built
    report = verify_dataset(root, progress=False)
    assert report.ok, problems(report)
    assert (report.shards_checked, report.samples_checked) == (2, 5)
    assert report.content_digest == content_digest((s.sample_id, s.digest()) for s in written)
    assert format_verify(report).startswith("OK: ")


def test_flipped_byte_is_caught(dataset_dir):
    shard = dataset_dir / "shard-00001.h5"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    report = verify_dataset(dataset_dir, progress=False)
    assert not report.ok
    found = problems(report)
    assert len(found) == 1
    assert found[0][:2] == ("shard-00001.h5", None) and "sha256" in found[0][2]
    text = format_verify(report)
    assert text.startswith("FAILED") and "shard-00001.h5: sha256" in text


def test_missing_and_truncated_shards(dataset_dir):
    (dataset_dir / "shard-00000.h5").unlink()
    truncate(dataset_dir / "shard-00001.h5")
    report = verify_dataset(dataset_dir, progress=False)
    found = problems(report)
    assert ("shard-00000.h5", None, "missing: listed in the manifest but not on disk") in found
    messages = [m for s, _, m in found if s == "shard-00001.h5"]
    assert len(messages) == 1 and "bytes, the manifest lists" in messages[0]
    assert len(found) == 2
    assert report.samples_checked == 0  # a damaged file is not opened
    assert report.content_digest is None  # cannot be recomputed from damaged shards


def test_sample_count_mismatch(dataset_dir):
    edit_manifest(dataset_dir, lambda m: m["shards"][0].update(num_samples=4))
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert found == [("shard-00000.h5", None, "holds 3 samples, the manifest lists 4")]


def test_changed_sample_is_caught_by_its_digest(built, dataset_dir):
    shard = dataset_dir / "shard-00000.h5"
    with h5py.File(shard, "r+") as f:
        meta = f["meta"][1]
        meta["guide_seed"] += 1
        f["meta"][1] = meta
    relist(dataset_dir, shard.name)  # so that only the sample's own digest can tell
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert len(found) == 1
    name, index, message = found[0]
    assert (name, index) == ("shard-00000.h5", 1)
    assert built[1][1].sample_id in message and "content digest" in message


def test_undecodable_sample(dataset_dir):
    shard = dataset_dir / "shard-00001.h5"
    tamper(shard, 0, flow=b"garbage")
    relist(dataset_dir, shard.name)
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert [(s, i) for s, i, _ in found] == [("shard-00001.h5", 0)]
    assert "flow" in found[0][2]


def test_guidance_outside_the_image(dataset_dir):
    shard = dataset_dir / "shard-00000.h5"
    with ShardReader(shard) as reader:
        first = next(i for i in range(len(reader)) if len(reader.encoded(i).points))
        points = reader.encoded(first).points.copy()
    points[0] = (64.0, 0.0)
    tamper(shard, first, points=points)
    relist(dataset_dir, shard.name)
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert {(s, i) for s, i, _ in found} == {("shard-00000.h5", first)}
    assert any("outside the 48x64 image" in m for _, _, m in found)


def test_corrupt_file_errors_name_the_shard(tmp_path):
    expected = r"x\.h5: sample 3: unreadable \(RuntimeError: bad symbol"
    with pytest.raises(ShardError, match=expected), h5_errors(tmp_path / "x.h5", "sample 3"):
        raise RuntimeError("bad symbol table")


def test_unlisted_shard_and_wrong_content_digest(dataset_dir):
    shutil.copy(dataset_dir / "shard-00001.h5", dataset_dir / "shard-00002.h5")
    edit_manifest(dataset_dir, lambda m: m.update(content_digest="0" * 64))
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert ("shard-00002.h5", None, "shard file not listed in the manifest") in found
    assert any(s is None and m.startswith("content digest") for s, _, m in found)
    assert len(found) == 2


def test_leftover_temporary_and_part_files(dataset_dir):
    part = ".shard-00001.h5.part-0123456789abcdef0123"
    for name in (part, f"{part}.tmp-1f2e", ".shard-00001.h5.tmp-4242"):
        (dataset_dir / name).write_bytes(b"left by a killed run")
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert sorted(found, key=str) == [
        (part, None, "leftover part file of an interrupted run"),
        (f"{part}.tmp-1f2e", None, "leftover temporary file of an interrupted write"),
        (".shard-00001.h5.tmp-4242", None, "leftover temporary file of an interrupted write"),
    ]


def test_missing_or_incomplete_manifest(dataset_dir):
    edit_manifest(dataset_dir, lambda m: m.update(complete=False))
    found = problems(verify_dataset(dataset_dir, progress=False))
    assert [m for _, _, m in found] == [
        "manifest.json says complete: false (extraction unfinished)"
    ]
    (dataset_dir / MANIFEST).unlink()
    drop_dataset(dataset_dir / "shard-00000.h5", "digest")
    report = verify_dataset(dataset_dir, progress=False)
    found = problems(report)
    assert found[0][0] is None and "no manifest" in found[0][2]
    assert ("shard-00000.h5", None, "missing datasets: digest") in found
    assert report.samples_checked == 2  # the intact shard was still decoded


def test_inspect_counts(built):
    root, written = built
    info = inspect_dataset(root)
    assert json.loads(json.dumps(info)) == info  # for a --json option
    assert info["complete"] is True
    assert (info["shards"], info["samples"]) == (2, 5)
    assert info["splits"] == {"train": 3, "val": 2}
    assert info["sources"] == 2
    assert info["top_sources"] == [["vid0.mp4", 3], ["vid1.mp4", 2]]
    assert info["image_sizes"] == {"48x64": 5}
    counts = [len(s.points) for s in written]
    assert info["guidance"] == {"mean": np.mean(counts), "min": min(counts), "max": max(counts)}
    on_disk = sum(p.stat().st_size for p in root.glob("shard-*.h5"))
    assert info["bytes"] == on_disk and info["bytes_per_sample"] == on_disk / 5
    dataset = ShardDataset(root, split=None)
    samples = [dataset[i] for i in range(len(dataset))]
    largest = max(np.hypot(*s.flow[s.valid].T).max() for s in samples)
    flow = info["flow"]
    assert flow["samples_used"] == 5
    assert inspect_dataset(root, flow_samples=2)["flow"]["samples_used"] == 2
    assert flow["max"] == pytest.approx(largest)
    assert 0 < flow["median"] <= flow["p95"] <= flow["max"]
    assert flow["valid_fraction"] == pytest.approx(np.mean([s.valid.mean() for s in samples]))
    assert info["flow_backend"]["name"] == "ground-truth"
    assert info["damaged"] == []
    text = format_inspect(info)
    for expected in ("(complete)", "samples      5: train 3, val 2", "vid0.mp4", "48x64 (5)"):
        assert expected in text


def test_inspect_one_shard_and_a_damaged_one(dataset_dir):
    info = inspect_dataset(dataset_dir / "shard-00001.h5", flow_samples=1)
    assert (info["complete"], info["shards"], info["samples"]) == (None, 1, 2)
    assert info["flow"]["samples_used"] == 1
    assert info["codec"]["format"] == "CMPF"  # read from the shard's attributes
    assert "no manifest" in format_inspect(info)
    truncate(dataset_dir / "shard-00000.h5")
    info = inspect_dataset(dataset_dir)
    assert info["samples"] == 2
    assert len(info["damaged"]) == 1 and info["damaged"][0].startswith("shard-00000.h5: ")
    assert "DAMAGED" in format_inspect(info)


def test_show_writes_the_figure(built, tmp_path):
    root, written = built
    out = show_sample(root, 1, tmp_path / "pics" / "val1.png", split="val")
    image = cv2.imread(str(out))
    with ShardReader(root / "shard-00001.h5") as reader:
        sample = reader.read(0)  # the second val sample
    assert sample.sample_id == written[3].sample_id
    title = f"{sample.sample_id} (val; shard-00001.h5 row 0)"
    expected = flow_figure(
        sample.image, sample.flow, sample.guidance, valid=sample.valid, title=title
    )
    np.testing.assert_array_equal(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), expected)
    with pytest.raises(CmpDataError, match=r"index 5 out of range: 5 samples \(0..4\)"):
        show_sample(root, 5, tmp_path / "x.png")
