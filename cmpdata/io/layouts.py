"""Dataset layouts: each source dataset read as it lies after its official download.

A layout (an *adapter*) takes the root folder of one copy of a dataset and returns a
:class:`Scan`: the sources it holds (frame folders or video files, with ids prefixed by the
dataset's name, e.g. ``vip/videos12``), what it knows of them without decoding anything, and a
report of what it found: videos, frames, missing parts, empty folders, gaps. Layouts:

=============  ==========================================================================
name           what the root holds (as the official archives unpack)
=============  ==========================================================================
``yfcc``       YFCC100m frames released for unsupervised video learning (Pathak et al.
               2017, ``UnsupVideo_Frames_v1.tar.gz``): ``UnsupVideo_Frames/`` (folders of
               JPEG frames) and list files of frame names (``lists/train.txt``,
               ``lists/val.txt``: CMP's YFCC lists, ``frame0 frame1 flow_x flow_y`` a line,
               or any list with one frame path a line). Only listed frames are used.
``youtube-vos``  YouTube-VOS: ``train/JPEGImages/<video_id>/00000.jpg ...`` and
               ``train/meta.json`` (``{"videos": {"<video_id>": ...}}``); the videos in
               ``meta.json`` are used.
``videos``     a folder of plain video files (``.mp4 .webm .mkv .avi .mov``, searched
               recursively), e.g. a YouTube collection.
``vip``        VIP, Video instance-level Parsing: ``Images/<video>/<frame>.jpg`` and the split
               lists ``lists/<split>_videos.txt`` (one video name a line).
``mpii``       MPII Human Pose video sequences (``mpii_human_pose_v1_sequences_batchN``):
               numbered batch folders ``1/ ... 25/``, each holding one folder of frames per
               sequence (``1/013688563/00000068.jpg``).
=============  ==========================================================================

Frame folders are read from their listings only: the frame count is the number of image
files, the size comes from the first frame's JPEG/PNG header; pixels are never decoded here
(a frame that turns out unreadable drops its pairs at build time, with the reason). Frames
are ordered by their names (natural sort: ``frame2`` before ``frame10``). When names carry
frame numbers, a jump of at least twice the folder's usual step (a missing frame, or the
clumps of 21 frames around each annotated frame in ``VIP_Sequence``) splits the folder into
runs, one source per run (``<video>@<first frame's name>``), so that no pair spans a hole;
``split_gaps: false`` turns this off.

Everything is sorted: the result never depends on the order in which the file system lists
a folder. A missing root, a missing list or ``meta.json``, a malformed list, or a root where
nothing is found raise :class:`SourceError` naming the path and what was expected there.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
import struct
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, ClassVar

from cmpdata.errors import CmpDataError, ConfigError, DecodeError, SourceError
from cmpdata.io.sources import IMAGE_SUFFIXES, find_sources, natural_key
from cmpdata.records import Dropped, Source, VideoInfo
from cmpdata.registry import Registry

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, ...): C0-CF except DHT, JPG and DAC.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NUMBER = re.compile(r"\d+")
_NAME_AND_NUMBER = re.compile(r"^(?P<video>.+)_\d+$")  # YFCC frame names: <video>_<frame>


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` in pixels of a JPEG or PNG file, read from its header alone.

    The JPEG's EXIF orientation is not applied (frames extracted from videos carry none).
    Raises :class:`DecodeError` for an empty, truncated or unrecognised file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(24)
            if head.startswith(_PNG_SIGNATURE) and head[12:16] == b"IHDR":
                width, height = struct.unpack(">II", head[16:24])
                return width, height
            if head.startswith(b"\xff\xd8"):
                size = _jpeg_size(f)
                if size is not None:
                    return size
    except OSError as exc:
        raise DecodeError(path, f"cannot read the image ({exc.strerror})") from None
    raise DecodeError(path, "not a JPEG or PNG image with a readable header")


def _jpeg_size(f: BinaryIO) -> tuple[int, int] | None:
    """Walk the JPEG segments after SOI to the first start-of-frame; None if there is none."""
    f.seek(2)
    while True:
        prefix = f.read(1)
        if prefix != b"\xff":
            return None
        marker = f.read(1)
        while marker == b"\xff":  # fill bytes before a marker
            marker = f.read(1)
        if not marker:
            return None
        code = marker[0]
        if code == 0x01 or 0xD0 <= code <= 0xD7:  # markers without a length
            continue
        length = f.read(2)
        if len(length) < 2:
            return None
        if code in _SOF_MARKERS:
            data = f.read(5)  # precision, height, width
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return (width, height) if width and height else None
        f.seek(int.from_bytes(length, "big") - 2, os.SEEK_CUR)


def _split_name(name: str) -> tuple[str, str]:
    """``("frame_0001", ".jpg")`` for ``"frame_0001.JPG"``: stem and lower-case suffix."""
    stem, suffix = os.path.splitext(name)
    return stem, suffix.lower()


def image_names(folder: Path) -> list[str]:
    """The image files directly in ``folder`` (hidden ones left out), in natural order;
    an empty list for a folder that does not exist."""
    if not folder.is_dir():
        return []
    names = [
        e.name
        for e in os.scandir(folder)
        if e.is_file() and not e.name.startswith(".") and _split_name(e.name)[1] in IMAGE_SUFFIXES
    ]
    return sorted(names, key=natural_key)


def _subfolders(folder: Path) -> list[str]:
    names = [e.name for e in os.scandir(folder) if e.is_dir() and not e.name.startswith(".")]
    return sorted(names, key=natural_key)


def split_runs(names: Sequence[str]) -> list[list[str]]:
    """``names`` (in order) cut where the frame number jumps by at least twice the usual step.

    The frame number is the last run of digits in a name; the usual step is the most common
    difference between consecutive numbers (the smallest of equally common ones). Names
    without numbers, or not increasing, stay one run.
    """
    found = [_NUMBER.findall(_split_name(n)[0]) for n in names]
    if len(names) < 3 or not all(found):
        return [list(names)]
    numbers = [int(f[-1]) for f in found]
    steps = [b - a for a, b in itertools.pairwise(numbers)]
    if min(steps) <= 0:
        return [list(names)]
    counts = Counter(steps)
    usual = min(steps, key=lambda s: (-counts[s], s))
    runs = [[names[0]]]
    for name, step in zip(names[1:], steps, strict=True):
        if step >= 2 * usual:
            runs.append([])
        runs[-1].append(name)
    return runs


@dataclass
class Scan:
    """What a layout found under one dataset root (see the module docstring)."""

    dataset: str  # the dataset's name in the recipe: the prefix of every source id
    layout: str  # the layout that read it
    root: Path
    sources: list[Source] = field(default_factory=list)  # by id
    infos: dict[str, VideoInfo] = field(default_factory=dict)  # frame sources, from listings
    skipped: list[Dropped] = field(default_factory=list)  # unusable at the scan, with reasons
    videos: int = 0  # videos the layout names or finds
    frames: int = 0  # frame files in the sources (0 for video files: known once probed)
    missing: list[str] = field(default_factory=list)  # named by the layout, absent (rel. paths)
    empty: list[str] = field(default_factory=list)  # video folders without a frame
    gaps: int = 0  # holes in frame numbering where a folder was split into runs
    ignored: int = 0  # present but not part of the layout (unlisted frames, stray folders)

    def problems(self, examples: int = 2) -> list[str]:
        """One line per kind of problem found, with a few examples."""
        lines = []
        for items, what in ((self.missing, "missing"), (self.empty, "empty folders")):
            if items:
                shown = ", ".join(items[:examples]) + (", ..." if len(items) > examples else "")
                lines.append(f"{what}: {len(items)} ({shown})")
        if self.gaps:
            lines.append(f"gaps in frame numbering: {self.gaps} (folders split into runs there)")
        if self.ignored:
            lines.append(f"not part of the layout, ignored: {self.ignored} files or folders")
        return lines


class Layout:
    """Reads one dataset's official layout. Subclasses are frozen dataclasses whose fields are
    the layout's options (paths inside the root and the like), registered in :data:`LAYOUTS`
    under their ``name``."""

    name: ClassVar[str] = ""
    expected: ClassVar[str] = ""  # what the root should hold, for error messages

    def matches(self, root: Path) -> bool:
        """True if ``root`` holds this layout's markers (a cheap check, nothing is read)."""
        raise NotImplementedError

    def scan(self, root: Path, dataset: str) -> Scan:
        """The sources under ``root``; raises :class:`SourceError` (see the module docstring)."""
        raise NotImplementedError


LAYOUTS: Registry[type[Layout]] = Registry("dataset layout")  # filled at the end of the module


def build_layout(name: str, options: Mapping[str, Any]) -> Layout:
    """The layout ``name`` with ``options`` (its fields; YAML lists become tuples).

    Raises ``ValueError`` for an unknown layout, an unknown option (listing the valid ones)
    or an option of the wrong type.
    """
    cls = LAYOUTS.get(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"layout {name!r} has no option {unknown}; its options: {sorted(fields)}")
    values: dict[str, Any] = {}
    for key, value in options.items():
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, (list, tuple)):
            value = tuple(value)
        if not isinstance(value, type(default)) or (
            isinstance(value, tuple) and not all(isinstance(v, str) for v in value)
        ):
            raise ConfigError(
                f"layout {name!r}: option {key} must be like {default!r}, got {value!r}"
            )
        values[key] = value
    return cls(**values)


def choose_layout(layouts: Sequence[Layout], root: Path) -> Layout:
    """The first of ``layouts`` whose markers ``root`` holds.

    Raises :class:`SourceError` naming what each layout expects when ``root`` is not a
    directory or matches none of them.
    """
    expected = "; or ".join(f"{lay.name}: {lay.expected}" for lay in layouts)
    if not root.is_dir():
        raise SourceError(root, f"no such directory; expected {expected}")
    for layout in layouts:
        if layout.matches(root):
            return layout
    raise SourceError(root, f"not a recognised layout; expected {expected}")


def _require(path: Path, what: str, is_dir: bool = True) -> Path:
    if not (path.is_dir() if is_dir else path.is_file()):
        raise SourceError(path, f"missing; expected {what}")
    return path


def _frame_scan(scan: Scan, groups: Iterable[tuple[str, Path, list[str]]], split: bool) -> Scan:
    """Fill ``scan`` from ``(video id, folder, frame names)`` groups: one source per run."""
    for video, folder, names in sorted(groups, key=lambda g: g[0]):
        scan.videos += 1
        if not names:
            scan.empty.append(f"{folder.relative_to(scan.root).as_posix()}/")
            continue
        runs = split_runs(names) if split else [names]
        scan.gaps += len(runs) - 1
        for run in runs:
            suffix = f"@{_split_name(run[0])[0]}" if len(runs) > 1 else ""
            source = Source(f"{scan.dataset}/{video}{suffix}", folder, "frames", tuple(run))
            scan.frames += len(run)
            try:
                width, height = image_size(folder / run[0])
            except DecodeError as exc:
                scan.skipped.append(Dropped(source.id, -1, -1, "source", str(exc)))
                continue
            scan.sources.append(source)
            scan.infos[source.id] = VideoInfo(width, height, len(run))
    scan.sources.sort(key=lambda s: s.id)
    if not scan.sources and not scan.skipped:
        raise SourceError(
            scan.root, f"no frames found; expected {LAYOUTS.get(scan.layout).expected}"
        )
    return scan


def _named_folders(
    scan: Scan, parent: Path, videos: Iterable[str]
) -> list[tuple[str, Path, list[str]]]:
    """``(video, folder, frame names)`` for each video folder named (by a list or meta file)
    under ``parent``; absent ones go to ``scan.missing``, unnamed ones count as ignored."""
    named = sorted(set(videos))
    scan.ignored += len(set(_subfolders(parent)) - set(named))
    groups = []
    for video in named:
        folder = parent / video
        if folder.is_dir():
            groups.append((video, folder, image_names(folder)))
        else:
            scan.missing.append(f"{folder.relative_to(scan.root).as_posix()}/")
    return groups


def _list_lines(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, whitespace-separated tokens) of the non-blank, non-# lines of a list."""
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise SourceError(path, "not a text list file") from None
    lines = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if line and not line.startswith("#"):
            lines.append((number, line.split()))
    return lines


@dataclass(frozen=True)
class YFCCFrames(Layout):
    """YFCC100m frames (Pathak et al. 2017) with list files naming the frames to use.

    A list token counts as a frame when it has an image suffix and the frames folder's name
    among its path components (so CMP's lists, whose lines also name flow files under
    ``flow_origin/``, work as they are, and so do absolute paths from another machine).
    Frames are grouped into videos by folder and by the name before the last ``_<digits>``.
    """

    frames: str = "UnsupVideo_Frames"  # folder of the frame folders, relative to the root
    lists: tuple[str, ...] = ("lists/train.txt", "lists/val.txt")  # list files, relative
    split_gaps: bool = True  # one source per run of consecutively numbered frames

    name: ClassVar[str] = "yfcc"
    expected: ClassVar[str] = (
        "UnsupVideo_Frames/ (folders of JPEG frames, from UnsupVideo_Frames_v1.tar.gz) and "
        "list files lists/train.txt, lists/val.txt naming the frames (one frame path, or "
        "CMP's 'frame0 frame1 flow_x flow_y', a line)"
    )

    def matches(self, root: Path) -> bool:
        return (root / self.frames).is_dir()

    def _listed(self, root: Path) -> dict[str, set[str]]:
        """Frame names by folder (relative to the frames folder, "." for itself) named by the
        list files."""
        # Plain string work: lists of a million lines make pathlib the bottleneck.
        anchor = PurePosixPath(self.frames).name
        listed: dict[str, set[str]] = {}
        for name in self.lists:
            path = _require(root / name, f"a list file of frame names ({self.expected})", False)
            found = 0
            for _, tokens in _list_lines(path):
                for token in tokens:
                    parts = token.replace("\\", "/").split("/")
                    if anchor not in parts or _split_name(parts[-1])[1] not in IMAGE_SUFFIXES:
                        continue
                    inside = parts[len(parts) - parts[::-1].index(anchor) : -1]
                    folder = "/".join(p for p in inside if p not in ("", ".")) or "."
                    listed.setdefault(folder, set()).add(parts[-1])
                    found += 1
            if not found:
                example = f"{self.frames}/x/y_0001.jpg"
                raise SourceError(
                    path,
                    f"names no frame under {self.frames}/; expected one frame path "
                    f"(e.g. {example}) a line",
                )
        return listed

    def scan(self, root: Path, dataset: str) -> Scan:
        frames_dir = _require(root / self.frames, self.expected)
        scan = Scan(dataset, self.name, root)
        videos: dict[str, tuple[Path, list[str]]] = {}
        for rel, names in sorted(self._listed(root).items()):
            folder = frames_dir / rel
            prefix = "" if rel == "." else f"{rel}/"
            present = set(image_names(folder))
            scan.ignored += len(present - names)
            for name in sorted(names, key=natural_key):
                if name not in present:
                    scan.missing.append(f"{self.frames}/{prefix}{name}")
                    continue
                match = _NAME_AND_NUMBER.match(_split_name(name)[0])
                # Unnumbered frames make one video per folder (the frames folder's own name
                # for frames right in it).
                key = prefix + match["video"] if match else rel
                key = PurePosixPath(self.frames).name if key == "." else key
                videos.setdefault(key, (folder, []))[1].append(name)
        groups = [(key, folder, names) for key, (folder, names) in videos.items()]
        return _frame_scan(scan, groups, self.split_gaps)


@dataclass(frozen=True)
class YouTubeVOS(Layout):
    """YouTube-VOS frames; the videos are those ``meta.json`` names."""

    frames: str = "train/JPEGImages"  # one folder of JPEG frames per video
    meta: str = "train/meta.json"  # {"videos": {"<video_id>": {...}}}
    split_gaps: bool = True

    name: ClassVar[str] = "youtube-vos"
    expected: ClassVar[str] = (
        "train/JPEGImages/<video_id>/00000.jpg ... and train/meta.json (YouTube-VOS)"
    )

    def matches(self, root: Path) -> bool:
        return (root / self.frames).is_dir() or (root / self.meta).is_file()

    def scan(self, root: Path, dataset: str) -> Scan:
        meta_path = _require(root / self.meta, f"YouTube-VOS meta.json ({self.expected})", False)
        frames_dir = _require(root / self.frames, self.expected)
        try:
            meta = json.loads(meta_path.read_text())
            videos = sorted(meta["videos"])
        except (ValueError, KeyError, TypeError):
            raise SourceError(
                meta_path,
                'not a YouTube-VOS meta.json: expected {"videos": {"<video_id>": {...}, ...}}',
            ) from None
        scan = Scan(dataset, self.name, root)
        return _frame_scan(scan, _named_folders(scan, frames_dir, videos), self.split_gaps)


@dataclass(frozen=True)
class VideoFiles(Layout):
    """A folder of video files, searched recursively; ids are paths relative to the root.
    Frame counts come later, from each container's metadata (``cmpdata.io.sources.probe``)."""

    name: ClassVar[str] = "videos"
    expected: ClassVar[str] = "video files (.mp4 .webm .mkv .avi .mov) in it or below it"

    def matches(self, root: Path) -> bool:
        return any(s.kind == "video" for s in self._found(root))

    @staticmethod
    def _found(root: Path) -> list[Source]:
        try:
            return find_sources([root])
        except CmpDataError:
            return []

    def scan(self, root: Path, dataset: str) -> Scan:
        _require(root, self.expected)
        scan = Scan(dataset, self.name, root)
        for source in self._found(root):
            if source.kind != "video":
                scan.ignored += 1
                continue
            scan.sources.append(dataclasses.replace(source, id=f"{dataset}/{source.id}"))
        scan.videos = len(scan.sources)
        if not scan.sources:
            raise SourceError(root, f"no video files found; expected {self.expected}")
        return scan


@dataclass(frozen=True)
class VIP(Layout):
    """VIP (Video instance-level Parsing): the videos of the chosen split lists."""

    images: str = "Images"  # one folder of frames per video
    lists: str = "lists"  # holds <split>_videos.txt
    splits: tuple[str, ...] = ("train", "val")
    split_gaps: bool = True

    name: ClassVar[str] = "vip"
    expected: ClassVar[str] = (
        "Images/<video>/<frame>.jpg and split lists lists/<split>_videos.txt (one video name "
        "a line), as in VIP_Fine"
    )

    def matches(self, root: Path) -> bool:
        return (root / self.images).is_dir()

    def scan(self, root: Path, dataset: str) -> Scan:
        images = _require(root / self.images, self.expected)
        videos: set[str] = set()
        for split in self.splits:
            path = root / self.lists / f"{split}_videos.txt"
            _require(path, f"the VIP {split} split list ({self.expected})", is_dir=False)
            videos.update(PurePosixPath(tokens[0]).name for _, tokens in _list_lines(path))
        if not videos:
            raise SourceError(
                root / self.lists, f"the split lists name no video; expected {self.expected}"
            )
        scan = Scan(dataset, self.name, root)
        return _frame_scan(scan, _named_folders(scan, images, videos), self.split_gaps)


@dataclass(frozen=True)
class MPIISequences(Layout):
    """MPII Human Pose video sequences: ``<batch>/<sequence>/<frame>.jpg``."""

    split_gaps: bool = True

    name: ClassVar[str] = "mpii"
    expected: ClassVar[str] = (
        "numbered batch folders 1/ ... 25/ (from mpii_human_pose_v1_sequences_batchN.tar.gz), "
        "each holding one folder of JPEG frames per sequence"
    )

    def matches(self, root: Path) -> bool:
        return bool(self._batches(root))

    @staticmethod
    def _batches(root: Path) -> list[str]:
        return [name for name in _subfolders(root) if name.isdigit()]

    def scan(self, root: Path, dataset: str) -> Scan:
        _require(root, self.expected)
        batches = self._batches(root)
        if not batches:
            raise SourceError(root, f"no batch folders; expected {self.expected}")
        scan = Scan(dataset, self.name, root)
        scan.ignored = len(_subfolders(root)) - len(batches)
        groups = [
            (f"{batch}/{seq}", root / batch / seq, image_names(root / batch / seq))
            for batch in batches
            for seq in _subfolders(root / batch)
        ]
        return _frame_scan(scan, groups, self.split_gaps)


for _layout in (YFCCFrames, YouTubeVOS, VideoFiles, VIP, MPIISequences):
    LAYOUTS.register(_layout.name)(_layout)
