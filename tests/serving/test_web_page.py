"""The web page in headless Chromium with a fake microphone playing synthetic speech (espeak-ng).

Skipped when Chromium or Playwright is missing.  The screenshot goes to tests/serving/artifacts/.
"""

from __future__ import annotations

import shutil

import pytest

from .conftest import ARTIFACTS, espeak_wav

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    yield sync_api, CHROMIUM


def launch(sync_api, exe, wav):
    pw = sync_api.sync_playwright().start()
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}%noloop",
            "--autoplay-policy=no-user-gesture-required", "--disable-background-networking", "--disable-component-update"]
    return pw, pw.chromium.launch(executable_path=exe, args=args, headless=True)


def test_hands_free_conversation_in_the_browser(browser, server, tmp_path):
    pytest.importorskip("silero_vad")
    sync_api, exe = browser
    wav = tmp_path / "question.wav"
    espeak_wav("what is the capital of france", wav, lead=1.0, tail=6.0)
    pw, chromium = launch(sync_api, exe, wav)
    try:
        page = chromium.new_page()
        logs: list[str] = []
        page.on("console", lambda m: logs.append(m.text))
        page.goto(server.url + "/")
        assert page.locator("#state").get_attribute("data-state") == "disconnected"
        page.select_option("#mode", "s2s")
        page.fill("#instructions", "answer briefly")
        page.click("#connect")
        page.wait_for_function("window.funaudio.state === 'connected'", timeout=30000)
        page.wait_for_function("window.funaudio.events.includes('response.done')", timeout=60000)
        # every scheduled chunk has played through the speakers (the counter the page exposes)
        page.wait_for_function("window.funaudio.scheduledSamples > 0 && "
                               "window.funaudio.playedSamples === window.funaudio.scheduledSamples", timeout=60000)
        fa = page.evaluate("({events: window.funaudio.events, played: window.funaudio.playedSamples, "
                           "sent: window.funaudio.sentSamples, latency: window.funaudio.latency})")
        user = page.locator(".msg.user").first.text_content()
        assistant = page.locator(".msg.assistant").first
        said = assistant.text_content()
        reason = assistant.get_attribute("data-done")
        latency_text = page.locator("#lat-text").text_content()
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web_page.png"), full_page=True)
    finally:
        chromium.close()
        pw.stop()
    events = fa["events"]
    order = [events.index(k) for k in ("session.created", "input_audio.speech_started", "input_audio.speech_stopped",
                                       "input_audio.committed", "response.created", "response.done")]
    assert order == sorted(order), events
    assert user == "[speech]"
    assert said and said != "…" and reason in ("eos", "max_duration")
    assert fa["played"] > 0 and fa["sent"] > 16000  # the page streamed more than a second of microphone audio
    assert latency_text.endswith(" ms") and fa["latency"]["client_first_text_ms"] > 0
