"""Finding sources (video files and folders of frames) and probing what they hold.

Inputs to :func:`find_sources` may be, in any mix:

- a video file (``.mp4 .avi .mkv .webm .mov``, any case): one source, id = its file name;
- a directory, searched recursively: every video file in it is a source, and every folder
  that directly holds images (``.jpg .jpeg .png``) is one frame-folder source; ids are paths
  relative to the directory given (a directory that itself holds frames gets its own name);
- a glob pattern (``*``, ``?`` or ``[`` in it, ``**`` allowed): each match is treated as a
  file or directory above, ids relative to the pattern's non-glob leading directory;
- ``@list.txt``: one path or pattern per line, blank lines and ``#`` comments ignored,
  relative lines resolved against the list file's folder.

Dataset layouts need no special case: in YouTube-VOS (``JPEGImages/<video_id>/00000.jpg``)
and VIP (``Images/<video>/*.jpg``) each video folder directly holds its frames, so each is one
source. Give the ``JPEGImages`` (or ``Images``) folder, or a pattern such as
``ytvos/*/JPEGImages``: searching the dataset root would also take the annotation folders
(PNG masks) as frame folders. Hidden files and folders (names starting with ``.``) are
skipped; symbolic links to folders are not followed.

Ids are POSIX paths, stable when a collection moves. The same file reached twice is kept
once, with the id given by the first input that reached it; two different files with the
same id (e.g. ``a/x.mp4`` and ``b/x.mp4`` given as two directories) raise
:class:`SourceError` naming both: pass their common parent instead.
"""

from __future__ import annotations

import glob
import itertools
import os
import re
import subprocess
from collections.abc import Iterator, Sequence
from fractions import Fraction
from pathlib import Path

import cv2

from cmpdata.errors import DecodeError, DecodeTimeout, SourceError
from cmpdata.io.decoders import decord_frame_count
from cmpdata.io.media import ffmpeg_complaint, ffmpeg_exe
from cmpdata.records import Source, VideoInfo

VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mkv", ".webm", ".mov"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
_GLOB_CHARS = re.compile(r"[*?\[]")


def natural_key(name: str) -> tuple[object, ...]:
    """Sort key putting ``frame2`` before ``frame10`` (digit runs compare as numbers)."""
    # re.split with a group alternates text, digits, text...: equal positions hold equal types.
    parts = re.split(r"(\d+)", name)
    return (*(int(p) if i % 2 else p.lower() for i, p in enumerate(parts)), name)


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def _is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES


def _is_frame(entry: os.DirEntry[str]) -> bool:
    """Whether a folder entry counts as a frame: a visible, image-named non-directory."""
    if entry.name.startswith(".") or not _is_image(entry.name):
        return False
    try:
        return not entry.is_dir()
    except OSError:
        # A symbolic link loop: kept, so that reading it drops its pairs with the reason.
        return True


def _frame_names(folder: Path) -> tuple[str, ...]:
    names = [entry.name for entry in os.scandir(folder) if _is_frame(entry)]
    return tuple(sorted(names, key=natural_key))


def _from_file(path: Path, source_id: str) -> Source:
    if not _is_video(path):
        raise SourceError(
            path,
            f"unsupported file type {path.suffix or '(no suffix)'!r}: expected a video "
            f"({' '.join(sorted(VIDEO_SUFFIXES))}), a folder of frames, a directory, "
            "a glob pattern or @list.txt",
        )
    return Source(id=source_id, path=path, kind="video")


def _walk(root: Path, id_root: Path) -> Iterator[Source]:
    """Videos and frame folders under ``root``, with ids relative to ``id_root``."""
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        rel = here.relative_to(id_root).as_posix()
        frames = _frame_names(here)
        if frames:
            folder_id = here.resolve().name if rel == "." else rel
            yield Source(id=folder_id, path=here, kind="frames", frames=frames)
        for name in sorted(files):
            file = here / name
            if not name.startswith(".") and _is_video(file):
                yield Source(id=file.relative_to(id_root).as_posix(), path=file, kind="video")


def _glob_root(pattern: str) -> Path:
    """The leading directories of ``pattern`` before its first glob character."""
    fixed = itertools.takewhile(lambda part: not _GLOB_CHARS.search(part), Path(pattern).parts)
    return Path(*fixed)


def _expand(entry: str) -> list[Source]:
    """The sources named by one input (a path, a pattern or @list); see the module doc."""
    if entry.startswith("@"):
        return _expand_list(Path(entry[1:]))
    if _GLOB_CHARS.search(entry):
        root = _glob_root(entry)
        found: list[Source] = []
        for match in sorted(glob.glob(entry, recursive=True)):
            path = Path(match)
            if path.is_dir():
                found.extend(_walk(path, root))
            elif _is_video(path):
                found.append(Source(path.relative_to(root).as_posix(), path, "video"))
        if not found:
            raise SourceError(entry, "no videos or frame folders found")
        return found
    path = Path(entry)
    if path.is_dir():
        found = list(_walk(path, path))
        if not found:
            raise SourceError(path, "no videos or frame folders found")
        return found
    if path.is_file():
        return [_from_file(path, path.name)]
    raise SourceError(path, _why_unusable(path) or "no such file or directory")


def _expand_list(list_file: Path) -> list[Source]:
    try:
        lines = list_file.read_text().splitlines()
    except FileNotFoundError:
        raise SourceError(list_file, "no such file or directory") from None
    found: list[Source] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            raise SourceError(list_file, f"line {number}: list files cannot include other lists")
        found.extend(_expand(str(list_file.parent / line)))
    if not found:
        raise SourceError(list_file, "no videos or frame folders found")
    return found


def _why_unusable(path: Path) -> str | None:
    """Why a path cannot be opened for reading ("no such file or directory", "a broken
    symbolic link", "Too many levels of symbolic links", "Permission denied"...), or None."""
    # stat, not open: opening a named pipe would wait for a writer.
    try:
        os.stat(path)
    except FileNotFoundError:
        return "a broken symbolic link" if path.is_symlink() else "no such file or directory"
    except OSError as exc:
        return f"cannot open: {exc.strerror}"
    return None if os.access(path, os.R_OK) else "cannot open: Permission denied"


def find_sources(inputs: Sequence[str | Path]) -> list[Source]:
    """All sources named by ``inputs`` (paths, directories, patterns, ``@lists``), by id.

    Entries found in a directory or by a pattern are listed even when they cannot be read
    (a symbolic link loop, a broken link, no permission): :func:`probe` refuses such a video
    with the reason, like any bad source, and in a frame folder such a frame drops the pairs
    that use it.

    Raises :class:`SourceError` for a missing or unreadable path given directly, an input
    that finds nothing, a single file of an unsupported type, or two different files that
    would share one id.
    """
    if isinstance(inputs, (str, os.PathLike)):
        raise ValueError(f"find_sources takes a list of inputs, got the single input {inputs!r}")
    by_id: dict[str, Source] = {}
    seen: set[Path] = set()
    for entry in inputs:
        for source in _expand(str(entry)):
            # realpath, not resolve(): it does not raise on a symbolic link loop.
            real = Path(os.path.realpath(source.path))
            if real in seen:
                continue
            seen.add(real)
            other = by_id.get(source.id)
            if other is not None:
                raise SourceError(
                    source.path,
                    f"id {source.id!r} is already used by {other.path}; "
                    "give their common parent directory instead",
                )
            by_id[source.id] = source
    return [by_id[key] for key in sorted(by_id)]


_STREAM = re.compile(r"^\s*Stream #\d+:\d+.*?: Video: (.*)$")
_SIZE = re.compile(r"(?<![\w.])([1-9]\d*)x([1-9]\d*)(?!\w)")
_FPS = re.compile(r"(\d+(?:\.\d+)?)(k?) (?:fps|tbr)")
_SAR = re.compile(r"SAR (\d+):(\d+) DAR")
_DISPLAY_MATRIX = re.compile(r"display ?matrix: rotation of (-?\d+(?:\.\d+)?) degrees", re.I)
_ROTATE_TAG = re.compile(r"^\s*rotate\s*:\s*(-?\d+(?:\.\d+)?)\s*$")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _fields(line: str) -> list[str]:
    """The comma-separated fields of a stream line, commas in brackets not splitting."""
    fields, depth, start = [], 0, 0
    for i, char in enumerate(line):
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            fields.append(line[start:i].strip())
            start = i + 1
    return [*fields, line[start:].strip()]


def _pixel_format(line: str) -> str | None:
    """The pixel format in a video stream line (``yuv420p10le``...), None if not given."""
    fields = _fields(line)
    match = re.match(r"[a-z][a-z0-9_]*", fields[1]) if len(fields) > 1 else None
    return match.group() if match and not _SIZE.search(fields[1]) else None


#: Pixel formats whose RGB is the same from decord 0.6 as from ffmpeg (measured, max
#: |difference| 0: H.264, VP9, HEVC, MPEG-4 and FFV1 in yuv420p, H.264 in yuvj420p, H.264
#: and FFV1 in yuv422p and yuv444p, all at even sizes). The others differ (up to 9-13
#: levels for 10-bit HEVC, VP9, H.264 and FFV1 4:2:0; 10 for 4:2:0 VP9 of an odd size):
#: their frames, and the flow on them, would depend on which decoder ran.
DECORD_FORMATS = frozenset({"yuv420p", "yuvj420p", "yuv422p", "yuv444p"})


def _auto_decoder(line: str, width: int, height: int, decord_opens: bool) -> str:
    """The one decoder ``decoder="auto"`` uses for a video, from its stream line and coded
    size: decord where it opens the file and gives ffmpeg's frames (square pixels, and one
    of :data:`DECORD_FORMATS` at an even size), else ffmpeg."""
    same_rgb = _pixel_format(line) in DECORD_FORMATS and width % 2 == 0 and height % 2 == 0
    return "decord" if decord_opens and same_rgb and _sample_aspect(line) == 1 else "ffmpeg"


def _sample_aspect(line: str) -> Fraction:
    """The width of a pixel over its height (SAR) in a video stream line; 1 if not given."""
    match = _SAR.search(line)
    sar = Fraction(int(match.group(1)), int(match.group(2)) or 1) if match else Fraction(1)
    return sar or Fraction(1)  # SAR 0:1 means "unknown"


def _video_block(stderr: str) -> tuple[str, list[str]] | None:
    """The first real video stream's line in ``ffmpeg -i`` output and the lines under it."""
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        match = _STREAM.match(line)
        if match and "(attached pic)" not in line:
            rest = []
            for below in lines[i + 1 :]:
                if below.lstrip().startswith("Stream #") or not below.startswith("    "):
                    break
                rest.append(below)
            return match.group(1), rest
    return None


def _rotation(block: list[str]) -> int:
    """Clockwise display rotation in degrees (0, 90, 180 or 270) from a stream's side data."""
    for line in block:
        if m := _DISPLAY_MATRIX.search(line):
            # ffmpeg prints the display matrix's angle counter-clockwise.
            return round(-float(m.group(1)) / 90) % 4 * 90
        if m := _ROTATE_TAG.match(line):
            return round(float(m.group(1)) / 90) % 4 * 90
    return 0


def _decord_count(path: Path, timeout: float) -> int | None:
    """decord's frame count, from a killable child; None if decord cannot open the file."""
    try:
        return decord_frame_count(path, timeout)
    except DecodeTimeout:
        raise
    except DecodeError:
        return None


def _probe_video(path: Path, timeout: float) -> VideoInfo:
    if why := _why_unusable(path):
        raise SourceError(path, why)
    if path.is_file() and path.stat().st_size == 0:
        raise DecodeError(path, "empty file")
    cmd = [ffmpeg_exe(), "-nostdin", "-hide_banner", "-i", str(path)]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise DecodeTimeout(path, f"ffmpeg -i gave no answer in {timeout:g} s") from None
    stderr = done.stderr.decode(errors="replace")
    if "Input #0" not in stderr:
        raise DecodeError(path, f"not a readable video: {ffmpeg_complaint(stderr.splitlines())}")
    found = _video_block(stderr)
    if found is None:
        raise DecodeError(path, "no video stream")
    line, block = found
    size = _SIZE.search(line)
    if size is None:
        raise DecodeError(path, f"no frame size in the video stream line: {line.strip()}")
    width, height = int(size.group(1)), int(size.group(2))
    fps = None
    if m := _FPS.search(line):
        fps = float(m.group(1)) * (1000 if m.group(2) else 1)
    claimed = _decord_count(path, timeout)
    decoder = _auto_decoder(line, width, height, claimed is not None)
    # Anamorphic video is shown, and stored, with square pixels: its width scaled by the SAR.
    width = round(width * _sample_aspect(line))
    if claimed is None and fps is not None and (duration := _DURATION.search(stderr)):
        # decord could not index the file; the container's duration is the next best guess.
        hours, minutes, seconds = duration.groups()
        claimed = round((int(hours) * 3600 + int(minutes) * 60 + float(seconds)) * fps)
    num_frames, note = _checked_count(path, claimed, timeout)
    rotation = _rotation(block)
    if rotation in (90, 270):
        width, height = height, width
    return VideoInfo(width, height, num_frames, fps, rotation, note=note, decoder=decoder)


#: The fewest bytes a frame takes in a video file, for telling a header's frame count from a
#: lie. Measured on static encodes of 64x64 px (a still frame repeated 2,000 times, the
#: cheapest frames an encoder makes): 19 bytes a frame for x264 in mkv (-tune stillimage,
#: crf 51), 20-26 for x264 in mkv/mp4/mov, 21-26 for VP9 in webm, 25-34 for AV1 (SVT-AV1,
#: libaom, rav1e) in mkv/webm/mp4, 29 for x265 in mp4, 94 for MPEG-4 in avi. 8 leaves room
#: below all of them.
MIN_FRAME_BYTES = 8


def _demux_count(path: Path, timeout: float) -> int | None:
    """Packets of the first video stream, counted by demuxing without decoding (one packet
    a frame); None if ffmpeg does not finish within ``timeout`` seconds."""
    cmd = [
        ffmpeg_exe(),
        "-nostdin",
        "-v",
        "error",
        "-progress",
        "pipe:1",
        "-i",
        str(path),
        "-map",
        "0:v:0",
        "-c",
        "copy",
        "-f",
        "null",
        "-",
    ]
    try:
        done = subprocess.run(
            cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        return None
    counts = re.findall(rb"^frame=(\d+)$", done.stdout, re.M)
    return int(counts[-1]) if counts else 0


def _checked_count(path: Path, claimed: int | None, timeout: float) -> tuple[int, str | None]:
    """The frame count to plan with, and a note when the header's ``claimed`` count is not it.

    A claim is believed when the file could hold that many frames at :data:`MIN_FRAME_BYTES`
    each; otherwise (or with no claim at all) the packets are counted by demuxing. When
    that does not finish within ``timeout`` seconds, the count is capped at what the file
    can hold. Raises :class:`DecodeTimeout` when there is no claim and demuxing times out.
    """
    size = path.stat().st_size if path.is_file() else None  # None: a pipe, of unknown size
    if claimed is not None and (size is None or claimed <= size // MIN_FRAME_BYTES):
        return claimed, None
    counted = _demux_count(path, timeout)
    if claimed is None or size is None:
        if counted is None:
            raise DecodeTimeout(path, f"cannot count frames: demuxing took over {timeout:g} s")
        return counted, None
    most = size // MIN_FRAME_BYTES
    lie = (
        f"header claims {claimed} frames, more than {size} bytes can hold "
        f"(>= {MIN_FRAME_BYTES} bytes a frame)"
    )
    if counted is None:
        return most, f"{lie}; demuxing took over {timeout:g} s: capped at {most}"
    return counted, f"{lie}; counted {counted} by demuxing"


def probe(source: Source, timeout: float = 30.0) -> VideoInfo:
    """Display size, frame count, frame rate and rotation of a source, without decoding it all.

    The display size is what players show: rotated as the container says, and for
    anamorphic video (a sample aspect ratio other than 1:1) the width scaled by it, so that
    pixels are square (carphone: 176x144 stored, SAR 128:117, 193x144 shown).

    Frame folders: the size of the first image, one frame per file, no fps. Video files:
    size, fps, rotation and pixel format are parsed from ``ffmpeg -i``; the decoder that
    ``decoder="auto"`` will use is chosen from them (``VideoInfo.decoder``, see
    :data:`DECORD_FORMATS`): one per source, so its frames do not depend on which decoder
    happens to work on a machine. The frame count is decord's (from
    the container's index, in a child process that is killed after ``timeout`` seconds), or
    duration x fps if decord cannot open the file. A count larger than the file can hold
    (:data:`MIN_FRAME_BYTES` a frame) is replaced by a count of the packets, and
    ``VideoInfo.note`` says so: planning stays bounded by the file's size whatever its
    header says. A count can still over-report (a truncated file, a wrong header within
    that bound): readers stop where the stream really ends.

    Raises :class:`SourceError` for a missing source, :class:`DecodeError` for an empty,
    corrupt or non-video file or an unreadable first image, :class:`DecodeTimeout` when
    ffmpeg or decord gives no answer within ``timeout`` seconds.
    """
    if source.kind == "video":
        return _probe_video(Path(source.path), timeout)
    if not source.frames:
        raise SourceError(source.path, "no frames in the folder")
    first = Path(source.path) / source.frames[0]
    if why := _why_unusable(first):
        raise DecodeError(first, why)
    image = cv2.imread(str(first), cv2.IMREAD_COLOR)
    if image is None:
        raise DecodeError(first, "cannot read the image")
    height, width = image.shape[:2]
    return VideoInfo(width, height, len(source.frames))


def check_source_size(source: Source, info: VideoInfo, min_side: int = 64) -> None:
    """Raise :class:`SourceError` if the source's short side is under ``min_side`` pixels."""
    if info.short_side < min_side:
        raise SourceError(
            source.path,
            f"short side {info.short_side} px ({info.width}x{info.height}) "
            f"is under min_side {min_side}",
        )
