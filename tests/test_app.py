"""rn50 app in a real browser: the real server (`rn50 app` as a subprocess) driven by Debian's
chromium through Playwright. Upload photos, read the top-5 off the page, upload bad files and
see why they were refused, and check that the page works again afterwards."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rn50.serve.predict import Predictor, write_examples
from tests.serving import bad_files, jpeg_bytes, make_checkpoint, photo, stop

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STATUS, LABELS, IMAGE = "#rn50-status", "#rn50-labels", "#rn50-image"
# The status line's own text: the element also holds Gradio's progress timer ("0.4s") while
# a request runs.
STATUS_TEXT_JS = (
    "() => { const m = document.querySelector('#rn50-status [data-testid=markdown]');"
    " return m ? m.innerText.trim() : ''; }"
)
WAIT_CHANGE_JS = (
    "(old) => { const m = document.querySelector('#rn50-status [data-testid=markdown]');"
    " const t = m ? m.innerText.trim() : '';"
    " const busy = document.querySelector('#rn50-status [data-testid=status-tracker]:not(.hide)');"
    " return t !== '' && t !== old && !busy; }"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "model_best.pth", resolution=48)


@pytest.fixture(scope="module")
def server(ckpt, tmp_path_factory):
    """`rn50 app` on a free port of 127.0.0.1; yields (url, process)."""
    import httpx

    port = free_port()
    env = {
        **os.environ,
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp_path_factory.mktemp("gradio")),
    }
    log = tmp_path_factory.mktemp("log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "rn50", "app", "--checkpoint", str(ckpt), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"rn50 app exited: {log.read_text()}"
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no answer from {url}: {log.read_text()}"
            time.sleep(0.5)
        yield url, proc
    finally:
        stop(proc, 15)


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (as make test does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.set_default_timeout(30_000)
    page.goto(server[0], wait_until="domcontentloaded")
    page.wait_for_selector(f"{IMAGE} input[type=file]", state="attached")
    yield page
    page.close()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uploads")
    photos = {p.stem: p for p in write_examples(folder)}  # the app's own examples, same bytes
    cmyk = folder / "cmyk.jpg"
    cmyk.write_bytes(jpeg_bytes(photo("rocket").convert("CMYK")))
    return photos, cmyk, bad_files(folder / "bad")


def upload(page, path: Path) -> str:
    """Upload a file as a person would pick it, wait for the answer, return the status text."""
    before = page.evaluate(STATUS_TEXT_JS)
    page.locator(f"{IMAGE} input[type=file]").set_input_files(str(path))
    # Each upload changes the status line (a new file, a new message): wait for that.
    page.wait_for_function(WAIT_CHANGE_JS, arg=before)
    return page.evaluate(STATUS_TEXT_JS)


def shown_labels(page) -> list[tuple[str, float]]:
    """The top-k rows of the Label component: (text, probability from the meter's value)."""
    rows = page.locator(f"{LABELS} .confidence-set")
    return [
        (row.locator("dt").inner_text(), float(row.locator("meter").get_attribute("value")))
        for row in rows.all()
    ]


def expected_labels(ckpt, path) -> list[tuple[str, float]]:
    preds, _ = Predictor.from_checkpoint(ckpt).predict_file(path)
    names = [p.name for p in preds]
    return [
        (f"{p.name} ({p.wnid})" if names.count(p.name) > 1 else p.name, p.probability)
        for p in preds
    ]


def assert_same(shown, expected):
    assert [t for t, _ in shown] == [t for t, _ in expected]
    assert [p for _, p in shown] == pytest.approx([p for _, p in expected], abs=1e-6)


def test_upload_a_photo_shows_the_top5(page, ckpt, files, tmp_path):
    photos, _, _ = files
    assert page.title() == "rn50 image classifier"
    assert "resnet18, 8 classes, 48 px center crop, epoch 3, val top-1 12.50%" in page.inner_text(
        "body"
    )
    for name in ("coffee", "chelsea_cat"):
        status = upload(page, photos[name])
        expected = expected_labels(ckpt, photos[name])
        assert status.startswith(f"Top-1: {expected[0][0].split(' (n')[0]}"), status
        assert_same(shown_labels(page), expected)
    shot = tmp_path / "page.png"
    page.screenshot(path=str(shot), full_page=True)
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    assert pixels.shape[0] >= 600 and pixels.shape[1] >= 1000
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 1000, "the screenshot is (nearly) blank"  # the photo is on the page
    assert pixels.std() > 20


def test_bad_uploads_say_why_and_the_next_photo_works(page, server, ckpt, files):
    photos, _, bad = files
    for name in ("text", "truncated", "one_pixel", "huge", "empty", "html"):
        path, words = bad[name]
        status = upload(page, path)
        assert status.startswith("Cannot classify this file:") and words in status, (name, status)
        assert shown_labels(page) == []  # no stale labels from the previous file
        status = upload(page, photos["rocket"])  # and the page works again
        assert status.startswith("Top-1:"), (name, status)
        assert_same(shown_labels(page), expected_labels(ckpt, photos["rocket"]))
    assert server[1].poll() is None


def test_cmyk_upload_is_converted_and_classified(page, ckpt, files):
    _, cmyk, _ = files
    status = upload(page, cmyk)
    assert status.startswith("Top-1:") and "CMYK converted to RGB" in status
    assert_same(shown_labels(page), expected_labels(ckpt, cmyk))


def test_clicking_an_example_classifies_it(page, ckpt, files):
    photos, _, _ = files
    examples = page.locator(".gallery-item")
    examples.nth(3).wait_for()  # count() does not wait: the gallery may not be drawn yet
    assert examples.count() == 4
    before = page.evaluate(STATUS_TEXT_JS)
    examples.nth(1).click()  # coffee: the examples are in the order of rn50.serve.predict.EXAMPLES
    page.wait_for_function(WAIT_CHANGE_JS, arg=before)
    assert_same(shown_labels(page), expected_labels(ckpt, photos["coffee"]))


def test_a_taken_port_is_one_line_exit_2(server, ckpt):
    port = server[0].rstrip("/").rsplit(":", 1)[1]
    proc = subprocess.run(
        [sys.executable, "-m", "rn50", "app", "--checkpoint", str(ckpt), "--port", port],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        f"rn50: error: cannot serve on 127.0.0.1:{port} (Cannot find empty port in range: "
        f"{port}-{port}); choose another --port"
    )
    assert server[1].poll() is None  # the running app is untouched


def test_a_pasted_inline_image_reaches_the_classifier_undecoded():
    """Paste can arrive as a data: URL instead of an uploaded file: its bytes, as they are."""
    import base64

    from gradio.data_classes import ImageData

    from rn50.serve.space_template.ui import upload_image

    image = upload_image()
    data = jpeg_bytes(photo("coffee"))
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    assert image.preprocess(ImageData(url=url)) == data
    uploaded = "/nonexistent/upload.jpg"
    assert image.preprocess(ImageData(path=uploaded)) == uploaded  # handed on, never opened
    assert image.preprocess(None) is None
