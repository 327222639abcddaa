"""The demo Space in a real browser: Debian's chromium, headless, driven by Playwright.

Upload a photo, press the button, and check that the overlay and the legend appear; the screenshot is kept in
`test-artifacts/space.png` (or `$SEGFACE_TEST_ARTIFACTS`). With `SEGFACE_UPDATE_SCREENSHOT=1` it also replaces
`docs/images/space.png`, the picture in the README.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import PIL.Image
import pytest
from conftest import REPO_ROOT
from test_space import EXAMPLES_DIR, converted_fixture_model, serve_demo

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(os.environ.get("SEGFACE_TEST_ARTIFACTS") or REPO_ROOT / "test-artifacts")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import huggingface_hub.constants

    model = converted_fixture_model(tmp_path_factory.mktemp("browser-model"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        patch.setenv("SEGFACE_CACHE", str(tmp_path_factory.mktemp("browser-cache")))
        demo, _, url = serve_demo(model)
        yield url
        demo.close()


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium); this test drives "
                    "that browser and never downloads one.")  # fmt: skip
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright Python package is missing: pip install playwright (no `playwright install`).")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


def test_upload_parse_and_see_overlay_and_legend(browser, app_url):
    page = browser.new_page(viewport={"width": 1400, "height": 1300})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(app_url, wait_until="domcontentloaded")
    page.wait_for_selector("#segface-run", timeout=60_000)
    assert "Local model: segface-fixture" in page.inner_text("#segface-status")

    page.locator("#segface-input input[type=file]").set_input_files(str(EXAMPLES_DIR / "two_faces.jpg"))
    page.wait_for_selector("#segface-input img", timeout=30_000)  # the upload is shown
    page.click("#segface-run")

    overlay = page.wait_for_selector("#segface-overlay img", timeout=120_000)
    page.wait_for_selector("#segface-summary :text('2 faces found and parsed')", timeout=30_000)
    items = page.locator("#segface-legend .segface-legend-item")
    assert items.count() >= 5
    first = items.first.get_attribute("data-label")
    swatch_colour = items.first.locator(".segface-swatch").evaluate("e => getComputedStyle(e).backgroundColor")
    assert swatch_colour.startswith("rgb(") and swatch_colour != "rgb(0, 0, 0)"
    assert overlay.evaluate("img => img.naturalWidth") == 1024  # the overlay has the photo's size

    # hiding a class in "Show classes" dims it in the legend
    page.locator("#segface-classes label", has_text=first).first.click()
    page.wait_for_selector(f'#segface-legend .segface-hidden[data-label="{first}"]', timeout=30_000)
    page.locator("#segface-classes label", has_text=first).first.click()
    selector = f'#segface-legend [data-label="{first}"]'
    page.wait_for_function(
        f"() => !document.querySelector('{selector}').classList.contains('segface-hidden')", timeout=30_000
    )
    page.locator("#segface-summary").scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = ARTIFACTS / "space.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert PIL.Image.open(screenshot).size[0] == 1400
    if os.environ.get("SEGFACE_UPDATE_SCREENSHOT") == "1":
        target = REPO_ROOT / "docs" / "images" / "space.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)
    assert not errors, errors
    page.close()
