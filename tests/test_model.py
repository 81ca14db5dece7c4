"""The CMP network: shapes and strides of every part, boundary errors, configs, export, learning."""

from __future__ import annotations

import pytest
import torch
import torchvision

from cmpmodel.loss import cmp_loss
from cmpmodel.model import (
    ARCHS,
    CMP,
    AlexNetBN,
    ModelConfig,
    PlainDecoder,
    ResNet50Encoder,
    SkipDecoder,
    SparseMotionEncoder,
    TinyEncoder,
    arch_settings,
    build_model,
    cmp_tiny,
    image_encoder_state_dict,
    resnet50_backbone_state_dict,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def inputs(batch: int, height: int, width: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A random normalised image and a guidance map with a few vectors, as the model takes them."""
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(batch, 3, height, width, generator=gen)
    sparse = torch.zeros(batch, 4, height, width)
    rows = torch.randint(0, height, (5,), generator=gen)
    cols = torch.randint(0, width, (5,), generator=gen)
    sparse[:, :2, rows, cols] = torch.randn(batch, 2, 5, generator=gen) * 10
    sparse[:, 2:, rows, cols] = 1.0
    return image, sparse


@pytest.fixture(scope="module")
def models() -> dict[str, CMP]:
    """One model of each arch, eval mode (batch 1 in train mode has no batch statistics)."""
    torch.manual_seed(0)
    return {name: build_model(ModelConfig(arch=name)).eval() for name in ARCHS}


@pytest.mark.parametrize("arch", ["tiny", "alexnet", "resnet50"])
def test_every_arch_gives_198_logits_at_stride_8(models, arch):
    model = models[arch]
    image, sparse = inputs(1, 64, 64)
    with torch.no_grad():
        skip, features = model.image_encoder.features(image)
        logits = model(image, sparse)
    assert features.shape == (1, 256, 8, 8)
    half, quarter = model.image_encoder.skip_channels
    assert [tuple(t.shape) for t in skip] == [(1, half, 32, 32), (1, quarter, 16, 16)]
    assert logits.shape == (1, 198, 8, 8)
    assert model.num_bins == 99 and model.output_stride == 8
    assert torch.isfinite(logits).all()


def test_height_and_width_stay_apart(models):
    image, sparse = inputs(2, 64, 96)
    with torch.no_grad():
        assert models["tiny"](image, sparse).shape == (2, 198, 8, 12)
        assert models["tiny"].flow_encoder(sparse).shape == (2, 16, 8, 12)


def test_the_guidance_changes_the_prediction(models):
    image, sparse = inputs(1, 64, 64)
    with torch.no_grad():
        guided = models["tiny"](image, sparse)
        unguided = models["tiny"](image, torch.zeros_like(sparse))
    assert not torch.allclose(guided, unguided)


@pytest.mark.parametrize("arch", ["tiny", "alexnet", "resnet50"])
def test_skip_variant_gives_logits_at_stride_2(arch):
    model = build_model(ModelConfig(arch=arch, skip=True)).eval()
    with torch.no_grad():
        logits = model(*inputs(1, 64, 96))
    assert logits.shape == (1, 198, 32, 48)
    assert model.output_stride == 2


@pytest.mark.parametrize("skip", [False, True])
def test_tiny_forward_backward_reaches_every_parameter(skip):
    model = cmp_tiny(skip=skip).train()
    image, sparse = inputs(2, 64, 64)
    loss = cmp_loss(model(image, sparse), torch.randn(2, 2, 64, 64) * 5)
    loss.backward()
    assert torch.isfinite(loss)
    unreached = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert unreached == []


def test_a_few_steps_on_one_batch_reduce_the_loss():
    torch.manual_seed(0)
    model = cmp_tiny(width=16).train()
    image, sparse = inputs(2, 64, 64)
    # two rigid parts: the left half moves right, the right half moves up and left
    flow = torch.zeros(2, 2, 64, 64)
    flow[:, 0, :, :32], flow[:, 0, :, 32:], flow[:, 1, :, 32:] = 6.0, -4.0, -3.0
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    losses = []
    for step in range(10):
        loss = cmp_loss(model(image, sparse), flow)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if step == 0:
            unchanged = [n for n, p in model.named_parameters() if torch.equal(p, initial[n])]
            assert unchanged == []
    assert losses[-1] < 0.5 * losses[0]


@pytest.mark.parametrize(
    ("image", "sparse", "message"),
    [
        (torch.zeros(1, 1, 64, 64), torch.zeros(1, 4, 64, 64), r"image \(1, 1, 64, 64\)"),
        (torch.zeros(3, 64, 64), torch.zeros(1, 4, 64, 64), r"image \(3, 64, 64\)"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 2, 64, 64), r"sparse \(1, 2, 64, 64\)"),
        (torch.zeros(2, 3, 64, 64), torch.zeros(1, 4, 64, 64), "batch size"),
        (torch.zeros(1, 3, 64, 64), torch.zeros(1, 4, 64, 72), "differ in size"),
        (torch.zeros(1, 3, 60, 64), torch.zeros(1, 4, 60, 64), r"multiples of 8.*\(1, 3, 60, 64\)"),
        (torch.zeros(1, 3, 64, 68), torch.zeros(1, 4, 64, 68), "multiples of 8"),
    ],
)
def test_bad_inputs_raise_with_their_shapes(models, image, sparse, message):
    with pytest.raises(ValueError, match=message):
        models["tiny"](image, sparse)


def test_parts_can_be_passed_in_and_are_checked():
    # a small decoder of 5 bins on a 16 x 16 image, as a test or a notebook would build one
    encoder, flow_encoder = TinyEncoder(width=4), SparseMotionEncoder()
    model = CMP(
        image_encoder=encoder,
        flow_encoder=flow_encoder,
        flow_decoder=PlainDecoder(in_channels=272, out_channels=10, width=8),
    ).eval()
    with torch.no_grad():
        assert model(*inputs(1, 32, 32)).shape == (1, 10, 4, 4)
    with pytest.raises(ValueError, match=r"takes 200 channels .* 256 \+ 16 = 272"):
        CMP(image_encoder=encoder, flow_encoder=flow_encoder, flow_decoder=PlainDecoder(200, 10))
    with pytest.raises(ValueError, match=r"takes \(64, 256\) skip channels .* gives \(4, 4\)"):
        CMP(
            image_encoder=encoder,
            flow_encoder=flow_encoder,
            flow_decoder=SkipDecoder(272, 10, skip_channels=(64, 256)),
        )
    with pytest.raises(ValueError, match="2 \\* num_bins"):
        CMP(image_encoder=encoder, flow_encoder=flow_encoder, flow_decoder=PlainDecoder(272, 9))


def test_decoder_refuses_a_skip_map_it_was_not_built_for():
    decoder = PlainDecoder(272, 10, width=8).eval()
    with pytest.raises(ValueError, match="skip_channels=None"):
        decoder(torch.zeros(1, 272, 4, 4), (torch.zeros(1, 4, 16, 16), torch.zeros(1, 4, 8, 8)))


def test_config_sets_the_bins_and_rejects_bad_values():
    model = build_model(ModelConfig(arch="tiny", num_bins=11, tiny_width=4, decoder_width=8))
    with torch.no_grad():
        assert model.eval()(*inputs(1, 32, 32)).shape == (1, 22, 4, 4)
    with pytest.raises(ValueError, match=r"unknown architecture 'vgg'.*alexnet, resnet50, tiny"):
        ModelConfig(arch="vgg")
    for bad in ({"num_bins": 1}, {"flow_range": 0.0}, {"tiny_width": 0}, {"decoder_width": 0}):
        with pytest.raises(ValueError):
            ModelConfig(arch="tiny", **bad)


def test_arch_settings_are_the_papers():
    alexnet, resnet = arch_settings("alexnet"), arch_settings("resnet50")
    assert alexnet.crop_size == 384
    assert (alexnet.guidance.nms_ks, alexnet.guidance.max_num_guide) == (41, 150)
    assert resnet.crop_size == 320
    assert (resnet.guidance.nms_ks, resnet.guidance.max_num_guide) == (15, None)
    for name in ARCHS:
        settings = arch_settings(name)
        assert settings.crop_size % 8 == 0
        assert settings.guidance.bg_ratio == pytest.approx(1 / 6400)
    with pytest.raises(ValueError, match="choose one of: alexnet, resnet50, tiny"):
        arch_settings("resnet18")


def test_resnet50_backbone_loads_into_torchvision_with_only_fc_missing(models):
    encoder = models["resnet50"].image_encoder
    assert isinstance(encoder, ResNet50Encoder)
    state = resnet50_backbone_state_dict(encoder)
    reference = torchvision.models.resnet50(weights=None)
    result = reference.load_state_dict(state, strict=False)
    assert result.missing_keys == ["fc.weight", "fc.bias"]
    assert result.unexpected_keys == []
    assert torch.equal(reference.layer4[2].conv3.weight, encoder.layer4[2].conv3.weight)
    assert torch.equal(reference.bn1.running_var, encoder.bn1.running_var)
    with pytest.raises(ValueError, match="TinyEncoder"):
        resnet50_backbone_state_dict(TinyEncoder())


def test_exported_encoder_reloads_and_computes_the_same(models):
    model = models["tiny"]
    fresh = TinyEncoder(width=32).eval()
    fresh.load_state_dict(image_encoder_state_dict(model))
    image, _ = inputs(1, 32, 32)
    with torch.no_grad():
        assert torch.equal(fresh(image), model.image_encoder(image))


def test_alexnet_layers_keep_their_names_and_fc_width():
    encoder = AlexNetBN(fc_width=64)
    names = [name for name, _ in encoder.named_children()]
    assert names[:5] == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    assert encoder.fc6[0].out_channels == encoder.fc7[0].out_channels == 64
    assert encoder.fc6[0].kernel_size == (3, 3) and encoder.fc7[0].kernel_size == (1, 1)


def test_alexnet_at_stride_32_is_the_originals_released_layout():
    model = build_model(ModelConfig(arch="alexnet", stride=32)).eval()
    with torch.no_grad():
        assert model(*inputs(1, 128, 160)).shape == (1, 198, 4, 5)
    assert model.stride == model.output_stride == 32 and model.min_side == 128
    with pytest.raises(ValueError, match="stride 32"):
        ModelConfig(arch="resnet50", stride=32)
    with pytest.raises(ValueError, match="skip decoder"):
        ModelConfig(arch="alexnet", stride=32, skip=True)


def test_an_image_smaller_than_the_coarsest_branch_is_refused_by_size(models):
    skip = build_model(ModelConfig(arch="tiny", skip=True, tiny_width=4, decoder_width=8)).eval()
    assert skip.min_side == 64 and models["tiny"].min_side == 32
    with pytest.raises(ValueError, match=r"at least 64 px.*\(1, 3, 48, 64\)"):
        skip(*inputs(1, 48, 64))
