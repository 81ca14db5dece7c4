"""Compact storage of dense optical flow and validity masks (the ``flow`` and ``valid`` bytes
of a shard), plus the original CMP format for comparison.

How a flow is stored (format ``CMPF``, version 1)
--------------------------------------------------
1. **Reduced resolution.** The flow is replaced by a field of ``h x w = max(1, H // d) x
   max(1, W // d)`` samples (``d = downscale``, default 2) chosen by least squares so that
   OpenCV's bilinear up-sampling (``cv2.resize(..., INTER_LINEAR)``) back to ``H x W``
   reproduces the flow as closely as possible. The samples keep full-resolution pixel units
   (they are not divided by ``d``). This step is exact for a flow that was itself bilinearly
   up-sampled from that grid, which is what OpenCV DIS with the ``medium`` preset returns (its
   finest level is at half resolution); elsewhere it smooths motion boundaries over ~``d`` px.
2. **Adaptive 12-bit quantisation, per component.** ``step_c = max(step, span_c / 4094)`` px,
   where ``span_c`` is the range (max - min) of that component on the stored grid and ``step``
   defaults to 1/16 px; level 2048 holds the middle of the range (so a zero flow comes back
   exactly zero). Rounding costs at most ``step_c / 2``. Nothing is ever clipped: a
   component spanning more than ``4094 * step`` px (256 px by default) gets a coarser step
   instead, e.g. 0.25 px for one spanning ±512 px.
3. **AVIF, lossy, 12-bit monochrome** (AV1 intra coding through OpenCV's libavif): the x
   levels stacked over the y levels in one ``2h x w`` uint16 image.
4. **Error control.** The encoder decodes its own output and measures the mean absolute error
   per component at full resolution against the input. It tries the AVIF qualities
   ``quality, quality + 1, ...`` up to 100 (lossless levels) and keeps the first that
   stays within ``max_mae`` (default 0.08 px). When none does at ``downscale``, it tries full
   resolution (``d = 1``), and when that fails too (a flow spanning more than about
   ``4094 * 4 * max_mae`` px, ~1300 px by default, whose rounding to 12-bit levels alone
   misses the bound), it stores the float32 flow losslessly (zlib), ~1-2 MB at 416p.

Guarantee: every stored flow decodes with a mean absolute error per component of at most
``max_mae`` px. The largest single error is not bounded: the lossy layer rings a little at
motion boundaries, and the reduced grid smooths sharp ones (exact synthetic flows: up to 7 px
on under 1 % of the pixels, still within ``max_mae`` on average).

Measured by ``python -m benchmarks.codec --samples`` (DIS ``medium`` flows of three sample
clips at 416p, 50 flows, one core): 12.9 KB a flow on average, mean error 0.047 px per
component (with the qualities 95, 97, 99, 100 tried before: 12.3 KB and 0.055 px, 1.47 tries
a flow on the real clips against 1.14 now). Each quality tried costs one AVIF encode and one
decode: on the 416 x 979 flows of the bikes clip an encode takes ~5.5 ms, a decode ~2.4 ms,
the least-squares fit of the grid ~2.9 ms. The original CMP format (JPEG quality 95) on the
same flows: 32.6 KB and 2.0 px (clipping); 18-22 KB and 0.10-0.12 px on the clips without
motion beyond 50 px.

Encoding needs an OpenCV build with AVIF: the opencv-python-headless 5.0 Linux wheel has it
(libavif with libaom); older wheels and the Windows ones may not (see :func:`avif_available`).
This reader decodes the AVIF image with imagecodecs (its libavif and libaom), 1.3-1.5x faster
than OpenCV on these images; AV1 decoding is exact, so the two give the same levels
(``test_documented_layout_decodes_with_numpy_and_cv2_alone`` compares them), and the layout
below decodes with numpy and OpenCV alone.

Byte layout (little-endian)
---------------------------
Flows and masks share an 18-byte header, ``struct`` format ``<4sBBIII``::

    0   4s  magic: b"CMPF" (flow) or b"CMPM" (mask)
    4   B   format version: 1
    5   B   method (below)
    6   I   height H of the flow / mask at full resolution
    10  I   width W
    14  I   CRC-32 (zlib.crc32) of the body, bytes 18..end

Flow method 1, AVIF: the body starts with ``<II4f`` (24 bytes): the stored grid ``h``, ``w``,
then ``offset_x``, ``step_x``, ``offset_y``, ``step_y`` (px); the rest is an AVIF file holding
one ``2h x w`` 12-bit monochrome image ``L``. Decoding::

    L = cv2.imdecode(np.frombuffer(avif, np.uint8), cv2.IMREAD_UNCHANGED)  # uint16 (2h, w)
    f32 = np.float32
    low = np.stack([L[:h] * f32(step_x) + f32(offset_x), L[h:] * f32(step_y) + f32(offset_y)], -1)
    flow = cv2.resize(low, (W, H), interpolation=cv2.INTER_LINEAR)   # skipped when h, w == H, W

Flow method 2, raw: the body is ``zlib.compress`` of the float32 (H, W, 2) array, C order.

Mask method 1: the body is a 1-bit grayscale PNG (``cv2.IMWRITE_PNG_BILEVEL``), read back
with ``cv2.imdecode(body, cv2.IMREAD_GRAYSCALE) > 127``.

The original CMP format (:func:`encode_flow_cmp`): two 8-bit grayscale JPEGs, x and y, byte
``b = round((v + 50) / 100 * 255)`` clipped to 0..255, read back as ``b / 255 * 100 - 50``:
±50 px, 0.392 px steps, every larger motion clipped.
"""

from __future__ import annotations

import functools
import math
import struct
import zlib
from dataclasses import asdict, dataclass
from typing import Any

import cv2
import imagecodecs
import numpy as np
from scipy import linalg, sparse

from cmpdata.errors import CmpDataError, ConfigError
from cmpdata.records import check_flow

VERSION = 1
FLOW_MAGIC = b"CMPF"
MASK_MAGIC = b"CMPM"
METHOD_AVIF = 1
METHOD_RAW = 2
METHOD_PNG = 1
_FLOW_METHODS = (METHOD_AVIF, METHOD_RAW)

_HEADER = struct.Struct("<4sBBIII")
_AVIF_FIELDS = struct.Struct("<II4f")
_LEVELS = 4095  # largest 12-bit level
_MIDDLE = 2048
_ZLIB_LEVEL = 6

#: the original CMP format: values -50..50 px over bytes 0..255
CMP_RANGE = 50.0
CMP_STEP = 2 * CMP_RANGE / 255


def avif_available() -> bool:
    """Whether this OpenCV build encodes AVIF (the wheels that have the encoder decode too)."""
    return cv2.haveImageWriter(".avif")


def _require_avif() -> None:
    if not avif_available():
        raise CmpDataError(
            f"OpenCV {cv2.__version__} was built without AVIF, which the flow codec needs; "
            "install an opencv-python-headless wheel with libavif (5.0 on Linux has it)"
        )


@dataclass(frozen=True)
class FlowCodec:
    """Settings of the flow codec; see the module docstring for what each one does.

    Raises ``ValueError`` for settings out of range.
    """

    downscale: int = 2  # store at max(1, H // downscale) x max(1, W // downscale) samples
    max_mae: float = 0.08  # bound on the mean abs error per component at full resolution (px)
    step: float = 1 / 16  # finest quantisation step (px); coarser for a component spanning more
    quality: int = 96  # first AVIF quality tried (0-100); raised by 1 until in bound
    speed: int = 9  # libaom encoder speed, 0 (slowest, smallest) to 10

    def __post_init__(self) -> None:
        if not (isinstance(self.downscale, int) and self.downscale >= 1):
            raise ConfigError(f"downscale must be an int >= 1, got {self.downscale!r}")
        for name in ("max_mae", "step"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0 (px), got {value!r}")
        if not (isinstance(self.quality, int) and 0 <= self.quality <= 100):
            raise ConfigError(f"quality must be an int in 0..100, got {self.quality!r}")
        if not (isinstance(self.speed, int) and 0 <= self.speed <= 10):
            raise ConfigError(f"speed must be an int in 0..10, got {self.speed!r}")

    def params(self) -> dict[str, Any]:
        """The settings and format, for provenance (JSON-serialisable)."""
        return {
            "format": FLOW_MAGIC.decode(),
            "version": VERSION,
            **asdict(self),
            "encoder": f"opencv {cv2.__version__}",
        }

    def encode(self, flow: np.ndarray) -> bytes:
        """Compress a float32 (H, W, 2) flow (px) into bytes; see the module docstring.

        The result decodes (:func:`decode_flow`) within ``max_mae`` px mean absolute error per
        component. Raises ``ValueError`` for a flow that is not float32 (H, W, 2), is empty, or
        holds NaN or infinite values; :class:`~cmpdata.errors.CmpDataError` when OpenCV lacks
        AVIF.
        """
        check_flow("flow", flow)
        height, width = flow.shape[:2]
        if height == 0 or width == 0:
            raise ValueError(f"cannot encode an empty flow of shape {flow.shape}")
        bad = flow.size - int(np.count_nonzero(np.isfinite(flow)))
        if bad:
            raise ValueError(
                f"flow of shape {flow.shape} holds {bad} NaN or infinite values; "
                "only finite flows can be stored"
            )
        _require_avif()
        flow = np.ascontiguousarray(flow)
        reduced = (max(1, height // self.downscale), max(1, width // self.downscale))
        for grid in dict.fromkeys((reduced, (height, width))):
            low = _fit_low_res(flow, grid)
            fields, levels = _quantise(low, self.step)
            for quality in (*range(self.quality, 100), 100):
                body = _AVIF_FIELDS.pack(*grid, *fields) + _avif(levels, quality, self.speed)
                if _mae(_decode_avif(height, width, body), flow) <= self.max_mae:
                    return _pack(FLOW_MAGIC, METHOD_AVIF, height, width, body)
                # After a first miss, checked once: when the grid alone misses the bound, no
                # quality can help.
                if quality == self.quality and _mae(_upsample(low, height, width), flow) > (
                    self.max_mae
                ):
                    break
        raw = zlib.compress(np.ascontiguousarray(flow, "<f4").tobytes(), _ZLIB_LEVEL)
        return _pack(FLOW_MAGIC, METHOD_RAW, height, width, raw)

    def decode(self, data: bytes) -> np.ndarray:
        """Same as :func:`decode_flow` (decoding needs no settings: they are in the bytes)."""
        return decode_flow(data)


def encode_flow(flow: np.ndarray, **params: Any) -> bytes:
    """``FlowCodec(**params).encode(flow)``."""
    return FlowCodec(**params).encode(flow)


def decode_flow(data: bytes) -> np.ndarray:
    """The float32 (H, W, 2) flow (px, full resolution) stored in ``data``.

    Raises ``ValueError`` naming the problem when ``data`` is not a flow of this format
    (wrong magic, unsupported version or method, truncated, corrupt);
    :class:`~cmpdata.errors.CmpDataError` when the flow is AVIF-coded and OpenCV lacks AVIF.
    """
    method, height, width, body = _unpack(data, FLOW_MAGIC, "flow", _FLOW_METHODS)
    if method == METHOD_RAW:
        raw = _inflate(body, height * width * 2 * 4, "flow")
        return np.frombuffer(raw, "<f4").reshape(height, width, 2).astype(np.float32)
    return _decode_avif(height, width, body)


def inspect_flow(data: bytes) -> dict[str, Any]:
    """What ``data`` holds, without decoding the image: ``method`` (``"avif"`` or ``"raw"``),
    ``size`` (H, W), the ``grid`` (h, w) stored and, for AVIF, ``step`` (px per level, x and y).

    Raises ``ValueError`` as :func:`decode_flow` does for data that is not a flow.
    """
    method, height, width, body = _unpack(data, FLOW_MAGIC, "flow", _FLOW_METHODS)
    if method == METHOD_RAW:
        return {"method": "raw", "size": (height, width), "grid": (height, width)}
    h, w, _, step_x, _, step_y = _avif_fields(height, width, body)
    return {"method": "avif", "size": (height, width), "grid": (h, w), "step": (step_x, step_y)}


def encode_mask(mask: np.ndarray) -> bytes:
    """Compress a bool (H, W) validity mask, losslessly (a 1-bit PNG).

    Raises ``ValueError`` when ``mask`` is not a non-empty 2-D bool array.
    """
    if not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.ndim == 2):
        raise ValueError(
            "mask must be a bool (H, W) array, got "
            f"{getattr(mask, 'dtype', type(mask).__name__)} {getattr(mask, 'shape', '')}"
        )
    if mask.size == 0:
        raise ValueError(f"cannot encode an empty mask of shape {mask.shape}")
    image = mask.astype(np.uint8) * np.uint8(255)
    params = [cv2.IMWRITE_PNG_BILEVEL, 1, cv2.IMWRITE_PNG_COMPRESSION, _ZLIB_LEVEL]
    ok, png = cv2.imencode(".png", image, params)
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode a mask of shape {mask.shape}")
    return _pack(MASK_MAGIC, METHOD_PNG, *mask.shape, png.tobytes())


def decode_mask(data: bytes) -> np.ndarray:
    """The bool (H, W) mask stored in ``data``.

    Raises ``ValueError`` naming the problem when ``data`` is not a mask of this format.
    """
    _, height, width, body = _unpack(data, MASK_MAGIC, "mask", (METHOD_PNG,))
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise ValueError("mask data: the PNG image cannot be decoded (corrupt)")
    if image.shape != (height, width):
        raise ValueError(f"mask data: the PNG image is {image.shape}, expected {(height, width)}")
    return image > 127


def encode_flow_cmp(flow: np.ndarray, quality: int = 95) -> tuple[bytes, bytes]:
    """The original CMP format: x and y as two 8-bit grayscale JPEGs of ``quality``.

    Values beyond ±50 px are clipped (see the module docstring). 95 is OpenCV's default JPEG
    quality. Raises ``ValueError`` for a flow that is not float32 (H, W, 2) or a quality
    outside 0..100.
    """
    check_flow("flow", flow)
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be in 0..100, got {quality}")
    scaled = np.rint((flow + CMP_RANGE) / CMP_STEP)
    images = np.clip(scaled, 0, 255).astype(np.uint8)
    out = []
    for c in range(2):
        ok, jpeg = cv2.imencode(
            ".jpg", np.ascontiguousarray(images[..., c]), [cv2.IMWRITE_JPEG_QUALITY, quality]
        )
        if not ok:
            raise ValueError(f"OpenCV could not JPEG-encode a flow of shape {flow.shape}")
        out.append(jpeg.tobytes())
    return out[0], out[1]


def decode_flow_cmp(x_jpeg: bytes, y_jpeg: bytes) -> np.ndarray:
    """The float32 (H, W, 2) flow (px) from the original CMP format's two JPEGs.

    Raises ``ValueError`` when either is not a decodable image or their sizes differ.
    """
    planes = []
    for name, data in (("x", x_jpeg), ("y", y_jpeg)):
        buf = np.frombuffer(_as_bytes(data, "CMP flow"), np.uint8)
        image = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
        if image is None:
            raise ValueError(f"CMP flow: the {name} JPEG cannot be decoded ({len(data)} bytes)")
        planes.append(image)
    if planes[0].shape != planes[1].shape:
        raise ValueError(f"CMP flow: x is {planes[0].shape}, y is {planes[1].shape}")
    flow = np.stack(planes, axis=-1).astype(np.float32)
    return flow * np.float32(CMP_STEP) - np.float32(CMP_RANGE)


# Internals ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _fit_operator(n_full: int, n_low: int) -> tuple[sparse.csr_array, np.ndarray]:
    """``(U.T, bands)`` for OpenCV's bilinear up-sampling ``U`` from n_low to n_full samples.

    ``U.T`` is sparse (n_low, n_full); ``bands`` holds ``U.T @ U`` (tridiagonal: an output
    sample mixes two neighbouring inputs) in the upper form of ``scipy.linalg.solveh_banded``.
    """
    # Resizing columns of the identity gives U column by column, so the fit matches what
    # cv2.resize does on decoding, border handling included; in blocks, to bound the memory.
    blocks = []
    for start in range(0, n_low, 512):
        eye = np.eye(n_low, min(512, n_low - start), -start, dtype=np.float32)
        up = cv2.resize(eye, (eye.shape[1], n_full), interpolation=cv2.INTER_LINEAR)
        blocks.append(sparse.csr_array(up.reshape(n_full, -1).T))
    up_t = sparse.vstack(blocks, format="csr")
    gram = up_t @ up_t.T
    bands = np.zeros((2, n_low), np.float32)
    bands[0, 1:] = gram.diagonal(1)
    bands[1] = gram.diagonal()
    return up_t, bands


def _fit_low_res(flow: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(2, h, w) samples whose bilinear up-sampling best fits ``flow`` (H, W, 2), C-contiguous.

    Least squares, through the normal equations one axis at a time:
    ``low = (Uy.T Uy)^-1 Uy.T F Ux (Ux.T Ux)^-1`` for each component ``F``.
    """
    height, width = flow.shape[:2]
    if grid == (height, width):
        return np.ascontiguousarray(flow.transpose(2, 0, 1))
    uy_t, gram_y = _fit_operator(height, grid[0])
    ux_t, gram_x = _fit_operator(width, grid[1])
    # Uy.T F of both components in one product (their columns interleaved, as stored), then
    # each component's columns through a (W, h) view: no copy of the flow per component.
    rows = (uy_t @ flow.reshape(height, 2 * width)).reshape(grid[0], width, 2)
    low = np.empty((2, *grid), np.float32)
    for c in range(2):
        projected = ux_t @ rows[..., c].T  # (w, h)
        low[c] = _solve_gram(gram_y, _solve_gram(gram_x, projected).T)
    return low


def _solve_gram(bands: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    if bands.shape[1] == 1:  # LAPACK's tridiagonal solver refuses a 1 x 1 system
        return rhs / bands[1, 0]
    return linalg.solveh_banded(bands, rhs, check_finite=False)


def _avif(levels: np.ndarray, quality: int, speed: int) -> bytes:
    """12-bit monochrome AVIF file of a uint16 image of levels 0..4095."""
    params = [cv2.IMWRITE_AVIF_QUALITY, quality, cv2.IMWRITE_AVIF_DEPTH, 12]
    ok, data = cv2.imencode(".avif", levels, [*params, cv2.IMWRITE_AVIF_SPEED, speed])
    if not ok:
        raise CmpDataError(f"OpenCV could not encode a {levels.shape} image as AVIF")
    return data.tobytes()


def _upsample(low: np.ndarray, height: int, width: int) -> np.ndarray:
    """(2, h, w) -> (H, W, 2) with cv2's bilinear resize, as the decoder does."""
    hw2 = np.ascontiguousarray(low.transpose(1, 2, 0))
    if low.shape[1:] == (height, width):
        return hw2
    return cv2.resize(hw2, (width, height), interpolation=cv2.INTER_LINEAR)


def _quantise(low: np.ndarray, step: float) -> tuple[list[float], np.ndarray]:
    """([offset_x, step_x, offset_y, step_y], (2h, w) uint16 levels) of ``low`` (2, h, w)."""
    fields = []
    levels = np.empty(low.shape, np.uint16)
    for c in range(2):
        lo, hi = float(low[c].min()), float(low[c].max())
        # The middle of the range sits on level 2048, so constant flows (zero) come back exact
        # and the extremes stay one level inside 0..4095.
        s = float(np.float32(max(step, (hi - lo) / (_LEVELS - 1))))
        offset = float(np.float32((lo + hi) / 2 - s * _MIDDLE))
        scaled = low[c].astype(np.float64)  # in place from here: no temporary arrays
        scaled -= offset
        scaled /= s
        levels[c] = np.clip(np.rint(scaled, out=scaled), 0, _LEVELS, out=scaled)
        fields += [offset, s]
    return fields, levels.reshape(-1, low.shape[2])


def _avif_fields(
    height: int, width: int, body: bytes
) -> tuple[int, int, float, float, float, float]:
    """(h, w, offset_x, step_x, offset_y, step_y) at the start of an AVIF body, checked."""
    if len(body) <= _AVIF_FIELDS.size:
        raise ValueError(f"flow data: AVIF body of {len(body)} bytes is truncated")
    fields = _AVIF_FIELDS.unpack_from(body)
    h, w = fields[:2]
    if not (1 <= h <= height and 1 <= w <= width):
        raise ValueError(f"flow data: stored grid {h}x{w} does not fit a {height}x{width} flow")
    if not all(math.isfinite(v) for v in fields[2:]):
        raise ValueError(f"flow data: offsets and steps {fields[2:]} are not all finite")
    return fields


def _decode_avif(height: int, width: int, body: bytes) -> np.ndarray:
    h, w, off_x, step_x, off_y, step_y = _avif_fields(height, width, body)
    try:
        levels = imagecodecs.avif_decode(memoryview(body)[_AVIF_FIELDS.size :], numthreads=1)
    except (imagecodecs.AvifError, ValueError) as exc:
        raise ValueError(f"flow data: the AVIF image cannot be decoded (corrupt: {exc})") from None
    # Checked rather than assumed: an OpenCV that rescaled 12-bit images on reading would
    # otherwise return a wrong flow without a word.
    if levels.dtype != np.uint16 or levels.shape != (2 * h, w) or levels.max() > _LEVELS:
        raise ValueError(
            f"flow data: the AVIF image is {levels.dtype} {levels.shape} with levels up to "
            f"{levels.max()}, expected uint16 {(2 * h, w)} with 12-bit levels (0..{_LEVELS})"
        )
    low = np.empty((h, w, 2), np.float32)
    for c, part, step, offset in ((0, levels[:h], step_x, off_x), (1, levels[h:], step_y, off_y)):
        # float32 level * step, then + offset, each rounded: written in place, no temporary
        np.multiply(part, np.float32(step), out=low[..., c])
        np.add(low[..., c], np.float32(offset), out=low[..., c])
    if (h, w) == (height, width):
        return low
    return cv2.resize(low, (width, height), interpolation=cv2.INTER_LINEAR)


def _mae(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference of two C-contiguous float32 (H, W, 2) arrays, both components
    together (OpenCV's L1 norm, summed in double: ~10x faster than numpy's, no temporary)."""
    return cv2.norm(a, b, cv2.NORM_L1) / a.size


def _pack(magic: bytes, method: int, height: int, width: int, body: bytes) -> bytes:
    return _HEADER.pack(magic, VERSION, method, height, width, zlib.crc32(body)) + body


def _as_bytes(data: object, what: str) -> bytes:
    try:
        return bytes(memoryview(data))  # bytes, bytearray, memoryview, uint8 arrays
    except TypeError:
        raise ValueError(f"{what} data must be bytes, got {type(data).__name__}") from None


def _unpack(
    data: object, magic: bytes, what: str, methods: tuple[int, ...]
) -> tuple[int, int, int, bytes]:
    """(method, height, width, body) of ``data``, after checking header and checksum."""
    buf = _as_bytes(data, what)
    if len(buf) < _HEADER.size:
        raise ValueError(
            f"{what} data: {len(buf)} bytes, shorter than the {_HEADER.size}-byte header "
            "(truncated or empty)"
        )
    found, version, method, height, width, crc = _HEADER.unpack_from(buf)
    if found != magic:
        raise ValueError(f"not {what} data: starts with {found!r}, expected {magic!r}")
    if version != VERSION:
        raise ValueError(
            f"{what} data: format version {version} is not supported (this reader knows "
            f"version {VERSION})"
        )
    if method not in methods:
        raise ValueError(f"{what} data: unknown method {method} (known: {methods})")
    body = buf[_HEADER.size :]
    if zlib.crc32(body) != crc:
        raise ValueError(
            f"{what} data: checksum mismatch over {len(body)} bytes (truncated or corrupt)"
        )
    if height == 0 or width == 0:
        raise ValueError(f"{what} data: empty size {height}x{width}")
    return method, height, width, body


def _inflate(body: bytes, size: int, what: str) -> bytes:
    """``zlib`` body of exactly ``size`` bytes once decompressed (never more is inflated)."""
    inflater = zlib.decompressobj()
    try:
        raw = inflater.decompress(body, size + 1)
    except zlib.error as exc:
        raise ValueError(f"{what} data: corrupt zlib body ({exc})") from None
    if len(raw) != size or not inflater.eof:
        raise ValueError(f"{what} data: body holds {len(raw)}+ bytes, expected {size}")
    return raw
