"""The decoders: video decoding in child processes that can be killed, and frame images read
strictly.

Decoders never run in this process. decord can spin forever (holding the GIL) on a file
whose frame count is over-reported, so it runs in a Python subprocess (``sys.executable -c
...``: like multiprocessing's "spawn", without re-importing the caller's main module, and
usable from daemonic workers) that writes frames to a pipe; ffmpeg is a subprocess too. Both
are read with a deadline: they signal every decoded frame (decord every few skipped frames,
ffmpeg through its ``showinfo`` log) and are killed when nothing comes for ``timeout``
seconds, raising :class:`DecodeTimeout`.

The decord subprocess is long-lived (:class:`_DecordServers`): starting Python and importing
decord takes ~100 ms, more than decoding a short clip, so each process keeps one decord
server per thread that decodes at a time and sends it one request (a video, the wanted
frames) after another. A server that hangs, dies, fails a request or is left part-way (the
reader stopped early) is killed and reaped, and the next request starts a fresh one; a
server is also replaced after :data:`_SERVER_REQUESTS` requests, so that what decord might
leak stays bounded. ffmpeg runs once per request and is killed and reaped however the
reading ends.

Frames are decoded sequentially (decord's random access can return the wrong frame on files
with B-frames); only the requested ones are converted to RGB and sent back. Each reader is
``reader(path, indices, timeout, size) -> iterator of (index, frame)``, ``size`` the display
(H, W) the frames are brought to; :data:`READERS` names them.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import logging
import os
import re
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

from cmpdata.errors import DecodeError, DecodeTimeout
from cmpdata.io.media import MAX_REASON, clip_text, ffmpeg_complaint, ffmpeg_exe

_log = logging.getLogger(__name__)


# Decoders as subprocesses ----------------------------------------------------------------------


class _Decoder:
    """A decoder subprocess: its stdout read against a deadline, its stderr drained.

    Anything the process writes counts as a sign of life; ffmpeg's ``showinfo`` lines on
    stderr (one per decoded frame) are counted in ``decoded`` and kept out of ``tail``, the
    last other lines, which explain failures. Use as a context manager: leaving it kills and
    reaps the process.
    """

    def __init__(
        self, cmd: list[str], path: Path, name: str, timeout: float, requests: bool = False
    ) -> None:
        self.path, self.name, self.timeout = path, name, timeout
        self.decoded = 0
        self.tail: collections.deque[str] = collections.deque(maxlen=20)
        self.last_activity = time.monotonic()
        self.process = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE if requests else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
            env=_child_env(),
        )
        self._stderr_reader = threading.Thread(target=self._drain_stderr, daemon=True)
        self._stderr_reader.start()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for raw in self.process.stderr:
            self.last_activity = time.monotonic()
            line = raw.decode(errors="replace").rstrip()
            if "[Parsed_showinfo" not in line:
                self.tail.append(line)
            elif " n:" in line:
                self.decoded += 1

    def request(self, path: Path, timeout: float, line: bytes) -> None:
        """Send one request line to a server started with ``requests``; its answer is read
        with :meth:`read` against ``timeout``, and failures name ``path``."""
        assert self.process.stdin is not None
        self.path, self.timeout = path, timeout
        self.tail.clear()
        self.last_activity = time.monotonic()
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except OSError:  # the server died: reading its answer says how
            pass

    def read(self, size: int) -> bytearray | None:
        """Exactly ``size`` bytes of stdout, or None if it ends first.

        Raises :class:`DecodeTimeout` after ``timeout`` seconds without any output.
        """
        stdout = self.process.stdout
        assert stdout is not None
        buffer = bytearray(size)
        view = memoryview(buffer)
        got = 0
        while got < size:
            if select.select([stdout], [], [], _POLL_S)[0]:
                count = stdout.readinto(view[got:])  # type: ignore[attr-defined]
                if not count:
                    return None
                got += count
                self.last_activity = time.monotonic()
            elif time.monotonic() - self.last_activity > self.timeout:
                raise DecodeTimeout(
                    self.path, f"{self.name} decoded no frame for {self.timeout:g} s"
                )
        return buffer

    def close(self) -> None:
        """Kill the process if it still runs, reap it, and collect the rest of its stderr."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._stderr_reader.join()
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):  # stdin's last flush to a dead server
                    stream.close()

    def complaint(self) -> str:
        """The causes in the last log lines, short; the lines themselves go to the log."""
        _log.debug("%s: last lines of %s:\n%s", self.path, self.name, "\n".join(self.tail))
        return ffmpeg_complaint(self.tail)

    def __enter__(self) -> _Decoder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


_POLL_S = 0.1  # how often a blocked read wakes up to check the deadline


def _child_env() -> dict[str, str]:
    """The environment of a decoder subprocess, with this copy of cmpdata importable."""
    package_root = str(Path(__file__).resolve().parents[1])
    paths = [package_root, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}


# decord -----------------------------------------------------------------------------------------

# Messages of the decord server, for each request: kind, value (count or frame index), height,
# width, then nbytes of payload (frame RGB bytes or error text). Kinds: C count, A alive,
# F frame, E end, X error. A request is one line of JSON, ``[video, [wanted indices]]``.
_HEADER = struct.Struct("<cqiiq")
_SKIP_CHUNK = 16  # frames skipped between two "alive" messages
_DECORD_CHILD = f"from {__name__} import _decord_server; _decord_server()"  # moves with it
_SERVER_REQUESTS = 256  # requests a decord server answers before it is replaced


def _decord_server() -> None:
    """Entry point of the decord server: answers each request line on stdin (until stdin
    closes) with the video's frame count, then each wanted frame (ascending; the others are
    skipped without converting them), then an end or error message."""
    out = os.fdopen(os.dup(1), "wb")
    # Whatever the C libraries print must not corrupt the message stream: send it to stderr.
    os.dup2(2, 1)

    def send(
        kind: bytes, value: int = 0, shape: tuple[int, ...] = (0, 0), data: bytes = b""
    ) -> None:
        out.write(_HEADER.pack(kind, value, shape[0], shape[1], len(data)))
        out.write(data)
        out.flush()

    for line in sys.stdin.buffer:
        reader = None
        try:
            import decord

            path, indices = json.loads(line)
            reader = decord.VideoReader(path, num_threads=1)  # one worker, one core
            send(b"C", len(reader))
            position = 0
            for index in indices:
                while position < index:
                    step = min(index - position, _SKIP_CHUNK)
                    reader.skip_frames(step)
                    position += step
                    send(b"A")
                frame = reader.next().asnumpy()
                position = index + 1
                send(b"F", index, frame.shape, np.ascontiguousarray(frame).tobytes())
            send(b"E")
        except StopIteration:
            send(b"E")
        except Exception as exc:  # whatever decord raises goes to the parent as text
            send(b"X", data=_decord_reason(exc).encode())
        del reader


def _decord_reason(exc: BaseException) -> str:
    """decord's message without its timestamp and C++ source location, cut to
    :data:`MAX_REASON` characters."""
    lines = [line for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else type(exc).__name__
    text = text.split(": ", 1)[1] if text.startswith("[") and ": " in text else text
    return clip_text(text, MAX_REASON)


class _DecordServers:
    """This process's idle decord servers: a request takes one (or starts one), and gives it
    back when its answer was read to the end."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[tuple[_Decoder, int]] = []  # server, requests answered
        self._pid = os.getpid()

    @contextlib.contextmanager
    def server(self, path: Path, timeout: float) -> Iterator[_Decoder]:
        """A running server for one request about ``path``; given back if the block ends
        without an error and the server answered fewer than :data:`_SERVER_REQUESTS`,
        killed and reaped otherwise."""
        with self._lock:
            if self._pid != os.getpid():  # forked: the servers are the parent's
                self._idle, self._pid = [], os.getpid()
            child, served = self._idle.pop() if self._idle else (None, 0)
        if child is not None and child.process.poll() is not None:  # died while idle
            child.close()
            child = None
        if child is None:
            cmd = [sys.executable, "-c", _DECORD_CHILD]
            child, served = _Decoder(cmd, path, "decord", timeout, requests=True), 0
        try:
            yield child
        except BaseException:
            child.close()
            raise
        if served + 1 < _SERVER_REQUESTS and child.process.poll() is None:
            with self._lock:
                self._idle.append((child, served + 1))
        else:
            child.close()

    def close(self) -> None:
        """Kill and reap the idle servers."""
        with self._lock:
            idle, self._idle = self._idle, []
        for child, _ in idle:
            child.close()


_SERVERS = _DecordServers()


def close_decord_servers() -> None:
    """Kill and reap this process's idle decord servers (they are started again when needed);
    also done at exit."""
    _SERVERS.close()


atexit.register(close_decord_servers)


def _decord_messages(
    path: Path, indices: Sequence[int], timeout: float
) -> Iterator[tuple[bytes, int, np.ndarray | None]]:
    """Sends one request to a decord server and yields its messages ``(kind, value, frame or
    None)`` until the end message.

    Raises :class:`DecodeTimeout` after ``timeout`` seconds without a message, :class:`DecodeError`
    if decord reports an error, finds no frames, or its process dies. A generator closed
    before the end kills its server.
    """
    with _SERVERS.server(path, timeout) as child:
        child.request(
            path, timeout, json.dumps([str(path), list(map(int, indices))]).encode() + b"\n"
        )
        while True:
            header = child.read(_HEADER.size)
            payload = None
            if header is not None:
                kind, value, height, width, nbytes = _HEADER.unpack(header)
                payload = child.read(nbytes)
            if payload is None:
                child.close()
                raise DecodeError(
                    path,
                    f"decord died (exit code {child.process.returncode}): {child.complaint()}",
                )
            if kind == b"X":
                raise DecodeError(path, f"decord: {payload.decode(errors='replace')}")
            if kind == b"C" and value == 0:
                raise DecodeError(path, "decord: the video stream holds no frames")
            if kind == b"E":
                return
            frame = (
                np.frombuffer(payload, np.uint8).reshape(height, width, 3) if kind == b"F" else None
            )
            yield kind, value, frame


def decord_frame_count(path: str | Path, timeout: float = 30.0) -> int:
    """decord's frame count of a video (from the container's index), in a killable subprocess.

    Raises :class:`DecodeError` if decord cannot open the file, :class:`DecodeTimeout` if it
    gives no answer within ``timeout`` seconds.
    """
    path = Path(path)
    # Read to the end (no frame is wanted: the count, then the end), keeping the server.
    counts = [value for kind, value, _ in _decord_messages(path, (), timeout) if kind == b"C"]
    if not counts:
        raise DecodeError(path, "decord gave no frame count")
    return counts[0]


def _read_decord(
    path: Path, indices: Sequence[int], timeout: float, size: tuple[int, int]
) -> Iterator[tuple[int, np.ndarray]]:
    for _, index, frame in _decord_messages(path, indices, timeout):
        if frame is not None:
            yield index, frame


# ffmpeg -----------------------------------------------------------------------------------------


def _runs(indices: Sequence[int]) -> list[tuple[int, int]]:
    """Runs of consecutive numbers in ``indices`` (sorted, distinct), as ``(first, last)``."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and index == runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], index)
        else:
            runs.append((index, index))
    return runs


def _select_expression(indices: Sequence[int]) -> str:
    """An ffmpeg ``select`` expression true exactly for frame numbers in ``indices`` (sorted,
    distinct, at least one).

    libavutil's expression parser limits the nesting depth, not the length: with ffmpeg 9.0.2
    a sum of 100 ``eq()`` terms parses and one of 101 does not (a sum nests one level a
    term), 400 terms as 20 sums of 20 parse, 98 nested ``if()`` parse and 99 do not. So the
    runs of wanted frames go into a balanced binary search tree, ``if(lt(n,K),LOW,HIGH)``
    with ``eq``/``between`` leaves: its depth is ceil(log2(runs)), 11 for 2,000 runs, and
    each decoded frame costs that many comparisons.
    """
    runs = _runs(indices)

    def tree(low: int, high: int) -> str:
        if high - low == 1:
            first, last = runs[low]
            return f"eq(n,{first})" if first == last else f"between(n,{first},{last})"
        middle = (low + high) // 2
        return f"if(lt(n,{runs[middle][0]}),{tree(low, middle)},{tree(middle, high)})"

    return tree(0, len(runs))


def _read_ffmpeg(
    path: Path, indices: Sequence[int], timeout: float, size: tuple[int, int]
) -> Iterator[tuple[int, np.ndarray]]:
    height, width = size
    yielded = 0
    with tempfile.TemporaryDirectory(prefix="cmp-ffmpeg-") as scratch:
        # The filter goes in a file: a long index list would overflow the command line.
        # showinfo logs every decoded frame (the heartbeat); select passes only wanted ones;
        # scale brings them to the display size: square pixels for anamorphic video (the
        # display rotation is applied before, by ffmpeg itself), a no-op for the others.
        script = Path(scratch) / "filter.txt"
        select = f"select='{_select_expression(indices)}'"
        script.write_text(f"showinfo=checksum=0,{select},scale={width}:{height},setsar=1")
        cmd = [
            ffmpeg_exe(), "-nostdin", "-hide_banner", "-nostats", "-loglevel", "info",
            "-i", str(path), "-map", "0:V:0", "-/vf", str(script),
            "-fps_mode", "passthrough", "-flush_packets", "1",
            "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:1",
        ]  # fmt: skip
        # Leaving the block kills ffmpeg, also once every wanted frame has come: the rest
        # of the video is not needed.
        with _Decoder(cmd, path, "ffmpeg", timeout) as ffmpeg:
            for index in indices:
                buffer = ffmpeg.read(width * height * 3)
                if buffer is None:
                    break
                yielded += 1
                yield index, np.frombuffer(buffer, np.uint8).reshape(height, width, 3)
    if yielded == 0 and ffmpeg.decoded == 0:
        raise DecodeError(path, f"ffmpeg decoded no frame: {ffmpeg.complaint()}")


Reader = Callable[[Path, Sequence[int], float, tuple[int, int]], Iterator[tuple[int, np.ndarray]]]
READERS: dict[str, Reader] = {"decord": _read_decord, "ffmpeg": _read_ffmpeg}


# Frame folders -----------------------------------------------------------------------------


def read_image(file: Path) -> np.ndarray | str:
    """An image file as RGB uint8 ``(H, W, 3)``, or the reason it cannot be used.

    A JPEG (known by its content, whatever the suffix) is decoded by simplejpeg with
    ``strict=True``, which turns libjpeg's warnings into errors: a truncated file
    ("Premature end of JPEG file") or damaged entropy data ("Corrupt JPEG data: bad Huffman
    code") is refused, where OpenCV prints the warning and returns a frame with grey or
    garbled rows. Damage that still decodes to valid codes cannot be seen. Other images go
    through OpenCV, whose libpng already refuses truncated files and chunks with a bad CRC.
    """
    try:
        data = file.read_bytes()
    except OSError as exc:
        return f"cannot read the image ({exc.strerror})"
    if data.startswith(b"\xff\xd8"):
        try:
            return simplejpeg.decode_jpeg(data, colorspace="RGB", strict=True)
        except ValueError as exc:
            # "tjDecompress2(): Premature end of JPEG file": the cause without the call.
            cause = re.sub(r"^\w+\(\): ", "", str(exc))
            return f"damaged JPEG: {clip_text(cause, MAX_REASON)}"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        return "cannot read the image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
