"""``helpdesk-voice --headless`` end to end: virtual devices, a real WebSocket peer, barge-in."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.audio.devices import find_device
from app.audio.probe import TimedRecorder
from app.audio.resample import FloatArray, float_to_pcm16
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, loud_since, speak
from tests.scripted_peer import Answer, ScriptedPeer

pytestmark = pytest.mark.devices

FIRST_ANSWER = (
    "You can reset your password at the self service portal. Open the portal, choose forgot password, "
    "and follow the code we send to your phone."
)
SECOND_ANSWER = "Okay, I will stop there. What would you like to do instead?"


def test_spoken_conversation_with_barge_in_through_virtual_devices(
    virtual_audio: VirtualAudioRig,
    monitor: TimedRecorder,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
) -> None:
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    answers = [
        Answer(FIRST_ANSWER, float_to_pcm16(speech(FIRST_ANSWER, 24000))),
        Answer(SECOND_ANSWER, float_to_pcm16(speech(SECOND_ANSWER, 24000))),
    ]
    metrics = tmp_path / "metrics.jsonl"
    with ScriptedPeer(answers, user_lines=["I forgot my password", "wait, stop"]) as peer:
        app = HeadlessApp(
            [
                "--url",
                peer.url,
                "--input-device",
                virtual_audio.mic,
                "--output-device",
                virtual_audio.speaker,
                "--metrics",
                str(metrics),
                "--turns",
                "2",
                "--duration",
                "60",
            ]
        )
        try:
            ready = app.wait_for(lambda line: line.startswith("listening on"), 30)
            assert ready == f"listening on {virtual_audio.mic} -> {virtual_audio.speaker}"
            time.sleep(0.5)
            speak(virtual_audio, speech("I forgot my password", feed_rate))
            # The answer starts on the speaker.
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and len(loud_since(monitor, time.monotonic() - 0.5)) == 0:
                time.sleep(0.05)
            assert len(loud_since(monitor, time.monotonic() - 1.0)), f"no answer was heard; {app.errors}"
            time.sleep(1.2)  # let it talk for a while, then talk over it
            interrupted_at = time.monotonic()
            speak(virtual_audio, speech("wait, stop", feed_rate))
            app.wait_for(lambda line: line.startswith("assistant: Okay"), 30)
            assert app.process.wait(15) == 0, app.errors
        finally:
            app.stop()

    # What the user saw.
    assert "you: I forgot my password" in app.lines
    assert "you: wait, stop" in app.lines
    first = next(line for line in app.lines if line.startswith("assistant: You can"))
    debug = (
        f"{app.lines} {[t for t in peer.types() if t != 'input_audio_buffer.append']} {metrics.read_text()}"
    )
    assert first.endswith("...") and len(first) < len("assistant: " + FIRST_ANSWER), debug
    # The speaker fell silent soon after the interruption began, before the second answer.
    times, samples = monitor.timeline()
    window = (times > interrupted_at) & (times < interrupted_at + 1.5)
    loud = times[window & (np.abs(samples) > 0.02)]
    assert len(loud) == 0 or loud[-1] - interrupted_at < 1.0
    # What the server was told.
    truncates = peer.of_type("conversation.item.truncate")
    assert len(truncates) == 1
    assert 1000 < truncates[0]["audio_end_ms"] < len(answers[0].audio) / 48
    assert peer.of_type("session.update") and peer.of_type("input_audio_buffer.append")
    # What the metrics file holds.
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["turn"] for row in rows] == [1, 2]
    assert rows[0]["barge_in"] is True and rows[0]["truncated_at_ms"] == truncates[0]["audio_end_ms"]
    assert rows[0]["halt_ms"] is not None and 0 < rows[0]["halt_ms"] < 500
    assert rows[1]["barge_in"] is False and rows[1]["ttfa_ms"] is not None and rows[1]["ttfa_ms"] > 0
    assert all(row["backend"] == "custom" for row in rows)


def test_bad_url_is_a_usage_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "--headless", "--url", "http://example.com/x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def _device_env(rig: VirtualAudioRig) -> dict[str, str | None]:
    return {"HELPDESK_VOICE_INPUT_DEVICE": rig.mic, "HELPDESK_VOICE_OUTPUT_DEVICE": rig.speaker}


def test_no_arguments_opens_the_tray_app_on_the_offline_assistant(virtual_audio: VirtualAudioRig) -> None:
    # Offscreen Qt has no system tray: the app opens its window instead, and -v logs when it listens.
    env = {**_device_env(virtual_audio), "QT_QPA_PLATFORM": "offscreen"}
    app = HeadlessApp(["-v"], env, headless=False)
    try:
        line = app.wait_for(lambda text: "listening on" in text, 120, stderr=True)
        assert f"listening on {virtual_audio.mic} -> {virtual_audio.speaker}" in line
        assert "offline assistant" in line
        assert not app.lines, "the tray app printed a transcript to stdout as if headless"
        sent = time.monotonic()
        app.process.terminate()
        code = app.process.wait(5)
        took = time.monotonic() - sent
    finally:
        app.stop()
    assert code == 0
    assert took < 1.5, f"quitting took {took:.2f} s"


def test_without_a_display_the_app_says_so_and_runs_headless(virtual_audio: VirtualAudioRig) -> None:
    env = {**_device_env(virtual_audio), "DISPLAY": None, "WAYLAND_DISPLAY": None, "QT_QPA_PLATFORM": None}
    app = HeadlessApp([], env, headless=False)
    try:
        app.wait_for(lambda text: text.startswith("listening on"), 120)
        assert any("no graphical display" in text and "running headless" in text for text in app.errors)
    finally:
        app.stop()


def test_a_second_launch_shows_the_running_app_and_ends(
    virtual_audio: VirtualAudioRig, tmp_path: Path
) -> None:
    env = {
        **_device_env(virtual_audio),
        "QT_QPA_PLATFORM": "offscreen",
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "config"),
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
    }
    first = HeadlessApp(["-v"], env, headless=False)
    try:
        first.wait_for(lambda text: "listening on" in text, 120, stderr=True)
        second = HeadlessApp([], env, headless=False)
        code = second.process.wait(30)
        assert code == 0 and any("already running" in text for text in second.errors), second.errors
        first.wait_for(lambda text: "another launch asked for this app" in text, 10, stderr=True)
        assert first.process.poll() is None  # the first one runs on
    finally:
        first.stop()
