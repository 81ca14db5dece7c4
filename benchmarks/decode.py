"""Decoding speed: the project's decoders against decord and OpenCV used directly, same files.

Files: the synthetic clips' frames joined into one H.264 mp4 (416 x 560, every clip's frames
in turn), the same frames enlarged to 720 x 960 (the size of much web video; not with
``--quick``), and any ``--videos``. Two ways of access on each:

- ``sequential``: every frame;
- ``strided``: the frames of the default pairs (t, t + 3) every 10 frames, a fifth of them.

Decoders, each in this process's turn, frames out as RGB uint8 arrays:

- ``cmp decord`` and ``cmp ffmpeg``: :func:`cmpdata.io.pairs.read_frames`, the way the pipeline
  decodes: a child process (killable on a hang) reads the file sequentially and sends the
  wanted frames through a pipe; the child's start-up is part of the time;
- ``decord``: ``decord.VideoReader`` in this process, ``next()`` for sequential access,
  ``get_batch`` (seeking) for strided access, the usual ways to call it;
- ``opencv``: ``cv2.VideoCapture``, ``read()`` for every frame, ``grab()`` past unwanted
  frames and ``retrieve()`` for wanted ones, then BGR to RGB.

Every decoder keeps its default threading (all cores). Frames/s counts frames delivered; the
time runs from opening the file to the last frame; the notes give the time to the first frame
(for the child processes, mostly their start-up). ``python -m benchmarks.decode``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from benchmarks.common import Bench, interleaved, measured
from cmpdata.io.media import write_video
from cmpdata.io.pairs import PairConfig, pair_indices, read_frames
from cmpdata.io.sources import probe
from cmpdata.records import Source, VideoInfo

PART = "decode"
LARGE = (720, 960)  # (H, W) of the enlarged copy
LARGE_FRAMES = 120
DECODERS = ("cmp decord", "cmp ffmpeg", "decord", "opencv")

Decoder = Callable[[Source, VideoInfo, list[int], bool], Iterator[np.ndarray]]


def frames_cmp(
    decoder: str, source: Source, info: VideoInfo, wanted: list[int], _: bool
) -> Iterator[np.ndarray]:
    for _, frame in read_frames(source, wanted, decoder=decoder, info=info):
        yield frame


def frames_decord(
    source: Source, info: VideoInfo, wanted: list[int], sequential: bool
) -> Iterator[np.ndarray]:
    import decord

    reader = decord.VideoReader(str(source.path))
    if not sequential:
        yield from reader.get_batch(wanted).asnumpy()
        return
    for _ in range(len(reader)):
        yield reader.next().asnumpy()


def frames_opencv(
    source: Source, info: VideoInfo, wanted: list[int], sequential: bool
) -> Iterator[np.ndarray]:
    capture = cv2.VideoCapture(str(source.path))
    keep = set(wanted)
    try:
        for index in range(max(wanted) + 1):
            if sequential:
                ok, frame = capture.read()
            else:
                ok = capture.grab()
                if ok and index in keep:
                    ok, frame = capture.retrieve()
            if not ok:
                return
            if sequential or index in keep:
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()


READERS: dict[str, Decoder] = {
    "cmp decord": partial(frames_cmp, "decord"),
    "cmp ffmpeg": partial(frames_cmp, "ffmpeg"),
    "decord": frames_decord,
    "opencv": frames_opencv,
}


def bench_files(bench: Bench) -> dict[str, Path]:
    """The files to decode, by label: the joined synthetic clips (and their 720p copy)."""
    frames = [
        cv2.cvtColor(cv2.imread(str(png)), cv2.COLOR_BGR2RGB)
        for clip in bench.clips
        for png in sorted(Path(clip.frames).glob("*.png"))
    ]
    folder = bench.root / PART
    folder.mkdir(exist_ok=True)
    h, w = frames[0].shape[:2]
    files = {
        f"synthetic {h}x{w}, {len(frames)} frames": write_video(folder / "synthetic.mp4", frames)
    }
    if not bench.quick:
        big = [
            cv2.resize(f, LARGE[::-1], interpolation=cv2.INTER_LINEAR)
            for f in frames[:LARGE_FRAMES]
        ]
        label = f"synthetic {LARGE[0]}x{LARGE[1]}, {len(big)} frames"
        files[label] = write_video(folder / "synthetic-large.mp4", big)
    for video in bench.videos:
        files[video.name] = video
    return files


def measure_file(label: str, path: Path, repeats: int) -> tuple[list[dict[str, Any]], dict]:
    """Frames/s of every decoder and access on one file; the frames each delivered and the
    seconds to its first frame."""
    source = Source(id=path.name, path=path, kind="video")
    info = probe(source)
    config = PairConfig()
    pairs = pair_indices(info.num_frames, config.gap, config.stride)
    accesses = {"sequential": list(range(info.num_frames)), "strided": sorted({*sum(pairs, ())})}
    delivered: dict[str, int] = {}
    first: dict[str, list[float]] = {}

    def variant(decoder: str, access: str) -> Callable[[], float]:
        name = f"{decoder}, {access}"
        first[name] = []

        def run() -> float:
            count = 0
            start = time.perf_counter()
            for _ in READERS[decoder](source, info, accesses[access], access == "sequential"):
                if not count:
                    first[name].append(time.perf_counter() - start)
                count += 1
            delivered[name] = count
            return count / (time.perf_counter() - start)

        return run

    variants = {f"{d}, {a}": variant(d, a) for a in accesses for d in DECODERS}
    rates = interleaved(variants, repeats)
    figures = []
    for name, values in rates.items():
        wanted = len(accesses[name.split(", ")[1]])
        got = delivered[name]
        note = f"{got} frames" + ("" if got == wanted else f" of {wanted} wanted")
        note += f"; first after {statistics.median(first[name]):.2f} s"
        figures.append(measured(PART, f"{label}: {name}", values, "frames/s", note=note))
    details = {
        "num_frames": info.num_frames,
        "size_wh": [info.width, info.height],
        "strided_frames": len(accesses["strided"]),
        "delivered": delivered,
        "first_frame_s": first,
    }
    return figures, details


def measure(bench: Bench) -> dict[str, Any]:
    """Frames/s of each decoder, sequential and strided, on every file (module docstring)."""
    repeats = 1 if bench.quick else 3
    figures: list[dict[str, Any]] = []
    details = {}
    for label, path in bench_files(bench).items():
        rows, details[label] = measure_file(label, path, repeats)
        figures += rows
    conditions = {
        "repeats": repeats,
        "warmup_rounds": 1,
        "threads": "each decoder's default (all cores)",
        "opencv_threads": cv2.getNumThreads(),
        "strided": "frames of the pairs (t, t + 3) every 10 frames",
        "output": "RGB uint8 numpy arrays, at the file's size",
    }
    return {"figures": figures, "conditions": conditions, "details": details}


def main(argv: list[str] | None = None) -> None:
    from benchmarks.runner import run_part

    run_part(PART, argv)


if __name__ == "__main__":
    main()
