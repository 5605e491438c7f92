"""The demo page (pipelines/demo.py): driven through Gradio's Python client, and end to end by a real
headless Chromium (Debian's ``chromium`` + ``chromium-driver``, installed here when missing) that
uploads an image and waits for the layer overlay. The server binds to 127.0.0.1. Its options and flags
are checked without Gradio."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_support import free_port, random_checkpoint

from pipelines import demo
from pipelines.cli.flags import from_flags, mismatched_defaults
from pipelines.inference.demo_app import DemoOptions
from synth.cli import UserError

NO_GRADIO = "the demo extra is not installed (pip install -e '.[demo]')"
REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "docs" / "demo" / "examples"


# ---- options and flags (no Gradio, no model) -----------------------------------------------------
def test_each_demo_flag_default_has_one_home_on_demo_options():
    assert mismatched_defaults(demo.build_parser(), DemoOptions) == []
    args = demo.build_parser().parse_args(["--port", "7861", "--max-pixels", "0"])
    options = from_flags(DemoOptions, vars(args))
    assert (options.port, options.max_pixels, options.host, options.model) == (7861, 0, "127.0.0.1", None)


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--port", "0"], "--port must be between 1 and 65535, got 0"),
        (["--port", "70000"], "--port must be between 1 and 65535"),
        (["--max-pixels", "-1"], "--max-pixels must be >= 0"),
    ],
)
def test_a_bad_demo_flag_is_one_line_before_anything_loads(flags, message, capsys):
    with pytest.raises(UserError, match=message) as raised:
        from_flags(DemoOptions, vars(demo.build_parser().parse_args(flags)))
    assert "\n" not in str(raised.value)
    with pytest.raises(SystemExit) as exited:
        demo.main(flags)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


def _checkpoint(path: Path) -> str:
    return random_checkpoint(
        path, **{"sampler.steps": 2, "sampler.ensemble_size": 2, "sampler.max_layers": 3}
    )


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    pytest.importorskip("gradio", reason=NO_GRADIO)
    from pipelines.inference.demo_app import DemoModel, build_demo
    from sas_model.checkpoint import load_segmenter
    from sas_model.predictor import Predictor

    root = tmp_path_factory.mktemp("demo")
    segmenter = load_segmenter(_checkpoint(root / "ckpt"), device="cpu")
    demo = build_demo(DemoModel(Predictor(segmenter, max_pixels=200 * 200), label="test checkpoint"))
    port = free_port()
    demo.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", str(root / "ckpt")
    demo.close()


def test_demo_answers_its_python_client_and_rejects_bad_images(demo_url, tmp_path):
    from gradio_client import Client, handle_file

    client = Client(demo_url[0], verbose=False)
    example = sorted(EXAMPLES.glob("*.png"))[0]
    overlay, layers, objects, edges, uncertainty, summary = client.predict(
        handle_file(str(example)), 2, 2, 0, api_name="/segment"
    )
    picture = np.asarray(Image.open(overlay))
    assert (
        picture.shape[0] >= 256 and picture.shape[1] > 2 * picture.shape[0]
    )  # layers | uncertainty, enlarged
    assert objects["headers"][:4] == ["object", "layer", "score", "visible fraction"]
    assert all(0 <= row[3] <= 1 for row in objects["data"])
    assert len(layers) == int(summary.split(": ")[1].split(" layer")[0])
    assert Path(uncertainty).is_file() and "64×64 image" in summary

    wide = tmp_path / "wide.png"  # another size and a 16-bit greyscale image: resized in and out
    Image.fromarray((np.random.default_rng(0).integers(0, 65536, (40, 90))).astype(np.uint16)).save(wide)
    *_, summary = client.predict(handle_file(str(wide)), 1, 1, 0, api_name="/segment")
    assert summary.startswith("90×40 image (segmented at 64×64)")

    not_image, empty, huge = tmp_path / "notes.png", tmp_path / "empty.png", tmp_path / "huge.png"
    not_image.write_text("this is not a picture")
    empty.write_bytes(b"")
    Image.new("RGB", (300, 300)).save(huge)
    for path, message in [
        (not_image, "not a readable image"),
        (empty, "empty input"),
        (huge, "image too large"),
    ]:
        with pytest.raises(Exception, match=message):
            client.predict(handle_file(str(path)), 1, 1, 0, api_name="/segment")
    *_, summary = client.predict(handle_file(str(example)), 1, 1, 0, api_name="/segment")
    assert "64×64 image" in summary  # still serving after the bad inputs


# ---- a real browser ------------------------------------------------------------------------------
def _chromium() -> tuple[str, str]:
    """Paths of Debian's chromium and chromedriver, installed with apt-get when missing."""

    def find() -> tuple[str | None, str | None]:
        return shutil.which("chromium"), shutil.which("chromedriver")

    browser, driver = find()
    if browser and driver:
        return browser, driver
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium/chromium-driver missing and apt-get is not usable here (not root)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "chromium-driver"],
    ):
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.skip(f"could not install chromium: {' '.join(command)} → {done.stderr.strip()[-300:]}")
    browser, driver = find()
    if not (browser and driver):
        pytest.skip("apt-get installed chromium but its binaries are not on PATH")
    return browser, driver


def open_browser(width: int = 1280, height: int = 1000):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (dev extra)")
    from selenium.webdriver.chrome.service import Service

    browser, driver = _chromium()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        f"--window-size={width},{height}",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def segment_in_browser(browser, url: str, image: Path, timeout: float = 60) -> str:
    """Upload ``image`` on the page, press Segment, wait for the overlay; returns the overlay's ``src``."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(url)
    wait = WebDriverWait(browser, timeout)
    upload = wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#upload input[type=file]")))
    upload.send_keys(str(image))
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#upload a, #upload .file-preview")))
    wait.until(ec.element_to_be_clickable((By.ID, "segment"))).click()
    overlay = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#overlay img")))
    wait.until(lambda _: (overlay.get_attribute("src") or "") != "")
    return overlay.get_attribute("src")


@pytest.fixture
def demo_cli(demo_url, tmp_path):
    """``pipelines/demo.py --model CHECKPOINT`` started as a user would, on 127.0.0.1."""
    port = free_port()
    log = open(tmp_path / "demo.log", "wb")
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "TMPDIR": str(tmp_path)}
    command = [sys.executable, "pipelines/demo.py", "--model", demo_url[1], "--port", str(port)]
    server = subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 90
        while True:
            assert server.poll() is None, (tmp_path / "demo.log").read_text()[-2000:]
            try:
                with urllib.request.urlopen(url, timeout=2):
                    break
            except OSError:
                assert time.time() < deadline, "the demo did not come up in 90 s"
                time.sleep(0.5)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)
        log.close()


def test_a_headless_browser_uploads_an_image_and_sees_the_layer_overlay(demo_cli):
    browser = open_browser()
    try:
        src = segment_in_browser(browser, demo_cli, sorted(EXAMPLES.glob("*.png"))[1])
        assert src.startswith(("http", "data:image/png"))
        from selenium.webdriver.common.by import By

        assert browser.find_elements(By.CSS_SELECTOR, "#layers img"), "the layer gallery is empty"
        summary = browser.find_element(By.ID, "summary").text
        assert "layer(s)" in summary and "64×64 image" in summary
        png = browser.get_screenshot_as_png()
        assert Image.open(io.BytesIO(png)).size[0] > 0
    finally:
        browser.quit()
