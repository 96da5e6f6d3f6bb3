from __future__ import annotations

import itertools

import numpy as np
import pytest
import soxr

from app.audio.capture import Capture
from app.audio.devices import AudioDevice
from app.audio.resample import StreamResampler, downmix, float_to_pcm16, pcm16_to_float
from tests.conftest import sine

RATES = [16000, 22050, 24000, 44100, 48000]


def _blocks(signal: np.ndarray, seed: int) -> list[np.ndarray]:
    """Irregular block sizes, like a device callback with a varying block length."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    while start < len(signal):
        size = int(rng.integers(37, 1200))
        out.append(signal[start : start + size])
        start += size
    return out


def _dominant_frequency(signal: np.ndarray, rate: float) -> float:
    windowed = signal * np.hanning(len(signal))
    spectrum = np.abs(np.fft.rfft(windowed, 8 * len(signal)))
    return float(np.argmax(spectrum) * rate / (8 * len(signal)))


@pytest.mark.parametrize(("in_rate", "out_rate"), [p for p in itertools.permutations(RATES, 2)])
def test_sine_stays_a_sine_across_block_edges(in_rate: int, out_rate: int) -> None:
    freq = 1000.0
    signal = sine(freq, in_rate, 1.0, amplitude=0.5)
    resampler = StreamResampler(in_rate, out_rate, "LQ")
    parts = [resampler.process(block) for block in _blocks(signal, seed=in_rate + out_rate)]
    parts.append(resampler.process(np.zeros(0, np.float32), last=True))
    out = np.concatenate(parts)

    assert abs(len(out) - out_rate) <= 2
    assert _dominant_frequency(out[1000:-1000], out_rate) == pytest.approx(freq, abs=2.0)
    # Streaming in odd blocks gives what resampling the whole signal at once gives: no block edges.
    whole = soxr.resample(signal, in_rate, out_rate, quality="LQ")
    n = min(len(whole), len(out))
    assert np.max(np.abs(out[:n] - whole[:n])) < 1e-3
    # And no sample-to-sample jump beyond what a 1 kHz sine of that amplitude can make.
    step = np.max(np.abs(np.diff(out[200:-200])))
    assert step <= 0.5 * 2 * np.pi * freq / out_rate * 1.1


def test_same_rate_passes_through_untouched() -> None:
    signal = sine(440, 24000, 0.1)
    assert np.array_equal(StreamResampler(24000, 24000).process(signal), signal)


def test_downmix_stereo_to_mono() -> None:
    left = sine(500, 48000, 0.05)
    stereo = np.stack([left, 0.5 * left], axis=1)
    assert np.allclose(downmix(stereo), 0.75 * left)
    assert downmix(left) is left or np.array_equal(downmix(left), left)


def test_pcm16_round_trip_and_clipping() -> None:
    samples = np.array([0.0, 0.5, -0.5, 1.5, -1.5], np.float32)
    back = pcm16_to_float(float_to_pcm16(samples))
    assert np.allclose(back, [0.0, 0.5, -0.5, 32767 / 32768, -1.0], atol=1e-4)
    with pytest.raises(ValueError, match="even number"):
        pcm16_to_float(b"\x00\x01\x02")


@pytest.mark.parametrize(("rate", "channels"), [(44100, 2), (48000, 1), (16000, 2), (22050, 1)])
def test_capture_turns_device_blocks_into_timed_20ms_frames(rate: int, channels: int) -> None:
    device = AudioDevice(0, "test mic", "test", channels, 0, float(rate))
    capture = Capture(device, block_ms=10, frame_ms=20)
    mono = sine(700, rate, 1.0, amplitude=0.3)
    block = capture.blocksize
    start_time = 100.0
    for i in range(0, len(mono), block):
        chunk = mono[i : i + block]
        data = np.repeat(chunk[:, None], channels, axis=1)
        capture.process_block(data, start_time + i / rate)
    frames = []
    while not capture.frames.empty():
        frames.append(capture.frames.get_nowait())
    # About one second of audio, less the resampler's withheld filter delay.
    assert 47 <= len(frames) <= 50
    assert all(len(f.pcm16) == 480 * 2 for f in frames)
    times = np.array([f.captured_at for f in frames])
    assert times[0] == pytest.approx(start_time, abs=0.002)
    assert np.allclose(np.diff(times), 0.020, atol=1e-6)
    audio = np.concatenate([pcm16_to_float(f.pcm16) for f in frames])
    assert _dominant_frequency(audio[2400:], 24000) == pytest.approx(700, abs=2.0)
    assert capture.level_dbfs == pytest.approx(20 * np.log10(0.3), abs=0.5)


def test_capture_queue_overflow_is_counted_not_raised() -> None:
    device = AudioDevice(0, "test mic", "test", 1, 0, 24000.0)
    capture = Capture(device, frame_ms=20, max_queued_frames=3)
    capture.process_block(np.zeros(24000, np.float32), 0.0)  # 50 frames into a queue of 3
    assert capture.frames.qsize() == 3
    assert capture.overflows == 47


def test_a_blocks_frames_wake_the_reader_once_they_are_all_queued() -> None:
    device = AudioDevice(0, "test mic", "test", 1, 0, 24000.0)
    capture = Capture(device, frame_ms=20, max_queued_frames=3)
    woken: list[int] = []
    capture.model.on_frame = lambda: woken.append(capture.frames.qsize())
    capture.process_block(np.zeros(2400, np.float32), 0.0)  # 100 ms: 5 frames, 2 of them dropped
    assert woken == [3]  # once, with every frame of the block already in the queue
    capture.process_block(np.zeros(480, np.float32), 0.1)  # 20 ms into a full queue: all dropped
    assert woken == [3]  # nothing new to read: no wake
    while not capture.frames.empty():
        capture.frames.get_nowait()
    with capture.model.batch():  # frame by frame, as the echo worker hands them over
        for n in range(4):
            capture.model.process(np.zeros(240, np.float32), 0.2 + n * 0.01)
        assert woken == [3]
    assert woken == [3, 2]  # one wake for the batch, at its end


def test_without_echo_cancellation_frames_are_labelled_by_the_playback_and_the_detector() -> None:
    device = AudioDevice(0, "test mic", "test", 1, 0, 24000.0)
    playing_until = 0.5

    class Detector:
        in_speech = False

        def feed(self, samples: object, at: float) -> None:
            pass

    detector = Detector()
    capture = Capture(
        device,
        frame_ms=20,
        detector=detector,  # type: ignore[arg-type]
        echo_possible=lambda at: at < playing_until,
    )
    block = np.zeros(240, np.float32)  # 10 ms blocks
    labels = []
    for n in range(100):
        detector.in_speech = 60 <= n < 80
        capture.process_block(block, n * 0.01)
        while not capture.frames.empty():
            labels.append(capture.frames.get_nowait().hearing)
    # 20 ms frames: the assistant audible for 0.5 s, then the user from 0.6 to 0.8 s, then nothing.
    assert labels == ["echo"] * 25 + ["clear"] * 5 + ["user"] * 10 + ["clear"] * 10
