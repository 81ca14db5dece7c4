"""Finding sources in every input form, dataset layouts, stable ids, probing, size checks."""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError, DecodeError, SourceError
from cmpdata.io.media import ffmpeg_exe, write_video
from cmpdata.io.pairs import PairConfig, iter_pairs
from cmpdata.io.sources import (
    MIN_FRAME_BYTES,
    _pixel_format,
    check_source_size,
    find_sources,
    natural_key,
    probe,
)
from cmpdata.plan import plan_dataset
from cmpdata.records import Dropped, Source, VideoInfo
from cmpdata.synth.indexclip import index_frame, write_index_video

REPO = Path(__file__).resolve().parents[1]


def touch(path: Path) -> Path:
    """An empty file: discovery never opens files, so fixtures need not be real media."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    return path


def ids(sources) -> list[str]:
    return [s.id for s in sources]


def assert_names(error: pytest.ExceptionInfo, path: Path | str, reason: str) -> None:
    """Expected failures are CmpDataErrors whose message names the file and the reason."""
    assert isinstance(error.value, CmpDataError)
    assert str(path) in str(error.value)
    assert reason in str(error.value)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    touch(root / "a.mp4")
    touch(root / "sub" / "B.MKV")
    touch(root / "sub" / "deeper" / "c.webm")
    touch(root / "sub" / "notes.txt")
    for name in ("frame10.jpg", "frame2.jpg", "frame1.jpg", "Frame3.PNG"):
        touch(root / "shots" / "s1" / name)
    touch(root / "shots" / "s1" / "readme.txt")
    touch(root / "shots" / "s1" / "._frame1.jpg")  # macOS metadata, not an image
    touch(root / ".cache" / "hidden.mp4")
    (root / "empty").mkdir()
    return root


def test_directory_is_searched_recursively(tree: Path) -> None:
    sources = find_sources([tree])
    assert ids(sources) == ["a.mp4", "shots/s1", "sub/B.MKV", "sub/deeper/c.webm"]
    kinds = {s.id: s.kind for s in sources}
    assert kinds == {
        "a.mp4": "video",
        "shots/s1": "frames",
        "sub/B.MKV": "video",
        "sub/deeper/c.webm": "video",
    }
    assert sources[1].path == tree / "shots" / "s1"


def test_frames_are_in_natural_order(tree: Path) -> None:
    (folder,) = [s for s in find_sources([tree]) if s.kind == "frames"]
    assert folder.frames == ("frame1.jpg", "frame2.jpg", "Frame3.PNG", "frame10.jpg")
    assert sorted(["f10", "f2", "f1", "g"], key=natural_key) == ["f1", "f2", "f10", "g"]


def test_single_file_and_frame_folder(tree: Path) -> None:
    assert ids(find_sources([tree / "sub" / "B.MKV"])) == ["B.MKV"]
    (folder,) = find_sources([tree / "shots" / "s1"])
    assert (folder.id, folder.kind, len(folder.frames)) == ("s1", "frames", 4)


def test_glob_ids_are_relative_to_the_fixed_prefix(tree: Path) -> None:
    assert ids(find_sources([f"{tree}/sub/*/*.webm"])) == ["deeper/c.webm"]
    assert ids(find_sources([f"{tree}/**/*.webm"])) == ["sub/deeper/c.webm"]
    # A matched directory is searched like a directory given directly.
    assert ids(find_sources([f"{tree}/sho?s"])) == ["shots/s1"]


def test_list_file(tree: Path, tmp_path: Path) -> None:
    listing = tmp_path / "lists" / "inputs.txt"
    listing.parent.mkdir()
    # Relative lines are resolved against the list's folder, not the working directory.
    listing.write_text(
        f"# videos to use\n\n../data/a.mp4\n   \n{tree / 'shots'}\n../data/sub/*/*.webm\n"
    )
    assert ids(find_sources([f"@{listing}"])) == ["a.mp4", "deeper/c.webm", "s1"]
    listing.write_text("@other.txt\n")
    with pytest.raises(SourceError) as error:
        find_sources([f"@{listing}"])
    assert_names(error, listing, "line 1: list files cannot include other lists")


def test_youtube_vos_layout(tmp_path: Path) -> None:
    for split in ("train", "valid"):
        for video in ("003234408d", "0043f083b5"):
            for t in range(3):
                touch(tmp_path / "ytvos" / split / "JPEGImages" / video / f"{t * 5:05d}.jpg")
                touch(tmp_path / "ytvos" / split / "Annotations" / video / f"{t * 5:05d}.png")
    sources = find_sources([tmp_path / "ytvos" / "train" / "JPEGImages"])
    assert ids(sources) == ["003234408d", "0043f083b5"]
    assert sources[0].frames == ("00000.jpg", "00005.jpg", "00010.jpg")
    both_splits = find_sources([f"{tmp_path}/ytvos/*/JPEGImages"])
    assert ids(both_splits) == [
        f"{split}/JPEGImages/{video}"
        for split in ("train", "valid")
        for video in ("003234408d", "0043f083b5")
    ]


def test_vip_layout(tmp_path: Path) -> None:
    for video in ("videos1", "videos2", "videos10"):
        for name in ("000000000001.jpg", "000000000026.jpg"):
            touch(tmp_path / "VIP_Fine" / "Images" / video / name)
        touch(tmp_path / "VIP_Fine" / "Annotations" / "Category_ids" / video / "000000000001.png")
    sources = find_sources([tmp_path / "VIP_Fine" / "Images"])
    assert ids(sources) == ["videos1", "videos10", "videos2"]
    assert all(s.kind == "frames" and len(s.frames) == 2 for s in sources)


def test_ids_are_stable_when_the_collection_moves(tree: Path, tmp_path: Path) -> None:
    before = find_sources([tree])
    moved = shutil.move(tree, tmp_path / "elsewhere" / "renamed")
    after = find_sources([moved])
    assert ids(before) == ids(after)
    assert all("\\" not in i for i in ids(after))


def test_duplicates_are_kept_once_and_collisions_refused(tree: Path, tmp_path: Path) -> None:
    sources = find_sources([tree, tree / "a.mp4", f"{tree}/*.mp4"])
    assert ids(sources).count("a.mp4") == 1
    touch(tmp_path / "other" / "a.mp4")
    with pytest.raises(SourceError) as error:
        find_sources([tree, tmp_path / "other"])
    assert_names(error, tmp_path / "other" / "a.mp4", str(tree / "a.mp4"))


def test_inputs_that_find_nothing(tree: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        find_sources([tmp_path / "missing.mp4"])
    assert_names(error, tmp_path / "missing.mp4", "no such file or directory")
    with pytest.raises(SourceError) as error:
        find_sources([tree / "empty"])
    assert_names(error, tree / "empty", "no videos or frame folders found")
    with pytest.raises(SourceError) as error:
        find_sources([f"{tree}/*.avi"])
    assert_names(error, f"{tree}/*.avi", "no videos or frame folders found")
    with pytest.raises(SourceError) as error:
        find_sources([tree / "sub" / "notes.txt"])
    assert_names(error, tree / "sub" / "notes.txt", "unsupported file type '.txt'")
    with pytest.raises(SourceError) as error:
        find_sources([f"@{tmp_path / 'nolist.txt'}"])
    assert_names(error, tmp_path / "nolist.txt", "no such file or directory")
    comments_only = tmp_path / "comments.txt"
    comments_only.write_text("# nothing here\n\n")
    with pytest.raises(SourceError) as error:
        find_sources([f"@{comments_only}"])
    assert_names(error, comments_only, "no videos or frame folders found")


# probe ------------------------------------------------------------------------------------------


def video_source(path: Path) -> Source:
    return Source(id=path.name, path=path, kind="video")


def test_probe_video(tmp_path: Path) -> None:
    path = write_index_video(tmp_path / "clip.mp4", 20, height=64, width=80, fps=12)
    assert probe(video_source(path)) == VideoInfo(80, 64, 20, 12.0, 0, decoder="decord")


def test_probe_rotated_video(tmp_path: Path) -> None:
    plain = write_index_video(tmp_path / "plain.mov", 5, height=64, width=80)
    rotated = tmp_path / "rotated.mov"
    # -display_rotation is counter-clockwise; VideoInfo.rotation is clockwise.
    remux = [ffmpeg_exe(), "-loglevel", "error", "-display_rotation", "90", "-i", str(plain)]
    subprocess.run([*remux, "-c", "copy", str(rotated)], check=True)
    info = probe(video_source(rotated))
    assert (info.width, info.height, info.rotation, info.num_frames) == (64, 80, 270, 5)


def test_probe_frame_folder(tmp_path: Path) -> None:
    for t in range(3):
        cv2.imwrite(str(tmp_path / f"{t}.png"), index_frame(t, 48, 72))
    (source,) = find_sources([tmp_path])
    assert probe(source) == VideoInfo(72, 48, 3)


def test_probe_unreadable_first_image(tmp_path: Path) -> None:
    (tmp_path / "0.jpg").write_bytes(b"not a jpeg")
    (source,) = find_sources([tmp_path])
    with pytest.raises(DecodeError) as error:
        probe(source)
    assert_names(error, tmp_path / "0.jpg", "cannot read the image")


def test_pixel_formats_of_stream_lines() -> None:
    lines = {
        "h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 640x272 [SAR 1:1 DAR 40:17]": (
            "yuv420p"
        ),
        "hevc (Main 10) (hvc1 / 0x31637668), yuv420p10le(tv, progressive), 320x136, 25 fps": (
            "yuv420p10le"
        ),
        "ffv1, bgr0(pc, gbr/unknown/unknown, progressive), 320x136, SAR 1:1 DAR 40:17": "bgr0",
        "rawvideo, 320x136, 25 fps": None,
        "h264": None,
    }
    assert {line: _pixel_format(line) for line in lines} == lines


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"just some text\n" * 20, "not a readable video"),
        (np.random.default_rng(0).bytes(4000), "not a readable video"),
    ],
    ids=["empty", "text", "random-bytes"],
)
def test_probe_non_video(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "x.mp4"
    path.write_bytes(content)
    with pytest.raises(DecodeError) as error:
        probe(video_source(path))
    assert_names(error, path, reason)


def test_probe_missing(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        probe(video_source(tmp_path / "gone.mp4"))
    assert_names(error, tmp_path / "gone.mp4", "no such file or directory")


def test_check_source_size() -> None:
    source = Source("small.mp4", Path("/videos/small.mp4"), "video")
    check_source_size(source, VideoInfo(64, 100, 10), min_side=64)
    with pytest.raises(SourceError) as error:
        check_source_size(source, VideoInfo(80, 40, 10), min_side=64)
    assert_names(error, "/videos/small.mp4", "short side 40 px (80x40) is under min_side 64")


# Frame counts the file cannot hold ------------------------------------------------------------


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-v", "error", "-y", *args], check=True, capture_output=True)


def patch(path: Path, marker: bytes, offset: int, fmt: str, value: float) -> None:
    """Overwrite the value ``offset`` bytes after the first ``marker`` in the file."""
    data = bytearray(path.read_bytes())
    at = data.index(marker)
    struct.pack_into(fmt, data, at + offset, value)
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def lying(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """AV1 (decord cannot open it: the count comes from the header) of 50 index frames, whose
    container claims a duration of 4e9 ms: 1e8 frames at 25 fps."""
    folder = tmp_path_factory.mktemp("lying")
    clip = write_index_video(folder / "index.mp4", 50, height=64, width=80)
    names = {"honest": "honest.mkv", "mkv": "lying.mkv", "mp4": "lying.mp4"}
    made = {key: folder / name for key, name in names.items()}
    ffmpeg("-i", str(clip), "-c:v", "libsvtav1", "-preset", "12", str(made["honest"]))
    ffmpeg("-i", str(made["honest"]), "-c", "copy", str(made["mp4"]))
    shutil.copy(made["honest"], made["mkv"])
    # Matroska: the Duration element (id 0x4489, 8-byte float, milliseconds).
    patch(made["mkv"], b"\x44\x89\x88", 3, ">d", 4e9)
    # mp4: mvhd and mdhd (version 0) keep their duration 20 bytes after the box name.
    for box in (b"mvhd", b"mdhd"):
        patch(made["mp4"], box, 20, ">I", 0xF0000000)
    return made


def test_a_header_claiming_more_frames_than_the_file_can_hold(lying) -> None:
    info = probe(video_source(lying["mkv"]))
    size = lying["mkv"].stat().st_size
    assert (info.width, info.height, info.num_frames) == (80, 64, 50)
    assert info.note == (
        f"header claims 100000000 frames, more than {size} bytes can hold "
        f"(>= {MIN_FRAME_BYTES} bytes a frame); counted 50 by demuxing"
    )
    # ffmpeg takes an mp4's duration from its sample table: patched durations do not fool it.
    mp4 = probe(video_source(lying["mp4"]))
    assert (mp4.num_frames, mp4.note) == (50, None)
    assert probe(video_source(lying["honest"])).note is None


def test_a_static_video_is_believed(tmp_path: Path) -> None:
    # The cheapest frames there are (one image repeated): the rule must not refuse them.
    still = index_frame(5, 64, 64)
    extra = ["-tune", "stillimage", "-g", "100000"]
    path = write_video(tmp_path / "still.mkv", [still] * 2000, quality=51, extra_args=extra)
    assert path.stat().st_size < 2000 * 25
    info = probe(video_source(path))
    assert (info.num_frames, info.note) == (2000, None)


# Plans one folder of sources, printing the peak resident memory of this process (MB) and
# what was planned. A regression (planning 1e8 frames) would need gigabytes: the address
# space limit makes it fail at once instead of swamping the machine.
PLAN_PEAK = """
import json, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
from cmpdata.config import ExtractConfig
from cmpdata.plan import plan_dataset
from cmpdata.io.sources import find_sources

plan = plan_dataset(find_sources([sys.argv[1]]), ExtractConfig(), {}, progress=False)
status = Path("/proc/self/status").read_text().splitlines()
peak = int(next(x for x in status if x.startswith("VmHWM:")).split()[1]) / 1024
notes = {k: i.note for k, i in plan.infos.items()}
print(json.dumps({"peak": peak, "samples": len(plan.samples), "notes": notes}))
"""


def test_planning_memory_is_bounded_by_the_files(lying, tmp_path: Path) -> None:
    runs = {}
    for name in ("honest", "lying"):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(lying["mkv" if name == "lying" else "honest"], folder / "clip.mkv")
        runs[name] = subprocess.Popen(
            [sys.executable, "-c", PLAN_PEAK, str(folder)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    results = {}
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err[-3000:]
        results[name] = json.loads(out.strip().splitlines()[-1])
    honest, liar = results["honest"], results["lying"]
    assert honest["samples"] == liar["samples"] == 5
    assert honest["notes"] == {"clip.mkv": None} and "counted 50" in liar["notes"]["clip.mkv"]
    assert liar["peak"] - honest["peak"] < 20, results


# Entries that cannot be read --------------------------------------------------------------------


def test_symlink_loops_and_broken_links_are_sources_that_probe_refuses(tmp_path: Path) -> None:
    root = tmp_path / "videos"
    root.mkdir()
    write_index_video(root / "good.mp4", 8, height=64, width=80)
    (root / "a.mp4").symlink_to("b.mp4")
    (root / "b.mp4").symlink_to("a.mp4")
    (root / "gone.mkv").symlink_to("nowhere.mkv")
    shots = root / "shots"
    shots.mkdir()
    for t in range(6):
        cv2.imwrite(str(shots / f"{t}.png"), index_frame(t, 64, 80))
    (shots / "3.png").unlink()
    (shots / "3.png").symlink_to("3.png")
    sources = find_sources([root])
    assert ids(sources) == ["a.mp4", "b.mp4", "gone.mkv", "good.mp4", "shots"]
    assert sources[-1].frames == tuple(f"{t}.png" for t in range(6))
    reasons = {}
    for source in sources[:3]:
        with pytest.raises(SourceError) as error:
            probe(source)
        reasons[source.id] = str(error.value)
    assert reasons == {
        "a.mp4": f"{root / 'a.mp4'}: cannot open: Too many levels of symbolic links",
        "b.mp4": f"{root / 'b.mp4'}: cannot open: Too many levels of symbolic links",
        "gone.mkv": f"{root / 'gone.mkv'}: a broken symbolic link",
    }
    plan = plan_dataset(
        sources, ExtractConfig(pairs=PairConfig(gap=1, stride=1)), {}, progress=False
    )
    assert sorted(plan.sources) == ["good.mp4", "shots"]
    assert {d.source_id: d.reason for d in plan.skipped} == reasons
    # In a frame folder the loop is one bad frame: only the pairs using it are lost.
    items = list(iter_pairs(sources[-1], PairConfig(gap=1, stride=1, short_side=None)))
    dropped = {(d.t0, d.t1): d.reason for d in items if isinstance(d, Dropped)}
    loop = f"{shots / '3.png'}: cannot read the image (Too many levels of symbolic links)"
    assert dropped == {(2, 3): loop, (3, 4): loop}
    assert len(items) == 5


def test_a_symlink_loop_given_directly_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.mp4").symlink_to("x.mp4")
    with pytest.raises(SourceError) as error:
        find_sources([tmp_path / "x.mp4"])
    assert (
        str(error.value) == f"{tmp_path / 'x.mp4'}: cannot open: Too many levels of symbolic links"
    )
