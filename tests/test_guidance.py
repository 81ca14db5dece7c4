from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from cmpdata.guidance import (
    GUIDANCE_SAMPLERS,
    GradNMS,
    Grid,
    GuidanceConfig,
    GuidanceSampler,
    Uniform,
    Watershed,
    build_sampler,
    rasterize,
)
from cmpdata.guidance.watershed import edge_distance, greedy_thin, local_maxima, thinning_order
from cmpdata.records import Guidance
from cmpdata.seeding import sample_rng

# (y0, y1, x0, x1, (u, v)): rectangles painted in order over a background moving by (1, 0.5)
RECTS = (
    (10, 60, 15, 75, (4.0, -2.0)),
    (55, 110, 95, 150, (-3.0, 3.0)),
    (75, 115, 20, 60, (0.0, -4.0)),
)


def rect_flow(h=120, w=160, rects=RECTS):
    """A piecewise-constant flow and its label map (0 = background, k = k-th rectangle)."""
    flow = np.empty((h, w, 2), np.float32)
    flow[:] = (1.0, 0.5)
    labels = np.zeros((h, w), np.int64)
    for k, (y0, y1, x0, x1, uv) in enumerate(rects, start=1):
        flow[y0:y1, x0:x1] = uv
        labels[y0:y1, x0:x1] = k
    return flow, labels


def boundary_distance(labels):
    """Euclidean distance (px) of every pixel to the nearest pixel whose 4-neighbour differs."""
    boundary = np.zeros(labels.shape, bool)
    dy = labels[1:] != labels[:-1]
    dx = labels[:, 1:] != labels[:, :-1]
    boundary[1:] |= dy
    boundary[:-1] |= dy
    boundary[:, 1:] |= dx
    boundary[:, :-1] |= dx
    return ndimage.distance_transform_edt(~boundary)


def chebyshev_gaps(points):
    """Chebyshev distances between all pairs of (K, 2) points."""
    d = np.abs(points[:, None, :].astype(np.int64) - points[None, :, :]).max(-1)
    return d[np.triu_indices(len(points), 1)]


def brute_force_thin(ys, xs, order, radius):
    kept = []
    for i in order:
        if all(max(abs(ys[i] - ys[k]), abs(xs[i] - xs[k])) >= radius for k in kept):
            kept.append(i)
    keep = np.zeros(len(ys), bool)
    keep[kept] = True
    return keep


@pytest.mark.parametrize("exact", [False, True])
def test_watershed_points_lie_inside_parts_away_from_edges(exact):
    flow, labels = rect_flow()
    points = Watershed(nms_ks=15, exact=exact)(flow, np.random.default_rng(0))
    assert points.dtype == np.int64 and points.shape[1] == 2 and len(points) > 0
    xs, ys = points[:, 0], points[:, 1]
    assert (boundary_distance(labels)[ys, xs] >= 4).all()
    assert set(labels[ys, xs]) == {0, 1, 2, 3}  # every part, background included, gets a point
    assert chebyshev_gaps(points).min() >= 7


def test_sampler_vectors_are_the_flow_at_the_points():
    flow, _ = rect_flow()
    flow[..., 0] += np.linspace(0, 1, flow.shape[1], dtype=np.float32)  # distinct per column
    guidance = build_sampler(GuidanceConfig())(flow, sample_rng(0, "s"))
    assert guidance.points.dtype == guidance.vectors.dtype == np.float32
    xs, ys = guidance.points.astype(np.int64).T
    np.testing.assert_array_equal(guidance.vectors, flow[ys, xs])
    order = np.lexsort((xs, ys))
    np.testing.assert_array_equal(order, np.arange(len(xs)))  # sorted by (y, x)
    assert len(np.unique(ys * flow.shape[1] + xs)) == len(xs)


@pytest.mark.parametrize("exact", [False, True])
def test_watershed_on_uniform_motion_gives_central_points(exact):
    flow = np.full((90, 130, 2), 2.5, np.float32)
    points = Watershed(exact=exact)(flow, np.random.default_rng(0))
    assert len(points) >= 1
    assert (np.abs(points[:, 1] - 44.5) <= 2).all()  # on the long midline of the frame
    assert (np.abs(points[:, 0] - 64.5) <= 21).all()


def test_watershed_large_frame_uses_the_downsampled_path():
    h, w = 900, 1200  # ds = 3
    scale = 7.5
    rects = tuple(
        (int(y0 * scale), int(y1 * scale), int(x0 * scale), int(x1 * scale), uv)
        for y0, y1, x0, x1, uv in RECTS
    )
    flow, labels = rect_flow(h, w, rects)
    for exact in (False, True):
        points = Watershed(nms_ks=15, exact=exact)(flow, np.random.default_rng(0))
        xs, ys = points[:, 0], points[:, 1]
        assert ((xs >= 0) & (xs < w) & (ys >= 0) & (ys < h)).all()
        assert (boundary_distance(labels)[ys, xs] >= 12).all()
        assert set(labels[ys, xs]) == {0, 1, 2, 3}
        assert chebyshev_gaps(points).min() >= 7 * 3


@settings(max_examples=60, deadline=None)
@given(
    points=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=140, unique=True),
    radius=st.integers(1, 9),
    seed=st.integers(0, 2**32 - 1),
)
def test_greedy_thin_equals_the_sequential_greedy(points, radius, seed):
    ys = np.array([p[0] for p in points], np.int64)
    xs = np.array([p[1] for p in points], np.int64)
    order = np.random.default_rng(seed).permutation(len(points))
    keep = greedy_thin(ys, xs, order, radius)
    np.testing.assert_array_equal(keep, brute_force_thin(ys, xs, order, radius))


@pytest.mark.parametrize("seed", range(4))
def test_greedy_thin_on_many_points_and_ridges(seed):
    rng = np.random.default_rng(seed)
    index = rng.choice(90 * 90, size=400, replace=False)
    ys, xs = np.divmod(index, 90)
    radius = int(rng.integers(2, 12))
    order = rng.permutation(len(ys))
    np.testing.assert_array_equal(
        greedy_thin(ys, xs, order, radius), brute_force_thin(ys, xs, order, radius)
    )
    # A long straight ridge of tied maxima, in the production order.
    ys, xs = np.full(500, 7 + seed), np.arange(500)
    order = thinning_order(np.ones(500, np.float32), ys, xs)
    keep = greedy_thin(ys, xs, order, 7)
    np.testing.assert_array_equal(keep, brute_force_thin(ys, xs, order, 7))
    assert 500 / 13 <= keep.sum() <= 500 / 7 + 1


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    levels=st.integers(1, 4),
    nms_ks=st.sampled_from([3, 5, 7, 9]),
)
def test_thinning_of_maxima_keeps_the_strongest(seed, levels, nms_ks):
    # Few distinct values: many tied maxima, as along the ridges of a distance transform.
    score = np.random.default_rng(seed).integers(0, levels + 1, (24, 31)).astype(np.float32)
    radius = (nms_ks - 1) // 2
    ys, xs = local_maxima(score, radius)
    values = score[ys, xs]
    order = thinning_order(values, ys, xs)
    keep = greedy_thin(ys, xs, order, radius)
    np.testing.assert_array_equal(keep, brute_force_thin(ys, xs, order, radius))
    kept = np.flatnonzero(keep)
    for i in np.flatnonzero(~keep):
        near = np.maximum(np.abs(ys[kept] - ys[i]), np.abs(xs[kept] - xs[i])) < radius
        assert (values[kept[near]] >= values[i]).any()
    gaps = chebyshev_gaps(np.stack([xs[keep], ys[keep]], 1))
    assert gaps.size == 0 or gaps.min() >= radius


def test_local_maxima_skip_the_border_and_zero():
    score = np.zeros((20, 20), np.float32)
    score[1, 10] = 5.0  # within the border margin
    score[10, 10] = 3.0
    ys, xs = local_maxima(score, 3)
    assert list(zip(ys, xs, strict=True)) == [(10, 10)]


def test_grid_stride_and_centring():
    flow = np.zeros((416, 555, 2), np.float32)
    points = Grid(bg_ratio=1 / 6400)(flow, np.random.default_rng(0))
    xs, ys = np.unique(points[:, 0]), np.unique(points[:, 1])
    assert len(points) == len(xs) * len(ys) == 6 * 7
    assert set(np.diff(xs)) == set(np.diff(ys)) == {80}
    assert abs(xs[0] - (554 - xs[-1])) <= 1 and abs(ys[0] - (415 - ys[-1])) <= 1
    assert Grid(bg_ratio=5.74e-5).stride == 132


@given(h=st.integers(1, 300), w=st.integers(1, 300), stride=st.integers(1, 120))
def test_grid_is_centred_for_any_size(h, w, stride):
    points = Grid(bg_ratio=1 / stride**2)(np.zeros((h, w, 2), np.float32), np.random.default_rng())
    for axis, n in ((0, w), (1, h)):
        pos = np.unique(points[:, axis])
        assert len(pos) == (n - 1) // stride + 1
        assert (np.diff(pos) == stride).all()
        assert pos[0] >= 0 and pos[-1] < n and abs(pos[0] - (n - 1 - pos[-1])) <= 1


def test_uniform_count_and_distinct_points():
    flow = np.zeros((100, 128, 2), np.float32)
    points = Uniform(bg_ratio=1 / 400)(flow, np.random.default_rng(3))
    assert len(points) == 32 == len(np.unique(points[:, 1] * 128 + points[:, 0]))
    assert len(Uniform(bg_ratio=1e-6)(flow, np.random.default_rng(3))) == 1
    valid = np.zeros((100, 128), bool)
    valid[5, 7:12] = True
    few = Uniform(bg_ratio=1 / 400)(flow, np.random.default_rng(3), valid)
    assert sorted(few[:, 0]) == [7, 8, 9, 10, 11] and (few[:, 1] == 5).all()


def test_gradnms_points_lie_on_motion_boundaries():
    flow, labels = rect_flow()
    sampler = GradNMS(nms_ks=9, bg_ratio=1 / 400)
    points = sampler(flow, np.random.default_rng(0))
    assert 1 <= len(points) <= round(120 * 160 / 400)
    assert (boundary_distance(labels)[points[:, 1], points[:, 0]] <= 2).all()
    assert len(sampler(np.ones((120, 160, 2), np.float32), np.random.default_rng(0))) == 0


def test_gradnms_cap_keeps_the_strongest_boundary():
    flow = np.zeros((80, 120, 2), np.float32)
    flow[:, 40:, 0] = 0.5  # weak boundary at x = 40
    flow[:, 80:, 0] = 6.0  # strong boundary at x = 80
    points = GradNMS(nms_ks=9, bg_ratio=1e-6, threshold=0.05)(flow, np.random.default_rng(0))
    assert len(points) == 1 and abs(points[0, 0] - 79.5) <= 1.5


def test_edge_threshold_is_relative_to_the_strongest_edge():
    flow = np.zeros((40, 60, 2), np.float32)
    flow[:, 20:, 1] = 0.45  # 7.5 % of the strong step
    flow[:, 40:, 1] = 6.45
    strong_only = edge_distance(flow, 0.1)
    assert strong_only[:, 39:41].max() == 0 and strong_only[:, 19:21].min() > 10
    both = edge_distance(flow, 0.02)
    assert both[:, 19:21].max() == 0
    # Without any edge, the distance is to the image border.
    uniform = edge_distance(np.ones((5, 7, 2), np.float32), 0.1)
    assert uniform[2, 3] == 3 and uniform[0, 0] == 1


def test_cap_draws_a_seeded_random_subset():
    flow, _ = rect_flow()
    config = GuidanceConfig(strategies="watershed,grid", bg_ratio=1 / 100)
    everything = build_sampler(config)(flow, sample_rng(0, "a"))
    capped = build_sampler(replace(config, max_num_guide=20))
    subsets = set()
    for seed in range(4):
        some = capped(flow, sample_rng(seed, "a"))
        assert len(some) == 20 < len(everything)
        assert {tuple(p) for p in some.points} <= {tuple(p) for p in everything.points}
        xs, ys = some.points.T
        assert (np.diff(ys * 1000 + xs) > 0).all()
        np.testing.assert_array_equal(some.points, capped(flow, sample_rng(seed, "a")).points)
        subsets.add(some.points.tobytes())
    assert len(subsets) == 4


@pytest.mark.parametrize(
    "config",
    [
        GuidanceConfig(),
        GuidanceConfig.alexnet(),
        GuidanceConfig(strategies="watershed,grid,uniform,gradnms", bg_ratio=1 / 900),
        GuidanceConfig(strategies="watershed,uniform", max_num_guide=12),
    ],
)
def test_same_sample_same_guidance_whatever_the_order(config):
    flow, _ = rect_flow()
    sampler = build_sampler(config)
    first = [sampler(flow, sample_rng(7, sid)) for sid in ("a", "b", "c")]
    again = [build_sampler(config)(flow, sample_rng(7, sid)) for sid in ("c", "a", "b")]
    for g, h in zip(first, [again[1], again[2], again[0]], strict=True):
        np.testing.assert_array_equal(g.points, h.points)
        np.testing.assert_array_equal(g.vectors, h.vectors)
    draws = {sampler(flow, sample_rng(s, "a")).points.tobytes() for s in range(6)}
    # Only the uniform strategy (or a cap, when exceeded) depends on the seed.
    assert (len(draws) > 1) == ("uniform" in config.strategies)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), keep=st.floats(0.0, 1.0))
def test_invalid_pixels_are_never_chosen(seed, keep):
    flow, _ = rect_flow()
    rng = np.random.default_rng(seed)
    # Blocky masks (as from occlusions) and speckle, both.
    blocks = rng.random((12, 16)) < keep
    valid = np.kron(blocks, np.ones((10, 10), bool)) & (rng.random(flow.shape[:2]) < 0.9)
    for name in GUIDANCE_SAMPLERS:
        strategy = GUIDANCE_SAMPLERS.get(name).from_config(
            GuidanceConfig(strategies=name, bg_ratio=1 / 64, nms_ks=5)
        )
        points = strategy(flow, np.random.default_rng(seed), valid)
        assert valid[points[:, 1], points[:, 0]].all(), name
    guidance = build_sampler(GuidanceConfig(strategies="watershed,grid,uniform"))(
        flow, np.random.default_rng(seed), valid
    )
    xs, ys = guidance.points.astype(np.int64).T
    assert valid[ys, xs].all()


def test_rasterize_exact_values():
    guidance = Guidance(
        points=np.array([[0, 0], [4, 2], [6, 4]], np.float32),
        vectors=np.array([[1.5, -2.0], [0.0, 3.0], [-7.0, 0.25]], np.float32),
    )
    out = rasterize(guidance, (5, 7))
    assert out.shape == (4, 5, 7) and out.dtype == np.float32
    expected = np.zeros((4, 5, 7), np.float32)
    for (x, y), (u, v) in zip([(0, 0), (4, 2), (6, 4)], guidance.vectors, strict=True):
        expected[:, y, x] = (u, v, 1.0, 1.0)
    np.testing.assert_array_equal(out, expected)
    assert (
        rasterize(
            Guidance(np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32)), (3, 3)
        ).sum()
        == 0
    )
    with pytest.raises(ValueError, match=r"outside size \(H, W\) = \(5, 6\)"):
        rasterize(guidance, (5, 6))


def test_bad_inputs_raise_naming_shapes():
    sampler = build_sampler(GuidanceConfig())
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"float32 \(H, W, 2\).*float64 \(8, 8, 2\)"):
        sampler(np.zeros((8, 8, 2)), rng)
    with pytest.raises(ValueError, match=r"float32 \(H, W, 2\).*\(8, 8, 3\)"):
        Watershed()(np.zeros((8, 8, 3), np.float32), rng)
    with pytest.raises(ValueError, match=r"shape \(8, 8\).*bool \(8, 9\)"):
        sampler(np.zeros((8, 8, 2), np.float32), rng, np.ones((8, 9), bool))
    with pytest.raises(ValueError, match="empty"):
        Grid()(np.zeros((0, 8, 2), np.float32), rng)


def test_config_checks_and_unknown_strategy_lists_choices():
    config = GuidanceConfig(strategies=" grid , watershed")
    assert config.strategies == ("grid", "watershed")
    with pytest.raises(ValueError, match="gradnms, grid, uniform, watershed"):
        GuidanceConfig(strategies="watershed,gird")
    for bad in (
        {"strategies": ""},
        {"strategies": "grid,grid"},
        {"nms_ks": 14},
        {"bg_ratio": 0.0},
        {"edge_threshold": 1.5},
        {"max_num_guide": 0},
    ):
        with pytest.raises(ValueError):
            GuidanceConfig(**bad)
    with pytest.raises(ValueError):
        GuidanceSampler([])


def test_presets_are_the_papers():
    assert GuidanceConfig.resnet() == GuidanceConfig()
    assert (GuidanceConfig().nms_ks, GuidanceConfig().bg_ratio) == (15, 1 / 6400)
    alexnet = GuidanceConfig.alexnet()
    assert (alexnet.nms_ks, alexnet.max_num_guide, alexnet.bg_ratio) == (41, 150, 1 / 6400)
    assert GuidanceConfig.annotation().bg_ratio == 5.74e-5
    sampler = build_sampler(GuidanceConfig.alexnet())
    assert [s.name for s in sampler.strategies] == ["watershed", "grid"]
    assert sampler.strategies[0].nms_ks == 41 and sampler.max_num_guide == 150
