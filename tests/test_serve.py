"""``cmpmodel serve``: the page's computations, the command's errors, and the page used in a
real browser (headless Chromium driven by Selenium with real mouse events).

The browser tests skip, saying why, where Chromium or its driver is missing (``make test``
installs them as root from the system's packages); with ``CI=true`` they fail instead.
Screenshots go to ``tests/data/screenshots/`` (git-ignored), to be looked at.
"""

from __future__ import annotations

import base64
import io
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from scipy.ndimage import distance_transform_edt
from test_dataset import make_dataset
from test_original import random_original

from cmpdata.errors import ConfigError, UsageError
from cmpdata.records import Guidance
from cmpdata.synth.clips import SynthConfig, SyntheticClip
from cmpdata.viz import flow_to_color
from cmpmodel.cli import main
from cmpmodel.interactive import (
    ANNOTATION_SPEED,
    MAX_PIXELS,
    ImageError,
    ModelMethod,
    annotate,
    annotation_guidance,
    baseline_flows,
    decode_image,
)
from cmpmodel.model import MODEL_FORMAT, build_model
from cmpmodel.serve import (
    KEPT_IMAGES,
    Picture,
    Workspace,
    flow_reply,
    json_object,
    mask_reply,
    sample_index,
)
from cmpmodel.train import CheckpointError, TrainConfig, plain, save_atomic

SCREENSHOTS = Path(__file__).parent / "data" / "screenshots"
# The system's browser and driver (Selenium's own manager would download a driver); the
# variables let a test see what happens on a machine without them.
CHROMIUM = os.environ.get("CMP_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CMP_TEST_CHROMEDRIVER", "/usr/bin/chromedriver")
WAIT_S = 60  # longest wait for the page to answer (the model runs on a shared CPU)
SIZE = (192, 256)  # (H, W) of the synthetic frames: under the page's size, shown 1:1


def png_bytes(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", np.ascontiguousarray(image[..., ::-1]))[1].tobytes()


def save_tiny_checkpoint(path: Path, skip: bool = False) -> Path:
    """A checkpoint of the ``tiny`` model with random weights (seeded); ``skip``: with the
    annotation model's skip decoder."""
    config = TrainConfig(arch="tiny", tiny_width=8, decoder_width=16, skip=skip)
    torch.manual_seed(0)
    model = build_model(config.model_config())
    checkpoint = {
        "model": model.state_dict(),
        "model_format": MODEL_FORMAT,
        "model_config": plain(config.model_config()),
        "config": plain(config),
        "step": 0,
    }
    save_atomic(checkpoint, path)
    return path


def object_frame(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic frame (uint8 (H, W, 3)) with one still object, and its bool mask."""
    config = SynthConfig(
        height=SIZE[0],
        width=SIZE[1],
        num_frames=2,
        num_objects=1,
        limbs=0,
        camera_motion=False,
        min_object_size=0.4,
        max_object_size=0.45,
        seed=seed,
    )
    clip = SyntheticClip(config)
    return clip.frame(0), clip.layers(0) == 1


def interior_point(mask: np.ndarray) -> tuple[int, int]:
    """(x, y) of the pixel of ``mask`` farthest from its edge."""
    y, x = np.unravel_index(np.argmax(distance_transform_edt(mask)), mask.shape)
    return int(x), int(y)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a loadable checkpoint (``tiny.pt``) and one that is not (``broken.pt``)."""
    folder = tmp_path_factory.mktemp("models")
    save_tiny_checkpoint(folder / "tiny.pt")
    (folder / "broken.pt").write_bytes(b"these bytes are no checkpoint")
    return folder


# The page's computations, without a server.


def test_pictures_are_resized_and_unusable_files_refused():
    image = np.random.default_rng(0).integers(0, 256, (600, 1000, 3), np.uint8)
    small, original = decode_image(png_bytes(image), "wide.png", max_side=512)
    assert small.shape == (307, 512, 3) and original == (600, 1000)
    same, original = decode_image(png_bytes(image[:100, :80]), "small.png")
    assert np.array_equal(same, image[:100, :80]) and original == (100, 80)
    with pytest.raises(ImageError, match=r"notes.txt: not an image"):
        decode_image(b"a text file, not a picture", "notes.txt")
    with pytest.raises(ImageError, match=r"cut.png: a damaged image"):
        decode_image(png_bytes(image)[:5000], "cut.png")
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", "empty.png")
    # A huge picture is refused from its header, before it is decoded.
    side = int(np.sqrt(MAX_PIXELS)) + 100
    huge = io.BytesIO()
    Image.new("1", (side, side)).save(huge, format="PNG")
    with pytest.raises(ImageError, match=rf"huge.png: {side} x {side} px is too large"):
        decode_image(huge.getvalue(), "huge.png")


def test_annotation_gives_positive_clicks_a_test_motion_in_four_directions():
    guidances = annotation_guidance([(10, 20), (30, 5)], [(7, 7)])
    assert len(guidances) == 4
    for guidance in guidances:
        assert np.array_equal(guidance.points, [[10, 20], [30, 5], [7, 7]])
        assert np.array_equal(guidance.vectors[2], [0, 0])  # the negative click stays still
        assert np.array_equal(guidance.vectors[0], guidance.vectors[1])
    moves = [tuple(g.vectors[0]) for g in guidances]
    s = ANNOTATION_SPEED
    assert moves == [(s, 0), (-s, 0), (0, s), (0, -s)]
    with pytest.raises(ConfigError, match="positive"):
        annotation_guidance([], [(7, 7)])


def test_annotation_with_the_nearest_guide_is_the_positive_clicks_cells():
    # Nearest guide: a pixel moves (by the speed) exactly when its nearest click is positive,
    # so the mask is the positive clicks' Voronoi cells.
    image = np.zeros((40, 60, 3), np.uint8)
    positive, negative = [(10, 10), (50, 30)], [(31, 20)]  # |p|² - |n|² odd: no ties
    mask, response = annotate(
        lambda im, gs: baseline_flows("nearest", im, gs), image, positive, negative
    )
    ys, xs = np.mgrid[0:40, 0:60]
    distance = [np.hypot(xs - x, ys - y) for x, y in positive + negative]
    nearest = np.argmin(distance, axis=0)
    assert np.array_equal(mask, nearest < 2)
    assert set(np.unique(response)) == {0.0, 1.0}


def test_annotation_with_a_model_masks_the_frame(models):
    image, _ = object_frame()
    mask, response = annotate(ModelMethod(models / "tiny.pt"), image, [(100, 90)], [(5, 5)])
    assert mask.shape == SIZE and mask.dtype == bool
    assert response.max() == pytest.approx(1.0) and response.min() >= 0
    assert mask.any()  # the largest response is 1 > the threshold


@pytest.mark.parametrize("skip", [False, True])
def test_a_picture_encoded_once_for_several_guidances_gives_each_its_flow(skip, tmp_path):
    method = ModelMethod(save_tiny_checkpoint(tmp_path / "model.pt", skip=skip))
    torch.manual_seed(1)
    image, sparse = torch.randn(1, 3, 64, 96), torch.randn(3, 4, 64, 96)
    with torch.no_grad():
        repeated = method.model(image.expand(3, -1, -1, -1), sparse)
        torch.testing.assert_close(method.model.forward_one_image(image, sparse), repeated)
    with pytest.raises(ValueError, match="one"):
        method.model.forward_one_image(image.expand(2, -1, -1, -1), sparse)
    frame, _ = object_frame()
    guidances = annotation_guidance([(100, 90)], [(5, 5)])
    together = method(frame, guidances)
    assert len(together) == 4
    for guidance, flow in zip(guidances, together, strict=True):
        [alone] = method(frame, [guidance])
        np.testing.assert_allclose(flow, alone, atol=1e-4)


def test_a_converted_original_answers_the_page(tmp_path):
    original = tmp_path / "ckpt_iter_42000.pth.tar"
    state = random_original("resnet50_skip")  # the annotation model's layout
    torch.save({"step": 42000, "state_dict": state, "optimizer": {}}, original)
    assert main(["convert-original", str(original), "--out", str(tmp_path / "semiauto.pt")]) == 0
    workspace = Workspace(tmp_path / "semiauto.pt")
    assert [m["id"] for m in workspace.method_list()] == ["model:semiauto.pt", "nearest", "idw"]
    frame, _ = object_frame()
    key = workspace.add(Picture(frame, SIZE, "object.png"))
    request = {"image": key, "method": "model:semiauto.pt", "guides": [[100, 90, 12, -4]]}
    flow = flow_reply(workspace, request)
    assert decode_data_url(flow["flow"]).shape == (*SIZE, 3) and flow["max_magnitude"] > 0
    request = {"image": key, "method": "model:semiauto.pt", "positive": [[100, 90]]}
    mask = mask_reply(workspace, {**request, "negative": [[5, 5]]})
    stored, response = decode_data_url(mask["mask"]), decode_data_url(mask["response"])
    # Random weights move every pixel about alike: the mask may be anything, but it is the
    # response above half its largest value.
    assert stored.shape == response.shape == SIZE and response.max() == 255
    assert np.array_equal(stored > 127, response > 127)
    assert mask["coverage"] == pytest.approx((stored > 127).mean())


def test_the_server_refuses_what_it_cannot_serve_in_one_line(models, tmp_path):
    make_dataset(tmp_path / "data")
    workspace = Workspace(models / "tiny.pt", data=[str(tmp_path / "data")])
    methods = [m["id"] for m in workspace.method_list()]
    assert methods == ["model:tiny.pt", "model:broken.pt", "nearest", "idw"]
    with pytest.raises(UsageError, match="unknown method 'median'; choose one of"):
        workspace.method("median")
    with pytest.raises(CheckpointError, match=r"broken\.pt: not a readable checkpoint"):
        workspace.method("model:broken.pt")
    with pytest.raises(UsageError, match="sample 5: the dataset holds 5 samples"):
        workspace.sample(5)
    assert workspace.picture(workspace.sample(4)).image.shape == (48, 64, 3)
    black = Picture(np.zeros((8, 8, 3), np.uint8), (8, 8), "x")
    keys = [workspace.add(black) for _ in range(KEPT_IMAGES + 1)]
    with pytest.raises(UsageError, match="no longer held"):
        workspace.picture(keys[0])
    request = {"image": keys[-1], "method": "idw", "guides": [[8, 2, 1, 1]]}
    with pytest.raises(ConfigError, match="guide 8,2: the point lies outside the 8 x 8 image x"):
        flow_reply(workspace, request)
    with pytest.raises(ConfigError, match="positive points must be"):
        mask_reply(workspace, {"image": keys[-1], "method": "idw", "positive": [[1]]})
    with pytest.raises(ConfigError, match="not valid JSON"):
        json_object(b"{")
    with pytest.raises(ConfigError, match="whole number"):
        sample_index(b'{"index": true}')
    with pytest.raises(UsageError, match="--data"):
        Workspace(models / "tiny.pt").sample(0)


def test_baselines_need_a_known_name():
    guidance = Guidance(np.zeros((1, 2), np.float32), np.ones((1, 2), np.float32))
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_flows("median", np.zeros((4, 4, 3), np.uint8), [guidance])


# The command.


def test_serve_stops_at_start_in_one_line_and_shows_its_defaults(models, capsys, monkeypatch):
    assert main(["serve", "--checkpoint", str(models / "broken.pt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "broken.pt: not a readable checkpoint" in lines[0]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["serve", "--checkpoint", str(models / "tiny.pt"), "--port", str(port)]
        assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [
        f"cmpmodel: error: port {port} on 127.0.0.1 is in use: choose another with --port"
    ]
    # Without the 'serve' extra (a module of it missing), nothing starts either.
    with monkeypatch.context() as patch:
        patch.setattr("cmpmodel.serve.SERVE_MODULES", ("starlette", "no_such_module_here"))
        assert main(["serve", "--checkpoint", str(models / "tiny.pt")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "needs the 'serve' extra (no_such_module_here missing)" in lines[0]
    with pytest.raises(SystemExit):
        main(["serve", "--checkpoint", "x.pt", "--port", "70000"])
    assert "0..65535" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "(default: 8000)" in shown and "(default: 127.0.0.1)" in shown
    assert "(default: 512)" in shown


@pytest.fixture(scope="module")
def server(models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``cmpmodel serve`` started as a user starts it, on a free port, with a dataset to pick
    samples from; yields its URL and stops it afterwards."""
    data = tmp_path_factory.mktemp("served") / "dataset"
    make_dataset(data)
    command = [sys.executable, "-m", "cmpmodel.cli", "serve", "--checkpoint"]
    command += [str(models / "tiny.pt"), "--port", "0", "--data", str(data)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert proc.poll() is None, proc.stderr.read()
        found = re.fullmatch(
            r"cmpmodel serve: listening on (http://127\.0\.0\.1:\d+/) \(this machine only; "
            r"--host to change\), model tiny.pt on (cpu|cuda)\S*; Ctrl-C stops\n",
            line,
        )
        assert found, line
        yield found.group(1)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


# The page in a browser.


def browser_missing() -> str | None:
    """Why the browser tests cannot run here, or ``None``."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} is missing (install the chromium and chromium-driver packages)"
    try:
        import selenium  # noqa: F401
    except ModuleNotFoundError:
        return "selenium is not installed (pip install -e '.[dev]')"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """Headless Chromium under Selenium, recording the page's network requests."""
    reason = browser_missing()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and the browser tests cannot run: {reason}")
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--window-size=1400,900", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    if os.geteuid() == 0:
        options.add_argument("--no-sandbox")  # Chromium refuses to run as root otherwise
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.requested = []  # every URL the page asked for, gathered by requested_urls
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def requested_urls(driver: object) -> list[str]:
    """Every URL the browser asked for since it started (from its performance log)."""
    import json

    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            driver.requested.append(message["params"]["request"]["url"])
    return driver.requested


def decode_data_url(url: str) -> np.ndarray:
    """The PNG of a ``data:`` URL as RGB (or grey) pixels."""
    assert url.startswith("data:image/png;base64,"), url[:40]
    data = np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return image[..., ::-1] if image.ndim == 3 else image


class Page:
    """The page open in ``driver``, used through real mouse and keyboard events."""

    def __init__(self, driver: object, url: str) -> None:
        from selenium.webdriver.support.ui import WebDriverWait

        self.driver = driver
        driver.get(url)
        self.wait = WebDriverWait(driver, WAIT_S)
        self.wait.until(lambda d: d.find_element("tag name", "body").get_attribute("data-ready"))

    def find(self, css: str) -> object:
        return self.driver.find_element("css selector", css)

    def updates(self) -> int:
        return int(self.find("body").get_attribute("data-updates"))

    def answered(self, action: object) -> None:
        """Do ``action`` and wait until the page has shown the server's answer."""
        before = self.updates()
        action()
        self.wait.until(
            lambda d: (
                self.updates() > before and self.find("body").get_attribute("data-busy") == "0"
            )
        )

    def upload(self, path: Path) -> None:
        self.answered(lambda: self.find("#file").send_keys(str(path)))

    def choose(self, select: str, value: str) -> None:
        from selenium.webdriver.support.ui import Select

        self.answered(lambda: Select(self.find(select)).select_by_value(value))

    def mode(self, value: str) -> None:
        self.find(f"input[name=mode][value={value}]").click()

    def _at(self, x: float, y: float) -> object:
        """Actions with the pointer on picture pixel (x, y) (the picture is shown 1:1)."""
        from selenium.webdriver import ActionChains

        overlay = self.find("#overlay")
        size = overlay.size
        dx, dy = round(x - size["width"] / 2), round(y - size["height"] / 2)
        return ActionChains(self.driver).move_to_element_with_offset(overlay, dx, dy)

    def drag(self, x: float, y: float, dx: float, dy: float) -> None:
        """Press at (x, y), move in two steps by (dx, dy) and release: a guide arrow."""
        steps = self._at(x, y).click_and_hold()
        steps = steps.move_by_offset(round(dx / 2), round(dy / 2))
        steps = steps.move_by_offset(round(dx) - round(dx / 2), round(dy) - round(dy / 2))
        self.answered(steps.release().perform)

    def click(self, x: float, y: float, shift: bool = False) -> None:
        from selenium.webdriver.common.keys import Keys

        steps = self._at(x, y)
        # Shift held: the page's quick way to give a negative click.
        steps = steps.key_down(Keys.SHIFT).click().key_up(Keys.SHIFT) if shift else steps.click()
        self.answered(steps.perform)

    def right_click(self, x: float, y: float) -> None:
        self.answered(self._at(x, y).context_click().perform)

    def arrows(self) -> list[tuple[float, float, float, float]]:
        """The guide arrows the page draws on the picture: (x, y, dx, dy) px."""
        arrows = []
        for line in self.driver.find_elements("css selector", "#overlay line[stroke='#000']"):
            x1, y1, x2, y2 = (float(line.get_attribute(k)) for k in ("x1", "y1", "x2", "y2"))
            arrows.append((x1, y1, x2 - x1, y2 - y1))
        return arrows

    def result(self) -> np.ndarray:
        return decode_data_url(self.find("#result").get_attribute("src"))

    def message(self) -> tuple[str, bool]:
        """The page's message and whether it is shown as an error."""
        element = self.find("#message")
        return element.text, element.get_attribute("class") == "error"

    def screenshot(self, name: str) -> None:
        self.driver.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def colour_of(vector: tuple[float, float], largest: float) -> np.ndarray:
    """The colour the page gives a flow ``vector`` (px) on a scale of ``largest`` px."""
    flow = np.array([[vector]], np.float32)
    return flow_to_color(flow, largest)[0, 0].astype(int)


def test_dragging_arrows_shows_the_motion_they_propagate(browser, server, tmp_path):
    frame, _ = object_frame()
    (tmp_path / "frame.png").write_bytes(png_bytes(frame))
    page = Page(browser, server)
    page.upload(tmp_path / "frame.png")
    assert page.find("#picture").size == {"width": SIZE[1], "height": SIZE[0]}
    page.choose("#method", "idw")
    page.drag(60, 50, 40, 0)
    [first] = page.arrows()
    x, y, dx, dy = first
    assert abs(dx - 40) <= 2 and abs(dy) <= 2
    # One guide: inverse-distance weighting moves every pixel as the guide, so the whole
    # flow has the colour of the arrow's direction (+x: red), at full saturation.
    flow = page.result()
    assert flow.shape == (*SIZE, 3)
    one = colour_of((dx, dy), np.hypot(dx, dy))
    assert np.abs(flow[round(y), round(x)].astype(int) - one).max() <= 1
    assert (np.abs(flow.astype(int) - one).max(axis=-1) <= 1).all()
    red, green, blue = one
    assert red > 200 and green < 60 and blue < 60
    page.screenshot("flow-one-arrow")

    page.drag(200, 140, 0, 40)
    [_, second] = page.arrows()
    x2, y2, dx2, dy2 = second
    largest = max(np.hypot(dx, dy), np.hypot(dx2, dy2))
    flow = page.result()
    assert np.abs(flow[round(y), round(x)].astype(int) - colour_of((dx, dy), largest)).max() <= 1
    down = flow[round(y2), round(x2)].astype(int)
    assert np.abs(down - colour_of((dx2, dy2), largest)).max() <= 1
    # Between the two guides the motion turns from +x to +y: the colour changed there.
    middle = flow[round((y + y2) / 2), round((x + x2) / 2)].astype(int)
    assert np.abs(middle - one).max() > 30
    page.screenshot("flow-two-arrows")

    # Right-click removes the nearest arrow; a click without moving is a still point.
    page.right_click(x2 + 2, y2 + 1)
    assert page.arrows() == [first]
    assert (np.abs(page.result().astype(int) - one).max(axis=-1) <= 1).all()
    page.click(30, 150)
    assert len(browser.find_elements("css selector", "#overlay circle.still")) == 1
    flow = page.result()
    still = flow[150, 30].astype(int)
    assert (still >= 250).all()  # no motion is white
    # The model as well (random weights here: a flow of the picture's size, no message).
    page.choose("#method", "model:tiny.pt")
    assert page.result().shape == (*SIZE, 3) and page.message() == ("", False)
    assert page.find("#side").get_attribute("src").startswith("data:image/png")
    page.screenshot("flow-model")


def test_clicks_on_an_object_give_its_mask(browser, server, tmp_path):
    frame, truth = object_frame()
    (tmp_path / "object.png").write_bytes(png_bytes(frame))
    page = Page(browser, server)
    page.upload(tmp_path / "object.png")
    page.choose("#method", "idw")
    page.mode("mask")
    x, y = interior_point(truth)
    page.click(x, y)
    # Negative clicks a little outside the object, on four sides, as a person would.
    for step_x, step_y in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        px, py = x, y
        while 0 <= px < SIZE[1] and 0 <= py < SIZE[0] and truth[py, px]:
            px, py = px + step_x, py + step_y
        px = int(np.clip(px + 10 * step_x, 2, SIZE[1] - 3))
        py = int(np.clip(py + 10 * step_y, 2, SIZE[0] - 3))
        assert not truth[py, px]
        page.click(px, py, shift=True)
    assert len(browser.find_elements("css selector", "#overlay circle.negative")) == 4
    save = page.find("#save")
    mask = decode_data_url(save.get_attribute("href")) > 127
    assert mask.shape == SIZE and save.get_attribute("download") == "object-mask.png"
    on_object, off_object = mask[truth].mean(), mask[~truth].mean()
    # Inverse-distance weighting knows nothing of the picture: its mask is the region where
    # the positive click outweighs the negative ones (about a third of this object).
    assert on_object > 0.25 and off_object < on_object / 10, (on_object, off_object)
    page.screenshot("mask-idw")
    # A second positive click, far from the first, adds to the mask where it is.
    ys, xs = np.mgrid[0 : SIZE[0], 0 : SIZE[1]]
    far = truth & (np.hypot(xs - x, ys - y) > 20)
    x2, y2 = interior_point(far)
    page.click(x2, y2)
    refined = decode_data_url(save.get_attribute("href")) > 127
    assert refined[y2, x2] and refined[truth].mean() > on_object
    # The model (random weights): a mask the picture's size, and no message.
    page.choose("#method", "model:tiny.pt")
    assert decode_data_url(save.get_attribute("href")).shape == SIZE
    assert page.message() == ("", False)
    page.screenshot("mask-model")


def test_bad_input_is_a_message_on_the_page_and_the_server_goes_on(browser, server, tmp_path):
    page = Page(browser, server)
    (tmp_path / "notes.txt").write_text("a text file, not a picture\n")
    page.upload(tmp_path / "notes.txt")
    assert page.message() == ("notes.txt: not an image (no picture format recognised)", True)
    side = int(np.sqrt(MAX_PIXELS)) + 100
    Image.new("1", (side, side)).save(tmp_path / "huge.png")
    page.upload(tmp_path / "huge.png")
    text, error = page.message()
    assert error and text.startswith(f"huge.png: {side} x {side} px is too large"), text
    page.screenshot("bad-input-huge")
    big = cv2.resize(object_frame()[0], (1200, 800))
    (tmp_path / "big.png").write_bytes(png_bytes(big))
    page.upload(tmp_path / "big.png")
    resized = "big.png: resized from 1200 x 800 to 512 x 341 px (at most 512 px a side)"
    assert page.message() == (resized, False)
    assert page.find("#picture").size == {"width": 512, "height": 341}
    page.choose("#method", "model:broken.pt")
    page.drag(100, 100, 30, 10)
    text, error = page.message()
    assert error and "broken.pt: not a readable checkpoint" in text, text
    assert page.find("#result").get_attribute("src") is None
    page.screenshot("bad-checkpoint")
    page.choose("#method", "idw")
    assert page.message() == ("", False) and page.result().shape == (341, 512, 3)
    # A sample of the dataset given with --data.
    page.choose("#sample", "0")
    assert page.find("#picture-caption").text.startswith("vid0.mp4")
    assert page.find("#picture").size == {"width": 64, "height": 48}


def test_the_page_fetches_nothing_from_elsewhere(browser, server):
    Page(browser, server)
    urls = requested_urls(browser)
    assert any(u.endswith("/page/page.js") for u in urls)
    assert any(u.endswith("/api/flow") for u in urls)  # the earlier tests' requests are here
    outside = [
        u for u in urls if urlsplit(u).scheme != "data" and urlsplit(u).hostname != "127.0.0.1"
    ]
    assert outside == []


@pytest.mark.parametrize("ci", ["", "true"])
def test_without_a_browser_the_tests_skip_saying_why_but_fail_on_ci(ci, tmp_path):
    env = {**os.environ, "CMP_TEST_CHROMIUM": str(tmp_path / "no-chromium"), "CI": ci}
    test = f"{__file__}::test_the_page_fetches_nothing_from_elsewhere"
    command = [sys.executable, "-m", "pytest", "-q", "-rsf", "-p", "no:cacheprovider", test]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    missing = f"{tmp_path / 'no-chromium'} is missing"
    if ci:
        assert proc.returncode == 1 and "1 error" in proc.stdout, proc.stdout[-2000:]
        assert f"CI=true and the browser tests cannot run: {missing}" in proc.stdout
    else:
        assert proc.returncode == 0 and "1 skipped" in proc.stdout, proc.stdout[-2000:]
        assert missing in proc.stdout
