"""The page in a real browser: Playwright drives Debian's headless Chromium.

A wav is dropped on a pad (a ``drop`` event carrying a DataTransfer with the
file, as the browser makes it when a user drags a file in); the test waits for
the pad's parameters to change and the target/match preview to be drawn, and
saves a screenshot as an artefact (``test-artifacts/serve-page.png``).
Chromium comes from the system (``chromium-headless-shell``, installed by
``make install``); a missing browser fails the test.
"""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import pytest

from serving import REPO, Served, wav_bytes

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = ("/usr/lib/chromium/chromium-headless-shell", "/usr/lib/chromium/chromium",
            "/usr/bin/chromium")


def chromium() -> str:
    for path in CHROMIUM:
        if Path(path).is_file():
            return path
    found = shutil.which("chromium")
    assert found, ("no Chromium: run `make install` (as root it installs Debian's "
                   "chromium-headless-shell) or `sudo apt-get install chromium-headless-shell`")
    return found


@pytest.fixture(scope="module")
def served(jack_server, tmp_path_factory):
    s = Served(jack_server, tmp_path_factory.mktemp("serve"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def page(served):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium(), headless=True)
        pg = browser.new_page(viewport={"width": 1280, "height": 800})
        pg.errors = []                                     # uncaught exceptions on the page
        pg.on("pageerror", lambda err: pg.errors.append(str(err)))
        pg.goto(served.url + "/")
        pg.wait_for_selector('.pad[data-note="36"]')
        yield pg
        browser.close()


def drop(page, selector: str, data: bytes, name: str, mime: str = "audio/wav") -> None:
    """Drop a file on ``selector`` the way a drag from the desktop does."""
    transfer = page.evaluate_handle(
        """([b64, name, mime]) => {
            const dt = new DataTransfer();
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            dt.items.add(new File([bytes], name, {type: mime}));
            return dt;
        }""", [base64.b64encode(data).decode(), name, mime])
    page.dispatch_event(selector, "dragover", {"dataTransfer": transfer})
    page.dispatch_event(selector, "drop", {"dataTransfer": transfer})


def test_dropping_a_hit_on_a_pad_matches_it_and_draws_the_preview(page, served):
    pads = page.locator(".pad")
    kit = served.get("/api/kit").json()
    assert pads.count() == len(kit["pads"])
    assert "Bass Drum" in page.locator('.pad[data-note="36"]').inner_text()
    before = served.get("/api/pads/36").json()["params"]
    drop(page, '.pad[data-note="36"]', wav_bytes((90.0, 0.5, 1e-3, 1e-3, 0.8)), "dropped kick.wav")
    page.wait_for_selector('.pad[data-note="36"][data-state="matched"]', timeout=120_000)
    after = served.get("/api/pads/36").json()
    assert after["params"] != before and after["name"] == "dropped kick"
    # The panel shows the pad's new parameters with their units.
    f0 = page.locator("#param-f0 .param-value").inner_text()
    assert "Hz" in f0 and f"{after['params']['f0']:.3g}" in f0.replace(",", ""), f0
    assert " s" in page.locator("#param-tau .param-value").inner_text()
    page.wait_for_selector('#preview[data-ready="true"]', timeout=120_000)
    assert page.locator("#preview-source").inner_text() == "dropped kick.wav"
    # The canvases were drawn: not a blank (single-colour) image.
    colours = page.evaluate("""() => [...document.querySelectorAll('#preview canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set(); for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] * 65536 + d[i+1] * 256 + d[i+2]);
        return seen.size; })""")
    assert len(colours) == 4 and min(colours) > 3, colours
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "serve-page.png"))
    assert (ARTIFACTS / "serve-page.png").stat().st_size > 10_000
    assert page.errors == []


def test_a_non_audio_drop_shows_the_servers_message(page, served):
    before = served.get("/api/pads/38").json()
    drop(page, '.pad[data-note="38"]', b"hello, this is not a drum " * 20, "notes.wav")
    page.wait_for_selector('.pad[data-note="38"][data-state="error"]', timeout=60_000)
    assert "not an audio file" in page.locator("#message").inner_text()
    assert served.get("/api/pads/38").json() == before
    assert page.errors == []


def test_a_slider_moves_the_pad_and_undo_restores_it(page, served):
    page.click('.pad[data-note="38"]')
    before = served.get("/api/pads/38").json()["params"]["tau"]
    slider = page.locator("#slider-tau")
    slider.focus()
    for _ in range(5):
        page.keyboard.press("ArrowRight")
    page.wait_for_function(
        f"""async () => (await (await fetch('/api/pads/38')).json()).params.tau > {before}""",
        timeout=30_000)
    page.click("#btn-undo")
    page.wait_for_function(
        f"""async () => (await (await fetch('/api/pads/38')).json()).params.tau < {before} * 1.0001""",
        timeout=30_000, polling=200)
    assert page.errors == []


def test_the_status_bar_follows_the_engine(page, served):
    # The status has arrived once the voice count is a number (the page starts with a dash),
    # and the audio field says what the server says.
    page.wait_for_function(r"() => /^\d+$/.test(document.querySelector('#st-voices').textContent)",
                           timeout=30_000)
    audio = served.get("/api/status").json()["audio"]
    assert page.locator("#st-audio").inner_text() == ("on" if audio else "off")
    page.click('.pad[data-note="36"]')
    page.click("#btn-play")
    page.wait_for_function("() => /[1-9]/.test(document.querySelector('#st-voices').textContent)",
                           timeout=30_000)
