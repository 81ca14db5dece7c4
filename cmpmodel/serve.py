"""``cmpmodel serve``: a local web page to try a CMP model on one's own pictures.

The page (``cmpmodel/page/``: one HTML file, one script, one style sheet, nothing fetched from
elsewhere) loads a picture, lets the user drag guide arrows and click static points, and shows
the propagated flow after each change; in its annotation mode, positive and negative clicks
give an object's mask (:func:`cmpmodel.interactive.annotate`), saved as a PNG. The model, the
other checkpoints of its folder and the two baselines can be chosen.

The server is a small Starlette app run by uvicorn (the ``serve`` extra). Its JSON API:

- ``GET /api/info``: the methods, the number of dataset samples, the sizes and the
  annotation's numbers;
- ``POST /api/image`` (a multipart ``file``) and ``POST /api/sample`` (``{"index": i}``): a
  picture to work on, kept in memory; the reply gives its ``id`` and size;
- ``GET /api/image/{id}``: that picture (PNG, at the size the page works on);
- ``POST /api/flow`` (``{"image", "method", "guides": [[x, y, dx, dy], ...]}``, px): the flow's
  colours and legend (PNG data URLs) and its largest magnitude;
- ``POST /api/mask`` (``{"image", "method", "positive": [[x, y]], "negative": [[x, y]]}``):
  the picture with the mask over it, the response, and the mask at the picture's size as
  stored (PNG data URLs).

A request the server cannot serve (not an image, too large, a checkpoint that does not load, a
guide outside the picture) is answered with status 400 and ``{"error": one line}``, which the
page shows; the server keeps running.
"""

from __future__ import annotations

import base64
import errno
import importlib.util
import json
import socket
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cmpdata.errors import CmpDataError, ConfigError, UsageError
from cmpdata.store.dataset import ShardDataset
from cmpdata.viz import color_wheel_legend, flow_to_color
from cmpmodel.interactive import (
    ANNOTATION_SPEED,
    ANNOTATION_THRESHOLD,
    MAX_SIDE,
    MAX_UPLOAD_BYTES,
    Method,
    ModelMethod,
    annotate,
    baseline_flows,
    decode_image,
    fit,
)
from cmpmodel.propagate import check_guides

PAGE = Path(__file__).parent / "page"
BASELINES = {"nearest": "nearest guide (baseline)", "idw": "inverse distance (baseline)"}
KEPT_IMAGES = 16  # pictures held in memory; the oldest is dropped beyond
MASK_TINT = (0, 0, 255)  # RGB: the mask is shown in blue over the picture, as the original does
LEGEND_SIDE = 128  # px
SERVE_MODULES = ("starlette", "uvicorn", "python_multipart")  # the 'serve' extra's


@dataclass(frozen=True)
class Picture:
    """A picture the page works on: uint8 (H, W, 3) RGB, its (H, W) as stored, its name."""

    image: np.ndarray
    original: tuple[int, int]
    name: str


def png_bytes(image: np.ndarray) -> bytes:
    """``image`` (uint8 (H, W, 3) RGB or (H, W) grey) as a PNG file."""
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", bgr)
    if not ok:
        raise RuntimeError(f"PNG encoding failed for an image of shape {image.shape}")
    return encoded.tobytes()


def png_data_url(image: np.ndarray) -> str:
    """``image`` (uint8 (H, W, 3) RGB or (H, W) grey) as a ``data:image/png;base64,...`` URL."""
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def checkpoints_beside(checkpoint: Path) -> list[Path]:
    """``checkpoint`` first, then the other ``*.pt`` files of its folder, by name."""
    others = sorted(p for p in checkpoint.parent.glob("*.pt") if p.resolve() != checkpoint)
    return [checkpoint, *others]


class Workspace:
    """What the server holds: the methods on offer, the loaded models, the pictures, and the
    dataset to pick samples from. Safe to use from several threads.

    ``checkpoint`` must load (:class:`~cmpmodel.train.CheckpointError` otherwise); the other
    checkpoints of its folder are loaded when first chosen. ``data`` (dataset directories)
    offers their samples; ``max_side`` (px) is the longer side pictures are resized to.
    """

    def __init__(
        self, checkpoint: str | Path, data: list[str] | None = None, max_side: int = MAX_SIDE
    ) -> None:
        if max_side < 16:
            raise ConfigError(f"--max-side must be at least 16 px, got {max_side}")
        first = ModelMethod(checkpoint)
        self.max_side = max_side
        self.device = str(first.device)
        paths = checkpoints_beside(first.path.resolve())
        self.methods = {f"model:{p.name}": p for p in paths}
        self._models: dict[Path, ModelMethod] = {paths[0]: first}
        self.dataset = ShardDataset(data, split=None) if data else None
        self._pictures: OrderedDict[str, Picture] = OrderedDict()
        self._lock = threading.Lock()

    def method_list(self) -> list[dict[str, str]]:
        """The methods the page offers, ``[{"id", "label"}]``: the models, then the baselines."""
        models = [{"id": key, "label": f"model {path.name}"} for key, path in self.methods.items()]
        return models + [{"id": key, "label": label} for key, label in BASELINES.items()]

    def method(self, key: str) -> Method:
        """The method called ``key``; :class:`UsageError` for an unknown one, and
        :class:`~cmpmodel.train.CheckpointError` for a checkpoint that does not load."""
        if key in BASELINES:
            return lambda image, guidances: baseline_flows(key, image, guidances)
        if key not in self.methods:
            choices = sorted([*self.methods, *BASELINES])
            raise UsageError(f"unknown method {key!r}; choose one of {choices}")
        path = self.methods[key]
        with self._lock:
            if path not in self._models:
                self._models[path] = ModelMethod(path)
            return self._models[path]

    def add(self, picture: Picture) -> str:
        """Keep ``picture`` (the oldest is dropped beyond :data:`KEPT_IMAGES`); its id."""
        key = uuid.uuid4().hex
        with self._lock:
            self._pictures[key] = picture
            while len(self._pictures) > KEPT_IMAGES:
                self._pictures.popitem(last=False)
        return key

    def picture(self, key: str) -> Picture:
        """The picture of id ``key``; :class:`UsageError` when it is not (or no longer) held."""
        with self._lock:
            if key not in self._pictures:
                raise UsageError("the picture is no longer held by the server: load it again")
            return self._pictures[key]

    def upload(self, data: bytes, name: str) -> str:
        """Keep the picture of an uploaded file; its id (:class:`ImageError` when unusable)."""
        image, original = decode_image(data, name, self.max_side)
        return self.add(Picture(image, original, name))

    def sample(self, index: int) -> str:
        """Keep the frame of dataset sample ``index``; its id. :class:`UsageError` without a
        dataset or for an index out of range."""
        if self.dataset is None:
            raise UsageError("no dataset: start the server with --data DIR to pick samples")
        if not 0 <= index < len(self.dataset):
            raise UsageError(f"sample {index}: the dataset holds {len(self.dataset)} samples")
        with self._lock:  # one shard reader serves every request thread
            stored = self.dataset[index]
        image = fit(stored.image, self.max_side)
        return self.add(Picture(image, stored.image.shape[:2], stored.sample_id))


def flow_reply(workspace: Workspace, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``POST /api/flow`` (module docstring)."""
    picture = workspace.picture(str(request.get("image")))
    guidance = check_guides(request.get("guides") or [], picture.image.shape[:2], picture.name)
    [flow] = workspace.method(str(request.get("method")))(picture.image, [guidance])
    magnitude = np.hypot(flow[..., 0], flow[..., 1])
    # Zero flow everywhere is drawn white against a 1 px scale, as the pictures elsewhere.
    largest = float(magnitude.max()) or 1.0
    return {
        "flow": png_data_url(flow_to_color(flow, largest)),
        "legend": png_data_url(color_wheel_legend(LEGEND_SIDE, largest)),
        "max_magnitude": largest,
    }


def json_object(body: bytes) -> dict[str, Any]:
    """The JSON object a request's ``body`` holds; :class:`ConfigError` for anything else."""
    try:
        value = json.loads(body)
    except ValueError:  # json's own error, and bytes that are not UTF-8
        raise ConfigError("the request is not valid JSON") from None
    if not isinstance(value, dict):
        raise ConfigError("the request must be a JSON object")
    return value


def sample_index(body: bytes) -> int:
    """The ``index`` of a ``POST /api/sample`` body; :class:`ConfigError` when not an int."""
    index = json_object(body).get("index")
    if not isinstance(index, int) or isinstance(index, bool):
        raise ConfigError(f"a sample index must be a whole number, got {index!r}")
    return index


def points_of(value: object, what: str) -> list[tuple[float, float]]:
    """``[[x, y], ...]`` from the page as (x, y) pairs; :class:`ConfigError` otherwise."""
    try:
        return [(float(x), float(y)) for x, y in value or []]
    except (TypeError, ValueError):
        raise ConfigError(f"{what} points must be [[x, y], ...], got {value!r}") from None


def mask_reply(workspace: Workspace, request: dict[str, Any]) -> dict[str, Any]:
    """The reply to ``POST /api/mask`` (module docstring)."""
    picture = workspace.picture(str(request.get("image")))
    positive = points_of(request.get("positive"), "positive")
    negative = points_of(request.get("negative"), "negative")
    # The clicks become guides; checking them so names the picture in the message.
    check_guides(
        [(x, y, 0, 0) for x, y in positive + negative], picture.image.shape[:2], picture.name
    )
    method = workspace.method(str(request.get("method")))
    mask, response = annotate(method, picture.image, positive, negative)
    tinted = picture.image.copy()
    tinted[mask] = (tinted[mask] // 2 + np.array(MASK_TINT, np.uint8) // 2).astype(np.uint8)
    h, w = picture.original
    stored = cv2.resize(mask.astype(np.uint8) * 255, (w, h), interpolation=cv2.INTER_NEAREST)
    return {
        "overlay": png_data_url(tinted),
        "response": png_data_url(np.round(response * 255).astype(np.uint8)),
        "mask": png_data_url(stored),
        "coverage": float(mask.mean()),
    }


def build_app(workspace: Workspace) -> Any:
    """The Starlette app of the page and its API (module docstring) over ``workspace``."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    def picture_reply(key: str) -> dict[str, Any]:
        picture = workspace.picture(key)
        h, w = picture.image.shape[:2]
        reply = {"id": key, "name": picture.name, "width": w, "height": h}
        if picture.original != (h, w):
            reply["message"] = (
                f"{picture.name}: resized from {picture.original[1]} x {picture.original[0]} "
                f"to {w} x {h} px (at most {workspace.max_side} px a side)"
            )
        return reply

    async def answer(work: Callable[[], dict[str, Any]]) -> Response:
        # Expected failures are the page's messages; anything else is a bug and propagates.
        try:
            return JSONResponse(await run_in_threadpool(work))
        except CmpDataError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def index(request: Request) -> Response:
        return FileResponse(PAGE / "index.html")

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "methods": workspace.method_list(),
                "samples": len(workspace.dataset) if workspace.dataset is not None else 0,
                "max_side": workspace.max_side,
                "max_upload_mib": MAX_UPLOAD_BYTES // 2**20,
                "speed": ANNOTATION_SPEED,
                "threshold": ANNOTATION_THRESHOLD,
                "device": workspace.device,
            }
        )

    async def upload(request: Request) -> Response:
        size = int(request.headers.get("content-length") or 0)
        if size > MAX_UPLOAD_BYTES + 2**16:  # the form's own bytes on top of the file's
            message = f"the upload ({size / 2**20:.0f} MiB) is too large"
            limit = f"at most {MAX_UPLOAD_BYTES // 2**20} MiB"
            return JSONResponse({"error": f"{message} ({limit})"}, status_code=413)
        async with request.form(max_part_size=MAX_UPLOAD_BYTES) as form:
            file = form.get("file")
            if file is None or isinstance(file, str):
                return JSONResponse({"error": "no file in the upload"}, status_code=400)
            data, name = await file.read(), file.filename or "upload"
        return await answer(lambda: picture_reply(workspace.upload(data, name)))

    async def sample(request: Request) -> Response:
        body = await request.body()
        return await answer(lambda: picture_reply(workspace.sample(sample_index(body))))

    async def image(request: Request) -> Response:
        try:
            picture = workspace.picture(request.path_params["key"])
        except UsageError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        return Response(png_bytes(picture.image), media_type="image/png")

    async def flow(request: Request) -> Response:
        body = await request.body()
        return await answer(lambda: flow_reply(workspace, json_object(body)))

    async def mask(request: Request) -> Response:
        body = await request.body()
        return await answer(lambda: mask_reply(workspace, json_object(body)))

    return Starlette(
        routes=[
            Route("/", index),
            Route("/api/info", info),
            Route("/api/image", upload, methods=["POST"]),
            Route("/api/sample", sample, methods=["POST"]),
            Route("/api/image/{key}", image),
            Route("/api/flow", flow, methods=["POST"]),
            Route("/api/mask", mask, methods=["POST"]),
            Mount("/page", StaticFiles(directory=PAGE)),
        ]
    )


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to (``host``, ``port``) and listening; :class:`UsageError` in one line
    when the port is in use or the address cannot be used."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host}: not an address of this machine ({exc.strerror})"
        ) from None
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.bind((host, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is in use: choose another with --port"
            ) from None
        raise UsageError(f"cannot listen on {host} port {port} ({exc.strerror})") from None
    return sock


def serve(
    checkpoint: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    data: list[str] | None = None,
    max_side: int = MAX_SIDE,
) -> None:
    """Serve the page on ``host``:``port`` until interrupted, saying where on stdout.

    Raises :class:`UsageError` (nothing started) without the ``serve`` extra installed, for a
    checkpoint that does not load, unusable ``data`` or ``max_side``, a port in use or a host
    that cannot be listened on.
    """
    missing = [m for m in SERVE_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(
            f"cmpmodel serve needs the 'serve' extra ({', '.join(missing)} missing): "
            "pip install -e '.[serve]' (make test and make demo install it)"
        )
    import uvicorn

    workspace = Workspace(checkpoint, data, max_side)
    app = build_app(workspace)
    sock = listen(host, port)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    scope = "this machine only" if bound_host in ("127.0.0.1", "::1") else "other machines too"
    print(
        f"cmpmodel serve: listening on http://{shown}:{bound_port}/ ({scope}; --host to change), "
        f"model {Path(checkpoint).name} on {workspace.device}; Ctrl-C stops",
        flush=True,
    )
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    server.run(sockets=[sock])
