"""The ffmpeg binary and video writing.

ffmpeg comes from the ``imageio-ffmpeg`` package (a static build shipped as a wheel), so no
system ffmpeg is needed. That package has no ``ffprobe``: probing is done by the decoders.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from cmpdata.records import check_image

# Codec settings per container, chosen so that every format a source may have can be
# produced in tests: H.264 for mp4/mkv/mov, VP9 for webm, MPEG-4 part 2 for avi.
_X264 = ["-c:v", "libx264", "-preset", "veryfast"]
_CODECS: dict[str, list[str]] = {
    ".mp4": _X264,
    ".mkv": _X264,
    ".mov": _X264,
    ".webm": ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8"],
    ".avi": ["-c:v", "mpeg4", "-q:v", "2"],
}


@functools.cache
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$CMP_FFMPEG`` if set, else imageio-ffmpeg's."""
    override = os.environ.get("CMP_FFMPEG")
    if override:
        return override
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def write_video(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: float = 25.0,
    quality: int = 18,
    extra_args: Iterable[str] = (),
) -> Path:
    """Encode RGB uint8 frames (all the same size) to ``path``; the codec follows the suffix.

    ``quality`` is the constant-rate factor (lower is better). Frames are streamed to
    ffmpeg, never held together. Odd sizes are stored in 4:4:4 chroma, since 4:2:0 needs
    even ones.
    Raises ``ValueError`` for an unsupported suffix and ``RuntimeError`` if ffmpeg fails.
    """
    path = Path(path)
    codec = _CODECS.get(path.suffix.lower())
    if codec is None:
        raise ValueError(f"{path}: cannot write {path.suffix!r}; choose one of {sorted(_CODECS)}")
    proc: subprocess.Popen[bytes] | None = None
    size: tuple[int, int] | None = None
    try:
        for frame in frames:
            check_image("frame", frame)
            if proc is None:
                size = frame.shape[:2]
                h, w = size
                cmd = [
                    ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
                    "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps),
                    "-i", "pipe:0", *codec,
                    "-pix_fmt", "yuv420p" if h % 2 == 0 and w % 2 == 0 else "yuv444p",
                    "-crf", str(quality), *extra_args, str(path),
                ]  # fmt: skip
                proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
            elif frame.shape[:2] != size:
                raise ValueError(f"{path}: frame of size {frame.shape[:2]} after {size}")
            assert proc.stdin is not None
            proc.stdin.write(np.ascontiguousarray(frame).tobytes())
        if proc is None:
            raise ValueError(f"{path}: no frames to write")
        assert proc.stdin is not None and proc.stderr is not None
        proc.stdin.close()
        err = proc.stderr.read().decode(errors="replace")
        if proc.wait() != 0:
            raise RuntimeError(f"{path}: ffmpeg failed: {err.strip()}")
    except BaseException:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        path.unlink(missing_ok=True)
        raise
    return path


_LOG_PREFIX = re.compile(r"^\[[^\]]* @ 0x[0-9a-f]+\]\s*")


MAX_CAUSE = 100  # characters kept of one message of a decoder in a failure reason
MAX_REASON = 300  # characters kept of a decoder's messages together


def clip_text(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, the cut marked by ``...``.

    Failure reasons end up one per line in failures.jsonl and the summary: a decoder's
    message (an ffmpeg filter may quote a 40 KB expression) must not swamp them.
    """
    return text if len(text) <= limit else text[: limit - 3] + "..."


def ffmpeg_complaint(lines: Iterable[str]) -> str:
    """The causes in ffmpeg's log lines (the last three distinct ones), joined by ``"; "``,
    each cut to :data:`MAX_CAUSE` characters and the whole to :data:`MAX_REASON`."""
    causes: list[str] = []
    last = ""
    for line in lines:
        last = line.strip() or last
        # Only lines logged by an ffmpeg component ("[in#0 @ 0x...] ...") carry the cause.
        if not _LOG_PREFIX.match(line):
            continue
        text = _LOG_PREFIX.sub("", line).strip().removeprefix("Error opening input: ")
        text = clip_text(text, MAX_CAUSE)
        if text and "misdetection possible" not in text and text not in causes:
            causes.append(text)
    found = "; ".join(causes[-3:]) or clip_text(last, MAX_CAUSE) or "ffmpeg gave no reason"
    return clip_text(found, MAX_REASON)
