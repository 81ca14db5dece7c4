"""Dataset layouts on small trees written the way each official download unpacks.

The trees hold synthetic frames (cmpdata.synth.clips, 64 x 96) and are shared with test_recipes.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmpdata.errors import DecodeError, SourceError
from cmpdata.io.layouts import (
    LAYOUTS,
    build_layout,
    choose_layout,
    image_size,
    split_runs,
)
from cmpdata.io.media import write_video
from cmpdata.synth.clips import SynthConfig, SyntheticClip

HEIGHT, WIDTH = 64, 96


def clip_frames(seed: int, count: int) -> list[np.ndarray]:
    clip = SyntheticClip(SynthConfig(height=HEIGHT, width=WIDTH, num_frames=count, seed=seed))
    return [clip.frame(t) for t in range(count)]


def write_frames(folder: Path, names: list[str], seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, image in zip(names, clip_frames(seed, len(names)), strict=True):
        assert cv2.imwrite(str(folder / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def make_yfcc(root: Path) -> Path:
    """UnsupVideo_Frames/ with CMP's pair lists (train) and a plain frame list (val).

    aaa: 8 frames; bbb: 10 listed, bbb_0004 absent (runs 1-3, too short, and 5-10);
    ccc: 7 listed frames and one unlisted.
    """
    frames = root / "UnsupVideo_Frames"
    write_frames(frames / "0", [f"aaa_{i:04d}.jpg" for i in range(1, 9)], seed=1)
    write_frames(frames / "0", [f"bbb_{i:04d}.jpg" for i in range(1, 11)], seed=2)
    (frames / "0" / "bbb_0004.jpg").unlink()
    write_frames(frames / "1", [f"ccc_{i:04d}.jpg" for i in (*range(1, 8), 99)], seed=3)
    lines = []
    for video, count in (("aaa", 8), ("bbb", 10)):
        for i in range(1, count):
            a, b = (f"UnsupVideo_Frames/0/{video}_{j:04d}.jpg" for j in (i, i + 1))
            lines.append(f"{a} {b} flow_origin/0/{video}_{i:04d}_x.jpg flow/{video}_y.jpg")
    (root / "lists").mkdir()
    (root / "lists" / "train.txt").write_text("\n".join(lines) + "\n")
    val = [f"/mnt/elsewhere/UnsupVideo_Frames/1/ccc_{i:04d}.jpg" for i in range(1, 8)]
    (root / "lists" / "val.txt").write_text("# frames of another machine\n" + "\n".join(val))
    return root


def make_youtube_vos(root: Path) -> Path:
    """train/JPEGImages (frames every 5th, as released) and meta.json naming one absent video."""
    images = root / "train" / "JPEGImages"
    write_frames(images / "0a1b2c3d4e", [f"{5 * i:05d}.jpg" for i in range(6)], seed=4)
    write_frames(images / "1f2e3d4c5b", [f"{5 * i:05d}.jpg" for i in range(5)], seed=5)
    write_frames(images / "not_in_meta", ["00000.jpg"], seed=6)
    videos = {v: {"objects": {}} for v in ("0a1b2c3d4e", "1f2e3d4c5b", "ffffffffff")}
    (root / "train" / "meta.json").write_text(json.dumps({"videos": videos}))
    return root


def make_videos(root: Path) -> Path:
    """Plain video files (a YouTube collection), one unreadable."""
    (root / "channel").mkdir(parents=True)
    write_video(root / "abc.mp4", clip_frames(7, 24))
    write_video(root / "channel" / "def.webm", clip_frames(8, 24))
    (root / "broken.mp4").write_bytes(b"\x00" * 2000)
    return root


def make_vip(root: Path) -> Path:
    """Images/ in VIP_Sequence's way (frames around annotated ones: clumps) and split lists."""
    images = root / "Images"
    write_frames(images / "videos1", [f"{i:012d}.jpg" for i in (*range(1, 7), *range(26, 32))], 9)
    write_frames(images / "videos2", [f"{i:012d}.jpg" for i in range(1, 6)], seed=10)
    write_frames(images / "videos9", ["000000000001.jpg"], seed=11)  # in no list
    (root / "lists").mkdir()
    (root / "lists" / "train_videos.txt").write_text("videos1\nvideos2\n")
    (root / "lists" / "val_videos.txt").write_text("videos3\n")  # not in this copy
    return root


def make_mpii(root: Path) -> Path:
    """Batch folders of sequence folders; one sequence folder empty, one stray folder."""
    write_frames(root / "1" / "013688563", [f"{i:08d}.jpg" for i in range(60, 68)], seed=12)
    write_frames(root / "1" / "015601864", [f"{i:08d}.jpg" for i in range(1, 8)], seed=13)
    (root / "2" / "000000123").mkdir(parents=True)
    (root / "annotations").mkdir()
    return root


def make_trees(base: Path) -> dict[str, Path]:
    """One tree of each layout under ``base``, by layout name."""
    return {
        "yfcc": make_yfcc(base / "yfcc"),
        "youtube-vos": make_youtube_vos(base / "ytvos"),
        "videos": make_videos(base / "videos"),
        "vip": make_vip(base / "vip"),
        "mpii": make_mpii(base / "mpii"),
    }


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_trees(tmp_path_factory.mktemp("layouts"))


def scan(name: str, root: Path, **options):
    return build_layout(name, options).scan(root, name)


def test_yfcc_uses_listed_frames_grouped_by_video_and_reports_what_is_missing(trees):
    found = scan("yfcc", trees["yfcc"])
    # bbb's hole at 0004 splits it; its first run (3 frames) is kept as a source here, the
    # planner leaves it out as shorter than gap + 1.
    assert [s.id for s in found.sources] == [
        "yfcc/0/aaa",
        "yfcc/0/bbb@bbb_0001",
        "yfcc/0/bbb@bbb_0005",
        "yfcc/1/ccc",
    ]
    by_id = {s.id: s for s in found.sources}
    assert by_id["yfcc/0/bbb@bbb_0005"].frames == tuple(f"bbb_{i:04d}.jpg" for i in range(5, 11))
    assert by_id["yfcc/1/ccc"].path == trees["yfcc"] / "UnsupVideo_Frames" / "1"
    assert found.infos["yfcc/0/aaa"].num_frames == 8
    assert (found.infos["yfcc/0/aaa"].width, found.infos["yfcc/0/aaa"].height) == (WIDTH, HEIGHT)
    assert (found.videos, found.frames, found.gaps) == (3, 8 + 9 + 7, 1)
    assert found.missing == ["UnsupVideo_Frames/0/bbb_0004.jpg"]
    assert found.ignored == 1  # ccc_0099.jpg is on disk but in no list
    assert "missing: 1 (UnsupVideo_Frames/0/bbb_0004.jpg)" in found.problems()


def test_youtube_vos_reads_meta_json(trees):
    found = scan("youtube-vos", trees["youtube-vos"])
    assert [s.id for s in found.sources] == ["youtube-vos/0a1b2c3d4e", "youtube-vos/1f2e3d4c5b"]
    assert found.sources[0].frames[:2] == ("00000.jpg", "00005.jpg")  # steady step 5: one run
    assert (found.videos, found.frames, found.gaps) == (2, 11, 0)
    assert found.missing == ["train/JPEGImages/ffffffffff/"]
    assert found.ignored == 1


def test_video_files_are_found_recursively_and_probed_later(trees):
    found = scan("videos", trees["videos"])
    assert [s.id for s in found.sources] == [
        "videos/abc.mp4",
        "videos/broken.mp4",
        "videos/channel/def.webm",
    ]
    assert all(s.kind == "video" for s in found.sources) and found.infos == {}


def test_vip_reads_the_split_lists_and_splits_clumps_into_runs(trees):
    found = scan("vip", trees["vip"])
    assert [s.id for s in found.sources] == [
        "vip/videos1@000000000001",
        "vip/videos1@000000000026",
        "vip/videos2",
    ]
    assert found.missing == ["Images/videos3/"] and found.ignored == 1 and found.gaps == 1
    only_train = scan("vip", trees["vip"], splits=["train"])
    assert only_train.missing == [] and len(only_train.sources) == 3


def test_mpii_reads_batches_of_sequences(trees):
    found = scan("mpii", trees["mpii"])
    assert [s.id for s in found.sources] == ["mpii/1/013688563", "mpii/1/015601864"]
    assert found.sources[0].frames[0] == "00000060.jpg"
    assert found.empty == ["2/000000123/"] and found.ignored == 1


class ReversedScandir:
    """``os.scandir`` listing each folder backwards: results must not depend on the order."""

    real = staticmethod(os.scandir)

    def __init__(self, path) -> None:
        with self.real(path) as entries:
            self.entries = iter(list(entries)[::-1])

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.entries)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        pass


def test_listing_order_of_the_file_system_does_not_matter(trees, monkeypatch):
    before = {name: scan(name, root) for name, root in trees.items()}
    monkeypatch.setattr(os, "scandir", ReversedScandir)
    for name, first in before.items():
        again = scan(name, trees[name])
        assert again.sources == first.sources and again.infos == first.infos


def test_a_root_of_another_layout_or_none_names_what_was_expected(trees, tmp_path):
    layouts = [build_layout("youtube-vos", {}), build_layout("videos", {})]
    assert choose_layout(layouts, trees["videos"]).name == "videos"
    assert choose_layout(layouts, trees["youtube-vos"]).name == "youtube-vos"
    with pytest.raises(
        SourceError,
        match=r"not a recognised layout; expected youtube-vos: "
        r"train/JPEGImages.*; or videos: video files",
    ):
        choose_layout(layouts, trees["mpii"])
    with pytest.raises(SourceError, match="no such directory; expected youtube-vos"):
        choose_layout(layouts, tmp_path / "nowhere")
    with pytest.raises(SourceError, match=r"UnsupVideo_Frames/ \(folders of JPEG frames"):
        choose_layout([build_layout("yfcc", {})], trees["vip"])


def test_missing_list_file_meta_or_frames_raise_naming_the_path(trees, tmp_path):
    root = shutil.copytree(trees["yfcc"], tmp_path / "yfcc")
    (root / "lists" / "val.txt").unlink()
    with pytest.raises(SourceError) as error:
        scan("yfcc", root)
    assert str(root / "lists" / "val.txt") in str(error.value)
    assert "missing; expected a list file of frame names" in str(error.value)

    (root / "lists" / "val.txt").write_text("flow_origin/1/x.jpg\n")
    with pytest.raises(SourceError, match=r"val.txt: names no frame under UnsupVideo_Frames/"):
        scan("yfcc", root)

    vos = shutil.copytree(trees["youtube-vos"], tmp_path / "ytvos")
    (vos / "train" / "meta.json").write_text('{"video": []}')
    with pytest.raises(SourceError, match=r"meta.json: not a YouTube-VOS meta.json"):
        scan("youtube-vos", vos)

    vip = shutil.copytree(trees["vip"], tmp_path / "vip")
    (vip / "lists" / "train_videos.txt").unlink()
    with pytest.raises(SourceError, match=r"train_videos.txt: missing; expected the VIP train"):
        scan("vip", vip)

    empty = tmp_path / "mpii"
    (empty / "1" / "000000001").mkdir(parents=True)
    with pytest.raises(SourceError, match=r"mpii: no frames found; expected numbered batch"):
        scan("mpii", empty)
    with pytest.raises(SourceError, match=r"no video files found; expected video files"):
        scan("videos", empty)


def test_unreadable_first_frame_skips_that_source_only(trees, tmp_path):
    root = shutil.copytree(trees["mpii"], tmp_path / "mpii")
    (root / "1" / "015601864" / "00000001.jpg").write_bytes(b"not a jpeg")
    found = scan("mpii", root)
    assert [s.id for s in found.sources] == ["mpii/1/013688563"]
    assert [d.source_id for d in found.skipped] == ["mpii/1/015601864"]
    assert "00000001.jpg: not a JPEG or PNG image" in found.skipped[0].reason


def test_image_size_reads_headers_only(tmp_path):
    image = np.zeros((37, 53, 3), np.uint8)
    for suffix in (".jpg", ".png"):
        cv2.imwrite(str(tmp_path / f"a{suffix}"), image)
        assert image_size(tmp_path / f"a{suffix}") == (53, 37)
    progressive = tmp_path / "p.jpg"
    cv2.imwrite(str(progressive), image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])
    assert image_size(progressive) == (53, 37)
    data = (tmp_path / "a.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[:20])
    (tmp_path / "empty.png").write_bytes(b"")
    for name in ("cut.jpg", "empty.png"):
        with pytest.raises(DecodeError, match=name):
            image_size(tmp_path / name)


def test_split_runs_cuts_at_holes_only():
    names = [f"{i:03d}.jpg" for i in (0, 5, 10, 20, 25, 27)]
    # Usual step 5: 10 -> 20 is a hole; 25 -> 27 is an irregular but smaller step.
    assert split_runs(names) == [names[:3], names[3:]]
    assert split_runs(["b.jpg", "a.jpg", "c.jpg"]) == [["b.jpg", "a.jpg", "c.jpg"]]
    assert split_runs(["x1.jpg", "x3.jpg"]) == [["x1.jpg", "x3.jpg"]]


def test_layout_options_are_checked():
    with pytest.raises(ValueError, match=r"layout 'vip' has no option \['frames'\]"):
        build_layout("vip", {"frames": "x"})
    with pytest.raises(ValueError, match="option splits must be like"):
        build_layout("vip", {"splits": "train"})
    with pytest.raises(ValueError, match="unknown dataset layout 'kinetics'; choose one of"):
        build_layout("kinetics", {})
    assert set(LAYOUTS.names()) == {"mpii", "vip", "videos", "youtube-vos", "yfcc"}
