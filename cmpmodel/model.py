"""The Conditional Motion Propagation network: image encoder + sparse motion encoder + decoder.

::

    image  (B, 3, H, W) ─► image encoder ──► (B, 256, H/8, W/8) ─┐
                                                                 ├─► flow decoder ─► logits
    sparse (B, 4, H, W) ─► flow encoder ───► (B, 16, H/8, W/8) ──┘   (B, 2 * num_bins, h, w)

The logits score ``num_bins`` flow bins for x (first half of the channels) and for y (second
half); :mod:`cmpmodel.loss` turns them into a loss or back into a flow. ``H`` and ``W`` must be
multiples of 8. The plain decoder gives logits at stride 8 (``h = H / 8``), the skip decoder at
stride 2. The image is RGB normalised as :mod:`cmpmodel.data` does it ((pixel - mean) / std on
the 0-255 scale); the guidance map holds the sparse flow in px (channels 0, 1: x, y; zero where
no guidance is given) and the guidance mask twice (channels 2, 3: 1 where given).

Every layer and operation is the original CMP code's (``models/`` of
XiaohangZhan/conditional-motion-propagation), and the modules carry its names
(``image_encoder``, ``flow_encoder``, ``flow_decoder`` and below), so the released models load
into this one (:mod:`cmpmodel.original`). One difference, exact: where the original puts a
convolution with a bias before a batch norm, ours has none (the norm's shift replaces it;
conversion folds the bias into the norm's running mean).

:class:`CMP` takes its three parts as keyword arguments, so a test can pass small ones; the
named variants (:func:`cmp_alexnet`, :func:`cmp_resnet50`, :func:`cmp_tiny`) are rows of one
table fed to :func:`build_model`. Every weight is randomly initialised: CMP is self-supervised
and nothing here ever loads or downloads pretrained weights. After training, the image
encoder is what is kept (:func:`image_encoder_state_dict`, :func:`resnet50_backbone_state_dict`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from cmpdata.errors import ConfigError
from cmpdata.guidance import GuidanceConfig
from cmpdata.registry import Registry
from cmpmodel.loss import FLOW_RANGE, NUM_BINS

STRIDE = 8  # output stride of the image encoders and of the flow encoder (AlexNet: 8 or 32)
STRIDES = (8, 32)  # the strides an AlexNet encoder can have
FEATURE_CHANNELS = 256  # channels of every image encoder's output
SPARSE_CHANNELS = 16  # channels of the flow encoder's output
#: the layout of this project's checkpoints; 1 was the layers before they followed the original
MODEL_FORMAT = 2


def init_weights(module: nn.Module) -> None:
    """He (fan-out) init for every convolution under ``module``, zero biases, BN at (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def conv_bn_relu(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
) -> list[nn.Module]:
    """Convolution (no bias: the BN shift replaces it), batch norm, ReLU: three modules, so a
    sequence of them keeps the original's indices (``0`` conv, ``1`` BN, ``3`` conv ...)."""
    return [
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]


def upsample(x: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize with the corners aligned, as every up-sampling of the original."""
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)


# ----------------------------------------------------------------------------- image encoders


class ImageEncoder(nn.Module, ABC):
    """An image encoder: ``(B, 3, H, W)`` -> ``(B, out_channels, H/8, W/8)``.

    :meth:`features` also returns the stride-2 and stride-4 maps the skip decoder takes
    (``skip_channels`` channels each); :meth:`forward` returns the stride-8 output alone (what
    downstream tasks use).
    """

    out_channels: int = FEATURE_CHANNELS
    skip_channels: tuple[int, int]  # channels of the stride-2 and the stride-4 map
    stride: int = STRIDE  # of the output

    @abstractmethod
    def features(self, image: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        """``((stride-2 map, stride-4 map), output)``; the output ``(B, 256, H/8, W/8)``."""

    def forward(self, image: Tensor) -> Tensor:
        return self.features(image)[1]


class AlexNetBN(ImageEncoder):
    """AlexNet with batch norm, fully convolutional, output stride 8, 256 channels (the
    original's ``alexnet_fcn_8x``); with ``stride=32`` the original's ``alexnet_fcn_32x``
    (conv1 stride 4, pool5 stride 2), the one its released AlexNet models use.

    AlexNet's first stride (4) becomes 2 and pool5 keeps the resolution (stride 1, still 3x3
    so its receptive field is kept); fc6 and fc7 become 3x3 and 1x1 convolutions (4096 wide,
    dropout 0.5 after each, as AlexNet's fully connected layers) and ``conv8``, a 1x1
    convolution with a bias, brings the 4096 channels to 256. Every other convolution is
    followed by BN + ReLU.

    ======  ==========================  =========  ========  ======  ===============
    layer   kernel / stride / padding   channels   dilation  stride  receptive field
    ======  ==========================  =========  ========  ======  ===============
    conv1   11 / 2 / 5                  3 -> 96    1         2       11   (skip, 2)
    pool1   max 3 / 2 / 1                          1         4       15
    conv2   5 / 1 / 2                   96 -> 256  1         4       31   (skip, 4)
    pool2   max 3 / 2 / 1                          1         8       39
    conv3   3 / 1 / 1                   256 -> 384 1         8       55
    conv4   3 / 1 / 1                   384 -> 384 1         8       71
    conv5   3 / 1 / 1                   384 -> 256 1         8       87
    pool5   max 3 / 1 / 1                          1         8       103
    fc6     3 / 1 / 1                   256 -> 4096 1        8       119
    fc7     1 / 1 / 0                   4096 -> 4096 1       8       119
    conv8   1 / 1 / 0                   4096 -> 256 1        8       119
    ======  ==========================  =========  ========  ======  ===============

    Each strided layer maps a side ``s`` to ``ceil(s / 2)``, so the output is exactly
    ``H/8 x W/8`` for multiples of 8.
    """

    skip_channels = (96, 256)

    def __init__(self, fc_width: int = 4096, dropout: float = 0.5, stride: int = STRIDE) -> None:
        super().__init__()
        if stride not in STRIDES:
            raise ConfigError(f"AlexNet's stride is one of {STRIDES}, not {stride}")
        self.stride = stride
        first, last = (2, 1) if stride == 8 else (4, 2)
        self.conv1 = nn.Sequential(*conv_bn_relu(3, 96, 11, stride=first, padding=5))
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = nn.Sequential(*conv_bn_relu(96, 256, 5, padding=2))
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv3 = nn.Sequential(*conv_bn_relu(256, 384, 3, padding=1))
        self.conv4 = nn.Sequential(*conv_bn_relu(384, 384, 3, padding=1))
        self.conv5 = nn.Sequential(*conv_bn_relu(384, 256, 3, padding=1))
        self.pool5 = nn.MaxPool2d(3, stride=last, padding=1)
        self.fc6 = nn.Sequential(*conv_bn_relu(256, fc_width, 3, padding=1))
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = nn.Sequential(*conv_bn_relu(fc_width, fc_width, 1))
        self.drop7 = nn.Dropout(dropout)
        self.conv8 = nn.Conv2d(fc_width, FEATURE_CHANNELS, 1)
        init_weights(self)

    def features(self, image: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        half = self.conv1(image)
        quarter = self.conv2(self.pool1(half))
        x = self.conv5(self.conv4(self.conv3(self.pool2(quarter))))
        x = self.drop6(self.fc6(self.pool5(x)))
        x = self.drop7(self.fc7(x))
        return (half, quarter), self.conv8(x)


_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


class ResNet50Encoder(ImageEncoder):
    """ResNet-50 with layer3 and layer4 dilated (2 and 4) instead of strided, stride 8, then
    ``conv5``: a 1x1 convolution with a bias from 2048 channels to 256.

    The layers are torchvision's ``resnet50`` under torchvision's own names (``conv1, bn1,
    layer1 .. layer4``; no ``fc``), so :func:`resnet50_backbone_state_dict` loads straight
    into a torchvision ResNet-50 (which the downstream tasks start from). Dilation as the
    original sets it: every 3x3 convolution of layer3 at dilation 2 and of layer4 at 4, the
    first block of each included (torchvision's ``replace_stride_with_dilation`` leaves that
    block one step behind). The skip maps are conv1's output after its BN and ReLU (stride 2,
    64 ch) and layer1's (stride 4, 256 ch).
    """

    skip_channels = (64, 256)

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(
            weights=None, replace_stride_with_dilation=[False, True, True]
        )
        for layer, dilation in ((net.layer3, 2), (net.layer4, 4)):
            layer[0].conv2.dilation = (dilation, dilation)
            layer[0].conv2.padding = (dilation, dilation)
        for name in _RESNET_PARTS:
            setattr(self, name, getattr(net, name))
        self.conv5 = nn.Conv2d(net.fc.in_features, FEATURE_CHANNELS, 1)
        init_weights(self.conv5)

    def features(self, image: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        half = self.relu(self.bn1(self.conv1(image)))
        quarter = self.layer1(self.maxpool(half))
        x = self.layer4(self.layer3(self.layer2(quarter)))
        return (half, quarter), self.conv5(x)


class TinyEncoder(ImageEncoder):
    """A small encoder for CPU tests and demos: four 3x3 conv-BN-ReLU, stride 8, then a 1x1
    convolution with a bias to 256 channels, as the paper's encoders end.

    ======  =======================  =================  ======
    layer   kernel / stride / pad    channels           stride
    ======  =======================  =================  ======
    conv1   3 / 2 / 1                3 -> width         2   (skip, 2)
    conv2   3 / 2 / 1                width -> width     4   (skip, 4)
    conv3   3 / 2 / 1                width -> 2 width   8
    conv4   3 / 1 / 1                2 width -> 2 width 8
    conv5   1 / 1 / 0                2 width -> 256     8
    ======  =======================  =================  ======
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"TinyEncoder width must be >= 1, got {width}")
        self.skip_channels = (width, width)
        self.conv1 = nn.Sequential(*conv_bn_relu(3, width, 3, stride=2, padding=1))
        self.conv2 = nn.Sequential(*conv_bn_relu(width, width, 3, stride=2, padding=1))
        self.conv3 = nn.Sequential(*conv_bn_relu(width, 2 * width, 3, stride=2, padding=1))
        self.conv4 = nn.Sequential(*conv_bn_relu(2 * width, 2 * width, 3, padding=1))
        self.conv5 = nn.Conv2d(2 * width, FEATURE_CHANNELS, 1)
        init_weights(self)

    def features(self, image: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor]:
        half = self.conv1(image)
        quarter = self.conv2(half)
        return (half, quarter), self.conv5(self.conv4(self.conv3(quarter)))


# ---------------------------------------------------------------- flow encoder and decoders


class SparseMotionEncoder(nn.Module):
    """The guidance map ``(B, 4, H, W)`` -> ``(B, 16, H/8, W/8)`` (the original's
    ``shallownet8x``; with ``stride=32`` its ``shallownet32x``, the last pool 8 wide).

    conv 5x5 stride 2 -> 16, BN, ReLU, max-pool 2, conv 3x3 -> 16, BN, ReLU, avg-pool 2. The
    max-pool keeps a lone guidance vector alive through the first reduction; the average
    pool then spreads it over its cell.
    """

    out_channels = SPARSE_CHANNELS

    def __init__(self, stride: int = STRIDE) -> None:
        super().__init__()
        self.stride = stride
        self.features = nn.Sequential(
            *conv_bn_relu(4, SPARSE_CHANNELS, 5, stride=2, padding=2),
            nn.MaxPool2d(2, stride=2),
            *conv_bn_relu(SPARSE_CHANNELS, SPARSE_CHANNELS, 3, padding=1),
            nn.AvgPool2d(stride // 4, stride=stride // 4),
        )
        init_weights(self)

    def forward(self, sparse: Tensor) -> Tensor:
        return self.features(sparse)


def branch(in_channels: int, width: int, scale: int, convs: int) -> nn.Sequential:
    """One scale of a decoder: max-pool by ``scale`` (floor: a last row or column that does
    not fill a cell is dropped, as in the original), then ``convs`` 3x3 conv-BN-ReLU."""
    layers: list[nn.Module] = [nn.MaxPool2d(scale, stride=scale)] if scale > 1 else []
    for i in range(convs):
        layers += conv_bn_relu(in_channels if i == 0 else width, width, 3, padding=1)
    return nn.Sequential(*layers)


class FlowDecoder(nn.Module):
    """What both decoders share: one branch per scale on the stride-8 input, each up-sampled
    back to it (bilinear, corners aligned) and concatenated, and a 1x1 ``head`` convolution
    to the logits, which keeps PyTorch's default (small) init so the first logits are near
    uniform and the first loss near ``2 * ln(num_bins)``. The coarse branches carry a
    guidance vector across a whole object; the fine one keeps its edges."""

    skip_channels: tuple[int, int] | None = None
    output_stride: int | None = None  # of the logits; None: the encoders'

    def __init__(
        self, in_channels: int, out_channels: int, width: int, scales: tuple[int, ...], convs: int
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.scales = scales
        for scale in scales:
            setattr(self, f"decoder{scale}", branch(in_channels, width, scale, convs))

    def branches(self, x: Tensor) -> Tensor:
        size = x.shape[-2:]
        outputs = [getattr(self, f"decoder{s}")(x) for s in self.scales]
        return torch.cat([outputs[0]] + [upsample(o, size) for o in outputs[1:]], dim=1)

    def check_skip(self, skip: tuple[Tensor, Tensor] | None) -> None:
        if (skip is None) != (self.skip_channels is None):
            raise ValueError(
                f"decoder built with skip_channels={self.skip_channels} got skip maps "
                f"{None if skip is None else [tuple(t.shape) for t in skip]}"
            )


class PlainDecoder(FlowDecoder):
    """The representation-learning decoder (the original's ``MotionDecoderPlain``): branches
    at scales 1, 2, 4 of two 3x3 conv-BN-ReLU of ``width`` channels each; the head gives the
    logits at stride 8."""

    def __init__(self, in_channels: int, out_channels: int, width: int = 128) -> None:
        super().__init__(in_channels, out_channels, width, scales=(1, 2, 4), convs=2)
        init_weights(self)
        self.head = nn.Conv2d(3 * width, out_channels, 1)

    def forward(self, x: Tensor, skip: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(B, in_channels, h, w)`` -> logits ``(B, out_channels, h, w)``."""
        self.check_skip(skip)
        return self.head(self.branches(x))


class SkipDecoder(FlowDecoder):
    """The decoder of the annotation model (the original's ``MotionDecoderSkipLayer``, the one
    MOFA-Video reuses): branches at scales 1, 2, 4, 8 of three 3x3 conv-BN-ReLU each,
    ``fusion8`` (3x3 to 256), then two steps up: the fused map is up-sampled to the encoder's
    stride-4 map, concatenated with ``skipconv4`` of it (3x3 to 128) and fused (``fusion4``,
    3x3 to 128); the same at stride 2 (``skipconv2`` to 32, ``fusion2`` to 64). The head gives
    the logits at stride 2."""

    output_stride = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        skip_channels: tuple[int, int],
        width: int = 128,
    ) -> None:
        super().__init__(in_channels, out_channels, width, scales=(1, 2, 4, 8), convs=3)
        self.skip_channels = tuple(skip_channels)
        half, quarter = self.skip_channels
        self.fusion8 = nn.Sequential(*conv_bn_relu(4 * width, 256, 3, padding=1))
        self.skipconv4 = nn.Sequential(*conv_bn_relu(quarter, 128, 3, padding=1))
        self.fusion4 = nn.Sequential(*conv_bn_relu(256 + 128, 128, 3, padding=1))
        self.skipconv2 = nn.Sequential(*conv_bn_relu(half, 32, 3, padding=1))
        self.fusion2 = nn.Sequential(*conv_bn_relu(128 + 32, 64, 3, padding=1))
        init_weights(self)
        self.head = nn.Conv2d(64, out_channels, 1)

    def forward(self, x: Tensor, skip: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """``(B, in_channels, h, w)`` + the stride-2 and stride-4 maps -> logits at stride 2."""
        self.check_skip(skip)
        half, quarter = skip
        x = self.fusion8(self.branches(x))
        x = self.fusion4(torch.cat([upsample(x, quarter.shape[-2:]), self.skipconv4(quarter)], 1))
        x = self.fusion2(torch.cat([upsample(x, half.shape[-2:]), self.skipconv2(half)], 1))
        return self.head(x)


# ------------------------------------------------------------------------------------ the model


def check_inputs(image: Tensor, sparse: Tensor, stride: int = STRIDE, min_side: int = 1) -> None:
    """Raise ``ValueError`` unless ``image`` is (B, 3, H, W) and ``sparse`` (B, 4, H, W) with
    H and W multiples of ``stride`` and at least ``min_side``; the message shows both shapes."""
    shapes = f"image {tuple(image.shape)}, sparse {tuple(sparse.shape)}"
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W); got {shapes}")
    if sparse.ndim != 4 or sparse.shape[1] != 4:
        raise ValueError(f"sparse guidance must be (B, 4, H, W); got {shapes}")
    if image.shape[0] != sparse.shape[0]:
        raise ValueError(f"image and sparse guidance differ in batch size: {shapes}")
    if image.shape[2:] != sparse.shape[2:]:
        raise ValueError(f"image and sparse guidance differ in size: {shapes}")
    if image.shape[2] % stride or image.shape[3] % stride:
        raise ValueError(f"height and width must be multiples of {stride}; got {shapes}")
    if min(image.shape[2:]) < min_side:
        raise ValueError(
            f"height and width must be at least {min_side} px (the decoder's coarsest branch "
            f"pools the stride-{stride} features by {min_side // stride}); got {shapes}"
        )


class CMP(nn.Module):
    """Conditional Motion Propagation: image + sparse guidance -> flow-bin logits.

    ``forward(image, sparse)``: ``image`` ``(B, 3, H, W)`` float, normalised RGB; ``sparse``
    ``(B, 4, H, W)`` float guidance map (sparse flow x, y in px; mask, mask). ``H`` and ``W``
    must be multiples of 8 (the encoders' stride; the trainer crops to such sizes). Returns
    logits ``(B, C, H/s, W/s)``, ``s`` the decoder's :attr:`output_stride` (8 plain, 2 skip),
    ``C = 2 * num_bins``: x bins then y bins. Raises ``ValueError`` naming the shapes on any
    mismatch, both when the parts are put together and when called.
    """

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        flow_encoder: SparseMotionEncoder,
        flow_decoder: FlowDecoder,
    ) -> None:
        super().__init__()
        expected = image_encoder.out_channels + flow_encoder.out_channels
        if flow_decoder.in_channels != expected:
            raise ValueError(
                f"decoder takes {flow_decoder.in_channels} channels but the encoders give "
                f"{image_encoder.out_channels} + {flow_encoder.out_channels} = {expected}"
            )
        if flow_decoder.skip_channels not in (None, tuple(image_encoder.skip_channels)):
            raise ValueError(
                f"decoder takes {flow_decoder.skip_channels} skip channels but the image "
                f"encoder gives {image_encoder.skip_channels}"
            )
        if flow_encoder.stride != image_encoder.stride:
            raise ValueError(
                f"the flow encoder has stride {flow_encoder.stride}, the image encoder "
                f"{image_encoder.stride}"
            )
        if flow_decoder.out_channels % 2:
            raise ValueError(
                f"decoder gives {flow_decoder.out_channels} channels; need 2 * num_bins (x and y)"
            )
        self.image_encoder = image_encoder
        self.flow_encoder = flow_encoder
        self.flow_decoder = flow_decoder

    @property
    def num_bins(self) -> int:
        return self.flow_decoder.out_channels // 2

    @property
    def output_stride(self) -> int:
        """The logits' stride: the decoder's (2 for the skip decoder) or the encoders'."""
        return self.flow_decoder.output_stride or self.stride

    @property
    def stride(self) -> int:
        """The encoders' stride: the image's sides must be multiples of it."""
        return self.image_encoder.stride

    @property
    def min_side(self) -> int:
        """The smallest height and width the model takes: one cell of its coarsest branch."""
        return self.stride * max(self.flow_decoder.scales)

    def forward(self, image: Tensor, sparse: Tensor) -> Tensor:
        check_inputs(image, sparse, self.stride, self.min_side)
        skip, features = self.image_encoder.features(image)
        return self._decode(skip, features, sparse)

    def forward_one_image(self, image: Tensor, sparse: Tensor) -> Tensor:
        """The logits of one image ``(1, 3, H, W)`` under each of ``B`` guidance maps
        ``(B, 4, H, W)``: ``forward`` of the image repeated B times, with the image encoded once
        (the annotation's four test motions of a picture cost one encoding). Raises
        ``ValueError`` naming the shapes as ``forward`` does, or when ``image`` is not one."""
        if image.ndim != 4 or image.shape[0] != 1:
            raise ValueError(f"image must be one (1, 3, H, W) picture; got {tuple(image.shape)}")
        batch = len(sparse)
        check_inputs(image.expand(batch, -1, -1, -1), sparse, self.stride, self.min_side)
        (half, quarter), features = self.image_encoder.features(image)
        skip = (half.expand(batch, -1, -1, -1), quarter.expand(batch, -1, -1, -1))
        return self._decode(skip, features.expand(batch, -1, -1, -1), sparse)

    def _decode(self, skip: tuple[Tensor, Tensor], features: Tensor, sparse: Tensor) -> Tensor:
        x = torch.cat([features, self.flow_encoder(sparse)], dim=1)
        return self.flow_decoder(x, skip if self.flow_decoder.skip_channels is not None else None)


# ------------------------------------------------------------------- named configurations


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's shape; a checkpoint carries it."""

    arch: str = "resnet50"  # image encoder, a name in ARCHS: alexnet, resnet50, tiny
    num_bins: int = NUM_BINS  # flow bins per component (x, y): the output has 2 * num_bins ch
    flow_range: float = FLOW_RANGE  # the bins span [-flow_range, flow_range] px (for the loss)
    skip: bool = False  # the skip decoder (encoder maps at strides 2 and 4); logits at stride 2
    tiny_width: int = 32  # channel width of the tiny encoder (ignored by the other archs)
    decoder_width: int = 128  # channels of each decoder branch
    stride: int = STRIDE  # the encoders' output stride: 8, or 32 (AlexNet, plain decoder only)

    def __post_init__(self) -> None:
        ARCHS.get(self.arch)
        if self.num_bins < 2:
            raise ConfigError(f"num_bins must be at least 2, got {self.num_bins}")
        if not self.flow_range > 0:
            raise ConfigError(f"flow_range must be positive, got {self.flow_range}")
        if self.tiny_width < 1 or self.decoder_width < 1:
            raise ConfigError(
                f"widths must be >= 1, got tiny_width={self.tiny_width}, "
                f"decoder_width={self.decoder_width}"
            )
        if self.stride not in STRIDES or (self.stride != STRIDE and self.arch != "alexnet"):
            raise ConfigError(
                f"stride {self.stride}: {self.arch} has stride {STRIDE} (AlexNet also 32)"
            )
        if self.stride != STRIDE and self.skip:
            raise ConfigError(f"the skip decoder needs stride {STRIDE}, not {self.stride}")


@dataclass(frozen=True)
class ArchSettings:
    """The paper's training-data settings that go with an image encoder."""

    crop_size: int  # side of the square random training crop, px (a multiple of 8)
    guidance: GuidanceConfig  # how guidance is drawn for this encoder's training samples


@dataclass(frozen=True)
class Arch:
    """One row of the architecture table: how to build the encoder, and its data settings."""

    encoder: Callable[[ModelConfig], ImageEncoder]
    settings: ArchSettings


ARCHS: Registry[Arch] = Registry("architecture")
ARCHS.register("alexnet")(
    Arch(
        lambda config: AlexNetBN(stride=config.stride), ArchSettings(384, GuidanceConfig.alexnet())
    )
)
ARCHS.register("resnet50")(
    Arch(lambda config: ResNet50Encoder(), ArchSettings(320, GuidanceConfig.resnet()))
)
# Tiny: small crops for CPU runs, ResNet guidance (nms_ks 15 suits small frames; no cap).
ARCHS.register("tiny")(
    Arch(lambda config: TinyEncoder(config.tiny_width), ArchSettings(96, GuidanceConfig.resnet()))
)


def arch_settings(arch: str) -> ArchSettings:
    """The data settings of ``arch``; raises ``ValueError`` listing the choices if unknown."""
    return ARCHS.get(arch).settings


def build_model(config: ModelConfig) -> CMP:
    """A randomly initialised :class:`CMP` of the shape ``config`` describes."""
    image_encoder = ARCHS.get(config.arch).encoder(config)
    flow_encoder = SparseMotionEncoder(config.stride)
    in_channels = image_encoder.out_channels + flow_encoder.out_channels
    out_channels = 2 * config.num_bins
    if config.skip:
        decoder: FlowDecoder = SkipDecoder(
            in_channels, out_channels, image_encoder.skip_channels, config.decoder_width
        )
    else:
        decoder = PlainDecoder(in_channels, out_channels, config.decoder_width)
    return CMP(image_encoder=image_encoder, flow_encoder=flow_encoder, flow_decoder=decoder)


def cmp_alexnet(skip: bool = False) -> CMP:
    """The paper's AlexNet-BN model (train on 384 px crops, :func:`arch_settings`)."""
    return build_model(ModelConfig(arch="alexnet", skip=skip))


def cmp_resnet50(skip: bool = False) -> CMP:
    """The paper's ResNet-50 model (train on 320 px crops, :func:`arch_settings`)."""
    return build_model(ModelConfig(arch="resnet50", skip=skip))


def cmp_tiny(skip: bool = False, width: int = 32) -> CMP:
    """A small model for CPU tests and demos (96 px crops)."""
    return build_model(ModelConfig(arch="tiny", skip=skip, tiny_width=width))


# ------------------------------------------------------------------------------------- export


def image_encoder_state_dict(model: CMP) -> dict[str, Tensor]:
    """The trained image encoder's weights, keyed as in the encoder itself (``conv1.0.weight``,
    ``layer1.0.conv1.weight``, ...): what downstream fine-tuning starts from. Loads
    strictly into a fresh encoder of the same class (``ARCHS.get(arch).encoder(config)``)."""
    return model.image_encoder.state_dict()


def resnet50_backbone_state_dict(encoder: ResNet50Encoder) -> dict[str, Tensor]:
    """The ResNet-50 backbone's weights keyed exactly as torchvision's ``resnet50`` names them.

    ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` then reports only
    ``fc.weight`` and ``fc.bias`` missing (dilation has no weights, so the dilated and the
    standard ResNet-50 share every tensor shape). ``conv5`` (the 1x1 to 256) is not included.
    Raises ``ValueError`` if ``encoder`` is not a :class:`ResNet50Encoder`.
    """
    if not isinstance(encoder, ResNet50Encoder):
        raise ValueError(f"expected a ResNet50Encoder, got {type(encoder).__name__}")
    return {k: v for k, v in encoder.state_dict().items() if not k.startswith("conv5.")}
