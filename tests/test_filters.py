"""Pair filters: cuts, static pairs, invalid flow, letterbox borders."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.filters import (
    FilterConfig,
    cut_score,
    detect_letterbox,
    flow_rejection,
    frames_rejection,
    mostly_invalid,
    shot_cut,
    static,
)
from cmpdata.records import FlowSample, FramePair

H, W = 96, 128


def texture(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A textured scene: smooth random colours, fine grain and a few discs."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (h // 16 + 1, w // 16 + 1, 3)).astype(np.float32)
    image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0, 20, image.shape).astype(np.float32)
    for _ in range(4):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        colour = tuple(float(c) for c in rng.uniform(0, 255, 3))
        cv2.circle(image, centre, int(rng.integers(6, 20)), colour, -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def brighter(image: np.ndarray, factor: float) -> np.ndarray:
    return np.clip(image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


def pair_of(frame0: np.ndarray, frame1: np.ndarray) -> FramePair:
    return FramePair("clip.mp4", 10, 13, frame0, frame1)


def shifted_pair(seed: int, dx: int, dy: int) -> tuple[np.ndarray, np.ndarray]:
    """Two views of one larger scene, the second moved by (dx, dy) px."""
    big = texture(seed, H + 32, W + 32)
    return big[16 : 16 + H, 16 : 16 + W], big[16 + dy : 16 + dy + H, 16 + dx : 16 + dx + W]


# ---- shot cuts -----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cut_between_two_scenes_is_dropped(seed):
    frame0, frame1 = texture(seed), texture(seed + 100)
    dropped = frames_rejection(pair_of(frame0, frame1), FilterConfig())
    assert dropped is not None
    assert (dropped.source_id, dropped.t0, dropped.t1) == ("clip.mp4", 10, 13)
    assert dropped.stage == "filter:shot_cut"
    assert f"{cut_score(frame0, frame1):.3f}" in dropped.reason
    assert "0.2" in dropped.reason


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize(
    ("dx", "dy", "gain"),
    [(5, 0, 1.0), (0, -5, 1.0), (8, 6, 1.0), (0, 0, 1.04), (0, 0, 0.96), (5, 3, 1.05)],
)
def test_ordinary_motion_and_lighting_are_kept(seed, dx, dy, gain):
    frame0, frame1 = shifted_pair(seed, dx, dy)
    frame1 = brighter(frame1, gain)
    assert cut_score(frame0, frame1) < FilterConfig().shot_cut_threshold
    assert frames_rejection(pair_of(frame0, frame1), FilterConfig()) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_colour_changes_with_the_same_layout_are_kept(seed):
    frame0 = texture(seed)
    warmer = frame0.astype(np.float32) * np.array([1.15, 1.0, 0.85], np.float32)
    washed_out = frame0.astype(np.float32) * 0.5 + 64
    for frame1 in (warmer, washed_out):
        frame1 = np.clip(frame1, 0, 255).astype(np.uint8)
        assert shot_cut(frame0, frame1, 0.2) is None


def test_moving_object_on_static_background_is_kept():
    frame0 = texture(5)
    frame1 = frame0.copy()
    frame1[20:60, 30:90] = frame0[26:66, 40:100]
    assert shot_cut(frame0, frame1, 0.2) is None


def test_cut_score_is_zero_for_identical_frames():
    frame = texture(7)
    assert cut_score(frame, frame) == pytest.approx(0.0, abs=1e-6)


def test_flat_frames_fall_back_to_colour():
    red = np.zeros((H, W, 3), np.uint8)
    red[..., 0] = 200
    blue = np.zeros((H, W, 3), np.uint8)
    blue[..., 2] = 200
    assert shot_cut(red, red.copy(), 0.2) is None
    assert shot_cut(red, blue, 0.2) is not None


def test_cut_score_rejects_mismatched_frames():
    with pytest.raises(ValueError, match="differ in shape"):
        cut_score(texture(0), texture(0, H, W + 8))


# ---- static pairs --------------------------------------------------------------------------


def flow_with_moving_block(fraction_rows: int, fraction_cols: int) -> np.ndarray:
    flow = np.full((100, 100, 2), 0.05, np.float32)
    flow[:fraction_rows, :fraction_cols] = (3.0, -1.0)
    return flow


def test_almost_static_flow_is_dropped_with_measured_values():
    flow = np.zeros((100, 100, 2), np.float32)
    flow[0, :10] = (2.0, 0.0)  # 10 of 10 000 pixels: 0.1%
    reason = static(flow, 0.5, 0.01)
    assert reason is not None
    assert "0.1%" in reason
    assert "0.5 px" in reason
    assert "minimum 1%" in reason


def test_moving_object_over_ten_percent_is_not_static():
    assert static(flow_with_moving_block(10, 100), 0.5, 0.01) is None
    assert static(flow_with_moving_block(32, 32), 0.5, 0.01) is None


def test_static_counts_only_motion_above_the_threshold():
    flow = np.full((50, 50, 2), 0.3, np.float32)  # 0.42 px everywhere
    assert static(flow, 0.5, 0.01) is not None
    assert static(flow, 0.4, 0.01) is None


# ---- validity ------------------------------------------------------------------------------


def mask(valid_fraction: float) -> np.ndarray:
    valid = np.zeros((100, 100), bool)
    valid[: round(100 * valid_fraction)] = True
    return valid


def test_mostly_invalid_drops_thirty_percent_keeps_ninety():
    reason = mostly_invalid(mask(0.3), 0.5)
    assert reason is not None
    assert "30%" in reason
    assert "50%" in reason
    assert mostly_invalid(mask(0.9), 0.5) is None


def test_no_mask_is_never_mostly_invalid():
    assert mostly_invalid(None, 0.5) is None


def test_mostly_invalid_rejects_non_bool_mask():
    with pytest.raises(ValueError, match="bool"):
        mostly_invalid(np.ones((10, 10), np.uint8), 0.5)


# ---- the records -----------------------------------------------------------------------------


def flow_sample(flow: np.ndarray, valid: np.ndarray | None = None) -> FlowSample:
    h, w = flow.shape[:2]
    frame = np.zeros((h, w, 3), np.uint8)
    return FlowSample(pair_of(frame, frame), flow, valid)


def test_check_flow_names_the_failing_check():
    moving = flow_with_moving_block(50, 100)
    assert flow_rejection(flow_sample(moving, mask(0.9)), FilterConfig()) is None

    still = np.zeros((100, 100, 2), np.float32)
    dropped = flow_rejection(flow_sample(still), FilterConfig())
    assert dropped is not None
    assert dropped.stage == "filter:static"
    assert dropped.sample_id == "clip.mp4#000010-000013"

    dropped = flow_rejection(flow_sample(moving, mask(0.3)), FilterConfig())
    assert dropped is not None
    assert dropped.stage == "filter:mostly_invalid"


def test_disabled_thresholds_keep_everything():
    off = FilterConfig(shot_cut_threshold=None, static_motion_px=None, min_valid_fraction=None)
    assert frames_rejection(pair_of(texture(0), texture(100)), off) is None
    still = np.zeros((100, 100, 2), np.float32)
    assert flow_rejection(flow_sample(still, mask(0.1)), off) is None
    assert static(still, 0.5, None) is None
    assert shot_cut(texture(0), texture(100), None) is None


@pytest.mark.parametrize(
    "bad",
    [
        {"shot_cut_threshold": -0.1},
        {"static_motion_px": -1.0},
        {"static_min_moving_fraction": 1.5},
        {"min_valid_fraction": -0.2},
        {"letterbox_threshold": 300},
        {"letterbox_min_keep": 2.0},
    ],
)
def test_config_rejects_out_of_range_values(bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        FilterConfig(**bad)


# ---- letterbox -------------------------------------------------------------------------------


def boxed(box: tuple[int, int, int, int], seed: int = 0, h: int = 120, w: int = 160):
    """Two frames of content inside ``box`` with noisy near-black borders (0..4 grey levels)."""
    rng = np.random.default_rng(seed)
    x0, y0, x1, y1 = box
    frames = []
    for i in range(2):
        frame = rng.integers(0, 5, (h, w, 3), dtype=np.uint8)
        content = texture(seed + i, y1 - y0, x1 - x0)
        frame[y0:y1, x0:x1] = np.maximum(content, 40)
        frames.append(frame)
    return frames


def test_letterbox_bars_top_and_bottom():
    assert detect_letterbox(*boxed((0, 18, 160, 102))) == (0, 18, 160, 102)


def test_pillarbox_bars_left_and_right():
    assert detect_letterbox(*boxed((20, 0, 140, 120))) == (20, 0, 140, 120)


@settings(max_examples=25, deadline=None)
@given(
    top=st.integers(0, 30),
    bottom=st.integers(0, 30),
    left=st.integers(0, 40),
    right=st.integers(0, 40),
)
def test_any_border_sizes_give_the_inner_box(top, bottom, left, right):
    box = (left, top, 160 - right, 120 - bottom)
    assert detect_letterbox(*boxed(box)) == box


def letterbox_reference(frame0, frame1, threshold, min_keep):
    """The rule of detect_letterbox's docstring on every pixel at once."""
    bright = np.maximum(frame0, frame1).max(axis=2) >= threshold
    box = []
    for axis in (0, 1):  # columns (x), then rows (y)
        hits = np.flatnonzero(bright.mean(axis=axis) > 0.01)
        n = bright.shape[1 - axis]
        keep = len(hits) and hits[-1] + 1 - hits[0] >= min_keep * n
        box.append((int(hits[0]), int(hits[-1]) + 1) if keep else (0, n))
    (x0, x1), (y0, y1) = box
    return x0, y0, x1, y1


@settings(max_examples=200, deadline=None)
@given(
    size=st.tuples(st.integers(1, 40), st.integers(1, 40)),
    seed=st.integers(0, 2**32 - 1),
    threshold=st.sampled_from([0, 15, 16, 17, 255]),
    min_keep=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
)
def test_letterbox_looks_from_the_edges_and_finds_what_every_pixel_says(
    size, seed, threshold, min_keep
):
    # Blocks of lines from each edge inwards, stopping at the first content line: the same box
    # as the rule applied to every pixel, on frames with random bars, lines and specks.
    rng = np.random.default_rng(seed)
    h, w = size
    frames = [rng.integers(0, 20, (h, w, 3), dtype=np.uint8) for _ in range(2)]
    for frame in frames:
        frame[: rng.integers(0, h + 1)] //= 4
        frame[rng.integers(0, h + 1) :] = 0
        frame[:, : rng.integers(0, w + 1)] = 0
        frame[rng.integers(0, h), :, rng.integers(0, 3)] = rng.integers(0, 256)
        frame[:, rng.integers(0, w), rng.integers(0, 3)] = rng.integers(0, 256)
    expected = letterbox_reference(*frames, threshold, min_keep)
    assert detect_letterbox(*frames, threshold=threshold, min_keep=min_keep) == expected


def test_stray_bright_specks_in_the_bars_are_tolerated():
    frame0, frame1 = boxed((0, 18, 160, 102))
    frame0[3, 50] = frame0[9, 120] = frame1[110, 7] = 255  # single hot pixels in the bars
    assert detect_letterbox(frame0, frame1) == (0, 18, 160, 102)


def test_dark_content_edges_with_small_bright_objects_are_kept():
    rng = np.random.default_rng(2)
    frames = [rng.integers(0, 8, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    for frame in frames:
        frame[20:26, 0:16] = 200  # a lit window on the first content row (10% of it)
        frame[94:100, 144:160] = 200  # and another on the last
    assert detect_letterbox(*frames) == (0, 20, 160, 100)


def test_dark_but_not_black_frame_is_not_cropped():
    rng = np.random.default_rng(0)
    dark = [rng.integers(18, 40, (120, 160, 3), dtype=np.uint8) for _ in range(2)]
    assert detect_letterbox(*dark) == (0, 0, 160, 120)


def test_night_scene_is_not_cropped_away():
    rng = np.random.default_rng(1)
    frames = []
    for _ in range(2):
        night = rng.integers(0, 10, (120, 160, 3), dtype=np.uint8)
        for x, y in ((70, 55), (85, 62), (95, 58)):  # a few distant lights, far from any edge
            cv2.circle(night, (x, y), 4, (255, 230, 150), -1)
        frames.append(night)
    assert detect_letterbox(*frames) == (0, 0, 160, 120)


def test_all_black_frame_is_not_cropped():
    black = np.zeros((60, 80, 3), np.uint8)
    assert detect_letterbox(black, black) == (0, 0, 80, 60)


def test_letterbox_threshold_is_configurable_through_partial():
    frame0, frame1 = boxed((0, 20, 160, 100))
    frame0[:20] = frame1[:20] = 30  # grey bars: content at 16, border at 64
    frame0[100:] = frame1[100:] = 30
    assert detect_letterbox(frame0, frame1) == (0, 0, 160, 120)
    strict = functools.partial(detect_letterbox, threshold=64)
    assert strict(frame0, frame1) == (0, 20, 160, 100)


def test_config_crop_hook():
    frames = boxed((0, 18, 160, 102))
    assert FilterConfig().crop(*frames) == (0, 18, 160, 102)
    assert FilterConfig(letterbox=False).crop is None
    assert FilterConfig(letterbox_threshold=None).crop is None


def test_letterbox_rejects_mismatched_frames():
    with pytest.raises(ValueError, match="differ in shape"):
        detect_letterbox(np.zeros((10, 10, 3), np.uint8), np.zeros((10, 12, 3), np.uint8))
