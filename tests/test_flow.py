"""Flow backends: accuracy of the classical ones, the output contract of all, RAFT's plumbing."""

from __future__ import annotations

import hashlib
import pickle

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cmpdata.errors import FlowWeightsError
from cmpdata.flow import FLOW_BACKENDS, build_flow, forward_backward, resize_flow
from cmpdata.flow.consistency import consistency_mask
from cmpdata.flow.dis import PRESETS
from cmpdata.flow.raft import MIN_NETWORK_SIDE, RaftSmallFlow, network_sizes

# RAFT on the CPU with random weights and few iterations: the plumbing, not the accuracy
RAFT_TEST_OPTIONS = {"random_init": True, "device": "cpu", "num_flow_updates": 2}
TEST_OPTIONS = {
    "raft-small": RAFT_TEST_OPTIONS,
    "raft-large": RAFT_TEST_OPTIONS,
    "liteflownet": {"random_init": True, "device": "cpu"},
}


def texture(rng: np.random.Generator, height: int, width: int, sigma: float = 2.0) -> np.ndarray:
    """Smooth random RGB texture, float32 in [0, 255]."""
    noise = rng.standard_normal((height, width, 3)).astype(np.float32)
    smooth = cv2.GaussianBlur(noise, (0, 0), sigma)
    return (smooth - smooth.min()) / (smooth.max() - smooth.min()) * 255


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(image).astype(np.uint8)


def translated_pair(
    rng: np.random.Generator, height: int, width: int, shift: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Two frames of one texture, the second moved by ``shift`` (x, y) px (sub-pixel allowed)."""
    margin = 16
    big = texture(rng, height + 2 * margin, width + 2 * margin)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32) + margin
    frame0 = cv2.remap(big, xs, ys, cv2.INTER_LINEAR)
    frame1 = cv2.remap(big, xs - shift[0], ys - shift[1], cv2.INTER_LINEAR)
    return to_uint8(frame0), to_uint8(frame1)


def epe(flow: np.ndarray, truth: np.ndarray) -> float:
    return float(np.linalg.norm(flow - truth, axis=2).mean())


def random_frames(rng: np.random.Generator, sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


# --- classical backends: accuracy --------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options"),
    [
        *[("dis", {"preset": preset}) for preset in PRESETS],
        ("farneback", {}),
        ("farneback", {"poly_n": 7, "poly_sigma": 1.5, "gaussian_window": True}),
    ],
)
@pytest.mark.parametrize("shift", [(3.0, 0.0), (2.5, -1.25), (0.4, 0.3)])
def test_classical_backends_recover_a_translation(name, options, shift):
    frame0, frame1 = translated_pair(np.random.default_rng(0), 64, 80, shift)
    (flow,) = build_flow(name, **options)([frame0], [frame1])
    truth = np.broadcast_to(np.array(shift, np.float32), flow.shape)
    interior = (slice(8, -8), slice(8, -8))
    assert epe(flow[interior], truth[interior]) < 0.3
    assert epe(np.zeros_like(flow), truth) == pytest.approx(np.hypot(*shift), rel=1e-5)


@pytest.mark.parametrize("name", ["dis", "farneback"])
def test_classical_backends_separate_two_motions(name):
    # top half still, bottom half sliding right: a shear boundary, no occlusion
    rng = np.random.default_rng(1)
    still0, still1 = translated_pair(rng, 40, 96, (0.0, 0.0))
    slide0, slide1 = translated_pair(rng, 40, 96, (3.0, 0.0))
    (flow,) = build_flow(name)([np.vstack([still0, slide0])], [np.vstack([still1, slide1])])
    assert epe(flow[8:30, 8:-8], np.zeros((22, 80, 2), np.float32)) < 0.3
    slide = np.broadcast_to(np.array([3.0, 0.0], np.float32), (22, 80, 2))
    assert epe(flow[50:72, 8:-8], slide) < 0.3


def test_dis_is_deterministic_and_reuses_its_cv2_object():
    frame0, frame1 = translated_pair(np.random.default_rng(2), 48, 64, (1.5, 2.0))
    backend = build_flow("dis")
    solver = backend._dis
    first = backend([frame0], [frame1])[0]
    again = backend([frame0], [frame1])[0]
    other = build_flow("dis")([frame0], [frame1])[0]
    assert backend._dis is solver
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other)


def test_dis_survives_pickling():
    frame0, frame1 = translated_pair(np.random.default_rng(3), 32, 32, (1.0, 0.0))
    backend = build_flow("dis", preset="fast")
    clone = pickle.loads(pickle.dumps(backend))
    assert clone.identity() == backend.identity()
    np.testing.assert_array_equal(clone([frame0], [frame1])[0], backend([frame0], [frame1])[0])


def test_classical_identities():
    assert build_flow("dis").identity() == {
        "name": "dis",
        "params": {"preset": "medium"},
        "weights_sha256": None,
    }
    farneback = build_flow("farneback", levels=3, winsize=21).identity()
    assert farneback["name"] == "farneback"
    assert farneback["weights_sha256"] is None
    assert farneback["params"]["levels"] == 3
    assert farneback["params"]["winsize"] == 21
    assert set(farneback["params"]) == {
        "pyr_scale",
        "levels",
        "winsize",
        "iterations",
        "poly_n",
        "poly_sigma",
        "gaussian_window",
    }


def test_unknown_dis_preset_lists_the_choices():
    with pytest.raises(ValueError, match="ultrafast, fast, medium"):
        build_flow("dis", preset="slow")


@pytest.mark.parametrize(
    "options", [{"pyr_scale": 1.0}, {"levels": 0}, {"winsize": 0}, {"poly_n": 6}, {"poly_sigma": 0}]
)
def test_farneback_refuses_bad_settings(options):
    with pytest.raises(ValueError):
        build_flow("farneback", **options)


@pytest.mark.parametrize("shape", [(15, 40), (40, 15), (1, 1)])
def test_dis_refuses_frames_too_small_instead_of_crashing(shape):
    # OpenCV 5.0's DIS crashes the process on frames 8-15 px high
    frame = np.zeros((*shape, 3), np.uint8)
    with pytest.raises(ValueError, match=rf"\({shape[0]}, {shape[1]}, 3\)"):
        build_flow("dis")([frame], [frame])


# --- the contract, for every registered backend -------------------------------------------


@pytest.fixture(scope="module", params=FLOW_BACKENDS.names())
def backend(request):
    return build_flow(request.param, **TEST_OPTIONS.get(request.param, {}))


def test_backend_output_contract(backend):
    sizes = [(16, 24), (20, 16), (16, 24)]
    rng = np.random.default_rng(4)
    flows = backend(random_frames(rng, sizes), random_frames(rng, sizes))
    assert len(flows) == len(sizes)
    for flow, size in zip(flows, sizes, strict=True):
        assert flow.dtype == np.float32
        assert flow.shape == (*size, 2)
        assert np.isfinite(flow).all()
    assert backend([], []) == []


def test_backend_refuses_malformed_batches(backend):
    rng = np.random.default_rng(5)
    a, b = random_frames(rng, [(16, 24), (16, 24)])
    with pytest.raises(ValueError, match="1 first frames but 2 second"):
        backend([a], [a, b])
    with pytest.raises(ValueError, match="shapes differ"):
        backend([a], [random_frames(rng, [(24, 16)])[0]])
    with pytest.raises(ValueError, match="uint8"):
        backend([a.astype(np.float32)], [b])


# --- RAFT ---------------------------------------------------------------------------------


@given(
    height=st.integers(16, 700),
    width=st.integers(16, 700),
)
def test_network_sizes(height, width):
    resized, padded = network_sizes(height, width)
    assert min(resized) >= MIN_NETWORK_SIDE
    assert all(p % 8 == 0 and 0 <= p - r < 8 for p, r in zip(padded, resized, strict=True))
    if min(height, width) >= MIN_NETWORK_SIDE:
        assert resized == (height, width)
    else:
        assert min(resized) == MIN_NETWORK_SIDE
        assert resized[0] / resized[1] == pytest.approx(height / width, abs=1 / min(resized))


def test_raft_runs_at_odd_sizes():
    sizes = [(97, 203), (64, 72)]  # the second is up-sized to 128 px
    rng = np.random.default_rng(6)
    frames = random_frames(rng, sizes)
    moved = [np.roll(f, 2, axis=1) for f in frames]
    flows = build_flow("raft-small", **RAFT_TEST_OPTIONS)(frames, moved)
    assert [f.shape for f in flows] == [(97, 203, 2), (64, 72, 2)]
    assert all(np.isfinite(f).all() and f.dtype == np.float32 for f in flows)


def test_raft_batching_does_not_change_the_flows():
    rng = np.random.default_rng(7)
    sizes = [(20, 24), (24, 20), (20, 24)]
    frames0, frames1 = random_frames(rng, sizes), random_frames(rng, sizes)
    together = build_flow("raft-small", **RAFT_TEST_OPTIONS, batch_size=2)(frames0, frames1)
    one_by_one = build_flow("raft-small", **RAFT_TEST_OPTIONS, batch_size=1)
    for i, flow in enumerate(together):
        np.testing.assert_allclose(flow, one_by_one([frames0[i]], [frames1[i]])[0], atol=1e-4)


def test_raft_refuses_tiny_frames_naming_the_shape():
    frame = np.zeros((1, 1, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(1, 1\)"):
        build_flow("raft-small", **RAFT_TEST_OPTIONS)([frame], [frame])


def test_raft_random_init_is_in_its_identity_and_repeatable():
    a = build_flow("raft-small", **RAFT_TEST_OPTIONS)
    b = build_flow("raft-small", **RAFT_TEST_OPTIONS)
    assert a.identity() == {
        "name": "raft-small",
        "params": {"num_flow_updates": 2, "precision": "fp32", "random_init": True},
        "weights_sha256": None,
    }
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_raft_building_leaves_the_callers_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_flow("raft-small", **RAFT_TEST_OPTIONS)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    "options",
    [
        {"precision": "fp16", "device": "cpu", "random_init": True},
        {"precision": "bf16", "device": "cpu", "random_init": True},
        {"precision": "fp64", "random_init": True},
        {"num_flow_updates": 0, "random_init": True},
        {"batch_size": 0, "random_init": True},
        {"device": "nonsense", "random_init": True},
        {"weights": "w.pth", "random_init": True},
    ],
)
def test_raft_refuses_bad_settings(options):
    with pytest.raises(ValueError):
        build_flow("raft-small", **options)


@pytest.fixture
def hub_dir(tmp_path, monkeypatch):
    """torch.hub's cache pointed at an empty folder: the real cache is never looked at."""
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    return hub


def test_raft_without_weights_says_how_to_supply_them(hub_dir):
    expected = hub_dir / "checkpoints" / "raft_small_C_T_V2-01064c6d.pth"
    assert RaftSmallFlow.default_weights_path() == expected
    with pytest.raises(FlowWeightsError) as error:
        build_flow("raft-small", device="cpu")
    message = str(error.value)
    assert "--flow-weights" in message
    assert str(expected) in message
    assert "raft_small" in message


def perturbed_model_state() -> tuple[dict[str, torch.Tensor], RaftSmallFlow]:
    """A raft-small backend whose weights differ from the seeded random ones, and its state."""
    source = build_flow("raft-small", **RAFT_TEST_OPTIONS)
    with torch.no_grad():
        for parameter in source.model.parameters():
            parameter.mul_(1.5)
    return source.model.state_dict(), source


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_raft_loads_weights_from_a_file(tmp_path, hub_dir):
    state, source = perturbed_model_state()
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    loaded = build_flow("raft-small", weights=path, device="cpu", num_flow_updates=2)
    assert loaded.weights_sha256() == sha256(path)
    assert loaded.identity()["params"]["random_init"] is False
    rng = np.random.default_rng(8)
    frames0, frames1 = random_frames(rng, [(24, 32)]), random_frames(rng, [(24, 32)])
    expected = source(frames0, frames1)[0]
    np.testing.assert_array_equal(loaded(frames0, frames1)[0], expected)
    fresh = build_flow("raft-small", **RAFT_TEST_OPTIONS)(frames0, frames1)[0]
    assert not np.allclose(fresh, expected)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda state: {"state_dict": state, "epoch": 3},
        lambda state: {"model": state},
        lambda state: {f"module.{k}": v for k, v in state.items()},
    ],
    ids=["state_dict", "model", "ddp-prefix"],
)
def test_raft_unwraps_checkpoints(tmp_path, hub_dir, wrap):
    state, _ = perturbed_model_state()
    path = tmp_path / "checkpoint.pt"
    torch.save(wrap(state), path)
    loaded = build_flow("raft-small", weights=str(path), device="cpu")
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key])


def test_raft_finds_weights_in_torchvision_cache(tmp_path, hub_dir):
    state, _ = perturbed_model_state()
    cached = RaftSmallFlow.default_weights_path()
    cached.parent.mkdir(parents=True)
    torch.save(state, cached)
    assert build_flow("raft-small", device="cpu").weights_sha256() == sha256(cached)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ({"feature_encoder.nonsense": torch.zeros(2)}, "missing"),
        (b"not a checkpoint", "readable"),
        ([1, 2, 3], "state_dict"),
    ],
    ids=["wrong-keys", "garbage", "not-a-dict"],
)
def test_raft_names_the_file_it_cannot_use(tmp_path, hub_dir, content, reason):
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(FlowWeightsError, match=reason) as error:
        build_flow("raft-small", weights=path, device="cpu")
    assert str(path) in str(error.value)


def test_raft_refuses_the_other_variants_weights(tmp_path, hub_dir):
    path = tmp_path / "large.pth"
    torch.save(build_flow("raft-large", **RAFT_TEST_OPTIONS).model.state_dict(), path)
    with pytest.raises(FlowWeightsError, match="raft_small") as error:
        build_flow("raft-small", weights=path, device="cpu")
    assert str(path) in str(error.value)


def test_raft_missing_weights_file(tmp_path, hub_dir):
    with pytest.raises(FlowWeightsError, match="no such weights file"):
        build_flow("raft-small", weights=tmp_path / "absent.pth", device="cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_raft_reduced_precision_on_cuda_matches_fp32(precision):
    rng = np.random.default_rng(9)
    frame0, frame1 = translated_pair(rng, 128, 160, (2.0, 1.0))
    options = {"random_init": True, "device": "cuda", "num_flow_updates": 4}
    reference = build_flow("raft-small", **options)([frame0], [frame1])[0]
    reduced = build_flow("raft-small", precision=precision, **options)([frame0], [frame1])[0]
    assert reduced.dtype == np.float32
    assert np.isfinite(reduced).all()
    scale = float(np.linalg.norm(reference, axis=2).mean())
    assert epe(reduced, reference) < 0.05 * scale + 0.05


# --- resize_flow ----------------------------------------------------------------------------

sides = st.integers(4, 64)


@settings(deadline=None, max_examples=60)
@given(
    size=st.tuples(sides, sides),
    new_size=st.tuples(sides, sides),
    vector=st.tuples(st.floats(-50, 50), st.floats(-50, 50)),
)
def test_resize_constant_flow_scales_its_vectors(size, new_size, vector):
    flow = np.empty((*size, 2), np.float32)
    flow[...] = vector
    resized = resize_flow(flow, new_size)
    assert resized.shape == (*new_size, 2)
    assert resized.dtype == np.float32
    expected = (vector[0] * new_size[1] / size[1], vector[1] * new_size[0] / size[0])
    np.testing.assert_allclose(resized[..., 0], expected[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(resized[..., 1], expected[1], rtol=1e-5, atol=1e-4)


@settings(deadline=None, max_examples=60)
@given(
    size=st.tuples(st.integers(8, 48), st.integers(8, 48)),
    factors=st.tuples(st.floats(1.0, 3.0), st.floats(1.0, 3.0)),
    offset=st.tuples(st.floats(-5, 5), st.floats(-5, 5)),
    gradient=st.lists(st.floats(-0.2, 0.2), min_size=4, max_size=4),
)
def test_resize_linear_flow_there_and_back(size, factors, offset, gradient):
    h, w = size
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    flow = np.stack(
        [
            offset[0] + gradient[0] * xs + gradient[1] * ys,
            offset[1] + gradient[2] * xs + gradient[3] * ys,
        ],
        axis=-1,
    ).astype(np.float32)
    bigger = (round(h * factors[0]), round(w * factors[1]))
    back = resize_flow(resize_flow(flow, bigger), size)
    # the outermost pixels differ: up-sizing repeats the border instead of extrapolating
    np.testing.assert_allclose(back[1:-1, 1:-1], flow[1:-1, 1:-1], atol=0.05)


# --- forward-backward consistency -----------------------------------------------------------

# a textured square moving right by SHIFT px over a still textured background
HEIGHT, WIDTH, SIDE, X0, Y0, SHIFT = 96, 112, 40, 28, 28, 6


def moving_square() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    background = texture(rng, HEIGHT, WIDTH)
    square = texture(rng, SIDE, SIDE, sigma=1.5)
    frame0, frame1 = background.copy(), background.copy()
    frame0[Y0 : Y0 + SIDE, X0 : X0 + SIDE] = square
    frame1[Y0 : Y0 + SIDE, X0 + SHIFT : X0 + SHIFT + SIDE] = square
    return to_uint8(frame0), to_uint8(frame1)


# background of frame 0 that the square covers in frame 1
OCCLUDED = (slice(Y0, Y0 + SIDE), slice(X0 + SIDE, X0 + SIDE + SHIFT))


def test_consistency_mask_on_exact_flows():
    forward = np.zeros((HEIGHT, WIDTH, 2), np.float32)
    forward[Y0 : Y0 + SIDE, X0 : X0 + SIDE, 0] = SHIFT
    backward = np.zeros_like(forward)
    backward[Y0 : Y0 + SIDE, X0 + SHIFT : X0 + SHIFT + SIDE, 0] = -SHIFT
    valid = consistency_mask(forward, backward)
    expected = np.ones((HEIGHT, WIDTH), bool)
    expected[OCCLUDED] = False
    np.testing.assert_array_equal(valid, expected)


def test_consistency_mask_refuses_targets_outside_the_frame():
    forward = np.zeros((20, 30, 2), np.float32)
    forward[..., 0] = 5.0
    backward = -forward
    valid = consistency_mask(forward, backward)
    assert valid[:, :25].all()
    assert not valid[:, 25:].any()


def test_forward_backward_finds_the_occluded_strip():
    frame0, frame1 = moving_square()
    backend = build_flow("dis")
    (flow, valid), (still, all_valid) = forward_backward(
        backend, [frame0, frame0], [frame1, frame0]
    )
    assert flow.shape == (HEIGHT, WIDTH, 2)
    assert valid.dtype == np.bool_ and valid.shape == (HEIGHT, WIDTH)
    assert (~valid[OCCLUDED]).mean() > 0.5
    away = np.ones((HEIGHT, WIDTH), bool)
    away[Y0 - 6 : Y0 + SIDE + 6, X0 - 6 : X0 + SIDE + SHIFT + 6] = False
    assert valid[away].mean() > 0.95
    assert valid[Y0 + 6 : Y0 + SIDE - 6, X0 + 6 : X0 + SIDE - 6].mean() > 0.9
    assert all_valid.all()
    np.testing.assert_allclose(still, 0.0, atol=0.05)


def test_forward_backward_makes_one_backend_call():
    calls = []

    class Recording:
        def __call__(self, frames0, frames1):
            calls.append(len(frames0))
            return build_flow("dis")(frames0, frames1)

    frame0, frame1 = moving_square()
    results = forward_backward(Recording(), [frame0, frame1], [frame1, frame0])
    assert calls == [4]
    assert len(results) == 2


def test_forward_backward_refuses_mismatched_lists():
    frame0, frame1 = moving_square()
    with pytest.raises(ValueError, match="1 first frames but 2 second"):
        forward_backward(build_flow("dis"), [frame0], [frame1, frame0])
