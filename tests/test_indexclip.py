"""Index frames: they read back as their index, survive coding and resizing, reject turns."""

from __future__ import annotations

import subprocess

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.io.media import ffmpeg_exe
from cmpdata.synth.indexclip import MAX_INDEX, index_frame, read_index, write_index_video


@settings(max_examples=60, deadline=None)
@given(
    index=st.integers(0, MAX_INDEX),
    height=st.integers(24, 200),
    width=st.integers(24, 200),
)
def test_round_trip_any_index_and_size(index: int, height: int, width: int) -> None:
    frame = index_frame(index, height, width)
    assert frame.dtype == np.uint8 and frame.shape == (height, width, 3)
    assert read_index(frame) == index


@pytest.mark.parametrize("index", [0, 1, 0x5A5A, MAX_INDEX])
@pytest.mark.parametrize(
    "turn",
    [
        lambda f: np.rot90(f, 1),
        lambda f: np.rot90(f, 2),
        lambda f: np.rot90(f, 3),
        np.fliplr,
        np.flipud,
        lambda f: f.transpose(1, 0, 2),
        lambda f: np.rot90(f, 1)[::-1],
    ],
    ids=["rot90", "rot180", "rot270", "fliplr", "flipud", "transpose", "antitranspose"],
)
def test_turned_or_flipped_frames_are_rejected(index: int, turn) -> None:
    frame = np.ascontiguousarray(turn(index_frame(index, 96, 96)))
    with pytest.raises(ValueError, match="marker"):
        read_index(frame)


def test_survives_resizing_and_blur() -> None:
    frame = index_frame(12345, 128, 160)
    small = cv2.resize(frame, (60, 48), interpolation=cv2.INTER_AREA)
    assert read_index(small) == 12345
    assert read_index(cv2.GaussianBlur(frame, (5, 5), 2.0)) == 12345


def test_unrelated_frames_are_rejected() -> None:
    with pytest.raises(ValueError, match="neither black nor white"):
        read_index(np.full((64, 80, 3), 128, np.uint8))
    with pytest.raises(ValueError, match="marker"):
        read_index(np.zeros((64, 80, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 24x24"):
        read_index(np.zeros((20, 80, 3), np.uint8))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="outside"):
        index_frame(MAX_INDEX + 1)
    with pytest.raises(ValueError, match="outside"):
        index_frame(-1)
    with pytest.raises(ValueError, match="got 30x16"):
        index_frame(0, height=16, width=30)
    with pytest.raises(ValueError, match="num_frames"):
        write_index_video("unused.mp4", 0)


def test_write_index_video_survives_lossy_coding(tmp_path) -> None:
    path = write_index_video(tmp_path / "clip.webm", 6, height=64, width=80)
    assert path == tmp_path / "clip.webm" and path.stat().st_size > 0
    decode = [ffmpeg_exe(), "-loglevel", "error", "-i", str(path), "-f", "rawvideo"]
    raw = subprocess.run(
        [*decode, "-pix_fmt", "rgb24", "-"], capture_output=True, check=True
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, 64, 80, 3)
    assert [read_index(f) for f in frames] == list(range(6))
