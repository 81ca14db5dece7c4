"""Frames that show their own index, for checking that a decoder returns exactly frame t.

Each frame is a 6x6 grid of flat black or white blocks: the 16 inner blocks hold the index
in binary (most significant bit first, row by row, white = 1) and the outer ring is a
marker, black but for its two top-left blocks. Flat blocks of this size survive lossy
coding and resizing; the marker has no symmetry, so a rotated, transposed or flipped frame
is rejected instead of being read as a wrong index::

    write_index_video("clip.mp4", 50)
    for t, frame in read_frames(source, [3, 13]):
        assert read_index(frame) == t
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmpdata.io.media import write_video

GRID = 6  # blocks per side: a one-block marker ring around 4x4 data blocks
BITS = (GRID - 2) ** 2
MAX_INDEX = 2**BITS - 1
MIN_SIDE = 4 * GRID  # at least 4 px a block, so a block keeps a flat centre after coding

# Block means between these levels are neither black nor white: the frame is degraded
# beyond reading, or is not an index frame at all.
_BLACK_BELOW = 80
_WHITE_ABOVE = 176


def _marker() -> np.ndarray:
    """(GRID, GRID) bool: True for white ring blocks; the inner blocks are left False."""
    ring = np.zeros((GRID, GRID), dtype=bool)
    ring[0, 0] = ring[0, 1] = True
    return ring


def _ring_mask() -> np.ndarray:
    mask = np.ones((GRID, GRID), dtype=bool)
    mask[1:-1, 1:-1] = False
    return mask


def _edges(n: int) -> np.ndarray:
    return np.linspace(0, n, GRID + 1).round().astype(int)


def _check_size(height: int, width: int) -> None:
    if height < MIN_SIDE or width < MIN_SIDE:
        raise ValueError(
            f"index frames need at least {MIN_SIDE}x{MIN_SIDE} px, got {width}x{height}"
        )


def index_frame(index: int, height: int = 128, width: int = 160) -> np.ndarray:
    """An RGB uint8 ``(height, width, 3)`` frame showing ``index`` (0 to 65535) as blocks.

    Raises ``ValueError`` for an index out of range or a side under 24 px.
    """
    if not 0 <= index <= MAX_INDEX:
        raise ValueError(f"index {index} is outside 0..{MAX_INDEX}")
    _check_size(height, width)
    bits = [(index >> (BITS - 1 - i)) & 1 for i in range(BITS)]
    blocks = _marker()
    blocks[1:-1, 1:-1] = np.array(bits, dtype=bool).reshape(GRID - 2, GRID - 2)
    ys, xs = _edges(height), _edges(width)
    rows = np.repeat(blocks, np.diff(ys), axis=0)
    image = np.repeat(rows, np.diff(xs), axis=1)
    return np.repeat((image * 255).astype(np.uint8)[:, :, None], 3, axis=2)


def read_index(frame: np.ndarray) -> int:
    """The index shown by an :func:`index_frame` (possibly lossy-coded or resized).

    Each block's centre is averaged over colour and space and thresholded. Raises
    ``ValueError`` if the frame is too small, a block is neither black nor white, or the
    marker ring is wrong (a rotated, flipped or unrelated frame).
    """
    if frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) frame, got shape {frame.shape}")
    height, width = frame.shape[:2]
    _check_size(height, width)
    gray = frame.astype(np.float32).mean(axis=2)
    ys, xs = _edges(height), _edges(width)
    means = np.empty((GRID, GRID), dtype=np.float32)
    for r in range(GRID):
        # The centre half of a block: its edges blur into the neighbours when coded.
        qy = (ys[r + 1] - ys[r]) // 4
        for c in range(GRID):
            qx = (xs[c + 1] - xs[c]) // 4
            means[r, c] = gray[ys[r] + qy : ys[r + 1] - qy, xs[c] + qx : xs[c + 1] - qx].mean()
    grey = (means >= _BLACK_BELOW) & (means <= _WHITE_ABOVE)
    if grey.any():
        r, c = np.argwhere(grey)[0]
        raise ValueError(
            f"not an index frame: block ({r}, {c}) has mean level {means[r, c]:.0f}, "
            "neither black nor white"
        )
    white = means > 127.5
    ring = _ring_mask()
    if not np.array_equal(white[ring], _marker()[ring]):
        raise ValueError(
            "index marker not found: the frame is rotated, flipped or not an index frame"
        )
    value = 0
    for bit in white[1:-1, 1:-1].ravel():
        value = (value << 1) | int(bit)
    return value


def write_index_video(
    path: str | Path, num_frames: int, height: int = 128, width: int = 160, fps: float = 25
) -> Path:
    """Encode frames 0..num_frames-1 of :func:`index_frame` to ``path`` (codec by suffix).

    Raises ``ValueError`` for a bad size, count or suffix, ``RuntimeError`` if ffmpeg fails.
    """
    if not 1 <= num_frames <= MAX_INDEX + 1:
        raise ValueError(f"num_frames must be in 1..{MAX_INDEX + 1}, got {num_frames}")
    _check_size(height, width)
    return write_video(path, (index_frame(i, height, width) for i in range(num_frames)), fps=fps)
