"""Echo handling: the assistant's own voice must not halt it, the user talking over it must.

Synthetic rooms (delay, echo level, reverberation tail, mild loudspeaker clipping) come from
``bench.echo``, so the test and the benchmark measure the same thing.
"""

from __future__ import annotations

import builtins
from typing import Any

import numpy as np
import pytest

from app.audio.echo import (
    ECHO_RATE,
    FRAME_SAMPLES,
    EchoPath,
    EchoResult,
    ReferenceAligner,
    ReferenceEchoGate,
    WebRtcEchoCanceller,
    load_echo_canceller,
)
from app.audio.player import PlayedBlock
from app.audio.resample import FloatArray, StreamResampler
from bench.echo import USER_TEXTS, Recording, Room, Scenario, record, run

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


def test_echo_path_cuts_any_block_size_into_timed_frames() -> None:
    class Passthrough:
        name = "passthrough"

        def process(self, mic: FloatArray, reference: FloatArray) -> EchoResult:
            return EchoResult(mic.copy(), 0.0, -20.0, -20.0)

    path = EchoPath(Passthrough(), ReferenceAligner(48000))
    samples = np.arange(1000, dtype=np.float32)
    frames = path.process(samples[:250], 7.0) + path.process(samples[250:], 7.0 + 250 / ECHO_RATE)
    assert [round(f.captured_at, 6) for f in frames] == [round(7.0 + k * 0.01, 6) for k in range(6)]
    assert np.array_equal(np.concatenate([f.samples for f in frames]), samples[:960])
