"""LiteFlowNet (Hui, Tang and Loy, CVPR 2018): the estimator the CMP paper's flows came from.

This is an implementation in plain PyTorch (CPU and CUDA, no custom kernels) that loads the
weights most people have: the ``network-default.pytorch``, ``network-sintel.pytorch`` and
``network-kitti.pytorch`` files of the widely used PyTorch port of LiteFlowNet (conversions of
the authors' Caffe models; research, non-commercial use only: see the README). Those files hold
212 tensors (5,381,969 values) named ``moduleFeatures.moduleOne.0.weight`` ...; the port's
later code renames ``module`` to ``net`` when loading, and either spelling is accepted here.
Nothing is ever downloaded: the file is the user's.

What the network computes (the facts of the paper and the port, in our own code):

- **Input**: each frame as BGR on the 0-1 scale minus a fixed mean per channel, one set for
  the first frame and one for the second (:data:`MEANS`); both resized (bilinear, half-pixel
  centres) to the next multiple of 32 in each direction.
- **Features**: a six-level pyramid (strides 1, 2, 4, 8, 16, 32; 32, 32, 64, 96, 128, 192
  channels), convolutions with LeakyReLU(0.1), shared by both frames; the frames themselves
  are resized to every level for the regularisation.
- **Coarse to fine**, levels 6 down to 2, each with three steps on a flow kept in units of
  1/20 px of the input (so a level's flow in its own pixels is the kept flow times
  ``20 / 2**(level - 1)``):

  1. *matching*: the previous flow is up-sampled 2x by a learned transposed convolution
     (values kept), the second frame's features are warped by it, a correlation of
     displacements up to 3 steps (:func:`correlation`; steps of 2 px at levels 3 and 2,
     where it is computed at every other pixel and up-sampled by a learned transposed
     convolution) goes through four convolutions to a flow residual;
  2. *sub-pixel refinement*: the features again, warped by the new flow, with the flow, give a
     second residual;
  3. *regularisation*: a feature-driven local convolution: per pixel, weights over a k x k
     neighbourhood (softmax of ``-d**2`` of predicted distances) average the flow around it;
     the result replaces the flow.

- **Output**: level 2's flow (half the network's input size) times 20, resized bilinearly to
  the frame and its vectors scaled by the resize factors.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from cmpdata.errors import FlowWeightsError
from cmpdata.flow.base import register_flow
from cmpdata.flow.network import NetworkFlow

if TYPE_CHECKING:
    import torch

#: per-channel means (B, G, R, on the 0-1 scale) subtracted from the first and second frame
MEANS = ((0.411618, 0.434631, 0.454253), (0.410782, 0.433645, 0.452793))
#: smallest height and width accepted, as for RAFT
MIN_SIDE = 16
#: the network's input sides are multiples of this (its coarsest level has stride 32)
SIZE_MULTIPLE = 32
#: the kept flow is in units of 1/FLOW_DIVISOR px of the network's input
FLOW_DIVISOR = 20.0
#: correlation: displacements of -3 .. 3 steps in x and y, 49 channels
MAX_STEPS = 3
LEVELS = (2, 3, 4, 5, 6)  # index i of every per-level module list is level i + 2
_CHANNELS = {1: 32, 2: 32, 3: 64, 4: 96, 5: 128, 6: 192}  # feature channels of each level
_KERNEL = {2: 7, 3: 5, 4: 5, 5: 3, 6: 3}  # last conv of matching/sub-pixel; regularisation's k
_CORRELATION_STRIDE = {2: 2, 3: 2, 4: 1, 5: 1, 6: 1}
_FILE_NAME = re.compile(r"(?:module|net)([A-Z][A-Za-z]*)")


def level_scale(level: int) -> float:
    """What the kept flow (1/20 px of the input) is multiplied by to be in px of ``level``."""
    return FLOW_DIVISOR / 2 ** (level - 1)


def network_size(height: int, width: int) -> tuple[int, int]:
    """The size (H, W) the network sees: each side rounded up to a multiple of 32."""
    return (
        -(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE,
        -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE,
    )


def our_key(file_key: str) -> str:
    """A weights file's key as this module names it: ``moduleFeatures.moduleOne.0.weight``
    (or the port's later ``netFeatures.netOne.0.weight``) -> ``features.one.0.weight``,
    ``moduleScaleX`` -> ``scale_x``."""
    return _FILE_NAME.sub(lambda m: re.sub(r"(?<!^)([A-Z])", r"_\1", m.group(1)).lower(), file_key)


def correlation(first: torch.Tensor, second: torch.Tensor, stride: int = 1) -> torch.Tensor:
    """LiteFlowNet's cost volume: ``(N, 49, ceil(H / stride), ceil(W / stride))`` from two
    ``(N, C, H, W)`` feature maps.

    Output pixel ``(y, x)`` sits at input pixel ``(y * stride, x * stride)``; its channel
    ``(j + 3) * 7 + (i + 3)`` holds the mean over channels of ``first[:, :, Y, X] *
    second[:, :, Y + j * stride, X + i * stride]`` for ``i, j`` in ``-3 .. 3`` (``x`` steps
    inner), with zeros outside ``second``.
    """
    import torch
    import torch.nn.functional as F

    reach = MAX_STEPS * stride
    height, width = first.shape[2:]
    padded = F.pad(second, (reach, reach, reach, reach))
    anchor = first[:, :, ::stride, ::stride]
    volume = []
    for j in range(-MAX_STEPS, MAX_STEPS + 1):
        for i in range(-MAX_STEPS, MAX_STEPS + 1):
            top, left = reach + j * stride, reach + i * stride
            moved = padded[:, :, top : top + height : stride, left : left + width : stride]
            volume.append((anchor * moved).mean(dim=1))
    return torch.stack(volume, dim=1)


def backward_warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """``out[:, :, y, x] = image[:, :, y + v, x + u]`` (bilinear, zeros outside) for a flow
    ``(N, 2, H, W)`` of ``(u, v)`` in px of ``image``'s grid."""
    import torch
    import torch.nn.functional as F

    n, _, height, width = image.shape
    ys = torch.linspace(-1.0, 1.0, height, device=image.device, dtype=flow.dtype)
    xs = torch.linspace(-1.0, 1.0, width, device=image.device, dtype=flow.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1)
    grid = grid.unsqueeze(0).expand(n, -1, -1, -1)
    step = torch.tensor(
        [2.0 / max(width - 1, 1), 2.0 / max(height - 1, 1)], device=flow.device, dtype=flow.dtype
    )
    grid = grid + flow.permute(0, 2, 3, 1) * step
    return F.grid_sample(
        image, grid.to(image.dtype), mode="bilinear", padding_mode="zeros", align_corners=True
    )


def build_network() -> torch.nn.Module:
    """LiteFlowNet's modules, randomly initialised, named as :func:`our_key` names the file's."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def convs(*layers: tuple[int, int, int | tuple[int, int], int]) -> nn.Sequential:
        """Convolutions (in, out, kernel, stride), 'same' padding, a LeakyReLU(0.1) after each."""
        modules: list[nn.Module] = []
        for c_in, c_out, kernel, stride in layers:
            k = (kernel, kernel) if isinstance(kernel, int) else kernel
            modules += [
                nn.Conv2d(c_in, c_out, k, stride, ((k[0] - 1) // 2, (k[1] - 1) // 2)),
                nn.LeakyReLU(0.1),
            ]
        return nn.Sequential(*modules)

    def head(*layers: tuple[int, int, int]) -> nn.Sequential:
        """Convolutions with LeakyReLU between them and none after the last (a prediction)."""
        sequence = convs(*((c_in, c_out, k, 1) for c_in, c_out, k in layers))
        return nn.Sequential(*list(sequence)[:-1])

    def upsample(channels: int) -> nn.ConvTranspose2d:
        return nn.ConvTranspose2d(channels, channels, 4, 2, 1, groups=channels, bias=False)

    class Features(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.one = convs((3, 32, 7, 1))
            self.two = convs((32, 32, 3, 2), (32, 32, 3, 1), (32, 32, 3, 1))
            self.thr = convs((32, 64, 3, 2), (64, 64, 3, 1))
            self.fou = convs((64, 96, 3, 2), (96, 96, 3, 1))
            self.fiv = convs((96, 128, 3, 2))
            self.six = convs((128, 192, 3, 2))

        def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
            levels = []
            x = image
            for stage in (self.one, self.two, self.thr, self.fou, self.fiv, self.six):
                x = stage(x)
                levels.append(x)
            return levels  # levels 1 .. 6

    class Matching(nn.Module):
        def __init__(self, level: int) -> None:
            super().__init__()
            self.level = level
            if level == 2:
                self.feat = convs((32, 64, 1, 1))
            if level < 6:
                self.upflow = upsample(2)
            if _CORRELATION_STRIDE[level] > 1:
                self.upcorr = upsample(49)
            self.main = head((49, 128, 3), (128, 64, 3), (64, 32, 3), (32, 2, _KERNEL[level]))

        def forward(self, first, second, flow):
            if self.level == 2:
                first, second = self.feat(first), self.feat(second)
            if flow is not None:
                flow = self.upflow(flow)
                second = backward_warp(second, flow * level_scale(self.level))
            stride = _CORRELATION_STRIDE[self.level]
            volume = F.leaky_relu(correlation(first, second, stride), 0.1)
            if stride > 1:
                volume = self.upcorr(volume)
            residual = self.main(volume)
            return residual if flow is None else flow + residual

    class Subpixel(nn.Module):
        def __init__(self, level: int) -> None:
            super().__init__()
            self.level = level
            channels = 64 if level == 2 else _CHANNELS[level]
            if level == 2:
                self.feat = convs((32, 64, 1, 1))
            self.main = head(
                (2 * channels + 2, 128, 3), (128, 64, 3), (64, 32, 3), (32, 2, _KERNEL[level])
            )

        def forward(self, first, second, flow):
            if self.level == 2:
                first, second = self.feat(first), self.feat(second)
            warped = backward_warp(second, flow * level_scale(self.level))
            return flow + self.main(torch.cat([first, warped, flow], dim=1))

    class Regularization(nn.Module):
        def __init__(self, level: int) -> None:
            super().__init__()
            self.level = level
            k = _KERNEL[level]
            channels = _CHANNELS[level]
            if level < 5:
                self.feat = convs((channels, 128, 1, 1))
                channels = 128
            self.main = convs(
                *(
                    (c_in, c_out, 3, 1)
                    for c_in, c_out in [
                        (channels + 3, 128),
                        (128, 128),
                        (128, 64),
                        (64, 64),
                        (64, 32),
                        (32, 32),
                    ]
                )
            )
            if level < 5:  # separable: k x 1 then 1 x k
                self.dist = nn.Sequential(
                    nn.Conv2d(32, k * k, (k, 1), 1, ((k - 1) // 2, 0)),
                    nn.Conv2d(k * k, k * k, (1, k), 1, (0, (k - 1) // 2)),
                )
            else:
                self.dist = nn.Sequential(nn.Conv2d(32, k * k, k, 1, (k - 1) // 2))
            self.scale_x = nn.Conv2d(k * k, 1, 1)
            self.scale_y = nn.Conv2d(k * k, 1, 1)

        def forward(self, image0, image1, first, flow):
            k = _KERNEL[self.level]
            warped = backward_warp(image1, flow * level_scale(self.level))
            difference = (image0 - warped).pow(2).sum(dim=1, keepdim=True).sqrt().detach()
            if self.level < 5:
                first = self.feat(first)
            centred = flow - flow.mean(dim=(2, 3), keepdim=True)
            distance = self.dist(self.main(torch.cat([difference, centred, first], dim=1)))
            distance = -distance.pow(2)
            weights = (distance - distance.amax(dim=1, keepdim=True)).exp()
            divisor = weights.sum(dim=1, keepdim=True).reciprocal()
            shape = weights.shape

            def smoothed(component: torch.Tensor, scale: nn.Conv2d) -> torch.Tensor:
                neighbours = F.unfold(component, k, padding=(k - 1) // 2).view(shape)
                return scale(weights * neighbours) * divisor

            return torch.cat(
                [smoothed(flow[:, :1], self.scale_x), smoothed(flow[:, 1:], self.scale_y)], dim=1
            )

    class LiteFlowNet(nn.Module):
        """``(first, second)`` normalised ``(N, 3, H, W)`` (multiples of 32) -> level 2's flow
        ``(N, 2, H/2, W/2)`` in px of the input."""

        def __init__(self) -> None:
            super().__init__()
            self.features = Features()
            self.matching = nn.ModuleList(Matching(level) for level in LEVELS)
            self.subpixel = nn.ModuleList(Subpixel(level) for level in LEVELS)
            self.regularization = nn.ModuleList(Regularization(level) for level in LEVELS)

        def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
            features0, features1 = self.features(first), self.features(second)
            images0, images1 = [first], [second]
            for level in range(2, 7):
                size = features0[level - 1].shape[2:]
                for images in (images0, images1):
                    images.append(
                        F.interpolate(images[-1], size=size, mode="bilinear", align_corners=False)
                    )
            flow = None
            for level in reversed(LEVELS):
                i = level - 2
                f0, f1 = features0[level - 1], features1[level - 1]
                flow = self.matching[i](f0, f1, flow)
                flow = self.subpixel[i](f0, f1, flow)
                flow = self.regularization[i](images0[level - 1], images1[level - 1], f0, flow)
            return flow * FLOW_DIVISOR

    return LiteFlowNet()


@register_flow("liteflownet")
class LiteFlowNetFlow(NetworkFlow):
    """LiteFlowNet with the port's weights (``weights``: a ``network-*.pytorch`` file); the
    other settings as :class:`~cmpdata.flow.network.NetworkFlow`'s. Frames of at least
    :data:`MIN_SIDE` px a side, as for RAFT (the network sees them resized to multiples of 32
    in any case)."""

    min_side = MIN_SIDE

    def build(self) -> torch.nn.Module:
        return build_network()

    @property
    def network_name(self) -> str:
        return "LiteFlowNet (the network-*.pytorch files of its PyTorch port)"

    def default_weights(self) -> Path:
        raise FlowWeightsError(
            "liteflownet needs weights: pass --flow-weights FILE (weights=FILE in Python), "
            "a network-default/-sintel/-kitti.pytorch file of the PyTorch LiteFlowNet port "
            "(research use only; see the README). Nothing is downloaded."
        )

    def fit_state(self, state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
        return {our_key(key): value for key, value in state.items()}

    def infer(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        import torch
        import torch.nn.functional as F

        height, width = first.shape[2:]
        size = network_size(height, width)
        inputs = []
        for frames, mean in zip((first, second), MEANS, strict=True):
            bgr = frames.flip(1) / 255.0 - torch.tensor(mean, device=frames.device).view(1, 3, 1, 1)
            if size != (height, width):
                bgr = F.interpolate(bgr, size=size, mode="bilinear", align_corners=False)
            inputs.append(bgr)
        flow = self.model(*inputs)
        flow = F.interpolate(flow, size=(height, width), mode="bilinear", align_corners=False)
        factors = torch.tensor([width / size[1], height / size[0]], device=flow.device)
        return flow * factors.view(1, 2, 1, 1).to(flow.dtype)
