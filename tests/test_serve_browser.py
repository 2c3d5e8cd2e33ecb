"""The web page in a real browser: Playwright drives Debian's headless Chromium against a real server."""

from __future__ import annotations

import io
import shutil
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

pytest.importorskip("gradio", reason="the app extra is not installed")
sync_playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed").sync_playwright

from ddlm.app.limits import Limits  # noqa: E402
from ddlm.app.server import create_app  # noqa: E402
from ddlm.app.service import Models  # noqa: E402
from tests.servers import live_server, trained_models  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_page_shows_the_canvas_denoising_live_then_the_final_text(tmp_path: Path):
    models = Models.load([str(trained_models()["tiny-masked"])])
    with live_server(create_app(models, Limits())) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(url + "/")
            page.wait_for_selector("#generate", timeout=60_000)
            page.fill("#prompt textarea", "ROMEO:")
            page.click("#generate")
            canvases, deadline = [], time.monotonic() + 60
            while "done" not in page.inner_text("#status"):
                assert time.monotonic() < deadline, "the run did not finish"
                canvas = page.inner_html("#canvas")
                if "data-step" in canvas and (not canvases or canvases[-1] != canvas):
                    canvases.append(canvas)
                time.sleep(0.03)
            final, final_html = page.inner_text("#canvas"), page.inner_html("#canvas")
            page.click("#make-gif")
            page.wait_for_selector("#gif a", timeout=60_000)
            gif = httpx.get(page.eval_on_selector("#gif a", "link => link.href"), timeout=30).content
            page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        finally:
            browser.close()
    assert len(canvases) >= 2, "the canvas was not redrawn while denoising"
    assert canvases[0].count('class="t m') > canvases[-1].count('class="t m')  # masks resolve
    assert final.startswith("ROMEO:") and len(final.strip()) > len("ROMEO:")
    assert 'class="t m' not in final_html  # nothing left masked
    assert gif.startswith(b"GIF8") and Image.open(io.BytesIO(gif)).n_frames >= 2  # the run as an animation
    assert (tmp_path / "serve.png").stat().st_size > 10_000
