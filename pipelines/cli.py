"""The ``cmpdata`` command. Each sub-command parses its arguments and calls one library function.

Exit codes (:mod:`cmpdata.options`): 0 success; 1 the work ran but failed or is partial
(damaged data found, a failed write, sources skipped; each named on stderr, what was
finished is kept); 2 nothing was done (a bad option or an unusable path). Any other error is
a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from cmpdata import __version__
from cmpdata.config import ExtractConfig
from cmpdata.errors import CmpDataError, UsageError
from cmpdata.options import Parser, load_options_file, run_command
from cmpdata.paths import check_output_dir, check_output_file
from cmpdata.synth.clips import TEXTURES

EXIT_OK, EXIT_PARTIAL, EXIT_ERROR = 0, 1, 2


def _add_pair_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("frame pairs")
    g.add_argument("--gap", type=int, default=3, help="frames between the two frames of a pair")
    g.add_argument("--stride", type=int, default=10, help="frames between consecutive pairs")
    g.add_argument(
        "--max-pairs-per-video",
        type=int,
        default=None,
        help="keep at most N pairs per video, spread evenly over it",
    )
    g.add_argument(
        "--short-side",
        type=int,
        default=416,
        help="resize frames to this short side (0: keep the decoded size)",
    )
    g.add_argument("--min-side", type=int, default=64, help="skip sources smaller than this")
    g.add_argument(
        "--decoder",
        choices=["auto", "decord", "ffmpeg"],
        default="auto",
        help="video decoder (auto: chosen per source)",
    )
    g.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds without a decoded frame before a file is abandoned",
    )


def _pair_config(args: argparse.Namespace):
    from cmpdata.io.pairs import PairConfig

    return PairConfig(
        gap=args.gap,
        stride=args.stride,
        max_pairs_per_video=args.max_pairs_per_video,
        short_side=args.short_side or None,  # 0 on the command line: keep the decoded size
        min_side=args.min_side,
        timeout=args.timeout,
        decoder=args.decoder,
    )


def _add_flow_options(p: argparse.ArgumentParser) -> None:
    from cmpdata.flow import FLOW_BACKENDS

    g = p.add_argument_group("optical flow")
    g.add_argument("--flow", default="dis", choices=FLOW_BACKENDS.names(), help="flow backend")
    g.add_argument(
        "--flow-weights",
        default=None,
        help="weights file of a learned estimator: torchvision's raft_small/raft_large "
        "checkpoint, or a network-*.pytorch file of the PyTorch LiteFlowNet",
    )
    g.add_argument(
        "--consistency",
        action="store_true",
        help="forward-backward check: store a validity mask (twice the flow work)",
    )


def _flow_backend(args: argparse.Namespace):
    from cmpdata.flow import FLOW_BACKENDS, build_flow

    takes_weights = FLOW_BACKENDS.get(args.flow).takes_weights
    if args.flow_weights and not takes_weights:
        raise UsageError(f"--flow-weights applies to the learned estimators, not {args.flow!r}")
    return build_flow(args.flow, **({"weights": args.flow_weights} if takes_weights else {}))


def cmd_demo(args: argparse.Namespace) -> int:
    from pipelines.demo import PROFILES, run_demo

    settings = PROFILES[args.profile]
    if args.clips is not None:
        settings = dataclasses.replace(settings, clips=args.clips)
    summary = run_demo(check_output_dir(args.out), settings, seed=args.seed, flow=args.flow)
    return EXIT_OK if summary["verified"] else EXIT_PARTIAL


def cmd_synth(args: argparse.Namespace) -> int:
    from cmpdata.synth.clips import make_clips

    files = make_clips(
        check_output_dir(args.out),
        args.count,
        seed=args.seed,
        height=args.height,
        width=args.width,
        num_frames=args.frames,
        texture=args.texture,
    )
    for f in files:
        print(f.video)
    return EXIT_OK


def cmd_probe(args: argparse.Namespace) -> int:
    from cmpdata.io.sources import check_source_size, find_sources, probe

    sources = find_sources(args.inputs)
    failed = 0
    print(f"{'source':40s} {'width':>6s} {'height':>6s} {'frames':>7s} {'fps':>6s} rot")
    for source in sources:
        try:
            info = probe(source, timeout=args.timeout)
            check_source_size(source, info, args.min_side)
        except CmpDataError as exc:
            failed += 1
            print(f"{source.id:40s} skipped: {exc}", file=sys.stderr)
            continue
        fps = f"{info.fps:.2f}" if info.fps else "-"
        print(
            f"{source.id:40s} {info.width:6d} {info.height:6d} {info.num_frames:7d} "
            f"{fps:>6s} {info.rotation}"
        )
    print(f"{len(sources) - failed} usable, {failed} skipped")
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_preview(args: argparse.Namespace) -> int:
    from cmpdata.guidance import GuidanceConfig, build_sampler
    from cmpdata.io.sources import find_sources
    from cmpdata.records import Dropped
    from cmpdata.stages import write_pictures

    config = ExtractConfig(pairs=_pair_config(args), seed=args.seed, consistency=args.consistency)
    sampler = build_sampler(GuidanceConfig(strategies=args.guidance))
    backend = _flow_backend(args)
    out = check_output_dir(args.out)
    written = failed = 0
    for item, _ in write_pictures(find_sources(args.inputs), backend, sampler, config, out):
        if not isinstance(item, Dropped):
            written += 1
        elif item.stage == "source":
            failed += 1
            print(f"skipped {item.source_id}: {item.reason}", file=sys.stderr)
        else:
            print(f"dropped {item.sample_id}: {item.reason}", file=sys.stderr)
    print(f"{written} pictures in {out}, {failed} sources skipped")
    if written == 0:
        return EXIT_ERROR
    return EXIT_PARTIAL if failed else EXIT_OK


# Sections a --config file may hold besides the command's options: settings with no flag.
CONFIG_SECTIONS = ("filters", "guidance_options", "codec", "flow_options")


def apply_config_file(
    parser: Parser, args: argparse.Namespace, argv: Sequence[str] | None
) -> tuple[argparse.Namespace, dict]:
    """``extract --config FILE``: the file's options become the command's defaults (flags
    given still win), its sections are returned. Returns the arguments parsed again and the
    sections; :class:`UsageError` for an unknown key or a section that is not a mapping."""
    if getattr(args, "config", None) is None:
        return args, {}
    data = load_options_file(args.config)
    sections = {k: data.pop(k) for k in CONFIG_SECTIONS if k in data}
    valid = set(vars(args)) - {"func", "config", "command"}
    unknown = sorted(set(data) - valid)
    if unknown:
        choices = ", ".join(sorted(valid | set(CONFIG_SECTIONS)))
        raise UsageError(f"{args.config}: unknown keys {unknown}; valid keys: {choices}")
    for key, value in sections.items():
        if not isinstance(value, dict):
            raise UsageError(f"{args.config}: {key} must be a mapping")
    parser.subcommands[args.command].set_defaults(**data)
    return parser.parse_args(argv), sections


def extract_config(args: argparse.Namespace, sections: dict) -> ExtractConfig:
    """The dataset configuration from the command's options and the config file's sections."""
    from cmpdata.filters import FilterConfig
    from cmpdata.guidance import GuidanceConfig
    from cmpdata.store.codec import FlowCodec

    try:
        return ExtractConfig(
            pairs=_pair_config(args),
            flow=args.flow,
            flow_options=sections.get("flow_options", {}),
            consistency=args.consistency,
            filters=FilterConfig(**sections.get("filters", {})),
            guidance=GuidanceConfig(
                strategies=args.guidance, **sections.get("guidance_options", {})
            ),
            codec=FlowCodec(**sections.get("codec", {})),
            seed=args.seed,
            val_fraction=args.val_fraction,
            shard_size=args.shard_size,
            jpeg_quality=args.jpeg_quality,
        )
    except TypeError as exc:  # an unknown field in a config section
        raise UsageError(f"configuration: {exc}") from None


def _add_run_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("execution (does not change the dataset)")
    g.add_argument("--workers", type=int, default=None, help="CPU workers (default: all cores)")
    g.add_argument("--num-gpus", type=int, default=0, help="GPUs in total, one flow actor each")
    g.add_argument("--batch-size", type=int, default=8, help="pairs per flow batch")
    g.add_argument(
        "--address",
        default=None,
        help="Ray cluster to join: auto or HOST:PORT (default: a local Ray)",
    )
    g.add_argument(
        "--connect-timeout",
        type=float,
        default=20.0,
        help="seconds to wait for the cluster at --address to answer",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace a dataset made with other options"
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")


def _run_settings(args: argparse.Namespace):
    from pipelines.extract import RunSettings

    return RunSettings(
        workers=args.workers,
        num_gpus=args.num_gpus,
        batch_size=args.batch_size,
        address=args.address,
        connect_timeout=args.connect_timeout,
        overwrite=args.overwrite,
        flow_weights=args.flow_weights,
        progress=not args.quiet,
    )


def _extract_exit(result) -> int:
    """0 for a complete dataset, 1 for an incomplete one or unexpected errors."""
    return EXIT_PARTIAL if not result.complete or result.errors else EXIT_OK


def cmd_extract(args: argparse.Namespace, sections: dict) -> int:
    from pipelines.extract import extract

    result = extract(args.videos, args.out, extract_config(args, sections), _run_settings(args))
    print(result.summary())
    return _extract_exit(result)


def cmd_recipe_list(args: argparse.Namespace) -> int:
    from pipelines.recipe import list_recipes

    for recipe in list_recipes():
        datasets = ", ".join(f"{d.name} {d.target:,}" for d in recipe.datasets)
        print(f"{recipe.name:12s} {recipe.target:>10,} pairs  ({datasets})")
        print(f"{'':12s} {recipe.description}")
    return EXIT_OK


def cmd_recipe_plan(args: argparse.Namespace) -> int:
    from pipelines.extract import RunSettings, flow_identity
    from pipelines.recipe import format_plan, load_recipe, parse_roots, plan_recipe

    recipe = load_recipe(args.recipe)
    identity = flow_identity(recipe.config, RunSettings(flow_weights=args.flow_weights))
    rp = plan_recipe(recipe, parse_roots(args.root), identity, args.limit, not args.quiet)
    print(format_plan(rp, args.cores))
    if not rp.plan.samples:
        raise UsageError(f"recipe {recipe.name}: no frame pairs can be planned from these roots")
    return EXIT_OK


def cmd_recipe_build(args: argparse.Namespace) -> int:
    from pipelines.recipe import build_recipe, load_recipe, parse_roots

    recipe = load_recipe(args.recipe)
    rp, result = build_recipe(
        recipe, parse_roots(args.root), args.out, _run_settings(args), args.limit
    )
    for d in rp.datasets:
        print(
            f"{d.spec.name}: {d.planned:,} pairs planned of {d.target:,} "
            f"(shortfall {d.shortfall:,})"
        )
    print(result.summary())
    print(f"plan fingerprint: {rp.plan.fingerprint}")
    return _extract_exit(result)


def _add_recipe_parser(parser: Parser) -> None:
    p = parser.command("recipe", help="rebuild the paper's training sets from your dataset copies")
    q = p.command("list", help="the recipes shipped: name, pairs, dataset sources", group="action")
    q.set_defaults(func=cmd_recipe_list)
    for name, help_text in (
        ("plan", "counts per dataset source, shortfall, disk and time estimates, fingerprint"),
        ("build", "run the extraction on exactly the recipe's plan"),
    ):
        q = p.command(name, help=help_text)
        q.add_argument("recipe", help="a recipe name (cmpdata recipe list) or a recipe file")
        q.add_argument(
            "--root",
            action="append",
            default=[],
            metavar="NAME=PATH",
            help="the folder of your copy of each dataset source, e.g. yfcc=/data/yfcc",
        )
        q.add_argument(
            "--limit", type=int, default=None, metavar="N", help="at most N pairs in all"
        )
        q.add_argument(
            "--flow-weights",
            default=None,
            help="weights file of the recipe's learned flow estimator (liteflownet, raft-*)",
        )
    q = p.subcommands["plan"]
    q.add_argument(
        "--cores",
        type=int,
        default=None,
        help="cores for the time estimate (default: this machine's)",
    )
    q.add_argument("--quiet", action="store_true", help="no progress bar while probing videos")
    q.set_defaults(func=cmd_recipe_plan)
    q = p.subcommands["build"]
    q.add_argument("--out", required=True, help="dataset directory (resumed if it exists)")
    _add_run_options(q)
    q.set_defaults(func=cmd_recipe_build)


def cmd_inspect(args: argparse.Namespace) -> int:
    from cmpdata.store.reports import format_inspect, inspect_dataset

    info = inspect_dataset(args.path)
    print(json.dumps(info, indent=1) if args.json else format_inspect(info))
    if info["damaged"]:
        print(
            f"cmpdata: {len(info['damaged'])} damaged shards or samples in {args.path}: run "
            "cmpdata verify on it",
            file=sys.stderr,
        )
        return EXIT_PARTIAL
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    from cmpdata.store.reports import format_verify, verify_dataset

    if not Path(args.directory).is_dir():
        raise UsageError(f"{args.directory}: no such dataset directory")
    report = verify_dataset(args.directory, progress=not args.quiet)
    print(format_verify(report), file=sys.stdout if report.ok else sys.stderr)
    return EXIT_OK if report.ok else EXIT_PARTIAL


def cmd_show(args: argparse.Namespace) -> int:
    from cmpdata.store.reports import show_sample

    check_output_file(args.out, (".png",))
    print(
        show_sample(args.path, args.index, args.out, split=args.split, guidance_scale=args.arrows)
    )
    return EXIT_OK


def build_parser() -> Parser:
    parser = Parser(
        prog="cmpdata",
        description="Turn videos into Conditional Motion Propagation training data.",
    )
    parser.add_argument("--version", action="version", version=f"cmpdata {__version__}")

    p = parser.command("demo", help="run the stages on synthetic clips and write pictures")
    p.add_argument("--out", default="demo-out", help="output folder (default: demo-out)")
    p.add_argument(
        "--profile",
        choices=("quick", "cpu-15min"),
        default="quick",
        help="quick: 500 short clips, 3000 training steps, about 4.5 minutes (make demo); "
        "cpu-15min: 600 short clips and a 15-minute CPU training run; both evaluated on "
        "held-out clips",
    )
    p.add_argument("--clips", type=int, help="number of synthetic clips (default: the profile's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the clips, the split and training")
    p.add_argument("--flow", default="dis", help="flow backend (a CPU one: dis or farneback)")
    p.set_defaults(func=cmd_demo)

    p = parser.command("synth", help="write synthetic clips with exact ground-truth flow")
    p.add_argument("--out", required=True, help="folder of the clips (mp4, frames, flow, json)")
    p.add_argument("--count", type=int, default=3, help="number of clips")
    p.add_argument("--seed", type=int, default=0, help="seed of the first clip (then +1, +2...)")
    p.add_argument("--height", type=int, default=256, help="frame height (px)")
    p.add_argument("--width", type=int, default=320, help="frame width (px)")
    p.add_argument("--frames", type=int, default=40, help="frames per clip")
    p.add_argument(
        "--texture",
        default="photo",
        choices=TEXTURES,
        help="photo: crops of the photos in the scikit-image wheel; noise: procedural",
    )
    p.set_defaults(func=cmd_synth)

    p = parser.command("probe", help="list the sources found in the inputs, with their sizes")
    p.add_argument(
        "inputs", nargs="+", help="video files, frame folders, directories, globs, @list.txt"
    )
    p.add_argument("--min-side", type=int, default=64)
    p.add_argument("--timeout", type=float, default=30.0)
    p.set_defaults(func=cmd_probe)

    p = parser.command(
        "preview", help="run the stages on your videos and write one picture per pair"
    )
    p.add_argument(
        "inputs", nargs="+", help="video files, frame folders, directories, globs, @list.txt"
    )
    p.add_argument("--out", required=True)
    p.add_argument("--guidance", default="watershed,grid", help="comma-separated samplers")
    p.add_argument("--seed", type=int, default=0)
    _add_pair_options(p)
    _add_flow_options(p)
    p.set_defaults(func=cmd_preview, max_pairs_per_video=3)

    p = parser.command("extract", help="build a CMP training set of HDF5 shards from videos")
    p.add_argument(
        "--videos",
        nargs="+",
        required=True,
        help="video files, frame folders, directories, globs, @list.txt",
    )
    p.add_argument("--out", required=True, help="dataset directory (resumed if it exists)")
    p.add_argument("--config", help="YAML file of these options (flags given here win)")
    p.add_argument("--guidance", default="watershed,grid", help="comma-separated samplers")
    p.add_argument("--seed", type=int, default=0, help="global seed of the guidance draws")
    p.add_argument(
        "--val-fraction", type=float, default=0.02, help="share of videos in the validation split"
    )
    p.add_argument("--shard-size", type=int, default=1000, help="planned samples per shard")
    p.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of stored frames")
    _add_pair_options(p)
    _add_flow_options(p)
    _add_run_options(p)
    p.set_defaults(func=cmd_extract)

    _add_recipe_parser(parser)

    p = parser.command("inspect", help="counts, sources, splits, sizes, flow statistics")
    p.add_argument("path", help="dataset directory or one shard file")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_inspect)

    p = parser.command("verify", help="check every shard's checksum and decode every sample")
    p.add_argument("directory")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_verify)

    p = parser.command("show", help="picture of one sample: frame + guidance | flow | legend")
    p.add_argument("path", help="dataset directory or one shard file")
    p.add_argument("--index", type=int, required=True, help="sample index (within --split)")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--split", choices=["train", "val"], default=None, help="index within a split")
    p.add_argument("--arrows", type=float, default=3.0, help="arrow length multiplier")
    p.set_defaults(func=cmd_show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()

    def command() -> int:
        args, sections = apply_config_file(parser, parser.parse_args(argv), argv)
        return cmd_extract(args, sections) if args.func is cmd_extract else args.func(args)

    return run_command("cmpdata", command)


if __name__ == "__main__":
    sys.exit(main())
