"""Echo handling: the assistant's own voice must not halt it, the user talking over it must.

Synthetic rooms (delay, echo level, reverberation tail, mild loudspeaker clipping) come from
``bench.echo``, so the test and the benchmark measure the same thing.
"""

from __future__ import annotations

import builtins
import queue
import time
from typing import Any

import numpy as np
import pytest

from app.audio.bargein import BargeInDetector
from app.audio.capture import Capture
from app.audio.devices import AudioDevice
from app.audio.echo import (
    ECHO_RATE,
    FRAME_SAMPLES,
    CleanedFrame,
    EchoCanceller,
    EchoMode,
    EchoMonitor,
    EchoPath,
    EchoResult,
    EchoState,
    EchoVerdict,
    ReferenceAligner,
    ReferenceEchoGate,
    WebRtcEchoCanceller,
    judge,
    load_echo_canceller,
    power,
    power_db,
)
from app.audio.pipeline import EchoWorker
from app.audio.player import PlayedBlock, Player
from app.audio.resample import FloatArray, StreamResampler, float_to_pcm16, pcm16_to_float
from app.core.hearing import Hearing
from bench.echo import USER_TEXTS, Jump, Recording, Room, Scenario, record, run

ROOMS = [
    Room(delay_ms=20, echo_db=-6, tail_ms=150, seed=1),
    Room(delay_ms=60, echo_db=-10, tail_ms=200, seed=2),
    Room(delay_ms=100, echo_db=-12, tail_ms=250, seed=3),
    Room(delay_ms=150, echo_db=-15, tail_ms=300, seed=4),
]
ROOM_IDS = [f"delay{r.delay_ms:.0f}ms_echo{r.echo_db:.0f}dB_tail{r.tail_ms:.0f}ms" for r in ROOMS]
USER_AT = 4.5

_recordings: dict[tuple[Room, bool], Recording] = {}


def recording(room: Room, with_user: bool) -> tuple[Scenario, Recording]:
    scenario = Scenario(room, user_text=USER_TEXTS[0] if with_user else None, user_at=USER_AT)
    key = (room, with_user)
    if key not in _recordings:
        try:
            _recordings[key] = record(scenario)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
    return scenario, _recordings[key]


def aec3() -> WebRtcEchoCanceller:
    pytest.importorskip("pywebrtc_audio")
    return WebRtcEchoCanceller()


# --- WebRTC AEC3 -------------------------------------------------------------------------------


@pytest.mark.parametrize("room", ROOMS, ids=ROOM_IDS)
def test_aec3_removes_the_assistant_and_nothing_halts(room: Room) -> None:
    scenario, rec = recording(room, with_user=False)
    outcome = run(scenario, aec3(), rec)
    assert outcome.echo_attenuation_db >= 15.0
    assert outcome.barge_ins == []


@pytest.mark.parametrize("room", ROOMS, ids=ROOM_IDS)
def test_aec3_keeps_the_user_and_barge_in_fires_on_time(room: Room) -> None:
    scenario, rec = recording(room, with_user=True)
    outcome = run(scenario, aec3(), rec)
    assert outcome.echo_attenuation_db >= 15.0  # echo-only frames between convergence and the user
    assert outcome.user_kept_db is not None and outcome.user_kept_db >= -4.0
    assert outcome.false_halts == 0
    assert outcome.latency_ms is not None and 0.0 < outcome.latency_ms <= 200.0


@pytest.mark.parametrize("gap_ms", [25.0, 60.0, 90.0])
@pytest.mark.parametrize("room", ROOMS, ids=ROOM_IDS)
def test_a_reported_output_underrun_mid_answer_does_not_halt_the_assistant(room: Room, gap_ms: float) -> None:
    # The device plays silence mid-word and everything after it later. While the reference
    # timeline waited 250 ms for the slip, the echo ran behind its reference, AEC3 passed it and
    # the assistant halted on its own voice (48 of 60 such runs; once in CI).
    scenario = Scenario(room, jump=Jump(at_s=4.1, gap_ms=gap_ms, kind="reported"))
    try:
        rec = record(scenario)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    assert run(scenario, aec3(), rec).barge_ins == []


def test_aec3_reports_its_attenuation_per_frame() -> None:
    canceller = aec3()
    rng = np.random.default_rng(0)
    reference = (rng.standard_normal(ECHO_RATE * 4) * 0.1).astype(np.float32)
    mic = np.concatenate((np.zeros(48, np.float32), reference[:-48] * 0.3))  # 3 ms, -10 dB
    results: list[EchoResult] = []
    for k in range(len(mic) // FRAME_SAMPLES):
        part = slice(k * FRAME_SAMPLES, (k + 1) * FRAME_SAMPLES)
        results.append(canceller.process(mic[part], reference[part]))
    late = results[200:]
    assert all(len(r.cleaned) == FRAME_SAMPLES and r.cleaned.dtype == np.float32 for r in late)
    assert np.median([r.attenuation_db for r in late]) >= 20.0
    assert abs(late[-1].mic_dbfs - late[-1].reference_dbfs + 10.5) < 1.5
    with pytest.raises(ValueError):
        canceller.process(mic[:100], reference[:100])


# --- the fallback gate ---------------------------------------------------------------------------


@pytest.mark.parametrize("room", ROOMS, ids=ROOM_IDS)
def test_gate_mostly_ignores_the_assistant(room: Room) -> None:
    scenario, rec = recording(room, with_user=False)
    outcome = run(scenario, ReferenceEchoGate(), rec)
    assert outcome.echo_attenuation_db >= 10.0
    assert outcome.false_halts_after_convergence <= 1


@pytest.mark.parametrize("room", ROOMS, ids=ROOM_IDS)
def test_gate_lets_the_user_through(room: Room) -> None:
    scenario, rec = recording(room, with_user=True)
    outcome = run(scenario, ReferenceEchoGate(), rec)
    assert outcome.user_kept_db is not None and outcome.user_kept_db >= -3.0
    assert outcome.latency_ms is not None and 0.0 < outcome.latency_ms <= 300.0


def test_gate_learns_delay_and_gain() -> None:
    gate = ReferenceEchoGate()
    rng = np.random.default_rng(1)
    # bursts of noise as "speech": 200 ms on, 100-300 ms off
    reference = np.zeros(ECHO_RATE * 6, np.float32)
    position = 0
    while position < len(reference):
        burst = int(ECHO_RATE * 0.2)
        reference[position : position + burst] = (
            rng.standard_normal(len(reference[position : position + burst])) * 0.1
        )
        position += burst + int(ECHO_RATE * rng.uniform(0.1, 0.3))
    delay = 8 * FRAME_SAMPLES
    mic = np.concatenate((np.zeros(delay, np.float32), reference[:-delay] * 0.25))  # -12 dB
    for k in range(len(mic) // FRAME_SAMPLES):
        part = slice(k * FRAME_SAMPLES, (k + 1) * FRAME_SAMPLES)
        gate.process(mic[part], reference[part])
    assert gate.converged
    assert gate.delay_frames is not None and abs(gate.delay_frames - 8) <= 2
    assert gate.gain_db is not None and -16.0 <= gate.gain_db <= -8.0


# --- loading ----------------------------------------------------------------------------------------


def test_load_prefers_aec3() -> None:
    pytest.importorskip("pywebrtc_audio")
    assert load_echo_canceller().name == "webrtc-aec3"


def test_load_falls_back_to_the_gate_with_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def broken(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pywebrtc_audio"):
            raise ImportError("no wheel for this platform")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", broken)
    warnings: list[str] = []
    canceller = load_echo_canceller(delay_hint_ms=80, warn=warnings.append)
    assert isinstance(canceller, ReferenceEchoGate)
    assert canceller.delay_frames == 8
    assert len(warnings) == 1 and "\n" not in warnings[0] and "reference echo gate" in warnings[0]


# --- alignment -----------------------------------------------------------------------------------


def played_blocks(signal: FloatArray, rate: int, jitter_ms: float, start: float = 0.0) -> list[PlayedBlock]:
    rng = np.random.default_rng(2)
    block = rate // 100
    blocks = []
    for n, i in enumerate(range(0, len(signal) - block + 1, block)):
        audible = start + n * 0.01 + float(rng.uniform(0.0, jitter_ms)) / 1000.0
        blocks.append(PlayedBlock(audible - 0.02, audible, signal[i : i + block]))
    return blocks


def best_lag(x: FloatArray, y: FloatArray, span: int) -> int:
    """The shift of ``y`` against ``x`` (positive: ``y`` is late) with the highest correlation."""
    core = x[span:-span]
    return max(
        range(-span, span + 1), key=lambda lag: float(np.dot(core, y[span + lag : len(y) - span + lag]))
    )


@pytest.mark.parametrize("device_rate", [48000, 44100])
def test_aligner_follows_the_played_timeline_through_jitter(device_rate: int) -> None:
    rng = np.random.default_rng(3)
    signal = (rng.standard_normal(device_rate * 3) * 0.1).astype(np.float32)
    aligner = ReferenceAligner(device_rate, lead_s=0.0)
    blocks = played_blocks(signal, device_rate, jitter_ms=4.0, start=10.0)
    frames = []
    for n, block in enumerate(blocks):
        aligner.push(block)
        if n >= 10:
            frames.append(aligner.frame_at(10.0 + (n - 10) * 0.01))  # 100 ms behind the newest block
    aligned = np.concatenate(frames)
    expected = StreamResampler(device_rate, ECHO_RATE, "HQ").process(signal, last=True)[: len(aligned)]
    assert best_lag(expected[1600:-1600], aligned[1600:-1600], 40) == 0


def test_aligner_lead_and_delay_shift_the_reference() -> None:
    rng = np.random.default_rng(4)
    signal = (rng.standard_normal(48000 * 2) * 0.1).astype(np.float32)
    plain = ReferenceAligner(48000, lead_s=0.0)
    shifted = ReferenceAligner(48000, lead_s=0.01, delay_s=0.02)  # 30 ms earlier reference
    for block in played_blocks(signal, 48000, jitter_ms=0.0):
        plain.push(block)
        shifted.push(block)
    at = 1.0
    window = 0.3
    a = np.concatenate([plain.frame_at(at + k * 0.01) for k in range(int(window * 100))])
    b = np.concatenate([shifted.frame_at(at + k * 0.01) for k in range(int(window * 100))])
    assert best_lag(a, b, 600) == 480  # b holds the same samples 480 (30 ms) later


def test_aligner_gives_silence_outside_what_was_played_and_restarts_after_a_gap() -> None:
    signal = np.full(48000, 0.5, np.float32)
    aligner = ReferenceAligner(48000, lead_s=0.0)
    assert not aligner.frame_at(0.0).any()
    for block in played_blocks(signal[:24000], 48000, jitter_ms=0.0):
        aligner.push(block)
    assert aligner.frame_at(0.2).min() > 0.4
    assert not aligner.frame_at(-1.0).any()
    assert not aligner.frame_at(5.0).any()
    for block in played_blocks(signal[:24000], 48000, jitter_ms=0.0, start=30.0):  # stream restarted
        aligner.push(block)
    assert aligner.restarts == 1
    assert aligner.frame_at(30.2).min() > 0.4


class Passthrough:
    """A canceller that removes nothing, for tests of the framing and timing around it."""

    name = "passthrough"

    def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
        return EchoResult(mic.copy(), 0.0, -20.0, -20.0)


def test_echo_path_cuts_any_block_size_into_timed_frames() -> None:
    path = EchoPath(Passthrough(), ReferenceAligner(48000))
    samples = np.arange(1000, dtype=np.float32)
    frames = path.process(samples[:250], 7.0) + path.process(samples[250:], 7.0 + 250 / ECHO_RATE)
    assert [round(f.captured_at, 6) for f in frames] == [round(7.0 + k * 0.01, 6) for k in range(6)]
    assert np.array_equal(np.concatenate([f.samples for f in frames]), samples[:960])


def test_echo_path_times_follow_the_capture_clock_not_the_sample_count() -> None:
    """A microphone clock 400 ppm slow: 24 ms behind the count after a minute, yet frames stay on time."""

    path = EchoPath(Passthrough(), ReferenceAligner(48000))
    rng = np.random.default_rng(17)
    true_rate = ECHO_RATE * (1 - 400e-6)
    chunk = np.zeros(160, np.float32)
    errors: list[float] = []
    for n in range(6000):  # 60 s of 10 ms chunks
        true_start = 5.0 + n * 160 / true_rate
        late = float(rng.uniform(0.0, 0.004))  # callback times only come late
        frames = path.process(chunk, true_start + late)
        errors.extend(frame.captured_at - true_start for frame in frames[-1:])
    assert max(abs(e) for e in errors[-1000:]) < 0.002
    # The input dropped 50 ms of samples: frames after it are placed after the gap.
    gap_start = 5.0 + 6000 * 160 / true_rate + 0.05
    for n in range(100):
        frames = path.process(chunk, gap_start + n * 160 / true_rate + 0.001)
    assert path.timeline.slips >= 1
    assert frames[-1].captured_at == pytest.approx(gap_start + 99 * 160 / true_rate, abs=0.003)


def test_aligner_follows_an_output_underrun_within_the_slip_window() -> None:
    # After an underrun the device plays everything 30 ms later than the stream so far implies:
    # the reference must not run ahead of the echo (past what was handed) for the whole window.
    rng = np.random.default_rng(5)
    signal = (rng.standard_normal(48000 * 3) * 0.1).astype(np.float32)
    aligner = ReferenceAligner(48000, lead_s=0.0)
    blocks = played_blocks(signal[: 48000 * 2], 48000, jitter_ms=0.0)
    slipped = played_blocks(signal[48000 * 2 :], 48000, jitter_ms=0.0, start=2.03)
    aligner.extend(blocks)
    anchor_before = aligner.anchor
    aligner.extend(slipped[:40])  # 400 ms after the underrun
    assert aligner.slips == 1 and aligner.restarts == 0
    assert aligner.anchor is not None and anchor_before is not None
    assert aligner.anchor - anchor_before == pytest.approx(0.03, abs=0.001)
    # 20 ms before the newest block: handed already (the resampler holds back a few ms), but
    # beyond what was handed if the anchor still ran 30 ms early
    frame = aligner.frame_at(slipped[39].audible_at - 0.02)
    assert np.count_nonzero(frame) == FRAME_SAMPLES


def test_aligner_follows_a_reported_underrun_at_once() -> None:
    signal = (np.random.default_rng(6).standard_normal(48000 * 3) * 0.1).astype(np.float32)
    aligner = ReferenceAligner(48000, lead_s=0.0)
    aligner.extend(played_blocks(signal[: 48000 * 2], 48000, jitter_ms=0.0))
    anchor_before = aligner.anchor
    slipped = played_blocks(signal[48000 * 2 :], 48000, jitter_ms=0.0, start=2.03)
    first = slipped[0]
    aligner.push(PlayedBlock(first.handed_at, first.audible_at, first.samples, underflow=True))
    assert aligner.slips == 1 and aligner.restarts == 0
    assert aligner.anchor is not None and anchor_before is not None
    assert aligner.anchor - anchor_before == pytest.approx(0.03, abs=0.001)
    # A reported underrun that cost no time moves nothing for long: the next on-time block
    # brings the anchor back.
    aligner.push(PlayedBlock(slipped[1].handed_at, slipped[1].audible_at + 0.004, slipped[1].samples, True))
    aligner.push(slipped[2])
    assert aligner.anchor - anchor_before == pytest.approx(0.03, abs=0.001)


def test_echo_path_bypasses_the_canceller_while_idle_and_resumes_cancelling() -> None:
    """Long silences skip AEC3 (idle CPU); the echo after them is still cancelled."""
    rate = 48000
    talk = noise_bursts(3.0, 12)
    silence = np.zeros(ECHO_RATE * 2, np.float32)
    reference16 = np.concatenate((talk, silence, noise_bursts(2.0, 13)))
    played = StreamResampler(ECHO_RATE, rate, "HQ").process(reference16, last=True)
    blocks = played_blocks(played, rate, jitter_ms=2.0)
    delay = 30 * ECHO_RATE // 1000
    mic = np.zeros_like(reference16)
    mic[delay:] = reference16[:-delay] * 10 ** (-8 / 20)
    path = EchoPath(aec3(), ReferenceAligner(rate))
    pending = iter(blocks)
    block = next(pending, None)
    frames = []
    skipped_at: list[int] = []
    for k in range(len(mic) // FRAME_SAMPLES):
        at = k * 0.01
        while block is not None and block.handed_at <= at:
            path.add_reference([block])
            block = next(pending, None)
        before = path.skipped
        frames.extend(path.process(mic[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES], at))
        if path.skipped != before:
            skipped_at.append(k)
    # Skipped: before anything played, and the silence after the echo tail (0.5 s); never
    # the playback either side.
    during = [k for k in skipped_at if k >= 10]
    assert during and during[0] >= 300 + 50 and during[-1] < 500
    assert len(during) >= 120
    skipped = frames[during[0]]
    assert skipped.attenuation_db == 0.0 and not skipped.state.echo_possible
    assert np.array_equal(skipped.samples, skipped.raw)
    # After the pause, once the guard is over, AEC3 still removes the echo.
    resumed = [f.attenuation_db for f in frames[540:690] if f.mic_dbfs > -40.0]
    assert float(np.median(resumed)) >= 20.0
    assert frames[560].state.mode == "speaker"


# --- the echo monitor: speaker or headset, and when the canceller is trusted --------------------------


def noise_bursts(seconds: float, seed: int, level: float = 0.1) -> FloatArray:
    """A reference that plays continuously, like steady speech: 16 kHz noise."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(ECHO_RATE * seconds)) * level).astype(np.float32)


def speech_like(seconds: float, seed: int, rng: np.random.Generator) -> FloatArray:
    """Noise in 150-300 ms bursts with 150-300 ms pauses, like the loudness of speech."""
    reference = noise_bursts(seconds, seed)
    position = 0
    while position < len(reference):
        burst = int(ECHO_RATE * rng.uniform(0.15, 0.3))
        pause = int(ECHO_RATE * rng.uniform(0.15, 0.3))
        reference[position + burst : position + burst + pause] = 0.0
        position += burst + pause
    return reference


def monitor_run(
    monitor: EchoMonitor, reference: FloatArray, mic: FloatArray, attenuation_db: float | FloatArray
) -> list[EchoState]:
    """Per 10 ms frame; ``attenuation_db`` is what the canceller removed, one value or one per frame."""
    count = len(reference) // FRAME_SAMPLES
    removed = np.broadcast_to(np.asarray(attenuation_db, np.float64), (count,))
    return [
        monitor.update(
            power_db(power(mic[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES])),
            power_db(power(reference[n * FRAME_SAMPLES : (n + 1) * FRAME_SAMPLES])),
            float(removed[n]),
        )
        for n in range(count)
    ]


def test_monitor_finds_headset_mode_when_the_playback_never_reaches_the_mic() -> None:
    reference = noise_bursts(3.0, 6)
    mic = noise_bursts(3.0, 7, level=1e-4)  # -80 dBFS room noise, no echo
    monitor = EchoMonitor()
    states = monitor_run(monitor, reference, mic, attenuation_db=0.0)
    assert states[0].mode == "unknown" and states[0].settling  # strict until measured
    first_headset = next(k for k, state in enumerate(states) if state.mode == "headset")
    assert first_headset <= 55  # within 0.55 s of playback (frames wait 0.2 s, in case they are the user)
    assert all(not state.settling for state in states[first_headset:])
    assert monitor.echo_gain_db is not None and monitor.echo_gain_db < -50.0


def test_monitor_finds_speaker_mode_and_the_echo_level() -> None:
    reference = noise_bursts(4.0, 8)
    delay = 20 * ECHO_RATE // 1000
    mic = np.concatenate((np.zeros(delay, np.float32), reference[:-delay] * 10 ** (-12 / 20)))
    monitor = EchoMonitor()
    states = monitor_run(monitor, reference, mic, attenuation_db=35.0)
    assert all(state.mode == "speaker" for state in states[55:])
    assert monitor.echo_gain_db is not None and -13.0 <= monitor.echo_gain_db <= -8.0
    # Strict for the first 2 s of playback while the canceller converges, then trusted.
    assert all(state.settling for state in states[30:195])
    assert not any(state.settling for state in states[210:])
    assert all(state.excess_db < 2.0 for state in states[55:])  # the echo explains the microphone


def test_monitor_finds_the_echo_delay_and_hears_the_user_in_a_pause_between_words() -> None:
    # Speech-like playback: 150-300 ms bursts with 150-300 ms pauses, its echo 50 ms late at 0 dB.
    rng = np.random.default_rng(5)
    reference = speech_like(12.0, 9, rng)
    delay = 50 * ECHO_RATE // 1000
    mic = np.concatenate((np.zeros(delay, np.float32), reference[:-delay]))
    mic += rng.standard_normal(len(mic)).astype(np.float32) * 1e-4  # a quiet room
    # The user says a short word in the first pause after 10 s, 80 ms after the echo ended.
    pauses = np.flatnonzero((reference[:-1] != 0) & (reference[1:] == 0))
    pause_at = int(pauses[pauses > 10 * ECHO_RATE][0]) + delay
    word = slice(pause_at + 80 * ECHO_RATE // 1000, pause_at + 150 * ECHO_RATE // 1000)
    mic[word] += noise_bursts(1.0, 4, level=0.1)[: word.stop - word.start]
    # AEC3 removes 35 dB from the echo; over the word its suppressor releases within 30 ms (as
    # measured with the real canceller on a user's word in a pause).
    frames = range(word.start // FRAME_SAMPLES + 1, word.stop // FRAME_SAMPLES)
    removed = np.full(len(reference) // FRAME_SAMPLES, 35.0)
    removed[frames.start : frames.stop + 1] = 2.0  # the frame the word ends in too
    removed[frames.start - 1 : frames.start + 2] = (35.0, 20.0, 10.0)
    monitor = EchoMonitor()
    states = monitor_run(monitor, reference, mic, attenuation_db=removed)
    assert monitor.echo_delay_frames in (5, 6)  # 50 ms behind the aligned reference
    # Without the delay the loudest playback of the last 200 ms predicted echo as loud as the user.
    assert all(states[k].excess_db > 10.0 for k in frames), [states[k].excess_db for k in frames]
    # And the echo itself stays explained.
    echo_only = range(9 * ECHO_RATE // FRAME_SAMPLES, 10 * ECHO_RATE // FRAME_SAMPLES)
    assert np.percentile([states[k].excess_db for k in echo_only], 95) < 2.0


def test_the_user_talking_over_the_playback_does_not_pass_for_echo() -> None:
    """Frequent barge-ins must not inflate the predicted echo (it would hide the next one)."""
    # Syllable-like loudness changes (0 to -20 dB every 50 ms) loosen the echo gain bound, as
    # with speech; a steady reference would keep the prediction down on its own.
    envelope = np.repeat(10 ** (np.random.default_rng(16).uniform(-20, 0, 160) / 20), ECHO_RATE // 20)
    reference = (noise_bursts(8.0, 14) * envelope).astype(np.float32)
    mic = reference * 10 ** (-10 / 20)
    user = noise_bursts(8.0, 15, level=0.1)  # as loud as the playback: 10 dB over the echo
    talking = np.zeros(len(reference) // FRAME_SAMPLES, bool)
    for second in range(1, 8):
        talking[second * 100 : second * 100 + 30] = True  # 300 ms of every second
    for k in np.flatnonzero(talking):
        mic[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES] += user[k * FRAME_SAMPLES : (k + 1) * FRAME_SAMPLES]

    def predicted_gain(tell_monitor: bool) -> float:
        monitor = EchoMonitor()
        for k in range(len(talking)):
            frame = slice(k * FRAME_SAMPLES, (k + 1) * FRAME_SAMPLES)
            monitor.update(power_db(power(mic[frame])), power_db(power(reference[frame])), 35.0)
            # The detector confirms the user 10 frames into their speech, and until it ends.
            if tell_monitor and talking[max(0, k - 10) : k + 1].all():
                monitor.user_speaking()
        assert monitor.predict_gain_db is not None
        return monitor.predict_gain_db

    assert predicted_gain(tell_monitor=False) > -5.0  # the user's frames pass for echo
    assert -11.5 <= predicted_gain(tell_monitor=True) <= -8.0


def test_monitor_distrusts_a_canceller_that_passes_explained_echo() -> None:
    reference = noise_bursts(4.0, 9)
    mic = reference * 10 ** (-10 / 20)
    monitor = EchoMonitor()
    monitor_run(monitor, reference[: ECHO_RATE * 3], mic[: ECHO_RATE * 3], attenuation_db=35.0)
    assert monitor.canceller_trusted
    # The echo path jumps and the canceller passes the echo: settling again within check_frames.
    late = monitor_run(monitor, reference[ECHO_RATE * 3 :], mic[ECHO_RATE * 3 :], attenuation_db=0.0)
    assert all(state.settling for state in late[monitor.settings.check_frames :])


def test_monitor_guards_the_start_of_playback_after_a_pause() -> None:
    reference = noise_bursts(4.5, 10)
    reference[ECHO_RATE * 3 : ECHO_RATE * 3 + ECHO_RATE * 7 // 10] = 0.0  # 700 ms pause
    mic = reference * 10 ** (-10 / 20)
    states = monitor_run(EchoMonitor(), reference, mic, attenuation_db=35.0)
    resume = 370  # frame where the playback resumes
    assert not states[resume - 60].settling  # trusted before the pause
    assert not states[resume - 5].echo_possible  # silence long enough: the echo is gone
    assert all(state.settling for state in states[resume : resume + 30])  # 300 ms guard
    assert not states[resume + 35].settling


# --- the verdict: which frame is echo, and which signal goes on ---------------------------------------


def judged(
    attenuation_db: float,
    excess_db: float,
    *,
    mode: EchoMode = "speaker",
    settling: bool = False,
    spread_db: float | None = None,
    possible: bool = True,
) -> tuple[EchoVerdict, CleanedFrame]:
    state = EchoState(mode, possible, settling, excess_db, -10.0, spread_db)
    raw = np.full(FRAME_SAMPLES, 0.1, np.float32)
    cleaned = np.full(FRAME_SAMPLES, 0.001, np.float32)
    frame = CleanedFrame(cleaned, 1.0, attenuation_db, -20.0, -20.0, raw, state)
    return judge(frame), frame


@pytest.mark.parametrize("attenuation_db", [10.0, 25.0, 40.0])
def test_frames_the_canceller_took_much_from_are_echo(attenuation_db: float) -> None:
    verdict, frame = judged(attenuation_db, excess_db=1.0)
    assert verdict.echo and verdict.possible and verdict.signal is frame.samples


@pytest.mark.parametrize("attenuation_db", [0.0, 6.0, 9.5])
def test_frames_the_canceller_left_alone_and_the_echo_cannot_explain_are_not_echo(
    attenuation_db: float,
) -> None:
    verdict, frame = judged(attenuation_db, excess_db=12.0)
    assert not verdict.echo and verdict.signal is frame.samples


def test_a_user_far_above_the_predicted_echo_wins_over_the_suppressor_and_goes_on_raw() -> None:
    # AEC3 suppresses the start of double talk: 40 dB taken, but the microphone is 6 dB or more
    # above the echo the playback can cause, so it is the user, and the raw frame serves better.
    verdict, frame = judged(40.0, excess_db=6.0)
    assert not verdict.echo and verdict.signal is frame.raw
    verdict, frame = judged(40.0, excess_db=5.9)
    assert verdict.echo and verdict.signal is frame.samples
    verdict, frame = judged(3.0, excess_db=6.0)  # the canceller let it through anyway
    assert not verdict.echo and verdict.signal is frame.samples


def test_a_steady_echo_lets_the_user_override_the_suppressor_sooner() -> None:
    # Echo alone measured at most 0.5 dB over its prediction (a steady sound): 3 dB over it is
    # already the user. For speech (a 5 dB spread) it stays 6 dB, and never under 3 dB.
    assert not judged(40.0, excess_db=3.5, spread_db=0.5)[0].echo
    assert judged(40.0, excess_db=5.9, spread_db=5.0)[0].echo
    assert judged(40.0, excess_db=2.9, spread_db=0.0)[0].echo


@pytest.mark.parametrize("excess_db", [-3.0, 0.0, 1.9])
def test_what_the_predicted_echo_explains_is_echo_even_when_the_canceller_passes_it(excess_db: float) -> None:
    # A canceller glitch (a jump in the echo path) passes echo at 0 dB attenuation.
    assert judged(0.0, excess_db=excess_db)[0].echo


def test_while_the_canceller_settles_the_user_must_stand_out_of_the_echo() -> None:
    assert not judged(0.0, excess_db=2.5)[0].echo
    verdict, _ = judged(0.0, excess_db=2.5, settling=True)
    assert verdict.echo and verdict.settling
    assert not judged(0.0, excess_db=3.0, settling=True)[0].echo


def test_in_headset_mode_the_raw_frame_goes_on_but_what_the_echo_explains_is_echo() -> None:
    # "Headset" is echo under -30 dB: in a silent room it still clears the detector's floor.
    verdict, frame = judged(40.0, excess_db=1.0, mode="headset")
    assert verdict.echo and verdict.signal is frame.raw and not verdict.settling
    verdict, frame = judged(40.0, excess_db=25.0, mode="headset")
    assert not verdict.echo and verdict.signal is frame.raw


def test_with_no_playback_in_the_echo_tail_nothing_is_echo() -> None:
    verdict, frame = judged(40.0, excess_db=-20.0, possible=False, settling=True)
    assert not verdict.echo and not verdict.possible and not verdict.settling
    assert verdict.signal is frame.raw


# --- the worker: the detector and the model both get the cleaned signal -----------------------------


def fake_device(rate: float = 48000.0) -> AudioDevice:
    return AudioDevice(0, "fake", "test", 1, 1, rate)


def echo_worker(
    canceller: EchoCanceller,
) -> tuple[Player, queue.Queue[tuple[FloatArray, float]], Capture, EchoWorker]:
    """The echo worker wired as ``AudioPipeline`` wires it, on a fake 48 kHz device; not started."""
    device = fake_device()
    player = Player(device)
    chunks: queue.Queue[tuple[FloatArray, float]] = queue.Queue()
    detector = BargeInDetector(player.is_playing, lambda: None)
    capture = Capture(device, detector=detector, echo_input=chunks)
    path = EchoPath(canceller, ReferenceAligner(48000))
    return player, chunks, capture, EchoWorker(chunks, player, detector, path, capture.model)


def run_worker(
    echo_gain_db: float | None, seconds: float = 5.0
) -> tuple[FloatArray, FloatArray, EchoWorker, list[Hearing]]:
    """Assistant noise played at 48 kHz; the microphone hears it at ``echo_gain_db`` (None: not at all).

    Returns what the microphone heard (through the same 16 kHz band limit) and what went to the
    model, both at 24 kHz, the worker, and the label of every frame for the model.
    """
    player, chunks, capture, worker = echo_worker(aec3())
    player.push("answer", float_to_pcm16(np.zeros(24000 * 10, np.float32)))  # playing, for the detector
    rng = np.random.default_rng(11)
    # Irregular bursts, like speech: AEC3 lets steady (or periodic) noise through more and more.
    played = (rng.standard_normal(48000 * int(seconds)) * 0.1).astype(np.float32)
    position = 0
    while position < len(played):
        gap = int(48000 * rng.uniform(0.1, 0.3))
        played[position + 9600 : position + 9600 + gap] = 0.0
        position += 9600 + gap
    delay = 48 * 15  # 15 ms behind the reference
    heard = np.zeros_like(played)
    if echo_gain_db is not None:
        heard[delay:] = played[:-delay] * 10 ** (echo_gain_db / 20)
    t = np.arange(len(heard)) / 48000
    heard += (0.001 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)  # a quiet room hum, -63 dBFS
    block = 480
    for n, i in enumerate(range(0, len(played), block)):
        at = n * 0.01
        player.reference.append(PlayedBlock(at - 0.02, at, played[i : i + block]))
        capture.process_block(heard[i : i + block, None], at)
        while not chunks.empty():
            worker.process(*chunks.get_nowait())
    frames = [capture.frames.get_nowait() for _ in range(capture.frames.qsize())]
    sent = [pcm16_to_float(f.pcm16) for f in frames]
    narrow = StreamResampler(48000, ECHO_RATE, "HQ").process(heard, last=True)
    mic = StreamResampler(ECHO_RATE, 24000, "HQ").process(narrow, last=True)
    return mic, np.concatenate(sent), worker, [f.hearing for f in frames]


def test_the_model_gets_the_cleaned_signal_in_speaker_mode() -> None:
    mic, sent, worker, labels = run_worker(echo_gain_db=-10.0)
    assert worker.mode == "speaker"
    late = slice(24000 * 3, 24000 * 4)  # after convergence
    assert power_db(power(sent[late])) <= power_db(power(mic[late])) - 20.0
    assert not [e for e in worker.detector.events if e.kind == "barge_in"]
    assert worker.cleaned_frames > 0
    # While the assistant plays, the conversation is told these frames are its echo (the server
    # then hears silence), and nothing is the user.
    assert set(labels[10:]) == {"echo"}


def test_the_model_gets_the_microphone_as_is_in_headset_mode() -> None:
    mic, sent, worker, _ = run_worker(echo_gain_db=None)
    assert worker.mode == "headset"
    late = slice(24000 * 3, 24000 * 4)
    # The same signal (the 16 kHz path keeps everything below 8 kHz): levels within 1 dB.
    assert abs(power_db(power(sent[late])) - power_db(power(mic[late]))) < 1.0


def test_a_failing_echo_stage_passes_the_microphone_on_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken:
        name = "broken"

        def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
            raise RuntimeError("canceller crashed")

    player, chunks, capture, worker = echo_worker(Broken())
    t = np.arange(48000) / 48000
    heard = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    played = noise_bursts(3.0, 18)  # the assistant talks, so the canceller is needed
    for n, i in enumerate(range(0, len(heard), 480)):
        player.reference.append(PlayedBlock(n * 0.01 - 0.02, n * 0.01, played[i : i + 480]))
        capture.process_block(heard[i : i + 480, None], n * 0.01)
    queued = chunks.qsize()
    worker.start()
    try:
        deadline = time.monotonic() + 5.0
        while (not chunks.empty() or capture.frames.qsize() < 45) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # the last chunk taken is being processed
    finally:
        worker.stop()
    sent = [pcm16_to_float(capture.frames.get_nowait().pcm16) for _ in range(capture.frames.qsize())]
    assert len(sent) >= 45  # 1 s of audio in 20 ms frames, minus what the resamplers still hold
    assert power_db(power(np.concatenate(sent))) == pytest.approx(power_db(power(heard)), abs=1.0)
    assert worker.failures >= queued - 2  # all but the odd frame that needed no canceller
    failures = [r for r in caplog.records if "echo stage failed" in r.getMessage()]
    assert len(failures) == 1
