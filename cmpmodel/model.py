"""The Conditional Motion Propagation network: image encoder + sparse motion encoder + decoder.

::

    image  (B, 3, H, W) ─► image encoder ──► (B, 256, H/8, W/8) ─┐
                                                                 ├─► decoder ─► logits
    sparse (B, 4, H, W) ─► sparse encoder ─► (B, 16, H/8, W/8) ──┘   (B, 2 * num_bins, H/8, W/8)

The logits score ``num_bins`` flow bins for x (first half of the channels) and for y (second
half); :mod:`cmpmodel.loss` turns them into a loss or back into a flow. ``H`` and ``W`` must be
multiples of 8. The image is RGB normalised as :mod:`cmpmodel.data` does it ((pixel - mean) /
std on the 0-255 scale); the guidance map holds the sparse flow in px (channels 0, 1: x, y;
zero where no guidance is given) and the guidance mask twice (channels 2, 3: 1 where given).

:class:`CMP` takes its three parts as keyword arguments, so a test can pass small ones; the
named variants (:func:`cmp_alexnet`, :func:`cmp_resnet50`, :func:`cmp_tiny`) are rows of one
table fed to :func:`build_model`. Every weight is randomly initialised: CMP is self-supervised
and nothing here ever loads or downloads pretrained weights. After training, the image
encoder is what is kept (:func:`image_encoder_state_dict`, :func:`resnet50_backbone_state_dict`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import OrderedDict
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

STRIDE = 8  # output stride of every image encoder and of the sparse encoder
FEATURE_CHANNELS = 256  # channels of every image encoder's output
SPARSE_CHANNELS = 16  # channels of the sparse motion encoder's output


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
) -> nn.Sequential:
    """Convolution (no bias: the BN shift replaces it), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


# ----------------------------------------------------------------------------- image encoders


class ImageEncoder(nn.Module, ABC):
    """An image encoder: ``(B, 3, H, W)`` -> ``(B, out_channels, H/8, W/8)``.

    :meth:`features` also returns a stride-4 map of ``skip_channels`` channels for the skip
    decoder; :meth:`forward` returns the stride-8 output alone (what downstream tasks use).
    """

    out_channels: int = FEATURE_CHANNELS
    skip_channels: int

    @abstractmethod
    def features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        """``(skip, output)``: ``(B, skip_channels, H/4, W/4)`` and ``(B, 256, H/8, W/8)``."""

    def forward(self, image: Tensor) -> Tensor:
        return self.features(image)[1]


def projection(in_channels: int) -> nn.Sequential:
    """The 1x1 conv-BN-ReLU that every encoder ends with, to :data:`FEATURE_CHANNELS`.

    BN + ReLU rather than a bare convolution so the 256 image channels arrive at the decoder on
    the same footing as the 16 sparse ones, which also come out of BN + ReLU.
    """
    return conv_bn_relu(in_channels, FEATURE_CHANNELS, 1)


class AlexNetBN(ImageEncoder):
    """AlexNet with batch norm, fully convolutional, output stride 8, 256 channels.

    AlexNet's first stride (4) becomes 2 and pool5 keeps the resolution (stride 1, still 3x3
    so its receptive field is kept); fc6 and fc7 become 3x3 and 1x1 convolutions (4096 wide,
    dropout 0.5 after each, as AlexNet's fully connected layers) and a 1x1 projection brings
    the 4096 channels to 256. Every convolution is followed by BN + ReLU.

    ======  ==========================  =========  ========  ======  ===============
    layer   kernel / stride / padding   channels   dilation  stride  receptive field
    ======  ==========================  =========  ========  ======  ===============
    conv1   11 / 2 / 5                  3 -> 96    1         2       11
    pool1   max 3 / 2 / 1                          1         4       15
    conv2   5 / 1 / 2                   96 -> 256  1         4       31   (skip)
    pool2   max 3 / 2 / 1                          1         8       39
    conv3   3 / 1 / 1                   256 -> 384 1         8       55
    conv4   3 / 1 / 1                   384 -> 384 1         8       71
    conv5   3 / 1 / 1                   384 -> 256 1         8       87
    pool5   max 3 / 1 / 1                          1         8       103
    fc6     3 / 1 / 1                   256 -> 4096 1        8       119
    fc7     1 / 1 / 0                   4096 -> 4096 1       8       119
    proj    1 / 1 / 0                   4096 -> 256 1        8       119
    ======  ==========================  =========  ========  ======  ===============

    Each strided layer maps a side ``s`` to ``ceil(s / 2)``, so the output is exactly
    ``H/8 x W/8`` for multiples of 8. The skip map is conv2's output (stride 4, 256 ch).
    """

    skip_channels = 256

    def __init__(self, fc_width: int = 4096, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(3, 96, 11, stride=2, padding=5)
        self.pool1 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv2 = conv_bn_relu(96, 256, 5, padding=2)
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.conv3 = conv_bn_relu(256, 384, 3, padding=1)
        self.conv4 = conv_bn_relu(384, 384, 3, padding=1)
        self.conv5 = conv_bn_relu(384, 256, 3, padding=1)
        self.pool5 = nn.MaxPool2d(3, stride=1, padding=1)
        self.fc6 = conv_bn_relu(256, fc_width, 3, padding=1)
        self.drop6 = nn.Dropout(dropout)
        self.fc7 = conv_bn_relu(fc_width, fc_width, 1)
        self.drop7 = nn.Dropout(dropout)
        self.proj = projection(fc_width)
        init_weights(self)

    def features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.conv2(self.pool1(self.conv1(image)))
        x = self.conv5(self.conv4(self.conv3(self.pool2(skip))))
        x = self.drop6(self.fc6(self.pool5(x)))
        x = self.drop7(self.fc7(x))
        return skip, self.proj(x)


_RESNET_STEM = ("conv1", "bn1", "relu", "maxpool", "layer1")  # up to the stride-4 skip map
_RESNET_BODY = ("layer2", "layer3", "layer4")


class ResNet50Encoder(ImageEncoder):
    """ResNet-50 with layer3 and layer4 dilated (2 and 4) instead of strided, stride 8.

    ``backbone`` is torchvision's ``resnet50(weights=None, replace_stride_with_dilation=[False,
    True, True])`` without its average pool and classifier, its modules under torchvision's
    own names (``conv1, bn1, layer1 .. layer4``), so :func:`resnet50_backbone_state_dict` loads
    straight into a torchvision ResNet-50 (which the downstream tasks start from). ``proj`` is a
    1x1 conv-BN-ReLU from layer4's 2048 channels to 256. The skip map is layer1's output
    (stride 4, 256 ch).
    """

    skip_channels = 256

    def __init__(self) -> None:
        super().__init__()
        net = torchvision.models.resnet50(
            weights=None, replace_stride_with_dilation=[False, True, True]
        )
        self.backbone = nn.Sequential(
            OrderedDict((name, getattr(net, name)) for name in _RESNET_STEM + _RESNET_BODY)
        )
        self.proj = projection(net.fc.in_features)
        init_weights(self.proj)

    def features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.backbone[: len(_RESNET_STEM)](image)
        return skip, self.proj(self.backbone[len(_RESNET_STEM) :](skip))


class TinyEncoder(ImageEncoder):
    """A small encoder for CPU tests and demos: four 3x3 conv-BN-ReLU, stride 8, 256 channels.

    ======  =======================  =================  ======
    layer   kernel / stride / pad    channels           stride
    ======  =======================  =================  ======
    conv1   3 / 2 / 1                3 -> width         2
    conv2   3 / 2 / 1                width -> width     4   (skip)
    conv3   3 / 2 / 1                width -> 2 width   8
    conv4   3 / 1 / 1                2 width -> 2 width 8
    proj    1 / 1 / 0                2 width -> 256     8
    ======  =======================  =================  ======
    """

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"TinyEncoder width must be >= 1, got {width}")
        self.skip_channels = width
        self.conv1 = conv_bn_relu(3, width, 3, stride=2, padding=1)
        self.conv2 = conv_bn_relu(width, width, 3, stride=2, padding=1)
        self.conv3 = conv_bn_relu(width, 2 * width, 3, stride=2, padding=1)
        self.conv4 = conv_bn_relu(2 * width, 2 * width, 3, padding=1)
        self.proj = projection(2 * width)
        init_weights(self)

    def features(self, image: Tensor) -> tuple[Tensor, Tensor]:
        skip = self.conv2(self.conv1(image))
        return skip, self.proj(self.conv4(self.conv3(skip)))


# ------------------------------------------------------------------ sparse encoder and decoder


class SparseMotionEncoder(nn.Module):
    """The guidance map ``(B, 4, H, W)`` -> ``(B, 16, H/8, W/8)``.

    conv 5x5 stride 2 -> 16, BN, ReLU, max-pool 2, conv 3x3 -> 16, BN, ReLU, avg-pool 2. The
    max-pool keeps a lone guidance vector alive through the first reduction; the average
    pool then spreads it over its cell.
    """

    out_channels = SPARSE_CHANNELS

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            conv_bn_relu(4, SPARSE_CHANNELS, 5, stride=2, padding=2),
            nn.MaxPool2d(2),
            conv_bn_relu(SPARSE_CHANNELS, SPARSE_CHANNELS, 3, padding=1),
            nn.AvgPool2d(2),
        )
        init_weights(self)

    def forward(self, sparse: Tensor) -> Tensor:
        return self.layers(sparse)


class PropagationDecoder(nn.Module):
    """Propagates the sparse motion over the image features: multi-scale branches, 1x1 out.

    Input ``(B, in_channels, h, w)`` (image and sparse features concatenated, stride 8). One
    branch per scale ``s`` in ``scales``: max-pool by ``s`` (ceil mode, so no row is dropped),
    two 3x3 conv-BN-ReLU of ``width`` channels, bilinear upsample back to ``(h, w)``. The
    branches are concatenated (``len(scales) * width`` channels) and a 1x1 convolution gives
    ``out_channels`` logits at stride 8. The coarse branches carry a guidance vector across
    a whole object; the fine one keeps its edges.

    Skip variant (``skip_channels`` set): :meth:`forward` also takes the encoder's stride-4
    map. It is reduced by a 1x1 conv-BN-ReLU to 48 channels (few, so the fine detail refines
    the propagated motion rather than outweighing it); the concatenated branches are
    upsampled bilinearly to its size and concatenated with it; two 3x3 conv-BN-ReLU of
    ``width`` channels fuse the two; the 1x1 output convolution then gives the logits at
    stride 4.

    The output convolution keeps PyTorch's default (small) init so the first logits are near
    uniform and the first loss near ``2 * ln(num_bins)``.
    """

    skip_reduced = 48  # channels the skip map is reduced to before fusion

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        width: int = 128,
        scales: tuple[int, ...] = (1, 2, 4),
        skip_channels: int | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.skip_channels = skip_channels
        self.branches = nn.ModuleList(
            nn.Sequential(
                nn.MaxPool2d(scale, ceil_mode=True) if scale > 1 else nn.Identity(),
                conv_bn_relu(in_channels, width, 3, padding=1),
                conv_bn_relu(width, width, 3, padding=1),
            )
            for scale in scales
        )
        fused = len(scales) * width
        if skip_channels is not None:
            self.skip_reduce = conv_bn_relu(skip_channels, self.skip_reduced, 1)
            self.skip_fuse = nn.Sequential(
                conv_bn_relu(fused + self.skip_reduced, width, 3, padding=1),
                conv_bn_relu(width, width, 3, padding=1),
            )
            fused = width
        init_weights(self)
        self.output = nn.Conv2d(fused, out_channels, 1)

    @property
    def output_stride(self) -> int:
        """Stride of the logits relative to the input image: 8, or 4 with skip features."""
        return STRIDE if self.skip_channels is None else STRIDE // 2

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """``(B, in_channels, h, w)`` [+ skip ``(B, skip_channels, 2h, 2w)``] -> logits."""
        if (skip is None) != (self.skip_channels is None):
            raise ValueError(
                f"decoder built with skip_channels={self.skip_channels} got skip "
                f"{None if skip is None else tuple(skip.shape)}"
            )
        size = x.shape[-2:]
        x = torch.cat(
            [
                F.interpolate(branch(x), size=size, mode="bilinear", align_corners=False)
                for branch in self.branches
            ],
            dim=1,
        )
        if skip is not None:
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.skip_fuse(torch.cat([x, self.skip_reduce(skip)], dim=1))
        return self.output(x)


# ------------------------------------------------------------------------------------ the model


def check_inputs(image: Tensor, sparse: Tensor) -> None:
    """Raise ``ValueError`` unless ``image`` is (B, 3, H, W) and ``sparse`` (B, 4, H, W) with
    H and W multiples of :data:`STRIDE`; the message shows both shapes."""
    shapes = f"image {tuple(image.shape)}, sparse {tuple(sparse.shape)}"
    if image.ndim != 4 or image.shape[1] != 3:
        raise ValueError(f"image must be (B, 3, H, W); got {shapes}")
    if sparse.ndim != 4 or sparse.shape[1] != 4:
        raise ValueError(f"sparse guidance must be (B, 4, H, W); got {shapes}")
    if image.shape[0] != sparse.shape[0]:
        raise ValueError(f"image and sparse guidance differ in batch size: {shapes}")
    if image.shape[2:] != sparse.shape[2:]:
        raise ValueError(f"image and sparse guidance differ in size: {shapes}")
    if image.shape[2] % STRIDE or image.shape[3] % STRIDE:
        raise ValueError(f"height and width must be multiples of {STRIDE}; got {shapes}")


class CMP(nn.Module):
    """Conditional Motion Propagation: image + sparse guidance -> flow-bin logits.

    ``forward(image, sparse)``: ``image`` ``(B, 3, H, W)`` float, normalised RGB; ``sparse``
    ``(B, 4, H, W)`` float guidance map (sparse flow x, y in px; mask, mask). ``H`` and ``W``
    must be multiples of 8 (the encoders' stride; the trainer crops to such sizes). Returns
    logits ``(B, C, H/8, W/8)`` (``(B, C, H/4, W/4)`` with a skip decoder, see
    :attr:`output_stride`), ``C = 2 * num_bins``: x bins then y bins. Raises ``ValueError``
    naming the shapes on any mismatch, both when the parts are put together and when called.
    """

    def __init__(
        self,
        *,
        image_encoder: ImageEncoder,
        sparse_encoder: SparseMotionEncoder,
        decoder: PropagationDecoder,
    ) -> None:
        super().__init__()
        expected = image_encoder.out_channels + sparse_encoder.out_channels
        if decoder.in_channels != expected:
            raise ValueError(
                f"decoder takes {decoder.in_channels} channels but the encoders give "
                f"{image_encoder.out_channels} + {sparse_encoder.out_channels} = {expected}"
            )
        if decoder.skip_channels not in (None, image_encoder.skip_channels):
            raise ValueError(
                f"decoder takes {decoder.skip_channels} skip channels but the image encoder "
                f"gives {image_encoder.skip_channels}"
            )
        if decoder.out_channels % 2:
            raise ValueError(
                f"decoder gives {decoder.out_channels} channels; need 2 * num_bins (x and y)"
            )
        self.image_encoder = image_encoder
        self.sparse_encoder = sparse_encoder
        self.decoder = decoder

    @property
    def num_bins(self) -> int:
        return self.decoder.out_channels // 2

    @property
    def output_stride(self) -> int:
        return self.decoder.output_stride

    def forward(self, image: Tensor, sparse: Tensor) -> Tensor:
        check_inputs(image, sparse)
        skip, features = self.image_encoder.features(image)
        x = torch.cat([features, self.sparse_encoder(sparse)], dim=1)
        return self.decoder(x, skip if self.decoder.skip_channels is not None else None)


# ------------------------------------------------------------------- named configurations


@dataclass(frozen=True)
class ModelConfig:
    """Everything that decides the network's shape; a checkpoint carries it."""

    arch: str = "resnet50"  # image encoder, a name in ARCHS: alexnet, resnet50, tiny
    num_bins: int = NUM_BINS  # flow bins per component (x, y): the output has 2 * num_bins ch
    flow_range: float = FLOW_RANGE  # the bins span [-flow_range, flow_range] px (for the loss)
    skip: bool = False  # decoder fuses the encoder's stride-4 features; logits at stride 4
    tiny_width: int = 32  # channel width of the tiny encoder (ignored by the other archs)
    decoder_width: int = 128  # channels of each decoder branch

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
    Arch(lambda config: AlexNetBN(), ArchSettings(384, GuidanceConfig.alexnet()))
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
    sparse_encoder = SparseMotionEncoder()
    decoder = PropagationDecoder(
        in_channels=image_encoder.out_channels + sparse_encoder.out_channels,
        out_channels=2 * config.num_bins,
        width=config.decoder_width,
        skip_channels=image_encoder.skip_channels if config.skip else None,
    )
    return CMP(image_encoder=image_encoder, sparse_encoder=sparse_encoder, decoder=decoder)


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
    ``backbone.layer1.0.conv1.weight``, ...): what downstream fine-tuning starts from. Loads
    strictly into a fresh encoder of the same class (``ARCHS.get(arch).encoder(config)``)."""
    return model.image_encoder.state_dict()


def resnet50_backbone_state_dict(encoder: ResNet50Encoder) -> dict[str, Tensor]:
    """The ResNet-50 backbone's weights keyed exactly as torchvision's ``resnet50`` names them.

    ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` then reports only
    ``fc.weight`` and ``fc.bias`` missing (dilation has no weights, so the dilated and the
    standard ResNet-50 share every tensor shape). The 1x1 projection to 256 is not included.
    Raises ``ValueError`` if ``encoder`` is not a :class:`ResNet50Encoder`.
    """
    if not isinstance(encoder, ResNet50Encoder):
        raise ValueError(f"expected a ResNet50Encoder, got {type(encoder).__name__}")
    return encoder.backbone.state_dict()
