"""Flow colours, legend, guidance arrows, panels and PNG files."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from cmpdata.records import Guidance
from cmpdata.viz import (
    color_wheel_legend,
    draw_guidance,
    flow_figure,
    flow_to_color,
    panel,
    save_png,
)


def one_vector(u: float, v: float, max_magnitude: float = 1.0) -> np.ndarray:
    """The colour of a single flow vector (u, v) as an int array (R, G, B)."""
    flow = np.array([[[u, v]]], np.float32)
    return flow_to_color(flow, max_magnitude)[0, 0].astype(int)


# Expected colours worked out by hand from the wheel's definition (segments RY 15, YG 6,
# GC 4, CB 11, BM 13, MR 6; hue = atan2(-v, -u) mapped onto indices 0..54).
@pytest.mark.parametrize(
    ("u", "v", "expected"),
    [
        (1, 0, (255, 0, 0)),  # +x: index 0, pure red
        (0, 1, (255, 229, 0)),  # down: index 13.5, between RY colours 13 and 14
        (-1, 0, (0, 209, 255)),  # left: index 27, CB colour 2
        (0, -1, (88, 0, 255)),  # up: index 40.5, between BM colours 4 and 5
    ],
)
def test_directions_follow_the_wheel(u, v, expected):
    np.testing.assert_allclose(one_vector(u, v), expected, atol=1)


def test_directions_are_distinct():
    colours = {tuple(one_vector(u, v)) for u, v in ((1, 0), (0, 1), (-1, 0), (0, -1))}
    assert len(colours) == 4


def test_magnitude_sets_saturation_and_overflow_is_dimmed():
    np.testing.assert_allclose(one_vector(0.5, 0), (255, 127, 127), atol=1)
    np.testing.assert_allclose(one_vector(2.0, 0), (191, 0, 0), atol=1)


def test_zero_flow_is_white_and_shape_dtype():
    colour = flow_to_color(np.zeros((5, 7, 2), np.float32))
    assert colour.dtype == np.uint8
    assert colour.shape == (5, 7, 3)
    assert (colour == 255).all()


def test_default_maximum_is_the_largest_vector():
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 0] = (4.0, 0.0)
    flow[1, 1] = (2.0, 0.0)
    colour = flow_to_color(flow)
    np.testing.assert_array_equal(colour[0, 0], (255, 0, 0))
    np.testing.assert_allclose(colour[1, 1], (255, 127, 127), atol=1)


def test_non_finite_flow_is_black_and_input_untouched():
    flow = np.zeros((2, 2, 2), np.float32)
    flow[0, 1] = (np.nan, 1.0)
    flow[1, 0] = (3.0, 0.0)
    before = flow.copy()
    colour = flow_to_color(flow)
    np.testing.assert_array_equal(colour[0, 1], (0, 0, 0))
    np.testing.assert_array_equal(colour[1, 0], (255, 0, 0))
    np.testing.assert_array_equal(flow, before)


def test_flow_to_color_rejects_bad_input():
    with pytest.raises(ValueError, match="float32"):
        flow_to_color(np.zeros((4, 4, 2), np.float64))
    with pytest.raises(ValueError, match="max_magnitude"):
        flow_to_color(np.zeros((4, 4, 2), np.float32), max_magnitude=0.0)


# ---- legend --------------------------------------------------------------------------------


def test_legend_shape_and_colours():
    legend = color_wheel_legend(64, max_magnitude=12.3)
    assert legend.dtype == np.uint8
    assert legend.shape[1] == 64
    assert legend.shape[0] > 64
    assert (legend[32, 32] >= 240).all()  # next to the centre: almost no flow, white
    r, g, b = legend[32, 60].astype(int)  # right of centre: +x flow, red
    assert r > 200
    assert g < 80
    assert b < 80
    assert (legend[0, 0] == 255).all()  # outside the disc


def test_legend_writes_the_scale():
    low = color_wheel_legend(64, max_magnitude=1.5)
    high = color_wheel_legend(64, max_magnitude=45.0)
    np.testing.assert_array_equal(low[:64], high[:64])
    assert (low[64:] != high[64:]).any()
    assert (low[64:] < 128).any()  # dark text on the strip


# ---- guidance arrows -----------------------------------------------------------------------


def guidance(points, vectors) -> Guidance:
    return Guidance(np.array(points, np.float32), np.array(vectors, np.float32))


def test_arrow_changes_pixels_along_it_only():
    image = np.full((60, 80, 3), 100, np.uint8)
    before = image.copy()
    drawn = draw_guidance(image, guidance([[20, 30]], [[30, 0]]))
    np.testing.assert_array_equal(image, before)
    changed = (drawn != image).any(axis=2)
    assert changed[30, 20:50].all()  # the whole shaft, from the point to the tip
    assert not changed[:20].any()  # far above
    assert not changed[41:].any()  # far below
    assert not changed[:, 56:].any()  # beyond the tip
    assert not changed[:, :14].any()  # behind the point


def test_zero_vector_still_shows_a_dot():
    image = np.full((40, 40, 3), 100, np.uint8)
    drawn = draw_guidance(image, guidance([[20, 20]], [[0, 0]]))
    changed = (drawn != image).any(axis=2)
    assert changed[20, 20]
    assert changed.sum() < 60


def test_scale_lengthens_the_arrow():
    image = np.full((60, 100, 3), 100, np.uint8)
    g = guidance([[10, 30]], [[20, 0]])
    assert (draw_guidance(image, g)[30, 45] == 100).all()
    assert (draw_guidance(image, g, scale=2.0)[30, 45] != 100).any()


@pytest.mark.parametrize("level", [0, 255])
def test_arrows_have_contrast_on_dark_and_bright_images(level):
    image = np.full((40, 60, 3), level, np.uint8)
    drawn = draw_guidance(image, guidance([[10, 20]], [[30, 5]]))
    grey = drawn.astype(int).sum(axis=2) / 3
    assert (np.abs(grey - level) > 150).any()


def test_draw_guidance_rejects_bad_scale():
    with pytest.raises(ValueError, match="scale"):
        draw_guidance(np.zeros((8, 8, 3), np.uint8), guidance([[1, 1]], [[1, 1]]), scale=0)


# ---- panels and files ------------------------------------------------------------------------


def test_panel_resizes_to_the_tallest_and_adds_captions():
    small = np.full((40, 60, 3), 50, np.uint8)
    tall = np.full((80, 50, 3), 200, np.uint8)
    out = panel([small, tall], ["small", "tall"])
    assert out.dtype == np.uint8
    caption = out.shape[0] - 80
    assert caption > 0
    assert 0 < out.shape[1] - (120 + 50) < 10  # the resized widths and a narrow gap
    np.testing.assert_array_equal(out[caption:, :120], 50)
    np.testing.assert_array_equal(out[caption:, -50:], 200)
    assert (out[:caption, :120] < 128).any()  # caption text


def test_panel_rejects_mismatched_captions():
    with pytest.raises(ValueError, match="captions"):
        panel([np.zeros((4, 4, 3), np.uint8)], ["a", "b"])


def test_save_png_round_trip_keeps_rgb_order(tmp_path):
    image = np.zeros((6, 9, 3), np.uint8)
    image[..., 0] = 255  # pure red
    image[2, 3] = (10, 20, 30)
    path = save_png(tmp_path / "nested" / "deeper" / "red.png", image)
    assert path.exists()
    loaded = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(loaded, image)


def test_save_png_into_impossible_path_names_it(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    target = blocker / "sub" / "x.png"
    with pytest.raises(OSError, match=re.escape(str(target))):
        save_png(target, np.zeros((4, 4, 3), np.uint8))


def test_flow_figure_marks_invalid_flow_and_title():
    frame = np.full((48, 64, 3), 120, np.uint8)
    flow = np.zeros((48, 64, 2), np.float32)
    flow[..., 0] = 2.0
    valid = np.ones((48, 64), bool)
    valid[:, 40:] = False
    g = guidance([[10, 10], [30, 30]], [[2, 0], [0, 0]])
    plain = flow_figure(frame, flow, g)
    hatched = flow_figure(frame, flow, g, valid=valid)
    titled = flow_figure(frame, flow, g, valid=valid, title="clip.mp4#000010-000013")
    assert plain.shape == hatched.shape
    assert plain.shape[0] > 48
    assert titled.shape[0] > plain.shape[0]
    assert titled.shape[1] == plain.shape[1]
    caption = plain.shape[0] - 48
    differs = (plain[caption:] != hatched[caption:]).any(axis=2)
    columns = np.flatnonzero(differs.any(axis=0))
    assert len(columns) == 64 - 40  # only the invalid columns of the flow picture
    assert np.array_equal(columns, np.arange(columns[0], columns[0] + 24))
    assert differs[:, columns].mean() > 0.9
