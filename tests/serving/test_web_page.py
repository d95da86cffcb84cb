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
        # this model has no duplex head: the full-duplex switch is off and says why
        page.wait_for_function("window.funaudio.duplex !== null", timeout=10000)
        assert page.locator("#duplex").is_disabled() and not page.locator("#duplex").is_checked()
        assert "no duplex action head" in page.locator("#duplex-note").text_content()
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


def test_full_duplex_in_the_browser(browser, duplex_server, head_bias, tmp_path):
    sync_api, exe = browser
    wav = tmp_path / "talk.wav"
    espeak_wav("hello there, how are you today", wav, lead=0.5, tail=8.0)
    pw, chromium = launch(sync_api, exe, wav)
    try:
        with head_bias(start=10.0, speak=9.0):  # the assistant takes the floor at once and keeps it
            page = chromium.new_page()
            page.goto(duplex_server.url + "/")
            page.wait_for_function("window.funaudio.duplex !== null", timeout=10000)
            assert page.locator("#duplex").is_enabled()
            page.check("#duplex")
            assert page.locator("#ptt").is_disabled() and page.locator("#turn").is_disabled()
            page.click("#connect")
            page.wait_for_function("window.funaudio.state === 'connected'", timeout=30000)
            page.wait_for_function("window.funaudio.playedSamples > 0", timeout=60000)  # its speech plays as it comes
            speaking = page.locator("#action").get_attribute("data-action")
            sent = page.evaluate("window.funaudio.sentSamples")
            page.click("#stop")  # barge in with the button
            page.wait_for_function("window.funaudio.stopped.includes(1)", timeout=30000)
            cut = page.evaluate("({samples: window.funaudio.turnSamples[1], playing: window.funaudio.playing()})")
            page.wait_for_function("window.funaudio.events.filter((e) => e === 'turn.started').length >= 2", timeout=30000)
            fa = page.evaluate("({events: window.funaudio.events, samples: window.funaudio.turnSamples, "
                               "sent: window.funaudio.sentSamples, mode: window.funaudio.mode})")
            first = page.locator('.msg.assistant[data-turn="1"]')
            first_class, first_done = first.get_attribute("class"), first.get_attribute("data-done")
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "web_page_duplex.png"), full_page=True)
    finally:
        chromium.close()
        pw.stop()
    events = fa["events"]
    order = [events.index(k) for k in ("session.created", "session.updated", "action", "turn.started", "turn.audio.delta",
                                       "turn.stopped", "turn.done")]
    assert order == sorted(order), events
    assert fa["mode"] == "full" and speaking == "speaking"
    assert cut["playing"] == 0  # playback stopped the moment turn.stopped arrived
    assert fa["samples"]["1"] == cut["samples"]  # and nothing of the cut turn was scheduled afterwards
    assert "cancelled" in first_class and first_done == "stop"
    assert fa["sent"] > sent > 0  # the microphone kept streaming while the assistant spoke
