"""The web page in a real browser: Playwright drives Debian's headless Chromium against a real server."""

from __future__ import annotations

import io
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed")
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
sync_playwright, PlaywrightTimeout = playwright_api.sync_playwright, playwright_api.TimeoutError

from ddlm.app.limits import Limits  # noqa: E402
from ddlm.app.server import create_app  # noqa: E402
from ddlm.app.service import Models  # noqa: E402
from tests.servers import live_server, trained_models  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DESKTOP, PHONE = {"width": 1280, "height": 900}, {"width": 320, "height": 800}
WAIT_MS = 60_000

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def models() -> Models:
    paths = trained_models()
    return Models.load([str(paths["tiny-masked"]), str(paths["tiny-ar"])])


@pytest.fixture(scope="module")
def app(models):
    return create_app(models, Limits())


@pytest.fixture(scope="module")
def url(app) -> Iterator[str]:
    with live_server(app) as base:
        yield base


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def open_page(browser, url: str, viewport: dict[str, int] = DESKTOP):
    """A fresh tab on the page."""
    page = browser.new_page(viewport=viewport)
    page.goto(url + "/")
    page.wait_for_selector("#canvas .ddlm-canvas", timeout=WAIT_MS)
    return page


def slider_max(page, selector: str) -> int:
    return int(page.get_attribute(f"{selector} input[type=range]", "max"))


def set_number(page, selector: str, value: str, shown: str | None = None) -> None:
    """Type ``value`` into a slider's or number's box and leave it, as a user does, until the box and the
    slider's track hold ``shown`` (the value clamped into the range; default ``value``). Typed again if a
    control that was still being drawn (an accordion opening) dropped it."""
    box, expected = page.locator(f"{selector} input[type=number]"), shown or value
    holds = f"""() => [...document.querySelectorAll('{selector} input')].every(input => input.value === '{expected}')"""
    for _ in range(3):
        box.fill(value)
        box.press("Tab")
        try:
            page.wait_for_function(holds, timeout=2_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"{selector} does not hold {expected} after typing {value}")


def generate(page, state: str = "done") -> str:
    """Press Generate and wait for the run's end; the status line's text."""
    page.click("#generate")
    page.wait_for_selector(f"#status [data-state={state}]", timeout=WAIT_MS)
    return page.inner_text("#status")


def gif_of(page) -> Image.Image:
    """Make the GIF of the last run and fetch the one the page shows."""
    page.click("#make-gif")
    page.wait_for_selector("#gif img", timeout=WAIT_MS)
    data = httpx.get(page.eval_on_selector("#gif img", "image => image.src"), timeout=30).content
    assert data.startswith(b"GIF8")
    return Image.open(io.BytesIO(data))


class CountedModel:
    """A model's forward that counts its calls and, from call ``blocked_at`` on, waits for ``gate``."""

    def __init__(self, forward, blocked_at: int):
        self.forward, self.blocked_at, self.calls, self.gate = forward, blocked_at, 0, threading.Event()

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls >= self.blocked_at:
            assert self.gate.wait(timeout=60)
        return self.forward(*args, **kwargs)


def wait_for_a_cancelled_run(pool, seconds: float = 30) -> None:
    """Wait until the pool holds a run that Stop cancelled (fail after ``seconds``)."""
    deadline = time.monotonic() + seconds
    while not any(run.cancelled.is_set() for run in list(pool.runs)):
        assert time.monotonic() < deadline, "Stop did not cancel the run"
        time.sleep(0.02)


def errors_shown(page) -> list[str]:
    return page.locator("[data-testid=toast-body]").all_inner_texts()


def test_a_run_denoises_live_ends_in_plain_text_and_repeats_with_the_seed_it_shows(browser, url, tmp_path):
    page = open_page(browser, url)
    page.fill("#seed input", "")  # blank: the page draws a seed, and must show it
    page.click("#generate")
    canvases, deadline = [], time.monotonic() + 60
    while not page.locator("#status [data-state=done]").count():
        assert time.monotonic() < deadline, "the run did not finish"
        canvas = page.inner_html("#canvas")
        if "data-step" in canvas and (not canvases or canvases[-1] != canvas):
            canvases.append(canvas)
        time.sleep(0.03)
    final, final_html = page.inner_text("#canvas"), page.inner_html("#canvas")
    seed = int(page.inner_text("#status .seed"))
    gif = gif_of(page)
    page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
    assert len(canvases) >= 2, "the canvas was not redrawn while denoising"
    assert canvases[0].count('class="t m') > canvases[-1].count('class="t m')  # masks resolve
    assert final.startswith("ROMEO:") and len(final.strip()) > len("ROMEO:")
    assert "ddlm-text" in final_html and 'class="t' not in final_html  # plain text: no cells, no colours
    assert gif.n_frames >= 2  # the run as an animation, shown on the page
    assert (tmp_path / "serve.png").stat().st_size > 10_000

    page = open_page(browser, url)
    page.fill("#seed input", str(seed))
    assert f"seed {seed}" in generate(page)
    assert page.inner_text("#canvas") == final  # the seed shown repeats the run


def test_one_step_finishes_and_the_length_slider_leaves_room_for_the_prompt(browser, url, models):
    context = models.get("tiny-masked").pipe.context_length
    page = open_page(browser, url)
    assert slider_max(page, "#length") == context - len("ROMEO:")  # one token per character
    page.fill("#prompt textarea", "ROMEO: hi")
    page.wait_for_function(f"document.querySelector('#length input[type=range]').max == {context - 9}",
                           timeout=WAIT_MS)
    set_number(page, "#length", str(context - 9))  # all the room there is
    page.click("#options")
    set_number(page, "#option-steps", "0", shown="1")  # clamped to one step
    status = generate(page)
    assert status.startswith("done · 1 step · ") and not errors_shown(page)
    assert 'class="t m' not in page.inner_html("#canvas")


def test_stop_keeps_the_partial_run_to_scrub_and_animate_and_masks_wrap_on_a_phone(browser, url, app, models,
                                                                                     monkeypatch):
    pipe = models.get("tiny-masked").pipe
    length = pipe.context_length - len("ROMEO:")
    blocked_at = 5  # the model's 5th call waits until the page has been stopped
    model = CountedModel(pipe.model.forward, blocked_at)
    monkeypatch.setattr(pipe.model, "forward", model)
    model.gate.set()
    shown = [step for step in pipe.stream("ROMEO:", length=length, seed=0) if model.calls < blocked_at]
    assert len(shown) >= 2  # the steps the page draws before the run is stopped
    model.calls = 0
    model.gate.clear()
    pool = app.state.server.pool
    cancelled = pool.stats()["cancelled"]
    page = open_page(browser, url, PHONE)
    assert page.eval_on_selector("#canvas .ddlm-canvas", "note => getComputedStyle(note).wordBreak") == "normal"
    page.click("#generate")
    page.wait_for_selector(f"#canvas [data-step='{shown[-1].index + 1}']", timeout=WAIT_MS)
    page.click("#stop")
    wait_for_a_cancelled_run(pool)
    model.gate.set()
    page.wait_for_selector("#status [data-state=stopped]", timeout=WAIT_MS)
    status = page.inner_text("#status")
    assert f"step {shown[-1].index + 1} of 128" in status and "denoising" not in status
    assert model.calls == blocked_at and pool.stats()["cancelled"] == cancelled + 1  # no step after Stop
    assert page.is_visible("#scrub") and slider_max(page, "#scrub") == len(shown)
    cells = page.eval_on_selector_all("#canvas .t", "cells => cells.map(cell => { const box = cell.getBoundingClientRect();"
                                      " return [box.left, box.right, box.top, cell.classList.contains('m')]; })")
    canvas = page.eval_on_selector("#canvas .ddlm-canvas", "canvas => { const box = canvas.getBoundingClientRect();"
                                   " return [box.left, box.right]; }")
    masks = [cell for cell in cells if cell[3]]
    assert len(masks) > length // 2 and len({cell[2] for cell in cells}) >= 2  # many masks, on several lines
    assert all(canvas[0] <= left and right <= canvas[1] for left, right, _, _ in cells)  # none beyond the box
    assert gif_of(page).n_frames == len(shown) + 1  # the start, then each step the page drew
    assert not errors_shown(page)


def test_compare_with_the_autoregressive_model_counts_its_tokens_and_hides_what_it_ignores(browser, url, models):
    page = open_page(browser, url)
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare-model-b input")
    page.get_by_role("option", name="tiny-ar").click()
    page.wait_for_selector("#compare-policy-b", state="hidden", timeout=WAIT_MS)
    assert page.is_hidden("#compare-steps-b") and page.is_visible("#compare-policy-a")
    length = int(page.input_value("#compare-length input[type=number]"))
    assert length == models.get("tiny-ar").pipe.context_length - len("ROMEO:")
    page.click("#compare")
    for side in "ab":
        page.wait_for_selector(f"#compare-status-{side} [data-state=done]", timeout=WAIT_MS)
    autoregressive = page.inner_text("#compare-status-b")
    assert f"{length} steps" in autoregressive and " of " not in autoregressive  # one step per token written
    assert "steps" in page.inner_text("#compare-status-a") and not errors_shown(page)


def test_stop_ends_a_comparison_with_both_sides_stopped(browser, url, app, models, monkeypatch):
    pipe = models.get("tiny-masked").pipe
    model = CountedModel(pipe.model.forward, blocked_at=6)  # both sides share the model: a few steps, then wait
    monkeypatch.setattr(pipe.model, "forward", model)
    pool = app.state.server.pool
    page = open_page(browser, url)
    page.get_by_role("tab", name="Compare").click()
    page.click("#compare")
    page.wait_for_selector("#compare-status-a [data-state=denoising]", timeout=WAIT_MS)
    page.click("#compare-stop")
    wait_for_a_cancelled_run(pool)
    model.gate.set()
    for side in "ab":
        page.wait_for_selector(f"#compare-status-{side} [data-state=stopped]", timeout=WAIT_MS)
    assert model.calls == 6 and not errors_shown(page)  # no model call after Stop
