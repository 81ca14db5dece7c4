"""The ``cmpmodel`` command: train, eval, probe, propagate, serve, export-encoder,
convert-original.

Each command parses its arguments and calls one library function. A user's mistake (a bad
option, a missing or unusable path or checkpoint) prints one line and exits with status 2,
nothing done; an expected failure during the work (a damaged sample met in training, a failed
write) prints one line naming the file and exits with status 1. Any other error is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cmpdata.errors import ConfigError, UsageError
from cmpdata.options import Parser, load_options_file, run_command
from cmpdata.paths import check_output_file
from cmpmodel import __version__
from cmpmodel.evaluate import evaluate, format_table, plot_curve
from cmpmodel.interactive import MAX_SIDE
from cmpmodel.probe import LR, STEPS, format_probe, probe
from cmpmodel.propagate import propagate
from cmpmodel.train import TrainConfig, export_encoder, train

# Command-line options that override a TrainConfig field of the same name when given.
_TRAIN_OVERRIDES = (
    "data",
    "out",
    "arch",
    "iters",
    "batch_size",
    "lr",
    "workers",
    "crop",
    "loss_stride",
    "random_guides",
    "seed",
    "val_every",
    "val_samples",
    "tensorboard",  # --no-tensorboard: False when given, None (not given) otherwise
)


def _default(field: str) -> str:
    """`` (default: X)`` for a :class:`TrainConfig` field, for ``--help``."""
    return f" (default: {TrainConfig.__dataclass_fields__[field].default})"


def read_train_config(args: argparse.Namespace) -> Any:
    """The :class:`TrainConfig` of ``cmpmodel train``: defaults, then the YAML
    file's keys, then the options given; :class:`ConfigError` for a bad value and
    :class:`UsageError` for an unreadable file or an unknown key."""
    values: dict[str, Any] = {}
    if args.config is not None:
        loaded = load_options_file(args.config)
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise UsageError(
                f"{args.config}: unknown keys {unknown}; TrainConfig has {sorted(known)}"
            )
        values.update(loaded)
    values.update({k: getattr(args, k) for k in _TRAIN_OVERRIDES if getattr(args, k) is not None})
    for flag in ("resume", "skip_damaged"):
        if getattr(args, flag):
            values[flag] = True
    if not values.get("data"):
        raise UsageError("no training data: give --data DIR or 'data' in --config")
    try:
        return TrainConfig(**values)
    except TypeError as exc:  # a key of the wrong kind, e.g. a list where a number goes
        raise ConfigError(f"bad training configuration: {exc}") from None


def cmd_train(args: argparse.Namespace) -> int:
    summary = train(read_train_config(args))
    print(json.dumps(summary))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_output_file(args.json, (".json",))
    result = evaluate(args.data, args.checkpoint, args.split, args.max_samples, args.guidance_seed)
    print(format_table(result))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        picture = plot_curve(result, Path(args.json).with_suffix(".png"))
        print(f"{args.json}, {picture}")
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    if args.json is not None:
        check_output_file(args.json, (".json",))
    result = probe(args.data, args.checkpoint, args.steps, args.lr, args.max_samples, args.seed)
    print(format_probe(result))
    if args.json is not None:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def parse_guide(text: str) -> tuple[float, float, float, float]:
    """``"X,Y,DX,DY"`` -> four floats (px)."""
    parts = text.split(",")
    try:
        x, y, dx, dy = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected X,Y,DX,DY (four numbers), got {text!r}"
        ) from None
    return x, y, dx, dy


def port_number(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number 0..65535, got {text!r}")
    return port


def cmd_propagate(args: argparse.Namespace) -> int:
    propagate(args.checkpoint, args.image, args.guide, args.out)
    print(args.out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from cmpmodel.serve import serve

    serve(args.checkpoint, args.host, args.port, args.data, args.max_side)
    return 0


def cmd_export_encoder(args: argparse.Namespace) -> int:
    check_output_file(args.out)
    keys = export_encoder(args.checkpoint, args.out)
    print(f"{args.out}: {len(keys)} tensors")
    return 0


def cmd_convert_original(args: argparse.Namespace) -> int:
    from cmpmodel.original import convert_original

    check_output_file(args.out, (".pt",))
    result = convert_original(args.checkpoint, args.out, args.fmax, args.alexnet_stride)
    config = result["model_config"]
    decoder = "skip" if config["skip"] else "plain"
    print(
        f"{args.out}: {config['arch']} (stride {config['stride']}), {decoder} decoder, "
        f"{config['num_bins']} bins over +-{config['flow_range']:g} px, "
        f"step {result['step']} of the original"
    )
    return 0


def build_parser() -> Parser:
    parser = Parser(
        prog="cmpmodel", description="Train and evaluate Conditional Motion Propagation models."
    )
    parser.add_argument("--version", action="version", version=f"cmpmodel {__version__}")

    train = parser.command("train", help="train CMP (torchrun for several processes)")
    train.add_argument("--data", nargs="+", help="dataset directories")
    train.add_argument(
        "--out", help="run directory (log.csv, pictures/, checkpoint.pt, tensorboard/)"
    )
    train.add_argument("--config", help="YAML file of TrainConfig keys")
    train.add_argument("--arch", help=f"image encoder: alexnet, resnet50, tiny{_default('arch')}")
    train.add_argument(
        "--iters", type=int, help=f"optimizer steps in the whole run{_default('iters')}"
    )
    train.add_argument(
        "--batch-size", type=int, help=f"samples per process{_default('batch_size')}"
    )
    train.add_argument("--lr", type=float, help="base learning rate (default: 0.1 x batch/160)")
    train.add_argument(
        "--workers", type=int, help=f"DataLoader workers per process{_default('workers')}"
    )
    train.add_argument(
        "--crop",
        type=int,
        help="training crop side, px, a multiple of 8 (default: the arch's, 320 for "
        "resnet50, 384 for alexnet, 96 for tiny)",
    )
    train.add_argument(
        "--loss-stride",
        type=int,
        help="score every n-th pixel in each direction (default 1, the paper's; "
        "4 makes the loss ~16x cheaper, for CPU runs)",
    )
    train.add_argument(
        "--random-guides",
        type=int,
        metavar="K",
        help="guidance of each crop: k pixels at random, k uniform in 1..K, instead of the "
        f"paper's sampler (0){_default('random_guides')}",
    )
    train.add_argument("--seed", type=int, help=f"seed of the run{_default('seed')}")
    train.add_argument(
        "--val-every",
        type=int,
        metavar="N",
        help="every N steps and at the last, log the model's and the nearest-guide "
        "baseline's EPE (px) on the val split, as eval scores them; 0: never"
        + _default("val_every"),
    )
    train.add_argument(
        "--val-samples",
        type=int,
        metavar="N",
        help=f"validate on the val split's first N samples{_default('val_samples')}",
    )
    train.add_argument(
        "--no-tensorboard",
        dest="tensorboard",
        action="store_false",
        default=None,
        help="do not write RUN/tensorboard (written by default when tensorboard is installed)",
    )
    train.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    train.add_argument(
        "--skip-damaged",
        action="store_true",
        help="leave out shards that are damaged (checked against the manifest), with a warning",
    )
    train.set_defaults(func=cmd_train)

    ev = parser.command("eval", help="EPE of a model and of baselines on a split")
    ev.add_argument("--data", nargs="+", required=True, help="dataset directories")
    ev.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    ev.add_argument("--split", default="val", choices=("train", "val"), help="split to evaluate")
    ev.add_argument("--max-samples", type=int, help="evaluate at most N samples (default: all)")
    ev.add_argument("--guidance-seed", type=int, default=0, help="seed of the guidance draws")
    ev.add_argument(
        "--json", help="also write the result to this JSON file, and its curve to a PNG beside"
    )
    ev.set_defaults(func=cmd_eval)

    pr = parser.command(
        "probe",
        help="linear probe of the image encoder (moving object vs background), against the "
        "same encoder at random init",
    )
    pr.add_argument(
        "--data", nargs="+", required=True, help="dataset directories of synthetic clips"
    )
    pr.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    pr.add_argument(
        "--steps", type=int, default=STEPS, help=f"Adam steps of the head (default: {STEPS})"
    )
    pr.add_argument(
        "--lr", type=float, default=LR, help=f"Adam learning rate of the head (default: {LR:g})"
    )
    pr.add_argument("--max-samples", type=int, help="at most N frames of each split (default: all)")
    pr.add_argument(
        "--seed", type=int, default=0, help="seed of the random encoder and of the head's batches"
    )
    pr.add_argument("--json", help="also write the result to this JSON file")
    pr.set_defaults(func=cmd_probe)

    prop = parser.command("propagate", help="propagate given guides over one image")
    prop.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    prop.add_argument("--image", required=True, help="image file to propagate over")
    prop.add_argument(
        "--guide",
        required=True,
        nargs="+",
        type=parse_guide,
        metavar="X,Y,DX,DY",
        help="a point of the image and its motion, px",
    )
    prop.add_argument("--out", required=True, help="PNG to write")
    prop.set_defaults(func=cmd_propagate)

    srv = parser.command(
        "serve",
        help="a local web page: draw guides and see the propagated motion; click an object "
        "and get its mask",
    )
    srv.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint.pt to start with (the other .pt files of its folder can be chosen)",
    )
    srv.add_argument("--port", type=port_number, default=8000, help="port to listen on; 0: any")
    srv.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on; 127.0.0.1 is this machine only, 0.0.0.0 opens the page "
        "to other machines",
    )
    srv.add_argument("--data", nargs="+", help="dataset directories whose samples can be picked")
    srv.add_argument(
        "--max-side",
        type=int,
        default=MAX_SIDE,
        help="pictures are resized to at most this many px a side (the model runs on them)",
    )
    srv.set_defaults(func=cmd_serve)

    export = parser.command("export-encoder", help="save the trained image encoder")
    export.add_argument("--checkpoint", required=True, help="checkpoint.pt of a training run")
    export.add_argument("--out", required=True, help=".pth file to write")
    export.set_defaults(func=cmd_export_encoder)

    convert = parser.command(
        "convert-original",
        help="turn a checkpoint of the original CMP code into one of this project",
    )
    convert.add_argument("checkpoint", help="the original's .pth.tar (e.g. ckpt_iter_42000)")
    convert.add_argument("--out", required=True, help=".pt file to write")
    convert.add_argument(
        "--fmax",
        type=float,
        default=50.0,
        help="half-range of the bins, px: the original configuration's fmax",
    )
    convert.add_argument(
        "--alexnet-stride",
        type=int,
        choices=(8, 32),
        default=None,
        help="AlexNet models only: 32 for alexnet_fcn_32x (the released ones), 8 for "
        "alexnet_fcn_8x (default: 32)",
    )
    convert.set_defaults(func=cmd_convert_original)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("cmpmodel", lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
