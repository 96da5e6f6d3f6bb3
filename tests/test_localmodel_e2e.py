"""The default backend end to end: the headless app starts its embedded offline server, hears a
spoken request through the virtual microphone, answers out loud, and follows an interruption."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from app.audio.devices import find_device
from app.audio.probe import TimedRecorder
from app.audio.resample import FloatArray
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, loud_since, speak

pytestmark = pytest.mark.devices


def test_password_request_is_answered_out_loud_and_an_interruption_is_followed(
    virtual_audio: VirtualAudioRig,
    monitor: TimedRecorder,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
) -> None:
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    metrics = tmp_path / "metrics.jsonl"
    app = HeadlessApp(
        [
            "--input-device",
            virtual_audio.mic,
            "--output-device",
            virtual_audio.speaker,
            "--metrics",
            str(metrics),
            "--turns",
            "2",
            "--duration",
            "150",
        ],
        env={"HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data")},
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 120)
        time.sleep(0.8)
        speak(virtual_audio, speech("I forgot my password", feed_rate))
        heard = app.wait_for(lambda line: line.startswith("you:"), 20)
        assert "password" in heard.lower(), heard
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and not len(loud_since(monitor, time.monotonic() - 0.5)):
            time.sleep(0.05)
        assert len(loud_since(monitor, time.monotonic() - 1.0)), (
            f"no answer on the speaker; {app.errors[-5:]}"
        )
        time.sleep(2.5)  # let it name the problem, then talk over it
        interrupted_at = time.monotonic()
        speak(virtual_audio, speech("wait, that didn't work", feed_rate))
        second_you = app.wait_for(lambda line: line.startswith("you:") and line != heard, 20)
        assert "work" in second_you.lower(), second_you
        assert app.process.wait(60) == 0, app.errors[-10:]
    finally:
        app.stop()

    answers = [line for line in app.lines if line.startswith("assistant:")]
    assert len(answers) == 2, app.lines
    assert "password" in answers[0].lower(), answers[0]
    assert answers[0].endswith("...")  # cut where the user spoke over it
    assert answers[1] != answers[0]
    # The speaker went quiet soon after the user started talking over the answer.
    times, samples = monitor.timeline()
    window = (times > interrupted_at) & (times < interrupted_at + 1.0)
    loud = times[window & (np.abs(samples) > 0.02)]
    assert len(loud) == 0 or loud[-1] - interrupted_at < 0.8
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [row["backend"] for row in rows] == ["embedded", "embedded"]
    assert rows[0]["barge_in"] is True and rows[0]["truncated_at_ms"] is not None
    assert rows[1]["ttfa_ms"] is not None
