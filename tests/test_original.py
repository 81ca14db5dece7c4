"""The original CMP's checkpoints: checked against the original code's own forward pass (the
fixtures in tests/data/original_cmp, made by running that code; see the README there), built
from its key names and shapes, converted by the command, and used by propagate, eval and
export-encoder; refusals name the keys."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from test_dataset import make_dataset

from cmpdata.errors import ConfigError
from cmpmodel.cli import main
from cmpmodel.loss import bin_centres, dense_flow
from cmpmodel.model import build_model
from cmpmodel.original import convert_state
from cmpmodel.train import CheckpointError, load_model, save_atomic

pytestmark = pytest.mark.usefixtures("torch_one_thread")

DATA = Path(__file__).parent / "data" / "original_cmp"
CASES = ("resnet50_plain_replearn", "resnet50_skip_semiauto", "alexnet_plain_replearn")
#: the original's key names and shapes, by part (keys relative to the CMP, without module.)
KEYS = json.loads((DATA / "keys.json").read_text())
VARIANTS = {
    "resnet50_plain": ("image_encoder.resnet50", "flow_decoder.plain"),
    "resnet50_skip": ("image_encoder.resnet50", "flow_decoder.skip"),
    "alexnet_plain": ("image_encoder.alexnet", "flow_decoder.plain"),
}


def fixture(name: str) -> dict:
    return torch.load(DATA / f"{name}.pt", weights_only=True)


@pytest.mark.parametrize("name", CASES)
def test_the_converted_model_computes_what_the_original_computes(name):
    case = fixture(name)
    config, state = convert_state(case["state_dict"])
    expected = case["config_module"]
    assert config.num_bins * 2 == expected["output_dim"]
    assert config.skip == bool(expected["skip_layer"])
    assert config.stride == (32 if "32x" in expected["image_encoder"] else 8)
    model = build_model(config).eval()
    model.load_state_dict(state)  # strict: every key used, none missing
    inputs = case["inputs"]
    with torch.no_grad():
        logits = model(inputs["image"], inputs["sparse"])
    scale = case["output"].abs().max().item()
    assert logits.shape == case["output"].shape
    torch.testing.assert_close(logits, case["output"], atol=2e-4 * scale, rtol=1e-4)
    # read back as the original does: expectation over its bin centres, corners aligned
    torch.testing.assert_close(bin_centres(), case["bins"].float(), atol=1e-5, rtol=0)
    flow = dense_flow(logits, inputs["image"].shape[-2:])
    # The convolution kernels' sums differ by CPU: 1e-3 px held on an AMD EPYC, one pixel of
    # 9,216 was 1.13e-3 px off on an Intel Xeon (the skip decoder's fixture).
    torch.testing.assert_close(flow, case["flow"], atol=2e-3, rtol=1e-4)


def random_original(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of the original's names and shapes (prefixed ``module.``), random values."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for part in (*VARIANTS[variant], "sparse_encoder"):
        for key, shape in KEYS[part]:
            if key.endswith("num_batches_tracked"):
                state[f"module.{key}"] = torch.tensor(7)
            elif key.endswith("running_var"):
                state[f"module.{key}"] = torch.rand(shape, generator=generator) + 0.5
            else:
                state[f"module.{key}"] = torch.randn(shape, generator=generator) * 0.05
    return state


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_key_of_the_original_is_used(variant):
    state = random_original(variant)
    config, converted = convert_state(state)
    model = build_model(config)
    model.load_state_dict(converted)
    ours = model.state_dict()
    folded = {}  # running mean -> the conv bias folded into it
    for key in state:
        key = key.removeprefix("module.")
        if key not in ours:  # a convolution bias, folded into the batch norm after it
            prefix, _, index = key.removesuffix(".bias").rpartition(".")
            folded[f"{prefix}.{int(index) + 1}.running_mean"] = key
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key in folded:
            torch.testing.assert_close(ours[key], value - state[f"module.{folded[key]}"])
        elif key in ours:
            assert torch.equal(ours[key], value), key
    assert folded and all(k.endswith(".bias") for k in folded.values())


def test_folding_a_bias_into_the_norm_is_exact():
    state = random_original("resnet50_skip", seed=3)
    for key in state:
        if key.endswith("flow_encoder.features.0.bias"):
            state[key] = torch.linspace(-1, 1, 16)
    config, converted = convert_state(state)
    model = build_model(config).eval()
    model.load_state_dict(converted)
    sparse = torch.zeros(1, 4, 32, 32)
    sparse[0, :, 5, 7] = torch.tensor([3.0, -2.0, 1.0, 1.0])
    conv = torch.nn.Conv2d(4, 16, 5, 2, 2)
    conv.weight.data = state["module.flow_encoder.features.0.weight"]
    conv.bias.data = state["module.flow_encoder.features.0.bias"]
    norm = torch.nn.BatchNorm2d(16).eval()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(norm, name).data = state[f"module.flow_encoder.features.1.{name}"]
    with torch.no_grad():
        ours = model.flow_encoder.features[:2](sparse)
        torch.testing.assert_close(ours, norm(conv(sparse)), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda s: s.pop("module.flow_decoder.head.bias"), "flow_decoder.head.bias"),
        (lambda s: s.update({"module.flow_decoder.extra.weight": torch.zeros(1)}), "extra.weight"),
        (lambda s: s.pop("module.image_encoder.conv5.weight"), "image_encoder.conv5.weight"),
    ],
    ids=["missing", "unexpected", "missing-encoder-key"],
)
def test_a_file_with_other_keys_is_refused_naming_them(edit, named):
    state = random_original("resnet50_plain")
    edit(state)
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        convert_state(state)


def test_a_tensor_of_another_shape_is_refused_naming_it():
    state = random_original("resnet50_plain")
    state["module.flow_decoder.head.weight"] = torch.zeros(198, 385, 1, 1)
    with pytest.raises(ConfigError, match=r"flow_decoder\.head\.weight \(198, 385, 1, 1\)"):
        convert_state(state)


@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> Path:
    """The skip-decoder fixture saved as the original saves a checkpoint, then converted by
    the command."""
    folder = tmp_path_factory.mktemp("original")
    case = fixture("resnet50_skip_semiauto")
    original = folder / "ckpt_iter_42000.pth.tar"
    state = {k: v.contiguous().clone() for k, v in case["state_dict"].items()}
    torch.save({"step": 42000, "state_dict": state, "optimizer": {}}, original)
    out = folder / "semiauto.pt"
    assert main(["convert-original", str(original), "--out", str(out)]) == 0
    return out


def test_the_command_writes_a_checkpoint_the_other_commands_use(converted, real_clips, tmp_path):
    _, checkpoint = load_model(converted)
    assert (
        checkpoint["step"] == 42000 and checkpoint["original"]["file"] == "ckpt_iter_42000.pth.tar"
    )
    assert checkpoint["model_config"]["skip"] is True
    image = tmp_path / "frame.png"
    capture = cv2.VideoCapture(str(real_clips["bikes"]))  # a real camera frame, 640 x 272
    ok, frame = capture.read()
    capture.release()
    assert ok
    Image.fromarray(frame[:, :, ::-1]).save(image)
    picture = tmp_path / "propagate.png"
    argv = ["propagate", "--checkpoint", str(converted), "--image", str(image)]
    assert main([*argv, "--guide", "320,136,6,-2", "--out", str(picture)]) == 0
    assert picture.stat().st_size > 0
    encoder = tmp_path / "encoder.pth"
    assert main(["export-encoder", "--checkpoint", str(converted), "--out", str(encoder)]) == 0
    data = tmp_path / "ds"
    make_dataset(data)
    report = tmp_path / "eval.json"
    assert (
        main(["eval", "--data", str(data), "--checkpoint", str(converted), "--json", str(report)])
        == 0
    )
    assert np.isfinite(json.loads(report.read_text())["methods"]["model"]["epe"])


def test_an_original_checkpoint_given_to_eval_says_to_convert_it(tmp_path):
    path = tmp_path / "ckpt_iter_42000.pth.tar"
    torch.save({"step": 1, "state_dict": random_original("resnet50_plain"), "optimizer": {}}, path)
    with pytest.raises(CheckpointError, match="convert-original"):
        load_model(path)


def test_a_checkpoint_of_the_earlier_layers_is_refused_naming_the_change(tmp_path):
    path = tmp_path / "old.pt"
    model = build_model(convert_state(random_original("resnet50_plain"))[0])
    save_atomic({"model": model.state_dict(), "model_config": {}, "config": {}, "step": 0}, path)
    with pytest.raises(
        CheckpointError, match=r"model format 1.*original CMP's layers.*train it again"
    ):
        load_model(path)


def test_a_file_that_is_not_an_original_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "x.pth.tar"
    torch.save({"weights": [1, 2]}, path)
    assert main(["convert-original", str(path), "--out", str(tmp_path / "y.pt")]) == 2
    assert "no 'state_dict' of tensors" in capsys.readouterr().err
    assert not (tmp_path / "y.pt").exists()
