import json
import struct
import zlib

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmpdata.store.codec import (
    CMP_STEP,
    FlowCodec,
    _fit_low_res,
    decode_flow,
    decode_flow_cmp,
    decode_mask,
    encode_flow,
    encode_flow_cmp,
    encode_mask,
    inspect_flow,
)

HEADER = struct.Struct("<4sBBIII")  # the documented layout, restated on purpose
AVIF_FIELDS = struct.Struct("<II4f")
CODEC = FlowCodec()
BOUND = CODEC.max_mae


def smooth_flow(rng: np.random.Generator, h: int, w: int, magnitude: float) -> np.ndarray:
    """A smooth random field with values within about ±magnitude px."""
    coarse = rng.uniform(-magnitude, magnitude, (4, 5, 2)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w, 2)


def discontinuous_flow(rng: np.random.Generator, h: int, w: int, magnitude: float) -> np.ndarray:
    """Smooth background plus three rectangles moving rigidly with their own velocity."""
    flow = smooth_flow(rng, h, w, magnitude / 4)
    for _ in range(3):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        y1, x1 = y0 + rng.integers(h // 8, h // 2), x0 + rng.integers(w // 8, w // 2)
        flow[y0:y1, x0:x1] = rng.uniform(-magnitude, magnitude, 2)
    return flow


def mae(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).mean())


def stored_grid(data: bytes) -> tuple[int, int]:
    info = inspect_flow(data)
    assert info["method"] == "avif"
    return info["grid"]


@pytest.mark.parametrize("make", [smooth_flow, discontinuous_flow])
@pytest.mark.parametrize("magnitude", [2.0, 40.0])
def test_round_trip_within_bound(make, magnitude):
    flow = make(np.random.default_rng(1), 72, 96, magnitude)
    data = CODEC.encode(flow)
    out = decode_flow(data)
    assert out.dtype == np.float32 and out.shape == flow.shape
    assert mae(out, flow) <= BOUND
    assert CODEC.decode(data).tobytes() == out.tobytes()


def test_tighter_bound_is_honoured():
    flow = discontinuous_flow(np.random.default_rng(2), 64, 80, 20.0)
    tight = FlowCodec(max_mae=0.01)
    assert mae(decode_flow(tight.encode(flow)), flow) <= 0.01
    assert len(tight.encode(flow)) > len(CODEC.encode(flow))


@pytest.mark.parametrize("make", [smooth_flow, discontinuous_flow])
def test_no_clipping_at_500_px(make):
    flow = make(np.random.default_rng(3), 64, 96, 500.0)
    flow[:4, :4] = (-500.0, 500.0)
    data = CODEC.encode(flow)
    out = decode_flow(data)
    assert mae(out, flow) <= BOUND
    assert out[..., 0].min() < -450 and out[..., 1].max() > 450
    assert max(inspect_flow(data)["step"]) > CODEC.step  # the step grew instead of clipping


def test_beyond_12_bits_falls_back_to_exact_storage():
    flow = smooth_flow(np.random.default_rng(4), 16, 24, 1e5)
    data = CODEC.encode(flow)
    assert inspect_flow(data) == {"method": "raw", "size": (16, 24), "grid": (16, 24)}
    np.testing.assert_array_equal(decode_flow(data), flow)


def test_zero_and_constant_flows_are_small_and_exact():
    zero = np.zeros((40, 60, 2), np.float32)
    data = CODEC.encode(zero)
    assert len(data) < 500
    np.testing.assert_array_equal(decode_flow(data), zero)
    for value in (-123.5, 1000.0):
        flow = np.full((40, 60, 2), value, np.float32)
        data = CODEC.encode(flow)
        assert len(data) < 500
        np.testing.assert_allclose(decode_flow(data), flow, atol=1e-3)


@pytest.mark.parametrize("shape", [(97, 203), (1, 1), (2, 3), (1, 9), (9, 1), (3, 2)])
def test_odd_and_tiny_sizes(shape):
    rng = np.random.default_rng(5)
    flow = rng.normal(0, 5, (*shape, 2)).astype(np.float32)
    out = decode_flow(CODEC.encode(flow))
    assert out.shape == flow.shape
    assert mae(out, flow) <= BOUND


def test_bilinear_flows_are_stored_at_reduced_size_and_sharp_edges_at_full_size():
    # Like DIS "medium", whose output is a bilinear up-sampling of a half-resolution field.
    rng = np.random.default_rng(6)
    half = rng.normal(0, 10, (30, 41, 2)).astype(np.float32)
    flow = cv2.resize(half, (83, 61), interpolation=cv2.INTER_LINEAR)
    for codec in (CODEC, FlowCodec(max_mae=0.02)):  # the fit itself is exact
        data = codec.encode(flow)
        assert stored_grid(data) == (30, 41)
        assert mae(decode_flow(data), flow) <= codec.max_mae
    # A 100 px step every other column cannot be represented on the reduced grid.
    sharp = np.zeros((32, 48, 2), np.float32)
    sharp[:, ::2] = 100.0
    data = CODEC.encode(sharp)
    assert stored_grid(data) == (32, 48)
    assert mae(decode_flow(data), sharp) <= BOUND


def test_dis_flow_round_trip():
    rng = np.random.default_rng(7)
    texture = cv2.GaussianBlur(rng.integers(0, 256, (96, 128), dtype=np.uint8), (5, 5), 1.5)
    moved = np.roll(texture, (2, 5), axis=(0, 1))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    flow = dis.calc(texture, moved, None)
    data = CODEC.encode(flow)
    assert stored_grid(data) == (48, 64)
    assert mae(decode_flow(data), flow) <= BOUND


@pytest.mark.parametrize("shape, grid", [((61, 83), (30, 41)), ((7, 5), (2, 1)), ((1, 9), (1, 3))])
def test_the_grid_is_the_least_squares_fit_of_the_flow(shape, grid):
    # The stored grid is the one whose OpenCV bilinear up-sampling is closest to the flow:
    # checked against a dense least-squares solve over the up-sampling written as a matrix
    # (its columns: each grid sample alone, up-sampled), for each component.
    rng = np.random.default_rng(7)
    flow = rng.normal(0, 10, (*shape, 2)).astype(np.float32)
    h, w = grid
    basis = np.zeros((h * w, *shape), np.float64)
    for k in range(h * w):
        one = np.zeros((h, w), np.float32)
        one.flat[k] = 1
        basis[k] = cv2.resize(one, shape[::-1], interpolation=cv2.INTER_LINEAR)
    matrix = basis.reshape(h * w, -1).T
    low = _fit_low_res(flow, grid)
    assert low.shape == (2, h, w) and low.dtype == np.float32
    for c in range(2):
        best = np.linalg.lstsq(matrix, flow[..., c].ravel().astype(np.float64), rcond=None)[0]
        np.testing.assert_allclose(low[c].ravel(), best, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    ("shape", "magnitude", "codec"),
    [
        ((50, 70), 30.0, CODEC),
        ((417, 331), 60.0, CODEC),  # odd sizes: a grid that does not divide them
        ((33, 97), 0.4, FlowCodec(quality=100)),  # the lossless levels
        ((64, 48), 250.0, FlowCodec(max_mae=0.02, step=1 / 64)),
        ((8, 9), 5.0, CODEC),
    ],
)
def test_documented_layout_decodes_with_numpy_and_cv2_alone(shape, magnitude, codec):
    """The reader (imagecodecs' AVIF decoder) gives the bits of the documented decode
    through OpenCV's."""
    flow = discontinuous_flow(np.random.default_rng(8), *shape, magnitude)
    data = codec.encode(flow)
    magic, version, method, height, width, crc = HEADER.unpack_from(data)
    assert (magic, version, method, height, width) == (b"CMPF", 1, 1, *shape)
    assert crc == zlib.crc32(data[HEADER.size :])
    h, w, off_x, step_x, off_y, step_y = AVIF_FIELDS.unpack_from(data, HEADER.size)
    assert inspect_flow(data) == {
        "method": "avif",
        "size": shape,
        "grid": (h, w),
        "step": (step_x, step_y),
    }
    avif = np.frombuffer(data, np.uint8, offset=HEADER.size + AVIF_FIELDS.size)
    levels = cv2.imdecode(avif, cv2.IMREAD_UNCHANGED)
    assert levels.dtype == np.uint16 and levels.shape == (2 * h, w) and levels.max() <= 4095
    low = np.stack(
        [
            levels[:h] * np.float32(step_x) + np.float32(off_x),
            levels[h:] * np.float32(step_y) + np.float32(off_y),
        ],
        -1,
    )
    if (h, w) != (height, width):
        low = cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(low.view(np.uint32), decode_flow(data).view(np.uint32))


def test_deterministic():
    flow = discontinuous_flow(np.random.default_rng(9), 64, 80, 15.0)
    assert CODEC.encode(flow) == CODEC.encode(flow.copy())
    mask = np.random.default_rng(9).random((30, 41)) < 0.5
    assert encode_mask(mask) == encode_mask(mask.copy())


def _flow_bytes() -> bytes:
    return CODEC.encode(smooth_flow(np.random.default_rng(10), 40, 50, 10.0))


@pytest.mark.parametrize("cut", [0, 1, 17, 18, 30, -1])
def test_truncated_flow_is_refused(cut):
    data = _flow_bytes()
    with pytest.raises(ValueError, match="truncated"):
        decode_flow(data[: cut % len(data)])


def test_garbage_and_foreign_data_are_refused():
    data = _flow_bytes()
    with pytest.raises(ValueError, match="not flow data"):
        decode_flow(np.random.default_rng(0).bytes(500))
    with pytest.raises(ValueError, match="not flow data"):
        decode_flow(encode_mask(np.ones((4, 4), bool)))
    with pytest.raises(ValueError, match="not mask data"):
        decode_mask(data)
    with pytest.raises(ValueError, match="version 7 is not supported"):
        decode_flow(data[:4] + bytes([7]) + data[5:])
    with pytest.raises(ValueError, match="unknown method 9"):
        decode_flow(data[:5] + bytes([9]) + data[6:])
    with pytest.raises(ValueError, match="checksum"):
        inspect_flow(data[:-1])
    flipped = bytearray(data)
    flipped[-10] ^= 0xFF
    with pytest.raises(ValueError, match="checksum"):
        decode_flow(bytes(flipped))
    with pytest.raises(ValueError, match="must be bytes"):
        decode_flow("CMPF")


def test_corrupt_payload_with_valid_checksum_is_refused():
    data = _flow_bytes()
    body = bytearray(data[HEADER.size :])
    body[AVIF_FIELDS.size :] = bytes(len(body) - AVIF_FIELDS.size)  # AVIF file zeroed
    header = HEADER.pack(b"CMPF", 1, 1, 40, 50, zlib.crc32(bytes(body)))
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_flow(header + bytes(body))
    header = HEADER.pack(b"CMPF", 1, 1, 10, 50, zlib.crc32(bytes(body)))  # grid 20 x 25
    with pytest.raises(ValueError, match="does not fit"):
        decode_flow(header + bytes(body))
    raw = zlib.compress(np.zeros(10, np.float32).tobytes())
    header = HEADER.pack(b"CMPF", 1, 2, 40, 50, zlib.crc32(raw))
    with pytest.raises(ValueError, match="expected 16000"):
        decode_flow(header + raw)


def test_encode_refuses_bad_flows():
    with pytest.raises(ValueError, match="float32"):
        CODEC.encode(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="float32"):
        CODEC.encode(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="empty"):
        CODEC.encode(np.zeros((0, 4, 2), np.float32))
    flow = np.zeros((4, 4, 2), np.float32)
    flow[1, 2, 0] = np.nan
    flow[3, 3, 1] = np.inf
    with pytest.raises(ValueError, match="2 NaN or infinite"):
        CODEC.encode(flow)


def test_settings_are_checked_and_reported():
    for bad in ({"downscale": 0}, {"max_mae": 0.0}, {"step": float("nan")}, {"quality": 101}):
        with pytest.raises(ValueError):
            FlowCodec(**bad)
    codec = FlowCodec(downscale=1, max_mae=0.05)
    params = json.loads(json.dumps(codec.params()))
    assert params["format"] == "CMPF" and params["version"] == 1
    assert params["downscale"] == 1 and params["max_mae"] == 0.05
    flow = smooth_flow(np.random.default_rng(11), 20, 30, 5.0)
    assert encode_flow(flow, downscale=1, max_mae=0.05) == codec.encode(flow)


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (97, 203), (64, 64)])
def test_mask_round_trip_is_exact(shape):
    rng = np.random.default_rng(12)
    for mask in (rng.random(shape) < 0.3, np.ones(shape, bool), np.zeros(shape, bool)):
        out = decode_mask(encode_mask(mask))
        assert out.dtype == np.bool_
        np.testing.assert_array_equal(out, mask)


def test_mask_is_compact_and_checked():
    mask = np.ones((416, 555), bool)
    mask[100:200, 300:400] = False
    assert len(encode_mask(mask)) < 1000
    with pytest.raises(ValueError, match="bool"):
        encode_mask(mask.astype(np.uint8))
    with pytest.raises(ValueError, match="truncated"):
        decode_mask(encode_mask(mask)[:-3])
    png = encode_mask(mask)[HEADER.size :]
    with pytest.raises(ValueError, match="expected \\(416, 556\\)"):
        decode_mask(HEADER.pack(b"CMPM", 1, 1, 416, 556, zlib.crc32(png)) + png)
    junk = b"not a png" * 10
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_mask(HEADER.pack(b"CMPM", 1, 1, 416, 555, zlib.crc32(junk)) + junk)


def test_cmp_format_clips_at_50_px():
    flow = np.zeros((16, 16, 2), np.float32)
    flow[:, :8, 0] = 80.0
    flow[:, 8:, 0] = -80.0
    flow[..., 1] = 20.0
    x_jpeg, y_jpeg = encode_flow_cmp(flow)
    out = decode_flow_cmp(x_jpeg, y_jpeg)
    assert np.abs(out[..., 0]).max() <= 50.0 + 1e-4
    assert np.abs(np.abs(out[..., 0]) - 50).max() < 1.0  # clipped, 30 px lost
    assert np.abs(out[..., 1] - 20).max() < 0.5
    ours = decode_flow(CODEC.encode(flow))
    assert mae(ours, flow) <= BOUND


def test_cmp_format_has_0_39_px_steps():
    ramp = np.linspace(-10, 10, 64 * 64, dtype=np.float32).reshape(64, 64)
    flow = np.stack([ramp, -ramp], -1)
    out = decode_flow_cmp(*encode_flow_cmp(flow, quality=100))
    steps = np.diff(np.unique(out[..., 0]))
    np.testing.assert_allclose(steps, CMP_STEP, rtol=1e-3)
    assert abs(CMP_STEP - 0.392) < 1e-3
    assert mae(out, flow) < CMP_STEP / 2
    with pytest.raises(ValueError, match="cannot be decoded"):
        decode_flow_cmp(b"junk", b"junk")


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(1, 64),
    w=st.integers(1, 64),
    magnitude=st.floats(0.0, 600.0),
    discontinuous=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_property_error_within_bound(h, w, magnitude, discontinuous, seed):
    rng = np.random.default_rng(seed)
    make = discontinuous_flow if discontinuous and min(h, w) >= 8 else smooth_flow
    flow = make(rng, h, w, magnitude)
    out = decode_flow(CODEC.encode(flow))
    assert out.shape == flow.shape
    assert mae(out, flow) <= BOUND
