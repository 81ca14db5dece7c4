"""Decoding: exact frame indices on both decoders, rotation, timeouts, broken files, pairs."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.errors import CmpDataError, DecodeError, DecodeTimeout, SourceError
from cmpdata.io import decoders
from cmpdata.io.decoders import _decord_reason, _select_expression
from cmpdata.io.media import MAX_REASON, ffmpeg_complaint, ffmpeg_exe, write_video
from cmpdata.io.pairs import PairConfig, iter_pairs, pair_indices, read_frames, resize_short_side
from cmpdata.io.sources import find_sources, probe
from cmpdata.records import Dropped, FramePair, Source, VideoInfo
from cmpdata.synth.indexclip import index_frame, read_index, write_index_video

NUM_FRAMES = 48
H, W = 64, 80
DENSE = list(range(NUM_FRAMES))
STRIDED = sorted({t for pair in pair_indices(NUM_FRAMES, 3, 10) for t in pair})
DECODERS = ["decord", "ffmpeg"]


def probe_info() -> VideoInfo:
    """What a probe of the test clips says, for sources that cannot be probed."""
    return VideoInfo(W, H, NUM_FRAMES)


def source_of(path: Path) -> Source:
    return Source(id=path.name, path=path, kind="video")


def assert_names(error: pytest.ExceptionInfo, path: Path | str, reason: str) -> None:
    """Expected failures are CmpDataErrors whose message names the file and the reason."""
    assert isinstance(error.value, CmpDataError)
    assert str(path) in str(error.value)
    assert reason in str(error.value)


def idle_servers() -> set[int]:
    """This process's decord servers waiting for their next request."""
    return {child.process.pid for child, _ in decoders._SERVERS._idle}


def children() -> set[int]:
    """Processes whose parent is this one, zombies included, less the idle decord servers
    (kept for the next request: they are not a decoder left running)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == os.getpid():
            found.add(int(stat.parent.name))
    return found - idle_servers()


def ffmpeg(*args: str) -> None:
    subprocess.run([ffmpeg_exe(), "-loglevel", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    made = {
        suffix: write_index_video(folder / f"index.{suffix}", NUM_FRAMES, height=H, width=W)
        for suffix in ("mp4", "webm")
    }
    # Index first, and a key frame every 5 frames so that half the bytes hold several frames.
    made["faststart"] = write_video(
        folder / "faststart.mp4",
        (index_frame(t, H, W) for t in range(NUM_FRAMES)),
        extra_args=["-movflags", "+faststart", "-g", "5"],
    )
    # -display_rotation is counter-clockwise: shown turned a quarter to the left.
    made["rotated"] = folder / "rotated.mp4"
    ffmpeg("-display_rotation", "90", "-i", str(made["mp4"]), "-c", "copy", str(made["rotated"]))
    return made


def frame_types(path: Path) -> str:
    log = subprocess.run(
        [ffmpeg_exe(), "-i", str(path), "-vf", "showinfo", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return "".join(re.findall(r" type:([IPB])", log))


def test_the_mp4_clip_has_b_frames(clips: dict[str, Path]) -> None:
    # Exactness is only tested where it can fail: frames stored out of display order.
    assert "B" in frame_types(clips["mp4"])


# Exact frames --------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("container", ["mp4", "webm"])
@pytest.mark.parametrize("indices", [DENSE, STRIDED], ids=["dense", "strided"])
def test_frame_t_is_frame_t(clips, decoder: str, container: str, indices: list[int]) -> None:
    source = source_of(clips[container])
    got = list(read_frames(source, indices, decoder=decoder, info=probe_info()))
    assert [t for t, _ in got] == indices
    assert [read_index(frame) for _, frame in got] == indices
    assert all(frame.dtype == np.uint8 and frame.shape == (H, W, 3) for _, frame in got)


def test_decoders_agree_and_accept_any_order(clips) -> None:
    source = source_of(clips["mp4"])
    wanted = [30, 5, 5, 47]
    by_decoder = {d: list(read_frames(source, wanted, decoder=d)) for d in [*DECODERS, "auto"]}
    for got in by_decoder.values():
        assert [t for t, _ in got] == [5, 30, 47]
    for (_, a), (_, b) in zip(by_decoder["decord"], by_decoder["ffmpeg"], strict=True):
        assert np.abs(a.astype(int) - b).mean() < 2.0


@pytest.mark.parametrize("decoder", DECODERS)
def test_rotation_is_applied_the_same_way(clips, decoder: str) -> None:
    source = source_of(clips["rotated"])
    info = probe(source)
    assert (info.width, info.height, info.rotation) == (H, W, 270)
    got = list(read_frames(source, [0, 13], decoder=decoder, info=info))
    assert [frame.shape for _, frame in got] == [(W, H, 3)] * 2
    # Shown a quarter turn counter-clockwise: turning it back gives the index frame.
    assert [read_index(np.rot90(frame, -1)) for _, frame in got] == [0, 13]


@pytest.mark.parametrize("decoder", DECODERS)
def test_indices_past_the_end_are_not_yielded(clips, decoder: str) -> None:
    got = read_frames(source_of(clips["webm"]), [46, 47, 48, 500], decoder=decoder)
    assert [(t, read_index(f)) for t, f in got] == [(46, 46), (47, 47)]


def test_frame_folder(tmp_path: Path) -> None:
    for t in range(12):
        cv2.imwrite(str(tmp_path / f"f{t}.png"), index_frame(t, H, W))
    (source,) = find_sources([tmp_path])
    got = list(read_frames(source, [11, 2, 10, 15]))
    assert [(t, read_index(f)) for t, f in got] == [(2, 2), (10, 10), (11, 11)]
    assert np.array_equal(got[0][1], index_frame(2, H, W))  # PNG is lossless


def test_frame_folder_gives_rgb(tmp_path: Path) -> None:
    red_in_bgr = np.zeros((H, W, 3), np.uint8)
    red_in_bgr[..., 2] = 255
    cv2.imwrite(str(tmp_path / "0.png"), red_in_bgr)
    (source,) = find_sources([tmp_path])
    ((_, frame),) = read_frames(source, [0])
    assert frame[0, 0].tolist() == [255, 0, 0]


@pytest.fixture
def odd_folder(tmp_path: Path) -> Path:
    """12 index frames; 4.png is not an image, 7.png is 2 px taller than the others."""
    for t in range(12):
        cv2.imwrite(str(tmp_path / f"{t}.png"), index_frame(t, H + 2 * (t == 7), W))
    (tmp_path / "4.png").write_bytes(b"\x89PNG broken")
    return tmp_path


def test_read_frames_stops_at_a_broken_or_odd_image(odd_folder: Path) -> None:
    (source,) = find_sources([odd_folder])
    with pytest.raises(DecodeError) as error:
        list(read_frames(source, [0, 4]))
    assert_names(error, odd_folder / "4.png", "cannot read the image")
    with pytest.raises(DecodeError) as error:
        list(read_frames(source, [0, 7]))
    assert_names(error, odd_folder / "7.png", "frame 7 is 80x66, the source is 80x64")


def test_a_bad_frame_drops_only_the_pairs_using_it(odd_folder: Path) -> None:
    (source,) = find_sources([odd_folder])
    config = PairConfig(gap=3, stride=1, short_side=None, min_side=32)
    items = list(iter_pairs(source, config))
    dropped = {(d.t0, d.t1): d.reason for d in items if isinstance(d, Dropped)}
    assert dropped == {
        (1, 4): f"{odd_folder / '4.png'}: cannot read the image",
        (4, 7): f"{odd_folder / '4.png'}: cannot read the image",
        (7, 10): f"{odd_folder / '7.png'}: frame 7 is 80x66, the source is 80x64",
    }
    pairs = [(p.t0, p.t1) for p in items if isinstance(p, FramePair)]
    assert pairs == [(t, t + 3) for t in range(9) if t not in (1, 4, 7)]
    assert all(
        (read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1)
        for p in items
        if isinstance(p, FramePair)
    )


def damage(path: Path, flip: bool = False, keep: float = 1.0) -> None:
    """Flip bytes in the middle of a JPEG's entropy-coded data, or keep only its first part."""
    data = bytearray(path.read_bytes())
    if flip:
        scan = data.index(b"\xff\xda") + 20
        for at in range(scan + (len(data) - scan) // 3, len(data) - 10, 7):
            data[at] ^= 0x5A
    path.write_bytes(bytes(data[: int(len(data) * keep)]))


def test_damaged_jpegs_drop_their_pairs(tmp_path: Path) -> None:
    for t in range(8):
        cv2.imwrite(str(tmp_path / f"{t}.jpg"), index_frame(t, H, W))
    damage(tmp_path / "2.jpg", flip=True)
    damage(tmp_path / "5.jpg", keep=0.8)  # no end-of-image marker
    (source,) = find_sources([tmp_path])
    items = list(iter_pairs(source, PairConfig(gap=1, stride=1, short_side=None, min_side=32)))
    dropped = {(d.t0, d.t1): d.reason for d in items if isinstance(d, Dropped)}
    corrupt = f"{tmp_path / '2.jpg'}: damaged JPEG: Corrupt JPEG data"
    truncated = f"{tmp_path / '5.jpg'}: damaged JPEG: Premature end of JPEG file"
    assert sorted(dropped) == [(1, 2), (2, 3), (4, 5), (5, 6)]
    assert all(dropped[pair].startswith(corrupt) for pair in [(1, 2), (2, 3)]), dropped
    assert dropped[(4, 5)] == dropped[(5, 6)] == truncated
    pairs = [p for p in items if isinstance(p, FramePair)]
    assert [(p.t0, p.t1) for p in pairs] == [(0, 1), (3, 4), (6, 7)]
    assert all((read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1) for p in pairs)


def test_bad_arguments(clips) -> None:
    source = source_of(clips["mp4"])
    with pytest.raises(ValueError, match="unknown decoder 'pyav'"):
        list(read_frames(source, [0], decoder="pyav"))
    with pytest.raises(ValueError, match="must be >= 0"):
        list(read_frames(source, [-1, 2]))
    assert list(read_frames(source, [])) == []


# Timeouts and clean-up ---------------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    """A "video" that never delivers a byte: opening it blocks until a writer comes."""
    path = tmp_path / "stuck.mp4"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("decoder", [*DECODERS, "auto"])
def test_a_hanging_decoder_is_killed(fifo: Path, decoder: str) -> None:
    before = children()
    start = time.monotonic()
    with pytest.raises(DecodeTimeout) as error:
        list(read_frames(source_of(fifo), [0], decoder=decoder, timeout=1, info=VideoInfo(W, H, 9)))
    elapsed = time.monotonic() - start
    # A timeout is final: "auto" does not go on to try ffmpeg for another second.
    expected = "ffmpeg" if decoder == "ffmpeg" else "decord"
    assert_names(error, fifo, f"{expected} decoded no frame for 1 s")
    assert elapsed < 10, "the decoder was not abandoned"
    assert not children() - before


def test_a_hanging_probe_is_killed(fifo: Path) -> None:
    before = children()
    with pytest.raises(DecodeTimeout) as error:
        probe(source_of(fifo), timeout=1)
    assert_names(error, fifo, "ffmpeg -i gave no answer in 1 s")
    assert not children() - before


def test_a_stream_that_stalls_midway_times_out(clips, fifo: Path) -> None:
    data = clips["webm"].read_bytes()
    release = threading.Event()

    def feed() -> None:
        # Half the file, then silence with the pipe held open, like a stalled network read:
        # ffmpeg decodes what it has (each frame a sign of life), then waits for ever.
        with open(fifo, "wb") as pipe:
            pipe.write(data[: len(data) // 2])
            pipe.flush()
            release.wait(30)

    before = children()
    feeder = threading.Thread(target=feed)
    feeder.start()
    got = []
    try:
        with pytest.raises(DecodeTimeout, match="ffmpeg decoded no frame for 1 s"):
            for t, frame in read_frames(
                source_of(fifo), [0, 1, 40], decoder="ffmpeg", timeout=1, info=probe_info()
            ):
                got.append((t, read_index(frame)))
    finally:
        release.set()
        feeder.join()
    # Frames already decoded may still sit in ffmpeg's queues when it stalls.
    assert got in ([], [(0, 0)], [(0, 0), (1, 1)])
    assert not children() - before


def test_one_decord_server_answers_request_after_request(clips, fifo: Path, monkeypatch) -> None:
    decoders.close_decord_servers()
    source = source_of(clips["mp4"])
    for _ in range(3):
        got = list(read_frames(source, STRIDED, decoder="decord", info=probe_info()))
        assert [t for t, _ in got] == [read_index(f) for _, f in got] == STRIDED
    (server,) = idle_servers()
    assert decoders.decord_frame_count(clips["mp4"]) == NUM_FRAMES
    assert idle_servers() == {server}
    # A hang kills it; the next request starts another, which answers as the first did.
    with pytest.raises(DecodeTimeout):
        list(read_frames(source_of(fifo), [0], decoder="decord", timeout=1, info=probe_info()))
    assert not idle_servers() and not alive(server)
    assert [t for t, _ in read_frames(source, [5], decoder="decord", info=probe_info())] == [5]
    (second,) = idle_servers()
    assert second != server
    # One that dies while idle is closed and replaced. (Waited for through its Popen: a
    # killed process with threads shows as a zombie before it can be waited for.)
    ((idle, _),) = decoders._SERVERS._idle
    idle.process.send_signal(signal.SIGKILL)
    idle.process.wait()
    assert decoders.decord_frame_count(clips["mp4"]) == NUM_FRAMES
    (third,) = idle_servers()
    assert third != second and second not in children()
    # A server is replaced after _SERVER_REQUESTS requests.
    monkeypatch.setattr(decoders, "_SERVER_REQUESTS", 2)
    decoders.decord_frame_count(clips["mp4"])
    assert not idle_servers() and not alive(third)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("decoder", DECODERS)
def test_stopping_early_kills_the_decoder(clips, decoder: str) -> None:
    before = children()
    frames = read_frames(source_of(clips["mp4"]), DENSE, decoder=decoder)
    assert next(frames)[0] == 0
    assert children() - before  # the decoder is running
    frames.close()
    assert not children() - before


# Broken files ------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", [*DECODERS, "auto"])
def test_random_bytes(tmp_path: Path, decoder: str) -> None:
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(1).bytes(6000))
    with pytest.raises(DecodeError) as error:
        list(read_frames(source_of(path), [0, 1], decoder=decoder, info=probe_info()))
    assert_names(error, path, "decord" if decoder == "decord" else "ffmpeg decoded no frame")
    if decoder == "auto":
        assert "after decord failed" in str(error.value)


@pytest.fixture
def half_mp4(clips, tmp_path: Path) -> Path:
    """The first half of an mp4 whose index comes first: it promises more than it holds."""
    data = clips["faststart"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("decoder", [*DECODERS, "auto"])
def test_truncated_video_yields_a_prefix_or_fails(half_mp4: Path, decoder: str) -> None:
    try:
        got = [
            (t, read_index(f)) for t, f in read_frames(source_of(half_mp4), DENSE, decoder=decoder)
        ]
    except DecodeError as error:
        assert decoder == "decord", "ffmpeg decodes what there is"
        assert str(half_mp4) in str(error) and "decord: " in str(error)
        return
    assert 0 < len(got) < NUM_FRAMES
    assert got == [(t, t) for t in range(len(got))]


def test_truncated_video_drops_the_missing_pairs(half_mp4: Path) -> None:
    source = source_of(half_mp4)
    info = probe(source)
    planned = pair_indices(info.num_frames, 3, 10)
    items = list(iter_pairs(source, PairConfig(short_side=None), info=info))
    pairs = [i for i in items if isinstance(i, FramePair)]
    dropped = [i for i in items if isinstance(i, Dropped)]
    assert pairs and dropped
    assert [(p.t0, p.t1) for p in pairs] + [(d.t0, d.t1) for d in dropped] == planned
    assert all(read_index(p.frame0) == p.t0 and read_index(p.frame1) == p.t1 for p in pairs)
    for d in dropped:
        assert d.stage == "decode" and d.source_id == "half.mp4"
        assert re.fullmatch(
            rf"{half_mp4}: frame ({d.t0}|{d.t1}) missing: the video ended before it "
            rf"\(last frame read: \d+, {info.num_frames} counted by the probe\)",
            d.reason,
        ), d.reason


def test_a_pair_never_mixes_frames_of_two_decoders(clips, monkeypatch) -> None:
    # A stand-in for decord that fails after frame 20, its frames recognisably not ffmpeg's.
    def failing_decord(path, indices, timeout, size):
        for index in indices:
            if index > 20:
                raise DecodeError(path, "decord: simulated failure")
            yield index, np.full((*size, 3), 7, np.uint8)

    monkeypatch.setitem(decoders.READERS, "decord", failing_decord)
    config = PairConfig(gap=3, stride=10, short_side=None, decoder="auto")
    items = list(iter_pairs(source_of(clips["mp4"]), config, info=probe_info()))
    assert all(isinstance(p, FramePair) for p in items)
    assert [(p.t0, p.t1) for p in items] == pair_indices(NUM_FRAMES, 3, 10)
    # (20, 23) had its first frame from decord when decord failed: ffmpeg re-read it whole.
    fake = [(p.t0, p.t1) for p in items if (p.frame0 == 7).all() and (p.frame1 == 7).all()]
    assert fake == [(0, 3), (10, 13)]
    for p in items[2:]:
        assert (read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1)


def test_a_bad_video_frame_drops_only_its_pairs(clips, monkeypatch) -> None:
    # A decoder that gives one frame of another size, then goes on.
    def odd_decord(path, indices, timeout, size):
        for index, frame in decoders._read_ffmpeg(path, indices, timeout, size):
            yield index, frame[:-2] if index == 13 else frame

    monkeypatch.setitem(decoders.READERS, "decord", odd_decord)
    config = PairConfig(gap=3, stride=10, short_side=None, decoder="decord")
    items = list(iter_pairs(source_of(clips["mp4"]), config, info=probe_info()))
    assert [(x.t0, x.t1, type(x).__name__) for x in items] == [
        (0, 3, "FramePair"),
        (10, 13, "Dropped"),
        (20, 23, "FramePair"),
        (30, 33, "FramePair"),
        (40, 43, "FramePair"),
    ]
    assert items[1].reason == f"{clips['mp4']}: frame 13 is 80x62, the source is 80x64"


def test_moov_less_half_mp4_is_a_decode_error(clips, tmp_path: Path) -> None:
    data = clips["mp4"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DecodeError) as error:
        list(iter_pairs(source_of(path), PairConfig()))
    assert_names(error, path, "moov atom not found")


def test_text_file_with_a_video_suffix(tmp_path: Path) -> None:
    path = tmp_path / "x.mp4"
    path.write_text("this is not a video\n")
    with pytest.raises(DecodeError) as error:
        list(iter_pairs(source_of(path), PairConfig()))
    assert_names(error, path, "not a readable video")


# Sources that cannot give pairs -------------------------------------------------------------------


def test_video_shorter_than_the_gap(tmp_path: Path) -> None:
    path = write_index_video(tmp_path / "short.mp4", 3, height=H, width=W)
    with pytest.raises(SourceError) as error:
        list(iter_pairs(source_of(path), PairConfig(gap=3, min_side=32)))
    assert_names(error, path, "3 frames, fewer than gap + 1 = 4")


def test_one_pixel_video(tmp_path: Path) -> None:
    path = write_video(tmp_path / "dot.mp4", [np.full((1, 1, 3), 200, np.uint8)] * 5)
    with pytest.raises(SourceError) as error:
        list(iter_pairs(source_of(path), PairConfig()))
    assert_names(error, path, "short side 1 px (1x1) is under min_side 64")


def test_video_under_min_side(clips) -> None:
    with pytest.raises(SourceError) as error:
        list(iter_pairs(source_of(clips["mp4"]), PairConfig(min_side=65)))
    assert_names(error, clips["mp4"], "short side 64 px (80x64) is under min_side 65")


def test_missing_video(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as error:
        list(iter_pairs(source_of(tmp_path / "gone.mkv"), PairConfig()))
    assert_names(error, tmp_path / "gone.mkv", "no such file or directory")


# Pairs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("decoder", ["auto", "ffmpeg"])
def test_iter_pairs(clips, decoder: str) -> None:
    config = PairConfig(gap=3, stride=10, short_side=32, decoder=decoder)
    items = list(iter_pairs(source_of(clips["mp4"]), config))
    assert all(isinstance(p, FramePair) for p in items)
    assert [(p.t0, p.t1) for p in items] == [(0, 3), (10, 13), (20, 23), (30, 33), (40, 43)]
    for p in items:
        assert p.frame0.shape == (32, 40, 3) and p.scale == (0.5, 0.5) and p.crop is None
        assert (read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1)
        assert p.sample_id == f"index.mp4#{p.t0:06d}-{p.t1:06d}"


def test_iter_pairs_gap_longer_than_stride_and_max_pairs(clips) -> None:
    config = PairConfig(gap=7, stride=2, max_pairs_per_video=4, short_side=None)
    items = list(iter_pairs(source_of(clips["mp4"]), config))
    assert [(p.t0, p.t1) for p in items] == pair_indices(NUM_FRAMES, 7, 2, 4)
    assert [(p.t0, p.t1) for p in items] == [(0, 7), (14, 21), (26, 33), (40, 47)]
    assert all((read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1) for p in items)


def test_iter_pairs_crops_both_frames_then_resizes(clips) -> None:
    seen = []

    def crop(frame0: np.ndarray, frame1: np.ndarray) -> tuple[int, int, int, int]:
        seen.append((frame0.shape, frame1.shape))
        return (8, 4, 72, 60)  # 64 x 56

    config = PairConfig(stride=20, short_side=28, min_side=32)
    items = list(iter_pairs(source_of(clips["mp4"]), config, crop=crop))
    assert seen == [((H, W, 3), (H, W, 3))] * len(items) and len(items) == 3
    for p in items:
        assert p.crop == (8, 4, 72, 60)
        assert p.frame0.shape == p.frame1.shape == (28, 32, 3)
        assert p.scale == (32 / 64, 28 / 56)

    with pytest.raises(ValueError, match=r"crop box \(0, 0, 81, 64\) does not fit a 80x64 frame"):
        list(iter_pairs(source_of(clips["mp4"]), config, crop=lambda a, b: (0, 0, 81, 64)))


def test_pair_config_is_checked() -> None:
    for bad in (
        {"gap": 0},
        {"stride": 0},
        {"max_pairs_per_video": 0},
        {"short_side": 0},
        {"min_side": 0},
        {"timeout": 0},
        {"decoder": "opencv"},
    ):
        with pytest.raises(ValueError, match=next(iter(bad))):
            PairConfig(**bad)


# pair_indices -------------------------------------------------------------------------------------


def test_pair_indices_examples() -> None:
    assert pair_indices(20, 3, 10) == [(0, 3), (10, 13)]
    assert pair_indices(14, 3, 10) == [(0, 3), (10, 13)]
    assert pair_indices(13, 3, 10) == [(0, 3)]
    assert pair_indices(3, 3, 10) == []
    assert pair_indices(0, 3, 10) == []
    assert pair_indices(1000, 3, 10, max_pairs=4) == [(0, 3), (330, 333), (660, 663), (990, 993)]
    with pytest.raises(ValueError, match="gap"):
        pair_indices(10, 0, 1)


@settings(max_examples=200, deadline=None)
@given(
    num_frames=st.integers(0, 3000),
    gap=st.integers(1, 50),
    stride=st.integers(1, 50),
    max_pairs=st.none() | st.integers(1, 200),
)
def test_pair_indices_properties(num_frames: int, gap: int, stride: int, max_pairs) -> None:
    pairs = pair_indices(num_frames, gap, stride, max_pairs)
    candidates = list(range(0, max(num_frames - gap, 0), stride))
    starts = [t0 for t0, _ in pairs]
    assert all(t1 == t0 + gap and t1 < num_frames and t0 % stride == 0 for t0, t1 in pairs)
    assert starts == sorted(set(starts))
    if max_pairs is None or len(candidates) <= max_pairs:
        assert starts == candidates
        return
    assert len(pairs) == max_pairs
    assert set(starts) <= set(candidates)
    assert starts[0] == candidates[0]
    if max_pairs > 1:
        assert starts[-1] == candidates[-1]
        # Evenly spread: steps between kept candidates differ by at most one.
        steps = np.diff([t // stride for t in starts])
        assert steps.max() - steps.min() <= 1


def select_eval(expression: str, n: int) -> bool:
    """What ffmpeg's ``select`` makes of the expression for frame number ``n``."""
    functions = {
        "if": lambda c, a, b: a if c else b,
        "lt": lambda a, b: a < b,
        "eq": lambda a, b: a == b,
        "between": lambda x, a, b: a <= x <= b,
    }
    python = re.sub(r"\bif\(", "if_(", expression)
    return bool(eval(python, {"if_": functions["if"], **functions, "n": n}))


def nesting(expression: str) -> int:
    depth = deepest = 0
    for char in expression:
        depth += {"(": 1, ")": -1}.get(char, 0)
        deepest = max(deepest, depth)
    return deepest


@settings(max_examples=100, deadline=None)
@given(st.sets(st.integers(0, 300), min_size=1))
def test_select_expression_matches_exactly_the_indices(indices: set[int]) -> None:
    expression = _select_expression(sorted(indices))
    assert {n for n in range(302) if select_eval(expression, n)} == indices
    # A balanced tree over the runs: nesting grows with the log of the item, not the item.
    runs = sum(1 for i in indices if i - 1 not in indices)
    assert nesting(expression) <= np.ceil(np.log2(runs)) + 2


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4,003 index frames: 1,000 pairs (t, t + 3) every 4 frames."""
    return write_index_video(tmp_path_factory.mktemp("long") / "long.mp4", 4003, 24, 24)


def test_ffmpeg_decodes_an_item_of_a_thousand_pairs(long_clip: Path) -> None:
    # The old select expression (one term a run) failed to parse beyond 100 runs: 50 pairs.
    config = PairConfig(gap=3, stride=4, short_side=None, min_side=24, decoder="ffmpeg")
    info = VideoInfo(24, 24, 4003)
    items = list(iter_pairs(source_of(long_clip), config, info=info))
    assert [(p.t0, p.t1) for p in items] == [(t, t + 3) for t in range(0, 4000, 4)]
    assert all((read_index(p.frame0), read_index(p.frame1)) == (p.t0, p.t1) for p in items)


def test_failure_reasons_are_short() -> None:
    quoted = "[Parsed_select_0 @ 0x5f] Error while parsing expression '" + "eq(n,1)+" * 5000
    reason = ffmpeg_complaint([quoted, "[in#0 @ 0x6a] " + "x" * 400, "[out @ 0x7b] y"])
    assert len(reason) <= MAX_REASON
    assert reason.startswith("Error while parsing expression 'eq(n,1)+")
    assert reason.endswith("; y")
    assert (
        len(_decord_reason(RuntimeError("[12:00:00] src/video.cc:1: " + "z" * 9000))) <= MAX_REASON
    )


# resize_short_side -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "short_side", "expected"),
    [
        ((480, 640), 416, (416, 555)),
        ((640, 480), 416, (555, 416)),
        ((100, 300), 416, (416, 1248)),
        ((416, 500), 416, (416, 500)),
        ((1, 1), 3, (3, 3)),
    ],
)
def test_resize_short_side(shape, short_side: int, expected) -> None:
    image = np.random.default_rng(0).integers(0, 256, (*shape, 3), dtype=np.uint8)
    resized, (sx, sy) = resize_short_side(image, short_side)
    assert resized.shape == (*expected, 3) and resized.dtype == np.uint8
    assert (sx, sy) == (expected[1] / shape[1], expected[0] / shape[0])
    if expected == shape:
        assert resized is image


def test_resize_short_side_shrinks_by_averaging() -> None:
    stripes = np.zeros((64, 64, 3), np.uint8)
    stripes[:, ::2] = 255
    resized, _ = resize_short_side(stripes, 32)
    # INTER_AREA averages each pair of columns to grey; nearest or linear would not.
    assert np.all(np.abs(resized.astype(int) - 128) <= 1)
