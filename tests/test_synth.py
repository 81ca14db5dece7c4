"""Synthetic clips: determinism, exactness of the ground-truth flow, motions, occlusion, files."""

from __future__ import annotations

import dataclasses
import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.errors import SourceError
from cmpdata.synth.clips import (
    SynthConfig,
    SyntheticClip,
    load_config,
    load_ground_truth,
    make_clips,
    write_clip,
)

SMALL = {"height": 64, "width": 80, "num_frames": 10}
# No brightness drift and no motion blur: frames that warp exactly into each other.
STEADY = {"brightness": 0.0, "motion_blur": 0.0}
# A camera that only pans: the background translates uniformly.
PAN = {"camera_rotation": 0.0, "camera_zoom": 0.0}


def clip_of(**overrides: object) -> SyntheticClip:
    return SyntheticClip(SynthConfig(**{**SMALL, **overrides}))


def grid(clip: SyntheticClip) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0 : clip.config.height, 0 : clip.config.width].astype(np.float32)
    return xs, ys


def erode(mask: np.ndarray, radius: int) -> np.ndarray:
    kernel = np.ones((2 * radius + 1, 2 * radius + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderValue=0).astype(bool)


def layer_interiors(layer_map: np.ndarray, radius: int) -> np.ndarray:
    """Pixels at least ``radius`` px away from any change of layer (and from the border)."""
    out = np.zeros(layer_map.shape, bool)
    for k in np.unique(layer_map):
        out |= erode(layer_map == k, radius)
    return out


def warp_back(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """``image`` sampled at p + flow(p) (bilinear), float32."""
    ys, xs = np.mgrid[0 : flow.shape[0], 0 : flow.shape[1]].astype(np.float32)
    return cv2.remap(
        image.astype(np.float32), xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR
    )


def affine_fit(flow: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """Least-squares ``flow = J p + d`` over ``mask``: (J (2, 2), d (2,), max residual px)."""
    ys, xs = np.nonzero(mask)
    design = np.stack([xs, ys, np.ones_like(xs)], axis=1).astype(np.float64)
    target = flow[mask].astype(np.float64)
    sol = np.linalg.lstsq(design, target, rcond=None)[0]
    residual = np.abs(design @ sol - target).max()
    return sol[:2].T, sol[2], float(residual)


# --- config -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"height": 4},
        {"num_frames": 0},
        {"num_objects": -1},
        {"max_speed": -1.0},
        {"max_rotation": float("nan")},
        {"min_object_size": 0.5, "max_object_size": 0.2},
        {"max_object_size": 1.5},
        {"fps": 0.0},
    ],
)
def test_config_rejects_invalid_values(bad: dict) -> None:
    with pytest.raises(ValueError):
        SynthConfig(**bad)


def test_clip_rejects_frames_outside_the_clip_and_non_configs() -> None:
    clip = clip_of()
    for t in (-1, clip.config.num_frames):
        with pytest.raises(ValueError, match="outside the clip"):
            clip.frame(t)
        with pytest.raises(ValueError, match="outside the clip"):
            clip.flow(0, t)
    with pytest.raises(ValueError, match="SynthConfig"):
        SyntheticClip({"height": 64})  # type: ignore[arg-type]


def test_outputs_have_the_documented_types() -> None:
    clip = clip_of(num_objects=5)
    h, w = SMALL["height"], SMALL["width"]
    frame, layer_map = clip.frame(2), clip.layers(2)
    flow, valid = clip.ground_truth(2, 5)
    assert frame.dtype == np.uint8 and frame.shape == (h, w, 3)
    assert layer_map.dtype == np.int32 and layer_map.shape == (h, w)
    assert layer_map.min() >= 0 and layer_map.max() < clip.num_layers == 1 + 5 + 1  # one limb
    assert flow.dtype == np.float32 and flow.shape == (h, w, 2)
    assert valid.dtype == np.bool_ and valid.shape == (h, w)
    assert clip.kinds[0] == "background"
    bodies = [k for k in clip.kinds[1:] if k != "limb"]
    assert sorted(bodies[:3]) == ["rotate", "scale", "translate"] and bodies[3:] == ["mixed"] * 2
    (limb,) = [k for k, kind in enumerate(clip.kinds) if kind == "limb"]
    assert clip.parents[limb] == limb - 1 and clip.kinds[limb - 1] != "limb"
    assert [p for k, p in enumerate(clip.parents) if k != limb] == [-1] * 6


# --- determinism --------------------------------------------------------------------------


def test_same_seed_gives_identical_clips() -> None:
    a, b = clip_of(seed=11), clip_of(seed=11)
    for t in (0, 9):
        np.testing.assert_array_equal(a.frame(t), b.frame(t))
        np.testing.assert_array_equal(a.layers(t), b.layers(t))
    for x, y in zip(a.ground_truth(1, 4), b.ground_truth(1, 4), strict=True):
        np.testing.assert_array_equal(x, y)


def test_different_seeds_give_different_clips() -> None:
    a, b = clip_of(seed=1), clip_of(seed=2)
    assert not np.array_equal(a.frame(0), b.frame(0))
    assert not np.array_equal(a.flow(0, 3), b.flow(0, 3))


# --- exactness ----------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_warping_with_the_flow_reproduces_the_first_frame(seed: int) -> None:
    clip = clip_of(seed=seed, **STEADY)
    for t0, t1 in [(0, 3), (5, 9)]:
        flow, valid = clip.ground_truth(t0, t1)
        frame0 = clip.frame(t0).astype(np.float32)
        frame1 = clip.frame(t1)
        keep = erode(valid, 2) & layer_interiors(clip.layers(t0), 2)
        assert keep.mean() > 0.4
        err = np.abs(warp_back(frame1, flow) - frame0).mean(axis=-1)[keep].mean()
        still = np.abs(frame1.astype(np.float32) - frame0).mean(axis=-1)[keep].mean()
        assert err < 3.0
        assert still > 3 * err


def test_brightness_and_blur_change_the_frames_not_the_geometry() -> None:
    steady, shot = clip_of(seed=8, **STEADY), clip_of(seed=8, brightness=0.5, motion_blur=0.9)
    for t0, t1 in [(0, 3), (4, 9)]:
        for a, b in zip(steady.ground_truth(t0, t1), shot.ground_truth(t0, t1), strict=True):
            np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(steady.layers(t0), shot.layers(t0))
    # The gain drifts linearly over the clip, so the frames' brightness ratio changes with t.
    ratios = [shot.frame(t).mean() / steady.frame(t).mean() for t in (0, 9)]
    assert abs(ratios[1] - ratios[0]) > 0.02
    # Blur: a moving edge is spread out, so the blurred frame differs from the sharp one
    # beyond the gain alone.
    gained = np.clip(steady.frame(5).astype(np.float32) * ratios[0], 0, 255)
    assert np.abs(gained - shot.frame(5)).mean() > 0.5


def test_a_limb_turns_about_its_joint_on_its_body() -> None:
    """The joint moves with the body; the limb's other points move otherwise."""
    for seed in range(4):
        clip = SyntheticClip(SynthConfig(height=96, width=120, num_frames=12, seed=seed))
        (limb,) = [k for k, kind in enumerate(clip.kinds) if kind == "limb"]
        body = clip.parents[limb]
        joint = clip.pose(limb, 0) @ (*clip._motions[limb].pivot, 1.0)
        tip = clip.pose(limb, 0) @ (
            clip._masks[limb - 1].shape[1] - 3.0,
            clip._motions[limb].pivot[1],
            1.0,
        )
        for t1 in (3, 11):
            carry_limb, carry_body = clip.transform(limb, 0, t1), clip.transform(body, 0, t1)
            np.testing.assert_allclose(carry_limb @ joint, carry_body @ joint, atol=1e-6)
            assert np.linalg.norm(carry_limb @ tip - carry_body @ tip) > 0.1


def test_flow_to_the_same_frame_is_zero_and_valid() -> None:
    clip = clip_of(seed=4)
    for t in (0, 7):
        flow, valid = clip.ground_truth(t, t)
        np.testing.assert_allclose(flow, 0.0, atol=1e-4)
        assert valid.all()


def test_flows_compose_along_the_motion() -> None:
    clip = clip_of(seed=3)
    t0, t1, t2 = 1, 4, 8
    f01, v01 = clip.ground_truth(t0, t1)
    composed = f01 + warp_back(clip.flow(t1, t2), f01)
    keep = erode(v01, 2) & layer_interiors(clip.layers(t0), 2)
    assert keep.mean() > 0.4
    np.testing.assert_allclose(composed[keep], clip.flow(t0, t2)[keep], atol=0.02)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31),
    times=st.lists(st.integers(0, 9), min_size=3, max_size=3),
    layer=st.integers(0, 3),
)
def test_layer_transforms_compose(seed: int, times: list[int], layer: int) -> None:
    clip = SyntheticClip(SynthConfig(height=32, width=40, num_frames=10, num_objects=3, seed=seed))
    t0, t1, t2 = times
    np.testing.assert_allclose(
        clip.transform(layer, t1, t2) @ clip.transform(layer, t0, t1),
        clip.transform(layer, t0, t2),
        atol=1e-9,
    )
    np.testing.assert_allclose(clip.transform(layer, t0, t0), np.eye(3), atol=1e-9)


# --- motions ------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_object_shows_its_kind_of_motion(seed: int) -> None:
    clip = SyntheticClip(SynthConfig(height=96, width=120, num_frames=10, seed=seed, **PAN))
    flow, layer_map = clip.flow(0, 3), clip.layers(0)
    for k, kind in enumerate(clip.kinds):
        if kind == "limb":
            continue  # test_a_limb_turns_about_its_joint_on_its_body
        inside = layer_map == k
        assert inside.sum() > 50, f"layer {k} ({kind}) barely visible"
        jac, shift, residual = affine_fit(flow, inside)
        assert residual < 1e-3  # each layer moves rigidly (affinely)
        curl, div = jac[1, 0] - jac[0, 1], np.trace(jac)
        directions = flow[inside] / np.linalg.norm(flow[inside], axis=1, keepdims=True)
        coherence = np.linalg.norm(directions.mean(axis=0))  # 1: all vectors parallel
        if kind in ("background", "translate"):
            np.testing.assert_allclose(jac, 0.0, atol=1e-5)
            assert np.linalg.norm(shift) > 0.5
        elif kind == "rotate":
            assert abs(curl) > 0.05 and abs(div) < 0.05
            assert coherence < 0.995
        elif kind == "scale":
            assert abs(div) > 0.02 and abs(curl) < 1e-5


def test_background_translates_uniformly_only_with_camera_motion() -> None:
    for camera in (True, False):
        clip = clip_of(seed=5, camera_motion=camera, **PAN)
        flow = clip.flow(2, 6)[clip.layers(2) == 0]
        np.testing.assert_allclose(flow - flow[0], 0.0, atol=1e-4)
        assert (np.linalg.norm(flow[0]) > 0.5) == camera


def test_objects_stay_mostly_in_view() -> None:
    for seed in range(6):
        clip = SyntheticClip(
            SynthConfig(
                height=48, width=64, num_frames=30, num_objects=1, seed=seed, camera_motion=False
            )
        )
        visible = [int((clip.layers(t) == 1).sum()) for t in range(30)]
        assert min(visible) > 0.2 * max(visible), (seed, visible)


# --- occlusion ----------------------------------------------------------------------------


def test_points_covered_by_a_layer_above_are_invalid() -> None:
    """Somewhere an object slides over another: those points are invalid, and at their new
    position a higher layer is indeed visible; the points that stay valid land on their own layer.
    """
    found = False
    for seed in range(6):
        clip = clip_of(seed=seed, num_frames=12)
        xs, ys = grid(clip)
        t0, t1 = 0, 11
        flow, valid = clip.ground_truth(t0, t1)
        before, after = clip.layers(t0), clip.layers(t1)
        x1 = np.rint(xs + flow[..., 0]).astype(int)
        y1 = np.rint(ys + flow[..., 1]).astype(int)
        inside = (x1 >= 0) & (x1 < clip.config.width) & (y1 >= 0) & (y1 < clip.config.height)
        landed = np.where(
            inside, after[y1.clip(0, clip.config.height - 1), x1.clip(0, clip.config.width - 1)], -1
        )
        hidden = inside & ~valid
        assert hidden.any()
        # Away from edges, where rounding to the nearest pixel could pick the other layer.
        deep = erode(hidden, 1) & layer_interiors(before, 1)
        assert (landed[deep] > before[deep]).all()
        kept = erode(valid, 1) & layer_interiors(before, 1)
        assert (landed[kept] == before[kept]).all()
        found |= bool((deep & (before > 0)).any())
    assert found, "no object was occluded by another in any clip"


def test_points_leaving_the_frame_are_invalid() -> None:
    clip = clip_of(seed=0)
    xs, ys = grid(clip)
    flow, valid = clip.ground_truth(0, 9)
    x1, y1 = xs + flow[..., 0], ys + flow[..., 1]
    outside = (x1 < 0) | (x1 > clip.config.width - 1) | (y1 < 0) | (y1 > clip.config.height - 1)
    assert outside.any()
    assert not valid[outside].any()


# --- files --------------------------------------------------------------------------------


def test_write_clip_writes_video_frames_and_ground_truth(tmp_path) -> None:
    clip = clip_of(seed=6, num_frames=6)
    files = write_clip(clip, tmp_path / "out", "c", gap=2)
    frames = [clip.frame(t) for t in range(6)]

    assert files.video == tmp_path / "out" / "c.mp4"
    cap = cv2.VideoCapture(str(files.video))
    decoded = []
    while True:
        ok, image = cap.read()
        if not ok:
            break
        decoded.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    cap.release()
    assert len(decoded) == 6
    for t, image in enumerate(decoded):
        assert image.shape == (64, 80, 3)
        errors = [np.abs(image.astype(int) - f).mean() for f in frames]
        assert int(np.argmin(errors)) == t and errors[t] < 6  # crf 12 on photo textures

    assert sorted(p.name for p in files.frames.iterdir()) == [f"{t:05d}.png" for t in range(6)]
    for t in range(6):
        png = cv2.imread(str(files.frames / f"{t:05d}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(cv2.cvtColor(png, cv2.COLOR_BGR2RGB), frames[t])

    pairs, flow, valid = load_ground_truth(files.ground_truth)
    np.testing.assert_array_equal(pairs, [[0, 2], [1, 3], [2, 4], [3, 5]])
    assert flow.dtype == np.float32 and valid.dtype == np.bool_
    for i, (t0, t1) in enumerate(pairs):
        expected_flow, expected_valid = clip.ground_truth(int(t0), int(t1))
        np.testing.assert_array_equal(flow[i], expected_flow)
        np.testing.assert_array_equal(valid[i], expected_valid)

    config, gap = load_config(files.meta)
    assert (config, gap) == (clip.config, 2)
    np.testing.assert_array_equal(SyntheticClip(config).frame(3), frames[3])


def test_write_clip_can_skip_video_and_frames(tmp_path) -> None:
    files = write_clip(clip_of(num_frames=4), tmp_path, "c", gap=1, video=False, frames=False)
    assert files.video is None and files.frames is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.flow.npz", "c.json"]
    assert len(load_ground_truth(files.ground_truth)[0]) == 3


def test_write_clip_rejects_a_gap_too_long_for_the_clip(tmp_path) -> None:
    with pytest.raises(ValueError, match="gap"):
        write_clip(clip_of(num_frames=4), tmp_path, "c", gap=4)


def test_make_clips_names_and_seeds_the_clips(tmp_path) -> None:
    files = make_clips(tmp_path, 2, seed=7, gap=2, **{**SMALL, "num_frames": 4})
    assert [f.meta.name for f in files] == ["clip000.json", "clip001.json"]
    configs = [load_config(f.meta)[0] for f in files]
    assert [c.seed for c in configs] == [7, 8]
    assert configs[0] == dataclasses.replace(configs[1], seed=7)
    assert all(f.video.is_file() and f.frames.is_dir() for f in files)
    with pytest.raises(ValueError, match="8 px"):
        make_clips(tmp_path, 1, height=4)
    with pytest.raises(TypeError):
        make_clips(tmp_path, 1, colour="red")


def test_loaders_raise_source_errors_for_bad_files(tmp_path) -> None:
    with pytest.raises(SourceError, match="no such file"):
        load_ground_truth(tmp_path / "missing.flow.npz")
    np.savez_compressed(tmp_path / "other.npz", flow=np.zeros((1, 4, 4, 2), np.float32))
    with pytest.raises(SourceError, match=r"missing arrays \['pairs', 'valid'\]"):
        load_ground_truth(tmp_path / "other.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(SourceError, match=r"not an \.npz"):
        load_ground_truth(tmp_path / "single.npy")
    np.savez_compressed(
        tmp_path / "shapes.npz",
        pairs=np.zeros((2, 2), np.int64),
        flow=np.zeros((1, 4, 4, 2), np.float32),
        valid=np.ones((1, 4, 4), bool),
    )
    with pytest.raises(SourceError, match="inconsistent"):
        load_ground_truth(tmp_path / "shapes.npz")
    truncated = (tmp_path / "shapes.npz").read_bytes()[:-40]
    (tmp_path / "truncated.npz").write_bytes(truncated)
    with pytest.raises(SourceError, match="unreadable"):
        load_ground_truth(tmp_path / "truncated.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(SourceError, match="unreadable"):
        load_ground_truth(tmp_path / "junk.npz")
    with pytest.raises(SourceError, match="no such file"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text(json.dumps({"config": {"height": 2}, "gap": 3}))
    with pytest.raises(SourceError, match="not a synthetic clip"):
        load_config(tmp_path / "bad.json")
