"""The stroke editor page (service/transport/http/static/) in a real Chromium: Debian's /usr/bin/chromium driven
by playwright (never playwright's own browser builds), against a real server's HTTP door.

A test uploads a guide, paints a stroke and a mask with real mouse events, submits a seeded job and
checks the result pixel by pixel against what the page sent; another one works with a bearer token
(the events then come through fetch() instead of EventSource). The first saves docs/editor.png,
the screenshot of docs/editor.md."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from service.testing.servers import ROOT
from tests.helpers import image_bytes

CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOT = ROOT / "docs" / "editor.png"
# No network, no background services, no first-run UI: the page needs nothing but the server.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync", "--disable-default-apps", "--mute-audio"]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists() and os.geteuid() != 0,
                       reason="Debian's chromium is not installed and cannot be without root "
                              "(scripts/install_test_tools.sh installs chromium and chromium-driver as root)"),
]
TOKEN = "tok-editor-" + "5" * 32
CANVAS_MAX = """(() => { const c = document.getElementById('canvas');
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let m = 0; for (let i = 0; i < d.length; i += 4) m = Math.max(m, d[i]); return m; })()"""


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("root but no /usr/bin/chromium: run scripts/install_test_tools.sh (it installs chromium and chromium-driver)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def start_editor(make_server):
    """Starts the real service with the default model `digits`, its HTTP door on a free port; returns the page's URL."""
    def start(**overrides) -> str:
        srv = make_server(repository=ROOT / "model_repository", cache="none", http_port=0, **overrides)
        return f"http://127.0.0.1:{srv.running.http_port}/"

    return start


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1180, "height": 900}, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda message: problems.append(f"console {message.type}: {message.text}") if message.type == "error" else None)
    page.problems = problems
    page.set_default_timeout(30_000)
    yield page
    context.close()


def decode(data: str | bytes, mode: str = "L") -> np.ndarray:
    raw = base64.b64decode(data) if isinstance(data, str) else data
    return np.asarray(Image.open(io.BytesIO(raw)).convert(mode))


def a_colour_guide() -> np.ndarray:
    """examples/strokes.png (a stroke "7", 32x32) in warm colours, so the page's conversion to grey is
    checked against Pillow's."""
    strokes = np.asarray(Image.open(ROOT / "examples" / "strokes.png").convert("L")).astype(np.float64)
    return np.stack([strokes, strokes * 0.97, strokes * 0.9], axis=-1).round().astype(np.uint8)


def pillow_grey(rgb: tuple[int, int, int]) -> int:
    return Image.new("RGB", (1, 1), rgb).convert("L").getpixel((0, 0))


def set_value(page, selector: str, value: str) -> None:
    """Range and colour inputs: set the value and fire the events a user's change fires."""
    page.eval_on_selector(selector, "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true}));"
                                    " el.dispatchEvent(new Event('change', {bubbles: true})); }", value)


def drag(page, points: list[tuple[float, float]], size: int = 32) -> None:
    """A real mouse drag through model-pixel points (pixel centres) on the canvas."""
    box = page.locator("#canvas").bounding_box()
    at = [(box["x"] + (x + 0.5) * box["width"] / size, box["y"] + (y + 0.5) * box["height"] / size) for x, y in points]
    page.mouse.move(*at[0])
    page.mouse.down()
    for point in at[1:]:
        page.mouse.move(*point, steps=12)
    page.mouse.up()


def choose(page, group: str, label: str) -> None:
    page.locator(f".segmented[aria-label='{group}'] label", has_text=label).click()


def wait_finished(page, timeout_ms: int = 60_000) -> str:
    page.wait_for_function("() => ['succeeded', 'failed', 'cancelled'].includes(document.body.dataset.state)", timeout=timeout_ms)
    return page.evaluate("document.body.dataset.state")


def check_events_in_order(events: list[dict], steps: int) -> None:
    assert events, "no events reached the page"
    assert [e["sequence"] for e in events] == list(range(1, len(events) + 1)), events
    assert events[-1]["type"] == "result" and all(e["type"] in ("progress", "preview") for e in events[:-1]), events
    stepped = [e for e in events if e["step"] is not None]
    assert [e["step"] for e in stepped] == sorted({e["step"] for e in stepped}), "progress went backwards or repeated"
    calls = [e["networkCalls"] for e in stepped]
    assert calls == sorted(calls) and calls[-1] == stepped[-1]["totalNetworkCalls"], stepped
    assert stepped[-1]["step"] == steps
    assert any(e["type"] == "preview" for e in events), "no preview arrived"


def test_paint_a_stroke_and_a_mask_submit_and_get_the_guide_back_outside_the_mask(page, tmp_path, start_editor):
    url = start_editor()
    policy = page.goto(url).headers["content-security-policy"]  # the page works under its CSP: no violation is logged
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    page.wait_for_function("() => document.body.dataset.state === 'idle'")
    assert page.locator("#model").input_value() == "digits"
    assert "32×32" in page.inner_text("#canvas-note") and "greyscale" in page.inner_text("#canvas-note")

    # digits takes other sizes in multiples of 4: the canvas follows the guide
    (tmp_path / "wide.png").write_bytes(image_bytes(np.zeros((32, 48), np.uint8)))
    page.set_input_files("#guide-file", str(tmp_path / "wide.png"))
    page.wait_for_function("() => document.getElementById('canvas').width === 48")
    assert page.evaluate("document.getElementById('canvas').height") == 32 and "48×32" in page.inner_text("#canvas-note")
    # a guide of a size the model does not take is refused with the reason
    (tmp_path / "odd.png").write_bytes(image_bytes(np.zeros((30, 30), np.uint8)))
    page.set_input_files("#guide-file", str(tmp_path / "odd.png"))
    page.wait_for_selector("#error:not([hidden])")
    assert "30×30" in page.inner_text("#error") and "never resizes" in page.inner_text("#error")
    uploaded = a_colour_guide()
    (tmp_path / "guide.png").write_bytes(image_bytes(uploaded))
    page.set_input_files("#guide-file", str(tmp_path / "guide.png"))
    page.wait_for_function("() => document.getElementById('status').textContent.includes('guide.png loaded')")
    assert page.locator("#error").is_hidden()

    set_value(page, "#colour", "#fff0dc")
    set_value(page, "#brush-size", "2")
    drag(page, [(12, 17), (24, 17)])  # a crossbar on the guide layer, in a warm white
    choose(page, "Layer", "Mask")
    set_value(page, "#brush-size", "8")
    drag(page, [(8, 24), (24, 24)])  # the mask: a band over the foot of the stem
    page.fill("#seed", "7")
    page.fill("#num-samples", "3")
    set_value(page, "#t0", "0.6")
    page.fill("#steps", "100000")  # more than t0 allows: the service's error, naming the field
    page.click("#submit")
    assert wait_finished(page) == "failed"
    assert "INVALID_ARGUMENT" in page.inner_text("#error") and "got 100000" in page.inner_text("#error")
    assert page.inner_text("#error .field") == "field: steps"  # the BadRequest field violation
    page.fill("#steps", "10")
    page.click("#submit")
    assert wait_finished(page) == "succeeded", page.inner_text("#error")
    assert page.locator("#error").is_hidden()

    sent = page.evaluate("window.__sdeditLastRequest")
    assert (sent["model"], sent["seed"], sent["steps"], sent["numSamples"], sent["t0"]) == ("digits", "7", 10, 3, 0.6)
    guide, mask = decode(sent["image"]), decode(sent["mask"]) >= 128
    # the guide the page sent: the upload in Pillow's grey, plus the stroke in the brush colour's grey
    expected = np.asarray(Image.fromarray(uploaded).convert("L"))
    changed = guide != expected
    assert (guide[changed] == pillow_grey((255, 240, 220))).all() and changed[17, 12] and changed[17, 24]
    rows, cols = np.nonzero(changed)
    assert rows.min() >= 15 and rows.max() <= 20 and cols.min() >= 10 and cols.max() <= 27
    assert mask[24, 8] and mask[24, 16] and mask[24, 24] and not mask[17, 16] and not mask[8, 16] and 0.1 < mask.mean() < 0.5

    images = page.eval_on_selector_all("img[data-result]", "imgs => imgs.map(img => img.src)")
    assert len(images) == 3
    for src in images:
        result = decode(src.split(",", 1)[1])
        assert result.shape == guide.shape == (32, 32)
        assert np.array_equal(result[~mask], guide[~mask]), "a kept pixel changed"
        assert (result[mask] != guide[mask]).any(), "nothing was regenerated inside the mask"
    seeds = page.eval_on_selector_all("figure[data-role='result']", "cards => cards.map(card => card.dataset.seed)")
    assert seeds == ["7", "8", "9"]
    downloads = page.eval_on_selector_all("figure[data-role='result'] a", "links => links.map(a => a.download)")
    assert downloads == [f"sdedit-digits-seed{seed}.png" for seed in seeds]

    check_events_in_order(page.evaluate("window.__sdeditEvents"), steps=10)
    assert page.evaluate("window.__sdeditStream") == "EventSource"
    assert page.evaluate("document.getElementById('progress').value") == 1
    assert [p for p in page.problems if "status of 400" not in p] == []  # only the refused submission
    # the same picture every run (the run's duration hidden), so the file changes only with the page
    page.screenshot(path=str(SCREENSHOT), full_page=True, animations="disabled", caret="hide",
                    style=".timing { visibility: hidden; }")


def test_the_page_works_with_a_bearer_token(page, tmp_path, start_editor):
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"tenants": [{"name": "painter", "token": TOKEN}]}))
    url = start_editor(auth_tokens_file=str(tokens))
    page.goto(url)  # the page itself needs no token; the API does
    page.wait_for_selector("#error:not([hidden])")
    assert "UNAUTHENTICATED" in page.inner_text("#error") and "token" in page.inner_text("#error")
    page.fill("#token", "tok-wrong-" + "1" * 32)
    page.press("#token", "Enter")
    page.wait_for_function("() => document.getElementById('error').textContent.includes('UNAUTHENTICATED')")
    page.fill("#token", TOKEN)
    page.press("#token", "Enter")
    page.wait_for_function("() => document.getElementById('model').options.length > 0 && document.getElementById('error').hidden")
    assert page.evaluate("sessionStorage.getItem('sdedit.token')") == TOKEN

    page.reload()  # the token is kept for the tab's session
    page.wait_for_function("() => document.body.dataset.state === 'idle' && document.getElementById('model').options.length > 0")
    assert page.locator("#token").input_value() == TOKEN
    drag(page, [(2, 2), (30, 30)])
    assert page.evaluate(CANVAS_MAX) == 255
    page.select_option("#model", "digits-mixture")  # another model: a blank canvas at its size
    assert page.evaluate(CANVAS_MAX) == 0
    page.select_option("#model", "digits")
    drag(page, [(8, 6), (24, 6), (14, 26)])  # a "7" on a blank canvas
    page.fill("#seed", "3")
    page.fill("#steps", "6")
    page.fill("#num-samples", "1")
    page.click("#submit")
    assert wait_finished(page) == "succeeded", page.inner_text("#error")
    check_events_in_order(page.evaluate("window.__sdeditEvents"), steps=6)
    assert page.evaluate("window.__sdeditStream") == "fetch"  # EventSource cannot send the token
    src = page.eval_on_selector("img[data-result]", "img => img.src")
    assert decode(src.split(",", 1)[1]).shape == (32, 32)

    # a long job, cancelled while it runs (DELETE with the token); the page says so
    set_value(page, "#t0", "1")
    page.fill("#steps", "500")
    page.click("#submit")
    page.wait_for_function("() => document.body.dataset.state === 'running' && window.__sdeditEvents.length > 0")
    page.click("#cancel")
    assert wait_finished(page) == "cancelled"
    assert page.inner_text("#status") == "Cancelled." and page.locator("#error").is_hidden()
    job = page.evaluate("""async (token) => (await fetch('v1/jobs/' + document.body.dataset.job,
                            {headers: {Authorization: 'Bearer ' + token}})).json()""", TOKEN)
    assert job["state"] == "JOB_STATE_CANCELLED"
    assert [p for p in page.problems if "401" not in p] == []  # only the refused calls before the token
