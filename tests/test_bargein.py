from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.audio.bargein import (
    FRAME_SAMPLES,
    BargeInDetector,
    DetectorSettings,
    SpeechDetector,
    frame_level_dbfs,
)
from app.audio.resample import FloatArray, float_to_int16

RATE = 16000
SPEECH_START = 0.5  # seconds of lead-in before the speech


def run(
    signal: FloatArray, playing: bool, settings: DetectorSettings | None = None
) -> tuple[BargeInDetector, list[float]]:
    halts: list[float] = []
    detector = BargeInDetector(lambda: playing, lambda: halts.append(1.0), settings or DetectorSettings())
    detector.feed(float_to_int16(signal), 0.0)
    return detector, halts


@pytest.fixture(scope="module")
def utterance(speech: Callable[[str, int], FloatArray]) -> FloatArray:
    voice = speech("I forgot my password and cannot log in", RATE)
    return np.concatenate((np.zeros(int(RATE * SPEECH_START), np.float32), voice))


def first_loud(signal: FloatArray) -> float:
    return float(np.argmax(np.abs(signal) > 0.02)) / RATE


def test_speech_while_playing_halts_once_and_reports_barge_in(utterance: FloatArray) -> None:
    detector, halts = run(utterance, playing=True)
    assert halts == [1.0]
    kinds = [e.kind for e in detector.events]
    assert kinds[0] == "barge_in"
    event = detector.events[0]
    assert event.at == pytest.approx(first_loud(utterance), abs=0.06)
    # Decided after three consecutive speech frames: 20 ms after the first of them.
    assert event.decided_at - event.at == pytest.approx(0.020, abs=1e-6)


def test_more_onset_frames_decide_later(utterance: FloatArray) -> None:
    detector, _ = run(utterance, playing=True, settings=DetectorSettings(onset_frames=6))
    event = detector.events[0]
    assert event.decided_at - event.at == pytest.approx(0.050, abs=1e-6)


def test_speech_with_nothing_playing_reports_start_and_end_without_halting(utterance: FloatArray) -> None:
    tail = np.zeros(RATE, np.float32)
    detector, halts = run(np.concatenate((utterance, tail)), playing=False)
    assert halts == []
    assert [e.kind for e in detector.events] == ["speech_start", "speech_end"]
    start, end = detector.events
    speech_end = len(utterance) / RATE
    assert start.at == pytest.approx(first_loud(utterance), abs=0.06)
    assert speech_end - 0.4 < end.at <= speech_end + 0.05
    assert end.decided_at == pytest.approx(end.at + 0.29, abs=0.011)  # after the 300 ms hangover


@pytest.mark.parametrize("level_db", [-45, -30, -20])
def test_steady_white_noise_never_counts_as_speech(level_db: float) -> None:
    rng = np.random.default_rng(int(-level_db))
    noise = rng.normal(0, 10 ** (level_db / 20), RATE * 4).astype(np.float32)
    detector, halts = run(noise, playing=True)
    assert halts == [] and not detector.events
    assert detector.noise_floor_dbfs == pytest.approx(level_db, abs=3)


def test_mains_hum_and_silence_never_count_as_speech() -> None:
    t = np.arange(RATE * 3) / RATE
    hum = (0.1 * np.sin(2 * np.pi * 50 * t) + 0.03 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    for signal in (hum, np.zeros(RATE * 3, np.float32)):
        detector, halts = run(signal, playing=True)
        assert halts == [] and not detector.events


def test_speech_over_background_noise_is_still_found(utterance: FloatArray) -> None:
    rng = np.random.default_rng(7)
    lead = rng.normal(0, 0.01, RATE).astype(np.float32)
    noisy = np.concatenate((lead, utterance + rng.normal(0, 0.01, len(utterance)).astype(np.float32)))
    detector, halts = run(noisy, playing=True)
    assert halts == [1.0]
    assert detector.events[0].at == pytest.approx(1.0 + first_loud(utterance), abs=0.08)


def test_quiet_speech_below_the_absolute_floor_is_ignored(utterance: FloatArray) -> None:
    detector, halts = run(utterance * 10 ** (-45 / 20), playing=True)  # peaks around -50 dBFS
    assert halts == [] and not detector.events


def test_odd_chunk_sizes_give_the_same_decision(utterance: FloatArray) -> None:
    whole, _ = run(utterance, playing=True)
    pieces = BargeInDetector(lambda: True, lambda: None)
    pcm = float_to_int16(utterance)
    position = 0
    for size in [7, 333, 160, 1, 999] * 200:
        chunk = pcm[position : position + size]
        pieces.feed(chunk, position / RATE)
        position += size
    assert [(e.kind, round(e.at, 4)) for e in pieces.events][:2] == [
        (e.kind, round(e.at, 4)) for e in whole.events
    ][:2]


def test_frame_level() -> None:
    full_scale = np.full(FRAME_SAMPLES, 32767, np.int16)
    assert frame_level_dbfs(full_scale) == pytest.approx(0.0, abs=0.01)
    assert frame_level_dbfs(np.zeros(FRAME_SAMPLES, np.int16)) == -100.0


def test_disabled_detector_neither_halts_nor_reports(utterance: FloatArray) -> None:
    halts: list[float] = []
    detector = BargeInDetector(lambda: True, lambda: halts.append(1.0))
    detector.enabled = False
    detector.feed(float_to_int16(utterance), 0.0)
    assert halts == [] and not detector.events


# --- frames judged by the echo stage ----------------------------------------------------------------
# The echo verdict itself (which frame is echo) is tested with the echo stage (tests/test_echo.py);
# here: what the detector does with it.


def run_frames(
    signal: FloatArray,
    playing: bool,
    echo: bool = False,
    strict: bool = False,
    settings: DetectorSettings | None = None,
) -> tuple[BargeInDetector, list[float]]:
    """Feed ``signal`` frame by frame as the echo worker does, every frame with one verdict."""
    halts: list[float] = []
    detector = BargeInDetector(lambda: playing, lambda: halts.append(1.0), settings or DetectorSettings())
    pcm = float_to_int16(signal)
    for i in range(len(pcm) // FRAME_SAMPLES):
        frame = pcm[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES]
        detector.feed_frame(frame, i * FRAME_SAMPLES / RATE, echo=echo, strict=strict)
    return detector, halts


def test_frames_judged_echo_are_never_speech(utterance: FloatArray) -> None:
    detector, halts = run_frames(utterance, True, echo=True)
    assert halts == [] and not detector.events


def test_frames_not_judged_echo_are_the_user(utterance: FloatArray) -> None:
    detector, halts = run_frames(utterance, True)
    assert halts == [1.0]
    event = detector.events[0]
    assert event.kind == "barge_in"
    assert event.at == pytest.approx(first_loud(utterance), abs=0.06)
    assert event.decided_at - event.at == pytest.approx(0.020, abs=1e-6)  # the usual three frames


def test_while_the_canceller_settles_an_onset_needs_five_frames(utterance: FloatArray) -> None:
    detector, halts = run_frames(utterance, True, strict=True)
    assert halts == [1.0]
    event = detector.events[0]
    assert event.decided_at - event.at == pytest.approx(0.040, abs=1e-6)


def test_while_the_canceller_settles_an_onset_needs_a_wider_margin(utterance: FloatArray) -> None:
    # Over a -40 dBFS floor, speech peaking at -10 dBFS clears the usual 10 dB margin but not
    # 10 + 40 dB: the extra margin applies only to strict frames.
    rng = np.random.default_rng(3)
    voice = utterance * (10 ** (-10 / 20) / float(np.max(np.abs(utterance))))
    noisy = voice + rng.normal(0, 10 ** (-40 / 20), len(voice)).astype(np.float32)
    assert run_frames(noisy, True, settings=DetectorSettings(strict_margin_db=40.0))[1]
    assert run_frames(noisy, True, strict=True, settings=DetectorSettings(strict_margin_db=40.0))[1] == []
    assert run_frames(noisy, True, strict=True)[1]  # the default +6 dB lets it through


def test_the_echo_tail_after_the_playback_is_echo_too(utterance: FloatArray) -> None:
    # The player has finished, but the echo (delay and reverberation) is still in the microphone.
    detector, halts = run_frames(utterance, False, echo=True)
    assert halts == [] and list(detector.events) == []
    # The user right after the answer: not echo, a start of speech (no halt: nothing plays).
    detector, halts = run_frames(utterance, False)
    assert halts == [] and [e.kind for e in detector.events][:1] == ["speech_start"]


def test_the_speech_detector_alone_reports_starts_and_ends(utterance: FloatArray) -> None:
    detector = SpeechDetector()
    detector.feed(float_to_int16(np.concatenate((utterance, np.zeros(RATE, np.float32)))), 0.0)
    kinds = [e.kind for e in detector.events]
    assert kinds[0] == "speech_start" and kinds[-1] == "speech_end" and "barge_in" not in kinds
