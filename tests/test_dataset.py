"""ShardDataset: indexing, split filtering, lazy opening, DataLoader workers, damaged shards.

``make_dataset`` builds a tiny dataset directory (also used by ``test_reports``).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from cmpdata.errors import CmpDataError
from cmpdata.guidance import GuidanceConfig, build_sampler
from cmpdata.records import FlowSample, FramePair
from cmpdata.stages import guide
from cmpdata.store.codec import FlowCodec
from cmpdata.store.dataset import ShardDataset
from cmpdata.store.manifest import MANIFEST, content_digest, write_json_atomic
from cmpdata.store.shards import (
    SCHEMA_VERSION,
    EncodedSample,
    ShardError,
    StoredSample,
    encode_sample,
    write_shard,
)
from cmpdata.store.shards import shard_name as name_of
from cmpdata.synth.clips import SynthConfig, SyntheticClip

CONFIG = {"pairs": {"gap": 2}, "seed": 0}
BACKEND = {"name": "ground-truth", "params": {}, "weights_sha256": None}
GAP = 2


def make_dataset(root: Path, shard_sizes: tuple[int, ...] = (3, 2)) -> list[EncodedSample]:
    """A dataset directory of synthetic 48 x 64 samples from two sources, ``vid0.mp4`` (train)
    and ``vid1.mp4`` (val), alternating, with validity masks; returns the samples written."""
    root.mkdir(parents=True, exist_ok=True)
    clip = SyntheticClip(SynthConfig(height=48, width=64, num_frames=sum(shard_sizes) + GAP))
    sampler = build_sampler(GuidanceConfig())
    codec = FlowCodec()
    attrs = {"config": CONFIG, "flow_backend": BACKEND, "codec": codec.params()}
    written: list[EncodedSample] = []
    shards = []
    t0 = 0
    for index, size in enumerate(shard_sizes):
        batch = []
        for _ in range(size):
            source = f"vid{t0 % 2}.mp4"
            pair = FramePair(source, t0, t0 + GAP, clip.frame(t0), clip.frame(t0 + GAP))
            flow, valid = clip.ground_truth(t0, t0 + GAP)
            guided = guide(FlowSample(pair, flow.astype(np.float32), valid), sampler, seed=0)
            batch.append(encode_sample(guided, "val" if t0 % 2 else "train", codec))
            t0 += 1
        info = write_shard(root / name_of(index), batch, {**attrs, "shard_index": index})
        shards.append({**info.record(), "index": index})
        written += batch
    splits = Counter(s.split for s in written)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "complete": True,
        "creator": "cmp test",
        **attrs,
        "plan_fingerprint": "test",
        "content_digest": content_digest((s.sample_id, s.digest()) for s in written),
        "num_planned": len(written),
        "num_samples": len(written),
        "num_dropped": 0,
        "splits": {"train": splits["train"], "val": splits["val"]},
        "sources": {},
        "shards": shards,
        "stats": {},
    }
    write_json_atomic(root / MANIFEST, manifest)
    return written


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[EncodedSample]]:
    root = tmp_path_factory.mktemp("dataset") / "data"
    return root, make_dataset(root)


@pytest.fixture
def dataset_dir(built, tmp_path: Path) -> Path:
    """A fresh copy of the built dataset, free to damage."""
    return Path(shutil.copytree(built[0], tmp_path / "data"))


def to_tensors(sample: StoredSample) -> dict[str, object]:
    return {
        "id": sample.sample_id,
        "image": torch.from_numpy(sample.image),
        "flow": torch.from_numpy(sample.flow),
    }


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def drop_dataset(path: Path, name: str) -> None:
    """Rewrite ``path`` without the dataset ``name`` (h5py cannot shrink a file in place)."""
    copy = path.with_name("copy.h5")
    with h5py.File(path, "r") as src, h5py.File(copy, "w") as dst:
        dst.attrs.update(src.attrs)
        for key in src:
            if key != name:
                src.copy(key, dst)
    os.replace(copy, path)


def edit_manifest(directory: Path, edit: Callable[[dict], None]) -> None:
    """Apply ``edit`` to the manifest of ``directory`` in place."""
    path = directory / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    write_json_atomic(path, manifest)


def open_files() -> set[str]:
    fds = Path("/proc/self/fd")
    out = set()
    for fd in fds.iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            continue
    return out


def test_lengths_and_split_filtering(built):
    root, written = built
    everything = ShardDataset(root, split=None)
    train = ShardDataset(root, split="train")
    val = ShardDataset(root, split="val")
    assert len(everything) == len(written) == 5
    assert len(train) == 3 and len(val) == 2
    assert everything.sample_ids() == [s.sample_id for s in written]
    assert train.sample_ids() == [s.sample_id for s in written if s.split == "train"]
    for i in range(len(val)):
        sample = val[i]
        assert isinstance(sample, StoredSample)
        assert sample.split == "val"
        assert sample.sample_id == val.sample_ids()[i]
        assert sample.image.shape == (48, 64, 3) and sample.flow.shape == (48, 64, 2)
    assert val[-1].sample_id == val.sample_ids()[-1]
    assert [p.name for p in everything.shards] == ["shard-00000.h5", "shard-00001.h5"]
    assert everything.locate(3) == (root / "shard-00001.h5", 0)
    with pytest.raises(IndexError, match="holds 2 samples"):
        val[2]
    with pytest.raises(ValueError, match="split"):
        ShardDataset(root, split="test")


def test_items_match_what_was_written(built):
    root, written = built
    dataset = ShardDataset(root, split=None)
    for i, encoded in enumerate(written):
        sample = dataset[i]
        assert sample.sample_id == encoded.sample_id
        np.testing.assert_array_equal(sample.guidance.points, encoded.points)
        assert sample.valid is not None and sample.valid.shape == (48, 64)


def test_transform_is_applied(built):
    dataset = ShardDataset(built[0], split="train", transform=to_tensors)
    item = dataset[0]
    assert item["id"] == dataset.sample_ids()[0]
    assert item["flow"].dtype == torch.float32 and tuple(item["flow"].shape) == (48, 64, 2)


def test_single_shard_and_several_roots(built, tmp_path):
    root, written = built
    one = ShardDataset(root / "shard-00001.h5", split=None)
    assert one.sample_ids() == [s.sample_id for s in written[3:]]
    second = Path(shutil.copytree(root, tmp_path / "second"))
    both = ShardDataset([root, second], split="val")
    assert len(both) == 4
    assert both.sample_ids() == 2 * [s.sample_id for s in written if s.split == "val"]


def test_no_file_is_open_after_construction(built):
    root = built[0]
    shard_paths = {str(p.resolve()) for p in root.glob("shard-*.h5")}
    dataset = ShardDataset(root, split=None)
    assert not shard_paths & open_files()
    dataset[4]
    assert str((root / "shard-00001.h5").resolve()) in open_files()
    pickle.loads(pickle.dumps(dataset))  # an open handle must not travel to a worker
    dataset.close()
    assert not shard_paths & open_files()


@pytest.mark.parametrize("workers", [0, 2])
def test_dataloader_workers_give_the_same_batches(built, workers):
    dataset = ShardDataset(built[0], split=None, transform=to_tensors)
    loader = DataLoader(dataset, batch_size=2, num_workers=workers)
    batches = list(loader)
    ids = [i for batch in batches for i in batch["id"]]
    assert ids == dataset.sample_ids()
    flows = torch.cat([batch["flow"] for batch in batches])
    plain = ShardDataset(built[0], split=None)
    expected = torch.stack([torch.from_numpy(plain[i].flow) for i in range(len(plain))])
    assert torch.equal(flows, expected)


@pytest.mark.parametrize("with_manifest", [True, False])
@pytest.mark.parametrize("damage", ["truncate", "drop_dataset"])
def test_damaged_shard_raises_or_is_skipped(dataset_dir, damage, with_manifest):
    shard = dataset_dir / "shard-00000.h5"
    if damage == "truncate":
        truncate(shard)
    else:
        drop_dataset(shard, "data_offsets")
    if not with_manifest:
        (dataset_dir / MANIFEST).unlink()
    with pytest.raises(ShardError, match=r"shard-00000\.h5") as info:
        ShardDataset(dataset_dir, split=None)
    assert info.value.path == str(shard)
    if damage == "drop_dataset" and not with_manifest:
        assert "data_offsets" in info.value.reason
    with pytest.warns(UserWarning, match=r"shard-00000\.h5"):
        dataset = ShardDataset(dataset_dir, split=None, skip_damaged=True)
    assert len(dataset) == 2
    assert dataset.shards == [dataset_dir / "shard-00001.h5"]
    assert [p for p, _ in dataset.skipped] == [shard]


def test_every_shard_damaged(dataset_dir):
    for shard in dataset_dir.glob("shard-*.h5"):
        truncate(shard)
    with pytest.warns(UserWarning), pytest.raises(CmpDataError, match="every shard is damaged"):
        ShardDataset(dataset_dir, skip_damaged=True)


def test_missing_shard_and_count_mismatch_name_the_shard(dataset_dir):
    (dataset_dir / "shard-00001.h5").unlink()
    with pytest.raises(ShardError, match=r"shard-00001.h5: no such file"):
        ShardDataset(dataset_dir)
    shutil.copy(dataset_dir / "shard-00000.h5", dataset_dir / "shard-00001.h5")
    # Listed with shard 0's size, so the size check passes and the count check is what fails.
    edit_manifest(dataset_dir, lambda m: m["shards"][1].update(bytes=m["shards"][0]["bytes"]))
    with pytest.raises(ShardError, match=r"shard-00001.h5: holds 3 samples, the manifest lists 2"):
        ShardDataset(dataset_dir)


def test_directory_without_shards(tmp_path):
    with pytest.raises(CmpDataError, match=r"no shards \(shard-\*.h5\) found"):
        ShardDataset(tmp_path)
    with pytest.raises(CmpDataError, match="no such dataset"):
        ShardDataset(tmp_path / "absent")


def test_incomplete_manifest_reads_the_files_present(dataset_dir):
    edit_manifest(dataset_dir, lambda m: m.update(complete=False, shards=[]))
    with pytest.warns(UserWarning, match="incomplete"):
        dataset = ShardDataset(dataset_dir, split=None)
    assert len(dataset) == 5
