"""The audio engine on real PortAudio streams through the PulseAudio virtual devices."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import numpy as np
import pytest

from app.audio.capture import Capture
from app.audio.devices import find_device
from app.audio.player import Player
from app.audio.probe import TimedRecorder
from app.audio.resample import FloatArray, StreamResampler, float_to_pcm16, pcm16_to_float
from app.audio.streams import open_stream
from app.testkit.bargein_bench import BargeInBench
from app.testkit.rig import VirtualAudioRig

pytestmark = pytest.mark.devices

UTTERANCE = "Hi, sorry to interrupt, my VPN keeps dropping."


def normalised_peak(recording: FloatArray, reference: FloatArray) -> tuple[float, int]:
    """Best normalised cross-correlation of ``reference`` within ``recording`` and its lag."""
    n, m = len(recording), len(reference)
    size = 1 << int(np.ceil(np.log2(n + m)))
    corr = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(reference, size)), size)[
        : n - m + 1
    ]
    lag = int(np.argmax(np.abs(corr)))
    segment = recording[lag : lag + m]
    energy = np.sqrt(np.sum(segment.astype(np.float64) ** 2) * np.sum(reference.astype(np.float64) ** 2))
    return float(abs(corr[lag]) / energy) if energy else 0.0, lag


@pytest.fixture
def bench(virtual_audio: VirtualAudioRig) -> Iterator[BargeInBench]:
    with BargeInBench(virtual_audio) as running:
        yield running


def test_speech_into_the_virtual_mic_arrives_in_the_capture_queue(
    virtual_audio: VirtualAudioRig, bench: BargeInBench, speech: Callable[[str, int], FloatArray]
) -> None:
    # The bench's pipeline is already capturing from the virtual microphone.
    capture = bench.pipeline.capture
    while not capture.frames.empty():
        capture.frames.get_nowait()
    source = speech(UTTERANCE, int(bench.feed.default_samplerate))
    started = time.monotonic()
    bench.speak(source).finished.wait(10)
    time.sleep(0.3)
    frames = []
    while not capture.frames.empty():
        frames.append(capture.frames.get_nowait())
    assert frames, "no capture frames arrived"
    assert all(len(f.pcm16) == 960 for f in frames)
    assert frames[0].captured_at >= started - 0.1
    audio = np.concatenate([pcm16_to_float(f.pcm16) for f in frames])
    reference = StreamResampler(bench.feed.default_samplerate, 24000, "HQ").process(source, last=True)
    peak, _ = normalised_peak(audio, reference)
    assert peak > 0.8, f"captured audio does not match what was spoken (correlation {peak:.2f})"
    assert capture.overflows == 0


def test_audio_played_reaches_the_speaker_monitor(virtual_audio: VirtualAudioRig) -> None:
    speaker = find_device(virtual_audio.speaker, "output")
    monitor = find_device(virtual_audio.speaker_monitor, "input")
    recorder = TimedRecorder(monitor.default_samplerate)
    t = np.arange(24000) / 24000
    sweep = (0.4 * np.sin(2 * np.pi * (300 * t + 600 * t * t))).astype(np.float32)
    with (
        open_stream("input", monitor, recorder.callback),
        Player(speaker) as player,
    ):
        time.sleep(0.2)
        player.push("item-1", float_to_pcm16(sweep))
        player.end_item("item-1")
        time.sleep(1.6)
        account = player.buffer.account("item-1")
    assert account is not None and account.done and not account.halted
    assert player.buffer.played_ms("item-1", time.monotonic()) == pytest.approx(1000.0, abs=1.0)
    reference = StreamResampler(24000, monitor.default_samplerate, "HQ").process(sweep, last=True)
    peak, _ = normalised_peak(recorder.recording(), reference)
    assert peak > 0.9, f"the speaker did not play the item (correlation {peak:.2f})"
    # The player published exactly what it handed over, as the echo canceller's reference.
    handed = np.concatenate([b.samples for b in player.reference])
    assert normalised_peak(handed, reference)[0] > 0.99


def test_user_speech_over_the_assistant_silences_the_speaker(
    bench: BargeInBench, speech: Callable[[str, int], FloatArray]
) -> None:
    utterance = speech(UTTERANCE, int(bench.feed.default_samplerate))
    trial = bench.trial(utterance, lead_s=1.0, assistant_s=4.0)
    assert trial.barge_in, "the detector did not notice the user"
    assert trial.onset_at is not None and trial.silent_at is not None
    assert trial.halt_ms is not None
    # Generous bound: the benchmark measures the real figure, this only proves the halt is local.
    assert 0 < trial.halt_ms < 400, f"speaker went silent {trial.halt_ms:.0f} ms after the user spoke"
    assert trial.played_ms is not None and 900 < trial.played_ms < 1600
    # Nothing more of the halted item comes out afterwards.
    times, samples = bench.speaker_recorder.timeline()
    after = samples[(times > trial.silent_at + 0.05) & (times < trial.silent_at + 1.0)]
    assert len(after) and np.max(np.abs(after)) < 0.01


def test_next_answer_plays_after_a_barge_in(
    bench: BargeInBench, speech: Callable[[str, int], FloatArray]
) -> None:
    bench.trial(speech(UTTERANCE, int(bench.feed.default_samplerate)), lead_s=0.6, assistant_s=3.0)
    start = time.monotonic()
    bench.pipeline.player.push("answer-2", float_to_pcm16(np.full(12000, 0.3, np.float32)))
    bench.pipeline.player.end_item("answer-2")
    time.sleep(1.0)
    times, samples = bench.speaker_recorder.timeline()
    loud = np.abs(samples[times > start]) > 0.2
    assert 0.4 < np.count_nonzero(loud) / bench.monitor.default_samplerate < 0.6


def _selftest(rig: VirtualAudioRig, output: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app", "selftest", "--input-device", rig.mic, "--output-device", output],
        capture_output=True,
        text=True,
        timeout=60,
    )


def _figure(report: str, before: str, after: str) -> float:
    return float(report.split(before)[1].split(after)[0])


def test_selftest_reports_level_and_round_trip_when_the_mic_hears_the_output(
    virtual_audio: VirtualAudioRig,
) -> None:
    result = _selftest(virtual_audio, virtual_audio.mic_feed)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK:" in result.stdout
    latency = _figure(result.stdout, "round trip:", "ms")
    assert 0 < latency < 500
    level = _figure(result.stdout, "test sound:", "dBFS")
    assert -20 < level < 0
    # Played straight into the microphone: the echo is as loud as the output.
    assert abs(_figure(result.stdout, "ms, level ", "dB relative")) < 1.5
    assert "speaker mode" in result.stdout


def test_selftest_without_an_echo_path_is_headset_mode_not_a_failure(virtual_audio: VirtualAudioRig) -> None:
    result = _selftest(virtual_audio, virtual_audio.speaker)  # nothing leads from it to the mic
    assert result.returncode == 0, result.stdout + result.stderr
    assert "headset mode" in result.stdout and "speaker mode" not in result.stdout
    assert "echo path: none measured" in result.stdout
    # The rig's microphone is digitally silent: the report says what to check if that is wrong.
    assert "digitally silent" in result.stdout and "not muted" in result.stdout


@pytest.mark.parametrize("gain_db", [0.0, -12.0])
def test_selftest_through_a_speaker_to_mic_echo_path(virtual_audio: VirtualAudioRig, gain_db: float) -> None:
    virtual_audio.set_echo(True, gain_db=gain_db)
    try:
        result = _selftest(virtual_audio, virtual_audio.speaker)
    finally:
        virtual_audio.set_echo(False)
    assert result.returncode == 0, result.stdout + result.stderr
    latency = _figure(result.stdout, "round trip:", "ms")
    assert 15 < latency < 300  # the loopback adds its own delay on top of the direct path
    assert _figure(result.stdout, "delay ", "ms") == pytest.approx(latency, abs=0.1)
    assert _figure(result.stdout, "ms, level ", "dB relative") == pytest.approx(gain_db, abs=2.0)
    assert "speaker mode" in result.stdout and "headset mode" not in result.stdout


def test_capture_of_missing_device_is_a_clear_usage_error(virtual_audio: VirtualAudioRig) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "selftest", "--input-device", "no such mic"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "no input device matches 'no such mic'" in lines[0]
    assert virtual_audio.mic in lines[0]


def test_capture_counts_nothing_lost_in_normal_running(virtual_audio: VirtualAudioRig) -> None:
    capture = Capture(find_device(virtual_audio.mic, "input"))
    with capture:
        time.sleep(1.0)
    frames = capture.frames.qsize()
    assert 40 <= frames <= 52  # one second of 20 ms frames, less the resampler's delay
    assert capture.overflows == 0


def test_an_idle_pipeline_stops_its_speaker_and_slows_its_capture_until_needed(
    virtual_audio: VirtualAudioRig,
) -> None:
    from app.audio.pipeline import AudioPipeline, AudioSettings

    speaker = find_device(virtual_audio.speaker, "output")
    monitor = find_device(virtual_audio.speaker_monitor, "input")
    recorder = TimedRecorder(monitor.default_samplerate)
    settings = AudioSettings(idle_after_s=0.5)
    pipeline = AudioPipeline(find_device(virtual_audio.mic, "input"), speaker, settings)
    with open_stream("input", monitor, recorder.callback), pipeline:
        deadline = time.monotonic() + 6
        while not pipeline.idle and time.monotonic() < deadline:
            pipeline.pace(False, time.monotonic())
            time.sleep(0.05)
        assert pipeline.idle and pipeline.player.rests == 1
        assert pipeline.capture.block_ms == settings.idle_block_ms
        rested_at = time.monotonic()
        time.sleep(0.5)
        assert pipeline.player._last_callback_at < rested_at  # no output callbacks while resting
        assert not pipeline.player.lost(time.monotonic())  # resting is not a lost device
        frames = pipeline.capture.frames.qsize()
        assert frames >= 15  # the microphone still goes to the model at the coarse pace
        # An answer wakes the speaker by itself, and it plays in full.
        tone = (0.4 * np.sin(2 * np.pi * 500 * np.arange(12000) / 24000)).astype(np.float32)
        pipeline.player.push("answer", float_to_pcm16(tone))
        pipeline.player.end_item("answer")
        pipeline.pace(True, time.monotonic())
        deadline = time.monotonic() + 3
        while pipeline.capture.block_ms != settings.block_ms and time.monotonic() < deadline:
            time.sleep(0.02)
            pipeline.pace(True, time.monotonic())
        time.sleep(1.0)
        account = pipeline.player.buffer.account("answer")
    assert not pipeline.player.resting and pipeline.capture.block_ms == settings.block_ms
    assert account is not None and account.done and not account.halted
    reference = StreamResampler(24000, monitor.default_samplerate, "HQ").process(tone, last=True)
    assert normalised_peak(recorder.recording(), reference)[0] > 0.9


def test_with_echo_cancellation_the_microphone_is_captured_at_16_khz_where_the_host_converts(
    virtual_audio: VirtualAudioRig,
) -> None:
    from app.audio.pipeline import AudioPipeline, AudioSettings

    mic = find_device(virtual_audio.mic, "input")
    speaker = find_device(virtual_audio.speaker, "output")
    assert mic.default_samplerate != 16000  # the sound server converts for us
    assert AudioPipeline(mic, speaker).capture.rate == 16000
    headset = AudioPipeline(mic, speaker, AudioSettings(echo_cancellation=False))
    assert headset.capture.rate == mic.default_samplerate
    # A rate the host refuses leaves the device's own.
    assert Capture(mic, rate=1.0).rate == mic.default_samplerate
