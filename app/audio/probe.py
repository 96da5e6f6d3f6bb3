"""Measurement streams: play a known signal and record with timestamps on one monotonic clock.

Used by the audio check, the device tests and the benchmarks, so that "when was this sample handed
to the speaker" and "when did this sample come out of the microphone" are measured the same way.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import numpy.typing as npt

from app.audio.capture import block_start_time
from app.audio.resample import FloatArray, downmix


class TimedRecorder:
    """Collects input blocks with the monotonic time of each block's first sample."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.blocks: list[tuple[float, FloatArray]] = []

    def callback(self, indata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        self.blocks.append((block_start_time(now, frames, self.rate, time_info), downmix(indata).copy()))

    def recording(self) -> FloatArray:
        return self.timeline()[1]

    def timeline(self, since: float | None = None) -> tuple[npt.NDArray[np.float64], FloatArray]:
        """Capture time of every sample, and the samples; ``since``: only blocks that end after it.

        With ``since`` only the recent blocks are visited: polled often over a long recording,
        joining all of it again each time took longer than the poll interval.
        """
        blocks = list(self.blocks)  # the callback may append while we read
        if since is not None:
            first = len(blocks)
            while first > 0 and blocks[first - 1][0] + len(blocks[first - 1][1]) / self.rate > since:
                first -= 1
            blocks = blocks[first:]
        if not blocks:
            return np.zeros(0), np.zeros(0, np.float32)
        times = np.concatenate([start + np.arange(len(block)) / self.rate for start, block in blocks])
        return times, np.concatenate([block for _, block in blocks])

    def time_of(self, index: int) -> float | None:
        """When sample ``index`` of :meth:`recording` was captured."""
        position = 0
        for start, block in self.blocks:
            if position + len(block) > index:
                return start + (index - position) / self.rate
            position += len(block)
        return None


class SignalPlayer:
    """Plays mono ``signal`` once on every channel (then silence), noting when each block was handed."""

    def __init__(self, signal: FloatArray, rate: float) -> None:
        self.signal = np.asarray(signal, np.float32)
        self.rate = float(rate)
        self.position = 0
        self.handed: list[tuple[float, int]] = []  # (monotonic time, first sample index)
        self.finished = threading.Event()

    def callback(self, outdata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        chunk = self.signal[self.position : self.position + frames]
        outdata[: len(chunk)] = chunk[:, None]
        outdata[len(chunk) :] = 0
        self.handed.append((now, self.position))
        self.position += frames
        if self.position >= len(self.signal):
            self.finished.set()

    def handed_at(self, index: int) -> float | None:
        """When sample ``index`` of the signal was handed to the device."""
        for now, first in reversed(self.handed):
            if first <= index:
                return now + (index - first) / self.rate
        return None


def espeak_speech(
    text: str, voice: str = "en-us", words_per_minute: int = 160, *, ssml: bool = False
) -> tuple[FloatArray, int]:
    """Speech from espeak-ng as mono float32 and its sample rate: a stand-in for a real talker.

    ``ssml``: ``text`` is SSML (``<break time="600ms"/>`` for a pause inside a sentence)."""
    import shutil
    import subprocess
    import wave
    from io import BytesIO

    if shutil.which("espeak-ng") is None:
        raise FileNotFoundError("espeak-ng is not installed (Debian package espeak-ng)")
    result = subprocess.run(
        ["espeak-ng", *(["-m"] if ssml else []), "-v", voice, "-s", str(words_per_minute), "--stdout", text],
        capture_output=True,
        check=True,
        timeout=30,
    )
    with wave.open(BytesIO(result.stdout)) as wav:
        rate = wav.getframerate()
        frames = wav.readframes(wav.getnframes())
    samples = np.frombuffer(frames, dtype="<i2").astype(np.float32) / 32768.0
    return samples, rate
