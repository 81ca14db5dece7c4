"""LiteFlowNet: the correlation against a naive reference, the published weights files' layout,
refusals that name keys, identity, sizes and batching; on CUDA, reduced precision."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_flow import epe, random_frames, translated_pair

from cmpdata.errors import FlowWeightsError
from cmpdata.flow import build_flow
from cmpdata.flow.liteflownet import (
    MEANS,
    backward_warp,
    correlation,
    network_size,
    our_key,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DATA = Path(__file__).parent / "data"
#: names and shapes of the tensors in network-{default,sintel,kitti}.pytorch, as stored
FILE_KEYS = [
    (k, tuple(s)) for k, s in json.loads((DATA / "liteflownet" / "keys.json").read_text())["keys"]
]
OPTIONS = {"device": "cpu"}


def naive_correlation(first: np.ndarray, second: np.ndarray, stride: int) -> np.ndarray:
    """Pixel by pixel: the mean over channels of first(Y, X) * second(Y + dy, X + dx)."""
    n, c, h, w = first.shape
    out_h, out_w = -(-h // stride), -(-w // stride)
    out = np.zeros((n, 49, out_h, out_w), np.float64)
    for y in range(out_h):
        for x in range(out_w):
            for t in range(49):
                dy, dx = (t // 7 - 3) * stride, (t % 7 - 3) * stride
                yy, xx = y * stride + dy, x * stride + dx
                if 0 <= yy < h and 0 <= xx < w:
                    value = (first[:, :, y * stride, x * stride] * second[:, :, yy, xx]).sum(1)
                    out[:, t, y, x] = value / c
    return out


@pytest.mark.parametrize(("size", "stride"), [((5, 6), 1), ((6, 8), 2), ((7, 5), 2), ((9, 4), 1)])
def test_correlation_matches_a_naive_reference(size, stride):
    rng = np.random.default_rng(sum(size) + stride)
    first = rng.normal(size=(2, 3, *size)).astype(np.float32)
    second = rng.normal(size=(2, 3, *size)).astype(np.float32)
    got = correlation(torch.from_numpy(first), torch.from_numpy(second), stride).numpy()
    np.testing.assert_allclose(got, naive_correlation(first, second, stride), atol=1e-6)


def test_backward_warp_by_whole_pixels_moves_the_image():
    image = torch.arange(2 * 6 * 7, dtype=torch.float32).view(1, 2, 6, 7)
    flow = torch.zeros(1, 2, 6, 7)
    flow[:, 0], flow[:, 1] = 2.0, -1.0  # out(y, x) = image(y - 1, x + 2)
    out = backward_warp(image, flow)
    np.testing.assert_allclose(out[0, :, 1:, :5], image[0, :, :5, 2:], atol=1e-4)
    assert out[0, :, 0].abs().max() < 1e-4 and out[0, :, :, 5:].abs().max() < 1e-4  # outside


def test_the_file_names_map_onto_the_network():
    assert our_key("moduleFeatures.moduleOne.0.weight") == "features.one.0.weight"
    assert our_key("netRegularization.0.netScaleX.bias") == "regularization.0.scale_x.bias"
    assert len(FILE_KEYS) == 212
    assert sum(int(np.prod(s)) for _, s in FILE_KEYS) == 5_381_969


def write_weights(path: Path, keys=FILE_KEYS, rename=lambda k: k, seed: int = 0) -> Path:
    """A file of the published layout, random values: (name, shape) pairs as the files hold."""
    generator = torch.Generator().manual_seed(seed)
    state = {rename(name): torch.randn(shape, generator=generator) * 0.05 for name, shape in keys}
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    return write_weights(tmp_path_factory.mktemp("lfn") / "network-default.pytorch")


def test_a_file_of_the_published_layout_loads_strictly(weights, tmp_path):
    backend = build_flow("liteflownet", weights=weights, **OPTIONS)
    stored = torch.load(weights, weights_only=True)
    for name, value in stored.items():
        assert torch.equal(backend.model.state_dict()[our_key(name)], value)
    identity = backend.identity()
    assert identity["name"] == "liteflownet"
    assert identity["weights_sha256"] and len(identity["weights_sha256"]) == 64
    # the port's later spelling (netFeatures...) loads too, and other values change the identity
    renamed = write_weights(
        tmp_path / "net.pytorch", rename=lambda k: k.replace("module", "net"), seed=1
    )
    other = build_flow("liteflownet", weights=renamed, **OPTIONS).identity()
    assert other["weights_sha256"] != identity["weights_sha256"]


def test_the_flows_are_finite_at_odd_sizes_and_do_not_depend_on_batching(weights):
    rng = np.random.default_rng(3)
    sizes = [(70, 100), (33, 47), (70, 100)]
    frames0, frames1 = random_frames(rng, sizes), random_frames(rng, sizes)
    together = build_flow("liteflownet", weights=weights, batch_size=2, **OPTIONS)(frames0, frames1)
    alone = build_flow("liteflownet", weights=weights, batch_size=1, **OPTIONS)
    assert [f.shape for f in together] == [(70, 100, 2), (33, 47, 2), (70, 100, 2)]
    for i, flow in enumerate(together):
        assert np.isfinite(flow).all() and np.abs(flow).max() > 0
        np.testing.assert_allclose(flow, alone([frames0[i]], [frames1[i]])[0], atol=1e-4)


def test_network_sizes_round_up_to_32():
    assert network_size(70, 100) == (96, 128)
    assert network_size(416, 640) == (416, 640)
    assert len(MEANS) == 2 and all(len(m) == 3 for m in MEANS)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        (FILE_KEYS[:-3], "moduleRegularization.4.moduleScaleX.bias"),  # missing, named in ours
        ([*FILE_KEYS, ("moduleExtra.weight", (3,))], "extra.weight"),
    ],
    ids=["missing", "unexpected"],
)
def test_a_file_of_another_layout_is_refused_naming_keys(tmp_path, keys, named):
    path = write_weights(tmp_path / "bad.pytorch", keys=keys)
    with pytest.raises(FlowWeightsError) as error:
        build_flow("liteflownet", weights=path, **OPTIONS)
    message = str(error.value)
    assert str(path) in message and our_key(named) in message
    assert "missing" in message and "unexpected" in message


def test_raft_weights_are_not_liteflownet_weights(tmp_path):
    path = tmp_path / "raft.pth"
    torch.save(build_flow("raft-small", random_init=True, device="cpu").model.state_dict(), path)
    with pytest.raises(FlowWeightsError, match="LiteFlowNet") as error:
        build_flow("liteflownet", weights=path, **OPTIONS)
    assert "features.one.0.weight" in str(error.value)  # the first missing key


def test_a_tensor_of_another_shape_is_refused_naming_it(tmp_path):
    keys = [(k, (s[0] + 1, *s[1:]) if k.endswith("moduleSix.0.bias") else s) for k, s in FILE_KEYS]
    with pytest.raises(FlowWeightsError, match=r"features\.six\.0\.bias \(193,\)"):
        build_flow(
            "liteflownet", weights=write_weights(tmp_path / "shape.pytorch", keys), **OPTIONS
        )


def test_without_weights_it_says_what_to_give_and_downloads_nothing():
    with pytest.raises(FlowWeightsError, match="--flow-weights") as error:
        build_flow("liteflownet", device="cpu")
    assert "Nothing is downloaded" in str(error.value)


def test_frames_under_16_px_are_refused_naming_the_shape(weights):
    frame = np.zeros((12, 64, 3), np.uint8)
    with pytest.raises(ValueError, match=r"\(12, 64\)"):
        build_flow("liteflownet", weights=weights, **OPTIONS)([frame], [frame])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_reduced_precision_on_cuda_stays_near_fp32(weights, precision):
    rng = np.random.default_rng(9)
    frame0, frame1 = translated_pair(rng, 416, 560, (2.0, 1.0))
    reference = build_flow("liteflownet", weights=weights, device="cuda")([frame0], [frame1])[0]
    reduced = build_flow("liteflownet", weights=weights, device="cuda", precision=precision)
    flow = reduced([frame0], [frame1])[0]
    scale = float(np.linalg.norm(reference, axis=2).mean())
    assert flow.dtype == np.float32 and np.isfinite(flow).all()
    assert epe(flow, reference) < 0.05 * scale + 0.05


@pytest.mark.usefixtures("ray_local")
def test_extract_with_liteflownet_on_real_footage(real_clips, weights, tmp_path):
    """The whole path on a real clip: the flow identity holds the file's sha256, the dataset
    verifies, and another weights file is another dataset (its fingerprint differs)."""
    from cmpdata.config import ExtractConfig
    from cmpdata.filters import FilterConfig
    from cmpdata.io.pairs import PairConfig
    from cmpdata.store.reports import verify_dataset
    from pipelines.extract import RunSettings, extract, flow_identity

    # random weights give near-zero flows: the motion filters would drop every pair
    filters = FilterConfig(shot_cut_threshold=None, static_motion_px=None)
    config = ExtractConfig(
        pairs=PairConfig(short_side=136, max_pairs_per_video=2), flow="liteflownet", filters=filters
    )
    run = RunSettings(workers=1, progress=False, flow_weights=str(weights))
    result = extract([str(real_clips["bikes"])], tmp_path / "ds", config, run)
    assert result.written == 2
    assert verify_dataset(tmp_path / "ds", progress=False).ok
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    manifest = (tmp_path / "ds" / "manifest.json").read_text()
    assert '"liteflownet"' in manifest and sha256 in manifest
    other = write_weights(tmp_path / "other.pytorch", seed=5)
    assert flow_identity(config, run)["weights_sha256"] == sha256
    assert flow_identity(config, RunSettings(flow_weights=str(other)))["weights_sha256"] != sha256


PORT = DATA / "liteflownet" / "port_fixture.pt"


def port_weights(path: Path) -> Path:
    """The fixture's weights, regenerated by its stated rule (README in tests/data/liteflownet)."""
    generator = torch.Generator().manual_seed(20260101)
    state = {}
    for name, shape in FILE_KEYS:
        r = torch.randn(shape, generator=generator)
        if len(shape) == 1:
            state[name] = r * 0.01
        elif name.endswith(("moduleUpflow.weight", "moduleUpcorr.weight")):
            state[name] = r * 0.05 + 0.25
        elif name.endswith(("moduleScaleX.weight", "moduleScaleY.weight")):
            state[name] = r * 0.1 + 1.0
        else:
            state[name] = r * (math.sqrt(2.0) / math.sqrt(shape[1] * shape[2] * shape[3]))
    torch.save(state, path)
    return path


def test_the_flow_is_the_ports_own_on_the_same_weights(tmp_path):
    """Checked against the port's forward pass (run on CPU outside this repository, its CuPy
    correlation replaced by a plain one; see tests/data/liteflownet/README.md)."""
    port = torch.load(PORT, weights_only=True)
    path = port_weights(tmp_path / "network-fixture.pytorch")
    backend = build_flow("liteflownet", weights=path, **OPTIONS)
    stored = torch.load(path, weights_only=True)
    for name, (total, absolute) in port["weight_checksums"].items():  # the port's weights
        value = stored[name].double()
        assert (value.sum().item(), value.abs().sum().item()) == pytest.approx((total, absolute))
    image0, image1 = port["image0"].numpy(), port["image1"].numpy()
    flow = backend([image0], [image1])[0]
    assert np.abs(port["flow"].numpy()).mean() > 1.0  # not a trivial flow
    np.testing.assert_allclose(flow, port["flow"].numpy(), atol=1e-4, rtol=0)
