"""Looking at a dataset directory: what it holds (inspect), whether it is intact (verify), and
a picture of one sample (show).

Each function returns data (a dict, a :class:`VerifyReport`, a path) and has a ``format_*``
companion that turns it into the text the ``cmpdata`` command prints.

The dataset's content digest (``manifest.json``'s ``content_digest``) is defined by
:func:`cmpdata.store.manifest.content_digest`, which both the pipeline that writes the dataset and
``verify`` use: sha256 over one line ``"<sample id>\\t<sample digest>\\n"`` per sample, in shard
order (shard index, then row), where the sample digest is
:meth:`cmpdata.store.shards.EncodedSample.digest`, as stored in each shard's ``digest`` dataset.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from cmpdata.errors import CmpDataError, UsageError
from cmpdata.store.dataset import SHARD_GLOB, ListedShard, ShardDataset, check_listed, list_shards
from cmpdata.store.manifest import FAILURES, content_digest, read_failures, read_manifest
from cmpdata.store.shards import SPLITS, ShardError, ShardReader, file_sha256, schema_problem
from cmpdata.viz import flow_figure, save_png

_PROVENANCE = ("config", "flow_backend", "codec")
# Percentiles are taken over at most this many valid pixels of each flow (evenly strided);
# the mean and the maximum use every pixel.
_PIXELS_PER_FLOW = 20_000


# Inspect -----------------------------------------------------------------------------------


def inspect_dataset(path: str | Path, flow_samples: int = 200, top: int = 10) -> dict[str, Any]:
    """A summary of a dataset directory or of one shard file, as a JSON-serialisable dict.

    Keys: ``path``, ``complete`` (the manifest's flag, None without a manifest), ``shards``,
    ``damaged`` (``"name: reason"`` of every shard or sampled flow that could not be read),
    ``samples``, ``splits`` (samples per split), ``sources`` (distinct source ids),
    ``top_sources`` (the ``top`` sources with most samples, ``[id, count]``), ``bytes`` (shard
    files on disk), ``bytes_per_sample``, ``image_sizes`` (``"HxW"`` -> samples),
    ``guidance`` (points per sample: ``mean``, ``min``, ``max``), ``flow`` (magnitude |flow| in
    px over the valid pixels of up to ``flow_samples`` samples spread evenly over the dataset:
    ``samples_used``, ``mean``, ``median``, ``p95``, ``max``, and ``valid_fraction`` when masks
    are stored), ``config``, ``flow_backend``, ``codec`` (from the manifest, else the first
    shard's attributes), ``dropped`` (pairs, and whole sources, left out per stage, from
    ``failures.jsonl``) and ``notes`` (sources used, but not as their header claimed).

    Raises :class:`CmpDataError` when ``path`` is neither a dataset directory nor a shard, or
    holds no shard.
    """
    path = Path(path)
    listed, manifest = list_shards(path)
    damaged: list[str] = []
    readable: list[tuple[ListedShard, dict[str, np.ndarray]]] = []
    for shard in listed:
        try:
            readable.append((shard, check_listed(shard, ["source_id"])))
        except ShardError as exc:
            damaged.append(f"{shard.path.name}: {exc.reason}")

    def joined(name: str, field: str | None = None) -> np.ndarray:
        columns = [cols[name] if field is None else cols[name][field] for _, cols in readable]
        return np.concatenate(columns) if columns else np.zeros(0, np.int64)

    splits = joined("meta", "split")
    sources = Counter(joined("source_id").tolist())
    sizes = Counter(
        f"{h}x{w}" for h, w in zip(joined("meta", "height"), joined("meta", "width"), strict=True)
    )
    points = joined("meta", "bytes_guidance") // 16  # float32 x, y, dx, dy a point
    num_samples = len(splits)
    on_disk = sum(s.path.stat().st_size for s in listed if s.path.is_file())

    counts = [(shard.path, len(cols["meta"])) for shard, cols in readable]
    flow, flow_errors = _flow_statistics(counts, flow_samples)
    provenance = _provenance(manifest, [shard.path for shard, _ in readable])
    failures = read_failures(path) if path.is_dir() and (path / FAILURES).exists() else []
    dropped = Counter(d.stage for d in failures if d.stage != "probe")
    return {
        "path": str(path),
        "complete": None if manifest is None else bool(manifest.get("complete")),
        "shards": len(listed),
        "damaged": damaged + flow_errors,
        "samples": num_samples,
        "splits": {name: int(np.count_nonzero(splits == k)) for k, name in enumerate(SPLITS)},
        "sources": len(sources),
        "top_sources": [[s, n] for s, n in sources.most_common(top)],
        "bytes": on_disk,
        "bytes_per_sample": on_disk / num_samples if num_samples else None,
        "image_sizes": dict(sizes.most_common()),
        "guidance": (
            {"mean": float(points.mean()), "min": int(points.min()), "max": int(points.max())}
            if len(points)
            else None
        ),
        "flow": flow,
        **provenance,
        "dropped": dict(dropped.most_common()),
        "notes": [f"{d.source_id}: {d.reason}" for d in failures if d.stage == "probe"],
    }


def _flow_statistics(
    shards: list[tuple[Path, int]], max_samples: int
) -> tuple[dict[str, Any] | None, list[str]]:
    """Magnitude statistics of up to ``max_samples`` flows spread evenly over ``shards``
    (path, number of samples), and the reasons of those that could not be read."""
    offsets = np.cumsum([0, *(n for _, n in shards)])
    total_samples = int(offsets[-1])
    if total_samples == 0 or max_samples < 1:
        return None, []
    picks = np.unique(np.linspace(0, total_samples - 1, min(max_samples, total_samples)).round())
    strided: list[np.ndarray] = []
    total = count = 0.0
    largest = 0.0
    valid_fractions: list[float] = []
    errors: list[str] = []
    for k, (path, _) in enumerate(shards):
        rows = picks[(picks >= offsets[k]) & (picks < offsets[k + 1])].astype(int) - offsets[k]
        if len(rows) == 0:
            continue
        with ShardReader(path) as reader:
            for row in rows:
                try:
                    sample = reader.read(int(row))
                except ShardError as exc:
                    errors.append(f"{path.name}: {exc.reason}")
                    continue
                magnitude = np.hypot(sample.flow[..., 0], sample.flow[..., 1])
                if sample.valid is not None:
                    valid_fractions.append(float(sample.valid.mean()))
                    magnitude = magnitude[sample.valid]
                magnitude = magnitude.ravel()
                if magnitude.size == 0:
                    continue
                total += float(magnitude.sum(dtype=np.float64))
                count += magnitude.size
                largest = max(largest, float(magnitude.max()))
                strided.append(magnitude[:: max(1, magnitude.size // _PIXELS_PER_FLOW)])
    if not strided:
        return None, errors
    pooled = np.concatenate(strided)
    median, p95 = (float(v) for v in np.percentile(pooled, [50, 95]))
    return {
        "samples_used": len(strided),
        "mean": total / count,
        "median": median,
        "p95": p95,
        "max": largest,
        "valid_fraction": float(np.mean(valid_fractions)) if valid_fractions else None,
    }, errors


def _provenance(manifest: dict[str, Any] | None, shards: list[Path]) -> dict[str, Any]:
    if manifest is not None:
        return {key: manifest.get(key) for key in _PROVENANCE}
    for shard in shards:
        try:
            with ShardReader(shard) as reader:
                attrs = reader.attrs
        except ShardError:
            continue  # unreadable attributes: take the next shard's
        return {key: attrs.get(key) for key in _PROVENANCE}
    return dict.fromkeys(_PROVENANCE)


def format_bytes(num_bytes: float) -> str:
    """Bytes in B, KB, MB, GB or TB (powers of 1000), e.g. ``"101.4 KB"``, ``"1,230.5 GB"``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:,.1f} {unit}"
    return f"{num_bytes:.0f} B"


def format_inspect(info: dict[str, Any]) -> str:
    """The text report of :func:`inspect_dataset`'s result."""
    complete = {None: "no manifest", True: "complete", False: "INCOMPLETE"}[info["complete"]]
    per_sample = info["bytes_per_sample"]
    lines = [
        f"dataset      {info['path']} ({complete})",
        f"shards       {info['shards']}, {format_bytes(info['bytes'])}"
        + (f", {format_bytes(per_sample)} per sample" if per_sample else ""),
        f"samples      {info['samples']}: "
        + ", ".join(f"{name} {n}" for name, n in info["splits"].items()),
        f"sources      {info['sources']}",
    ]
    lines += [f"  {n:8d}   {source}" for source, n in info["top_sources"]]
    if info["sources"] > len(info["top_sources"]):
        lines.append(f"  ... and {info['sources'] - len(info['top_sources'])} more")
    sizes = ", ".join(f"{size} ({n})" for size, n in info["image_sizes"].items())
    lines.append(f"image size   {sizes or '-'}")
    if info["guidance"]:
        g = info["guidance"]
        lines.append(
            f"guidance     {g['mean']:.1f} points per sample (min {g['min']}, max {g['max']})"
        )
    if info["flow"]:
        f = info["flow"]
        lines.append(
            f"flow |px|    mean {f['mean']:.2f}, median {f['median']:.2f}, p95 {f['p95']:.2f}, "
            f"max {f['max']:.2f} (over {f['samples_used']} samples)"
        )
        if f["valid_fraction"] is not None:
            lines.append(f"valid flow   {f['valid_fraction']:.1%} of the pixels")
    if info["dropped"]:
        dropped = ", ".join(f"{stage} {n}" for stage, n in info["dropped"].items())
        lines.append(f"left out     {sum(info['dropped'].values())}: {dropped}")
    lines += [f"note         {note}" for note in info["notes"]]
    for key in _PROVENANCE:
        lines.append(f"{key + ' ':13s}{json.dumps(info[key], sort_keys=True)}")
    if info["damaged"]:
        lines.append(f"DAMAGED      {len(info['damaged'])}")
        lines += [f"  {entry}" for entry in info["damaged"]]
    return "\n".join(lines)


# Verify ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: in a shard (``shard`` names it), in one of its samples
    (``index``, the row in that shard), or in the dataset as a whole (``shard`` None)."""

    shard: str | None
    index: int | None
    message: str

    def __str__(self) -> str:
        where = self.shard or "dataset"
        if self.index is not None:
            where += f" sample {self.index}"
        return f"{where}: {self.message}"


@dataclass
class VerifyReport:
    """What :func:`verify_dataset` found. ``content_digest`` is the digest recomputed from the
    shards (None when some shard could not be read whole)."""

    directory: Path
    problems: list[Problem] = field(default_factory=list)
    shards_checked: int = 0
    samples_checked: int = 0
    content_digest: str | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, shard: str | None, index: int | None, message: str) -> None:
        self.problems.append(Problem(shard, index, message))


def verify_dataset(directory: str | Path, progress: bool = True) -> VerifyReport:
    """Check every byte of a dataset directory against its manifest; never raises for damage.

    Checks that ``manifest.json`` exists and is complete; that every listed shard exists with
    the listed size, sha256, sample count and index; that every sample decodes (JPEG image,
    flow, mask, guidance inside the image) and its recomputed digest equals the stored one;
    that no sample id repeats; that no unlisted shard or leftover temporary file lies in the
    directory; and that the totals per split and the :func:`content_digest` equal the
    manifest's. A shard whose size or sha256 differs is reported and not decoded (corrupt
    HDF5 metadata can crash the HDF5 library). Without a manifest the shard files present are
    still decoded and checked, at that risk. ``progress`` shows a bar over the shards on a
    terminal.
    """
    directory = Path(directory)
    report = VerifyReport(directory)
    try:
        manifest: dict[str, Any] | None = read_manifest(directory)
    except CmpDataError as exc:
        manifest = None
        report.add(None, None, str(exc))
    if manifest is not None and (problem := schema_problem(manifest.get("schema_version"))):
        report.add(None, None, problem)  # one line, not one error a sample
        return report
    present = sorted(directory.glob(SHARD_GLOB))
    if manifest is None:
        entries: list[tuple[Path, dict[str, Any] | None]] = [(p, None) for p in present]
    else:
        if not manifest.get("complete"):
            report.add(None, None, "manifest.json says complete: false (extraction unfinished)")
        entries = [(directory / s["name"], s) for s in manifest.get("shards", [])]
        listed = {p for p, _ in entries}
        for p in present:
            if p not in listed:
                report.add(p.name, None, "shard file not listed in the manifest")
    for p in sorted(directory.glob(".shard-*.tmp-*")):
        report.add(p.name, None, "leftover temporary file of an interrupted write")
    for p in sorted(directory.glob(".shard-*.part-*")):
        if ".tmp-" not in p.name:
            report.add(p.name, None, "leftover part file of an interrupted run")
    if not entries:
        report.add(None, None, f"{directory}: no shards ({SHARD_GLOB}) found")

    pairs: list[tuple[str, str]] = []
    splits: Counter[str] = Counter()
    seen: dict[str, str] = {}
    whole = True
    bar = tqdm(
        entries, desc=f"verify {directory.name}", unit="shard", disable=None if progress else True
    )
    for path, entry in bar:
        whole &= _verify_shard(report, path, entry, pairs, splits, seen)
    if manifest is None or not whole:
        return report
    report.content_digest = content_digest(pairs)
    if report.content_digest != manifest.get("content_digest"):
        report.add(
            None,
            None,
            f"content digest {report.content_digest} differs from the manifest's "
            f"{manifest.get('content_digest')}",
        )
    if len(pairs) != manifest.get("num_samples"):
        report.add(
            None, None, f"{len(pairs)} samples, the manifest says {manifest.get('num_samples')}"
        )
    listed_splits = manifest.get("splits", {})
    for name in SPLITS:
        if splits[name] != listed_splits.get(name, 0):
            report.add(
                None,
                None,
                f"{splits[name]} {name} samples, the manifest says {listed_splits.get(name, 0)}",
            )
    return report


def _verify_shard(
    report: VerifyReport,
    path: Path,
    entry: dict[str, Any] | None,
    pairs: list[tuple[str, str]],
    splits: Counter[str],
    seen: dict[str, str],
) -> bool:
    """Check one shard, adding to the report; True when every sample of it could be read."""
    name = path.name
    if not path.is_file():
        report.add(name, None, "missing: listed in the manifest but not on disk")
        return False
    report.shards_checked += 1
    if entry is not None:
        # A file that is not byte for byte what was written is not opened: damaged HDF5
        # metadata can crash the HDF5 library itself (a flipped byte may segfault it).
        size = path.stat().st_size
        if size != entry.get("bytes"):
            report.add(
                name,
                None,
                f"{size} bytes, the manifest lists {entry.get('bytes')}: "
                "truncated or rewritten; not decoded",
            )
            return False
        sha = file_sha256(path)
        if sha != entry.get("sha256"):
            report.add(
                name,
                None,
                f"sha256 {sha} differs from the manifest's {entry.get('sha256')}: "
                "the file changed after it was written; not decoded",
            )
            return False
    with ShardReader(path) as reader:
        try:
            n = len(reader)
            attrs = reader.attrs
            # Every digest recomputed from the stored bytes, the columns read in bulk.
            _, stored_digests, recomputed = reader.digests()
        except ShardError as exc:
            report.add(name, None, exc.reason)
            return False
        if attrs.get("num_samples") != n:
            report.add(
                name,
                None,
                f"holds {n} samples, its num_samples attribute says {attrs.get('num_samples')}",
            )
        if entry is not None:
            if n != entry.get("num_samples"):
                report.add(
                    name, None, f"holds {n} samples, the manifest lists {entry.get('num_samples')}"
                )
            if "index" in entry and attrs.get("shard_index") != entry["index"]:
                report.add(
                    name,
                    None,
                    f"shard_index attribute {attrs.get('shard_index')}, "
                    f"the manifest lists index {entry['index']}",
                )
        whole = True
        for i in range(n):
            try:
                sample = reader.read(i, check=False)  # the digests are compared below
            except ShardError as exc:
                report.add(name, i, exc.reason)
                whole = False
                continue
            report.samples_checked += 1
            h, w = sample.image.shape[:2]
            p = sample.guidance.points
            inside = (p[:, 0] >= 0) & (p[:, 0] <= w - 1) & (p[:, 1] >= 0) & (p[:, 1] <= h - 1)
            if not (inside.all() and np.isfinite(sample.guidance.vectors).all()):
                report.add(
                    name, i, f"guidance points outside the {h}x{w} image or non-finite vectors"
                )
            stored = stored_digests[i]
            if recomputed[i] != stored:
                report.add(
                    name,
                    i,
                    f"{sample.sample_id}: content digest {recomputed[i]} differs from the stored "
                    f"{stored}: the sample changed after it was written",
                )
            if sample.sample_id in seen:
                report.add(
                    name, i, f"sample id {sample.sample_id} also in {seen[sample.sample_id]}"
                )
            seen.setdefault(sample.sample_id, name)
            pairs.append((sample.sample_id, stored))
            splits[sample.split] += 1
    return whole


def format_verify(report: VerifyReport, max_problems: int = 50) -> str:
    """The text report of :func:`verify_dataset`: a verdict line, then one line a problem
    (the first ``max_problems``)."""
    checked = f"{report.shards_checked} shards and {report.samples_checked} samples checked"
    if report.ok:
        return f"OK: {report.directory}: {checked}, content digest {report.content_digest}"
    lines = [f"FAILED: {report.directory}: {len(report.problems)} problems; {checked}"]
    lines += [f"  {problem}" for problem in report.problems[:max_problems]]
    if len(report.problems) > max_problems:
        lines.append(f"  ... and {len(report.problems) - max_problems} more")
    return "\n".join(lines)


# Show --------------------------------------------------------------------------------------


def show_sample(
    directory_or_shard: str | Path,
    index: int,
    out: str | Path,
    split: str | None = None,
    guidance_scale: float = 1.0,
) -> Path:
    """Write a PNG of sample ``index`` (of ``split``, or of all samples when None, in shard
    order): the frame with its guidance arrows (drawn ``guidance_scale`` times their length),
    the flow's colours (invalid area hatched when a mask is stored) and the colour legend,
    under a title naming the sample, its split, shard and row. Returns ``out``.

    Raises :class:`CmpDataError` naming the valid range when ``index`` is out of range, and
    as :class:`~cmpdata.store.dataset.ShardDataset` does for a missing or damaged dataset.
    """
    dataset = ShardDataset(directory_or_shard, split=split)
    n = len(dataset)
    if not 0 <= index < n:
        which = "samples" if split is None else f"{split} samples"
        valid = f"0..{n - 1}" if n else "none"
        raise UsageError(
            f"{directory_or_shard}: sample index {index} out of range: {n} {which} ({valid})"
        )
    shard, row = dataset.locate(index)
    sample = dataset[index]
    dataset.close()
    figure = flow_figure(
        sample.image,
        sample.flow,
        sample.guidance,
        valid=sample.valid,
        title=f"{sample.sample_id} ({sample.split}; {shard.name} row {row})",
        guidance_scale=guidance_scale,
    )
    return save_png(out, figure)
