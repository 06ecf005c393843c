"""``interdyn app`` driven as a person would: a real headless Chromium paints a mask, clicks a path and
generates on the tiny model; the video and the downloads must come back.

Needs the system's Chromium and its driver (Debian: ``apt-get install chromium chromium-driver``, which
``.ci/run`` does); the test is skipped, saying so, only where they are missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from interdyn.app.engine import DEFAULT_MODEL
from interdyn.data.video import decode_frames
from tests.helpers import REPO_ROOT

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (it is in [dev])")
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException  # noqa: E402
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
pytestmark = [
    # gradio runs in the app's own process: checked here, not imported (seconds on every test worker)
    pytest.mark.skipif(
        importlib.util.find_spec("gradio") is None,
        reason="the app's extra is not installed (pip install -e '.[app]')",
    ),
    pytest.mark.skipif(
        CHROMIUM is None or CHROMEDRIVER is None,
        reason="no Chromium browser and driver on this machine (Debian: apt-get install chromium chromium-driver; "
        ".ci/run installs them)",
    ),
    # one app server for the module: its tests stay on one xdist worker (make test runs --dist loadgroup)
    pytest.mark.xdist_group("browser"),
]
SCREENSHOT = os.environ.get("INTERDYN_APP_SCREENSHOT")  # where to save the page after the generation


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def app_url(tmp_path_factory: pytest.TempPathFactory):
    """``interdyn app`` on a free loopback port (one server for the module), stopped with its process
    group at the end."""
    tmp_path = tmp_path_factory.mktemp("app")
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "2"}
    log = open(tmp_path / "app.log", "w")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "interdyn.commands.cli",
            "app",
            "--port",
            str(port),
            "--out",
            str(tmp_path / "runs"),
            "--steps",
            "3",
        ],
        cwd=REPO_ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"the app did not start:\n{(tmp_path / 'app.log').read_text()}"
                    ) from None
                time.sleep(0.5)
        yield url, tmp_path / "runs"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module (each test opens the page anew; starting the browser is the
    expensive part)."""
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def newest_run(runs: Path) -> Path:
    """The last run folder the app wrote (run001, run002, ...)."""
    return max(p for p in runs.iterdir() if p.name.startswith("run"))


def test_the_first_click_generates_the_first_scene(app_url, browser) -> None:
    """The page opens on the first built-in world scene, its mask painted and its path drawn: clicking
    only *generate* makes a video of that scene's driver."""
    from interdyn.app.scenes import builtin_scenes

    url, runs = app_url
    browser.get(url)
    WebDriverWait(browser, 60).until(lambda d: d.find_element(By.CSS_SELECTOR, "#path_canvas img"))
    browser.find_element(By.ID, "generate").click()
    WebDriverWait(browser, 600).until(lambda d: d.find_element(By.CSS_SELECTOR, "#result_video video[src]"))
    assert browser.execute_script("return document.querySelectorAll('.toast-body').length") == 0
    run = newest_run(runs)
    scene = builtin_scenes()[0]
    first = np.asarray(Image.open(run / "first_frame.png"))
    np.testing.assert_array_equal(first, scene.image)
    masks = np.load(run / "driver.npz")["control"]
    np.testing.assert_array_equal(masks[0], scene.mask)  # the scene's mask, at the path's first point
    path = json.loads((run / "driver_path.json").read_text())
    np.testing.assert_allclose(path["points"], scene.points)
    assert {f"{run.name}_compare.mp4", f"{run.name}_sheet.png"} <= {p.name for p in run.iterdir()}


def act(action, *args) -> bool:
    """Run a browser action inside a wait (``WebDriverWait.until`` retries it while the page redraws the
    element under it); True once it went through."""
    action(*args)
    return True


def redrawn(before: str | None):
    """A wait condition: the path canvas shows another image than ``before``."""
    return lambda d: d.find_element(By.CSS_SELECTOR, "#path_canvas img").get_attribute("src") != before


def test_paint_drag_generate_download(app_url, browser, tmp_path: Path) -> None:
    url, runs = app_url
    picture = np.full((96, 128, 3), (90, 110, 140), dtype=np.uint8)
    picture[30:60, 60:90] = (220, 60, 50)
    Image.fromarray(picture).save(tmp_path / "scene.png")
    wait = WebDriverWait(browser, 60, ignored_exceptions=(StaleElementReferenceException,))

    browser.get(url)
    # the page opens on the first built-in scene: wait until it is drawn (the editor is redrawn with it)
    scene = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#path_canvas img")).get_attribute("src")
    upload = str(tmp_path / "scene.png")
    wait.until(
        lambda d: act(
            d.find_element(By.ID, "editor").find_element(By.CSS_SELECTOR, "input[type=file]").send_keys,
            upload,
        )
    )
    # the server has the picture once the path canvas shows it: strokes painted before would be lost
    wait.until(redrawn(scene))
    wait.until(
        lambda d: act(
            d.find_element(By.ID, "editor").find_element(By.CSS_SELECTOR, "button[aria-label=Brush]").click
        )
    )
    painted_at = [0.0]
    uploaded = browser.find_element(By.CSS_SELECTOR, "#path_canvas img").get_attribute("src")

    def paint(d) -> bool:
        """Paint the strokes, again if the canvas has not shown the mask 20 s later (a busy page can drop
        strokes); True once the path canvas shows the painted mask."""
        if redrawn(uploaded)(d):
            return True
        if time.monotonic() - painted_at[0] > 20:
            canvas = d.find_element(By.ID, "editor").find_elements(By.CSS_SELECTOR, "canvas")[-1]
            strokes = ActionChains(d).move_to_element_with_offset(canvas, 20, -20).click_and_hold()
            for dx, dy in [(45, -20), (45, 0), (20, 0), (20, 15), (45, 15)]:
                strokes.move_to_element_with_offset(canvas, dx, dy)
            strokes.release().perform()
            painted_at[0] = time.monotonic()
        return False

    WebDriverWait(browser, 120, ignored_exceptions=(StaleElementReferenceException,)).until(paint)

    # The path canvas shows the frame once the editor has it; two clicks make a path to the left.
    path = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#path_canvas img"))
    for fx in (0.1, -0.35):
        before = path.get_attribute("src")
        ActionChains(browser).move_to_element_with_offset(
            path, int(fx * path.size["width"]), 0
        ).click().perform()
        wait.until(redrawn(before))  # each click is one round trip that redraws the canvas
        path = browser.find_element(By.CSS_SELECTOR, "#path_canvas img")
    samples = browser.find_element(By.CSS_SELECTOR, "#samples input[type=number]")
    samples.clear()
    samples.send_keys("2", Keys.TAB)
    # the preview renders the driver's frames on the server: slow while the other worker is busy; a click
    # that lands while the page still handles the samples field is lost, so it is repeated now and then
    clicked = [0.0]

    def previewed(d) -> bool:
        if d.find_elements(By.CSS_SELECTOR, "#preview_image img"):
            return True
        errors = [t.get_attribute("textContent") for t in d.find_elements(By.CSS_SELECTOR, ".toast-body")]
        assert not any(errors), f"the preview failed: {errors}"
        if time.monotonic() - clicked[0] > 45:
            d.find_element(By.ID, "preview").click()
            clicked[0] = time.monotonic()
        return False

    try:
        WebDriverWait(browser, 240, ignored_exceptions=(StaleElementReferenceException,)).until(previewed)
    except TimeoutException:  # say what the server did: the page alone does not tell a hang from slowness
        log = (runs.parent / "app.log").read_text()[-3000:]
        raise AssertionError(f"no preview after 240 s; the app's log ends with:\n{log}") from None

    browser.find_element(By.ID, "generate").click()
    video = WebDriverWait(browser, 300).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#result_video video[src]")
    )
    hrefs = [a.get_attribute("href") for a in browser.find_elements(By.CSS_SELECTOR, "#downloads a")]
    assert browser.execute_script("return document.querySelectorAll('.toast-body').length") == 0

    # The video in the page has the clip's 14 frames; the downloads are the run's files.
    frames = decode_frames(urllib.request.urlopen(video.get_attribute("src"), timeout=10).read())
    assert frames.shape[0] == 14
    assert sum(h.endswith(".mp4") for h in hrefs) == 2 + 1  # 2 samples and the side-by-side video
    settings = json.loads(
        urllib.request.urlopen(next(h for h in hrefs if h.endswith("_settings.json"))).read()
    )
    assert settings["seed"] == 42 and settings["num_frames"] == 14 and settings["svd"] == DEFAULT_MODEL.svd
    assert (
        settings["num_samples"] == 2 and settings["sampling"]["num_inference_steps"] == 3
    )  # the app's --steps
    sheet = urllib.request.urlopen(next(h for h in hrefs if h.endswith("_sheet.png"))).read()
    assert sheet.startswith(b"\x89PNG")
    # The drawn driver was dragged to the left: its last frame lies left of its first.
    run = newest_run(runs)
    masks = np.load(run / "driver.npz")["control"]
    assert masks.shape[0] == 14 and masks[0].any() and masks[-1].any()
    assert np.nonzero(masks[-1])[1].mean() < np.nonzero(masks[0])[1].mean() - 10
    assert f"{run.name}_sheet" in browser.find_element(By.ID, "history").get_attribute("innerHTML")
    if SCREENSHOT:  # docs/app.png: a counterfactual on a built-in world scene, next to the first run
        scene = browser.find_element(By.CSS_SELECTOR, "#scene input")
        scene.click()
        scene.send_keys("scene 2", Keys.ENTER)
        browser.find_element(By.ID, "use_scene").click()
        time.sleep(3)
        browser.find_element(By.ID, "preview").click()
        time.sleep(3)
        browser.find_element(By.ID, "generate").click()
        after = f"run{int(run.name[3:]) + 1:03d}_sheet"
        wait.until(lambda d: after in d.find_element(By.ID, "history").get_attribute("innerHTML"))
        browser.set_window_size(1400, 3400)  # the whole page
        browser.execute_script("window.scrollTo(0, 0)")
        wait.until(
            lambda d: d.execute_script(
                "const imgs = [...document.querySelectorAll('#history img')];"
                "return imgs.length >= 2 && imgs.every(i => i.complete && i.naturalWidth > 0);"
            )
        )
        time.sleep(1)
        browser.save_screenshot(SCREENSHOT)


def test_bad_input_is_a_message_in_the_page(app_url, browser) -> None:
    url, _ = app_url
    wait = WebDriverWait(browser, 60)
    browser.get(url)
    wait.until(lambda d: d.find_element(By.ID, "clear_path")).click()  # the scene's mask without a path
    wait.until(lambda d: d.find_element(By.ID, "generate")).click()
    # a toast's text can be filled in (or be hidden while it animates) after the element appears
    toasts = wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, ".toast-body"))
    wait.until(lambda d: any("draw a path" in (t.get_attribute("textContent") or "") for t in toasts))
    assert "Traceback" not in browser.page_source
    urllib.request.urlopen(url, timeout=5).close()  # the server still answers
