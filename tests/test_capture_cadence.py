"""Capture changing its block size: a second stream takes over with no lost or repeated sample."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import numpy as np
import pytest

from app.audio.capture import Capture
from app.audio.devices import AudioDevice, find_device
from app.audio.resample import FloatArray, pcm16_to_float
from app.audio.splice import KEY_SAMPLES, by_time, continuation
from app.testkit.rig import VirtualAudioRig

RATE = 48000


def noise(seconds: float, seed: int = 1) -> FloatArray:
    return (np.random.default_rng(seed).standard_normal(int(RATE * seconds)) * 0.1).astype(np.float32)


def test_the_end_of_one_stream_is_found_sample_for_sample_in_the_next() -> None:
    sound = noise(0.5)
    tail = sound[:12000]  # the old stream delivered up to sample 12000
    fresh = sound[11000:14000]  # the new one started 1000 samples earlier
    assert continuation(tail, fresh) == 1000
    assert continuation(tail, sound[12000:14000]) is None  # no overlap: nothing to find
    assert continuation(np.zeros(4800, np.float32), np.zeros(4800, np.float32)) is None  # silence
    assert continuation(tail[: KEY_SAMPLES - 1], fresh) is None  # too short to place


def test_a_stream_resampled_on_its_own_is_matched_too() -> None:
    # A sound server converting the rate hands each stream its own resampling: close, not equal.
    sound = noise(0.5, seed=3)
    smooth = np.convolve(sound, np.ones(8) / 8, mode="same").astype(np.float32)
    other = smooth + np.random.default_rng(4).standard_normal(len(smooth)).astype(np.float32) * 1e-4
    assert continuation(smooth[:12000], other[11000:14000]) == 1000


def test_a_sound_that_repeats_is_spliced_at_the_period_nearest_the_capture_times() -> None:
    period = 100
    tone = np.tile(np.sin(2 * np.pi * np.arange(period) / period), 60).astype(np.float32) * 0.3
    tail, fresh = tone[:3000], tone[2000:5000]
    # Every period matches; the times' guess picks one, so the seam keeps the tone's phase.
    assert continuation(tail, fresh, expected=790) == 800
    assert continuation(tail, fresh, expected=1020) == 1000
    assert (continuation(tail, fresh) or 0) % period == 0


def test_without_a_match_the_capture_times_decide() -> None:
    assert by_time(10.0, 9.99, 4800, RATE) == 480  # 10 ms of overlap is skipped
    assert by_time(10.0, 10.01, 4800, RATE) == 0  # a gap: nothing to skip
    assert by_time(10.0, 9.0, 4800, RATE) == 4800  # never more than it holds


class FakeStream:
    def __init__(self) -> None:
        self.started = self.closed = False

    def start(self) -> None:
        self.started = True

    def close(self) -> None:
        self.closed = True


class Status:
    input_overflow = False


class RecordingCapture(Capture):
    """Records what would be processed instead of resampling it."""

    def __init__(self) -> None:
        super().__init__(AudioDevice(0, "test mic", "test", 1, 0, float(RATE)))
        self.processed: list[FloatArray] = []
        self.opened: list[Any] = []

    def process_block(self, block: FloatArray, block_start: float) -> FloatArray:
        mono = np.asarray(block, np.float32).reshape(-1)
        self.processed.append(mono.copy())
        return mono

    def _open_with(self, block_ms: float, callback: Any) -> Any:
        stream = FakeStream()
        stream.callback = callback  # type: ignore[attr-defined]
        self.opened.append(stream)
        return stream


def deliver(stream: Any, sound: FloatArray, start: int, size: int) -> None:
    stream.callback(sound[start : start + size, None], size, None, Status())


def test_a_handover_loses_and_repeats_nothing_whichever_stream_calls_first() -> None:
    sound = noise(2.0)
    capture = RecordingCapture()
    capture.start()
    old = capture.opened[0]
    position = 0
    for _ in range(10):  # 50 ms blocks while idle ... no: the capture starts at 10 ms
        deliver(old, sound, position, 480)
        position += 480
    assert capture.set_cadence(50.0, 1.0)
    new = capture.opened[1]
    assert new.started and capture.block_ms == 10.0  # not switched until the new one takes over
    # The new stream started 300 samples before the old one's next block ends and calls first.
    new_position = position + 180
    deliver(new, sound, new_position, 2400)
    new_position += 2400
    deliver(old, sound, position, 480)  # the old stream's last block
    position += 480
    deliver(old, sound, position, 480)  # too late: ignored
    deliver(new, sound, new_position, 2400)  # takes over: the stash and this block, spliced
    new_position += 2400
    capture.settle_cadence(1.1)
    assert capture.block_ms == 50.0 and capture.blocksize == 2400 and old.closed
    for _ in range(3):
        deliver(new, sound, new_position, 2400)
        new_position += 2400
    heard = np.concatenate(capture.processed)
    assert np.array_equal(heard, sound[:new_position])  # every sample once, in order
    assert capture.spliced_by_content == 1 and capture.handovers == 1


def test_a_new_stream_that_never_takes_over_is_given_up_and_the_old_one_goes_on() -> None:
    capture = RecordingCapture()
    capture.start()
    assert capture.set_cadence(50.0, 1.0)
    new = capture.opened[1]
    capture.settle_cadence(1.5)
    assert not new.closed
    capture.settle_cadence(2.5)  # a second without a block from it
    assert new.closed and capture.block_ms == 10.0
    assert capture.set_cadence(50.0, 3.0)  # and it may be tried again


@pytest.mark.devices
def test_a_real_microphone_changes_pace_without_losing_a_sample(virtual_audio: VirtualAudioRig) -> None:
    """A tone into the virtual microphone, the block size changed back and forth while it plays:
    the model's frames stay one unbroken tone, and every handover is found sample for sample."""
    tone = subprocess.Popen(
        ["sox", "-n", "-r", "48000", "-c", "1", "-t", "wav", "-", "synth", "6", "sine", "437", "vol", "0.3"],
        stdout=subprocess.PIPE,
    )
    play = subprocess.Popen(
        ["paplay", f"--device={virtual_audio.mic_feed}"], stdin=tone.stdout, env=virtual_audio.env
    )
    capture = Capture(find_device(virtual_audio.mic, "input"))
    try:
        with capture:
            time.sleep(0.8)
            for block_ms in (50.0, 10.0, 50.0, 10.0):
                assert capture.set_cadence(block_ms, time.monotonic())
                deadline = time.monotonic() + 3
                while capture.block_ms != block_ms and time.monotonic() < deadline:
                    time.sleep(0.02)
                    capture.settle_cadence(time.monotonic())
                assert capture.block_ms == block_ms
                time.sleep(0.5)
    finally:
        play.kill()
        tone.kill()
    assert capture.handovers == 4 and capture.spliced_by_content == 4
    frames = []
    while not capture.frames.empty():
        frames.append(capture.frames.get_nowait())
    audio = np.concatenate([pcm16_to_float(frame.pcm16) for frame in frames])
    loud = np.flatnonzero(np.abs(audio) > 0.1)
    steady = audio[loud[0] + 2400 : loud[-1] - 2400]
    # A lost or repeated sample is a phase jump: the tone's next sample no longer follows from the
    # last two (x[n] = 2 cos(w) x[n-1] - x[n-2]).
    w = 2 * np.pi * 437 / 24000
    predicted = 2 * np.cos(w) * steady[1:-1] - steady[:-2]
    assert np.max(np.abs(steady[2:] - predicted)) < 0.01
    assert len(steady) / 24000 > 2.0
