"""The original CMP project's checkpoints, turned into this project's.

A checkpoint of the original code (XiaohangZhan/conditional-motion-propagation) is a dict
``{'step', 'state_dict', 'optimizer'}`` whose state dict comes from a ``DataParallel``-style
wrapper (every key prefixed ``module.``). The network in :mod:`cmpmodel.model` has the
original's layers and names, so converting is:

1. strip ``module.``; read the architecture from the keys (``image_encoder.layer1...``:
   ResNet-50; ``image_encoder.fc6...``: AlexNet-BN; ``flow_decoder.fusion8...``: the skip
   decoder), the number of bins from the head and the decoder width from its first layer;
2. fold the bias of every convolution that a batch norm follows into that norm: BN(conv(x) +
   b) is BN'(conv(x)) with the running mean ``mu - b``, exactly, and ours has no such bias;
3. load the result strictly into :func:`~cmpmodel.model.build_model` of that configuration:
   a key of neither side, or a tensor of another shape, is refused by name.

What the weights cannot say is taken from the original's configurations and can be given:
the bins' half-range (``fmax``: 50 in every released configuration) and AlexNet's stride (its
released models are ``alexnet_fcn_32x``: stride 32; ``alexnet_fcn_8x`` is stride 8). The
training settings stored with the result (used by ``eval`` to draw guidance) are those of the
original's configuration of that architecture (REFERENCE.md).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cmpdata.errors import ConfigError
from cmpdata.flow.network import some_keys
from cmpmodel.loss import FLOW_RANGE
from cmpmodel.model import MODEL_FORMAT, STRIDE, ModelConfig, build_model
from cmpmodel.train import (
    CheckpointError,
    TrainConfig,
    load_weights,
    plain,
    read_torch_file,
    save_atomic,
)

ALEXNET_RELEASED_STRIDE = 32  # the original's AlexNet configurations: alexnet_fcn_32x


def original_config(
    state: Mapping[str, Tensor], flow_range: float = FLOW_RANGE, alexnet_stride: int | None = None
) -> ModelConfig:
    """The :class:`ModelConfig` of an original state dict (keys without ``module.``).

    Raises :class:`~cmpdata.errors.ConfigError` naming what is missing when the keys are not
    those of an original CMP.
    """
    if "image_encoder.layer1.0.conv1.weight" in state:
        arch, stride = "resnet50", STRIDE
    elif "image_encoder.fc6.0.weight" in state:
        arch = "alexnet"
        stride = ALEXNET_RELEASED_STRIDE if alexnet_stride is None else alexnet_stride
    else:
        raise ConfigError(
            "no ResNet-50 (image_encoder.layer1.0.conv1.weight) nor AlexNet "
            "(image_encoder.fc6.0.weight) image encoder in it"
        )
    for key in ("flow_decoder.head.weight", "flow_decoder.decoder1.0.weight"):
        if key not in state:
            raise ConfigError(f"no {key} in it")
    head = state["flow_decoder.head.weight"]
    return ModelConfig(
        arch=arch,
        num_bins=head.shape[0] // 2,
        flow_range=flow_range,
        skip="flow_decoder.fusion8.0.weight" in state,
        decoder_width=state["flow_decoder.decoder1.0.weight"].shape[0],
        stride=stride,
    )


def fold_biases(state: Mapping[str, Tensor], ours: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with the bias ``P.N.bias`` of every convolution that the batch norm ``P.N+1``
    follows in ``ours`` folded into that norm's running mean (and removed)."""
    folded = dict(state)
    for key in state:
        prefix, _, name = key.rpartition(".")
        if name != "bias" or key in ours or f"{prefix}.weight" not in ours:
            continue
        parent, _, index = prefix.rpartition(".")
        norm = f"{parent}.{int(index) + 1}.running_mean" if index.isdigit() else None
        if norm in ours and norm in folded:
            folded[norm] = folded[norm] - folded.pop(key)
    return folded


def convert_state(
    state: Mapping[str, Tensor], flow_range: float = FLOW_RANGE, alexnet_stride: int | None = None
) -> tuple[ModelConfig, dict[str, Tensor]]:
    """``(config, state dict)`` of this project's model from an original state dict (with or
    without ``module.``); the state dict loads strictly into ``build_model(config)``.

    Raises :class:`~cmpdata.errors.ConfigError` naming the first unexpected and missing keys
    or a tensor of another shape.
    """
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = original_config(state, flow_range, alexnet_stride)
    ours = build_model(config).state_dict()
    converted = fold_biases(state, ours)
    # num_batches_tracked counts training steps; eval never reads it
    for key, value in ours.items():
        if key.endswith("num_batches_tracked") and key not in converted:
            converted[key] = torch.zeros_like(value)
    unexpected = [k for k in converted if k not in ours]
    missing = [k for k in ours if k not in converted]
    if unexpected or missing:
        raise ConfigError(
            f"not an original CMP {config.arch} checkpoint: "
            f"{some_keys(unexpected)} unexpected, {some_keys(missing)} missing"
        )
    shapes = [k for k, v in converted.items() if v.shape != ours[k].shape]
    if shapes:
        k = shapes[0]
        raise ConfigError(
            f"{len(shapes)} tensors of another shape than the original {config.arch} CMP's: "
            f"first {k} {tuple(converted[k].shape)}, expected {tuple(ours[k].shape)}"
        )
    return config, {k: converted[k].to(ours[k].dtype).contiguous() for k in ours}


def convert_original(
    path: str | Path,
    out: str | Path,
    flow_range: float = FLOW_RANGE,
    alexnet_stride: int | None = None,
) -> dict[str, Any]:
    """Write ``out``, this project's checkpoint of the original checkpoint ``path`` (loaded
    with ``weights_only=True``); returns what ``out`` holds but the weights. Raises
    :class:`~cmpmodel.train.CheckpointError` naming ``path`` when it cannot be used."""
    path = Path(path)
    checkpoint = read_torch_file(path)
    state = checkpoint.get("state_dict") if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(
            path, "not an original CMP checkpoint (no 'state_dict' of tensors in it)"
        )
    try:
        config, converted = convert_state(state, flow_range, alexnet_stride)
    except ConfigError as exc:
        raise CheckpointError(path, str(exc)) from None
    model = build_model(config)
    load_weights(model, converted, path)
    train = TrainConfig(
        arch=config.arch, skip=config.skip, decoder_width=config.decoder_width, out=str(out)
    )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    result = {
        "model_format": MODEL_FORMAT,
        "model_config": plain(config),
        "config": plain(train),
        "transform_config": plain(train.transform_config()),
        "step": int(checkpoint.get("step", 0)),
        "original": {"file": path.name, "sha256": digest, "step": checkpoint.get("step")},
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({**result, "model": model.state_dict()}, out)
    return result
