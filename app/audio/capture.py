"""Microphone capture: device rate and channels in, 24 kHz mono PCM16 20 ms frames out.

The PortAudio callback downmixes, resamples (soxr, state kept across blocks), feeds the barge-in
detector at 16 kHz and hands 20 ms frames to a bounded queue for the model. With echo
cancellation it only hands the 16 kHz samples to the echo worker's bounded queue: the worker feeds
the detector and fills the model's queue (from 16 kHz) with the cleaned signal. It never blocks: a
full queue drops the frame and counts an overflow (or an echo drop).
"""

from __future__ import annotations

import queue
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from app.audio.bargein import VAD_RATE, BargeInDetector
from app.audio.devices import AudioDevice
from app.audio.framing import Framer
from app.audio.resample import FloatArray, StreamResampler, downmix, float_to_int16, float_to_pcm16
from app.audio.streams import StreamOwner
from app.core.hearing import Hearing, MicFrame, louder

MODEL_RATE = 24000


def block_start_time(now: float, frames: int, rate: float, time_info: Any) -> float:
    """Monotonic capture time of a block's first sample, from PortAudio's own delay when sane."""
    try:
        delay = float(time_info.currentTime) - float(time_info.inputBufferAdcTime)
    except (AttributeError, TypeError, ValueError):
        delay = -1.0
    if not 0.0 <= delay < 1.0:
        delay = frames / rate
    return now - delay


class TimedResampler:
    """A stream resampler that also tells when each output block's first sample was captured."""

    def __init__(self, in_rate: float, out_rate: int) -> None:
        self._resampler = StreamResampler(in_rate, out_rate)
        self._in_rate = float(in_rate)
        self._out_rate = out_rate
        self._in_count = 0  # input samples seen
        self._out_count = 0  # output samples produced

    def process(self, mono: FloatArray, block_start: float) -> tuple[FloatArray, float]:
        converted = self._resampler.process(mono)
        # soxr aligns output sample k with input position k * in/out, its filter delay withheld.
        input_position = self._out_count * self._in_rate / self._out_rate
        first_at = block_start + (input_position - self._in_count) / self._in_rate
        self._out_count += len(converted)
        self._in_count += len(mono)
        return converted, first_at


class FrameSink:
    """Turns resampled blocks into fixed-size PCM16 frames with capture timestamps."""

    def __init__(self, in_rate: float, out_rate: int, frame_ms: int, maxsize: int) -> None:
        self.out_rate = out_rate
        self.frame_samples = out_rate * frame_ms // 1000
        self.frames: queue.Queue[MicFrame] = queue.Queue(maxsize=maxsize)
        self.overflows = 0
        # Called (from the audio side) after each queued frame, so the reader can wake at once;
        # it must not block.
        self.on_frame: Callable[[], None] | None = None
        self._resampler = TimedResampler(in_rate, out_rate)
        self._framer = Framer(self.frame_samples, np.float32)
        self._frame_s = self.frame_samples / out_rate
        self._pending_at = 0.0  # capture time of the framer's first pending sample
        self._pending_hearing: Hearing = "clear"  # the strongest label among the pending samples

    def process(self, mono: FloatArray, block_start: float, hearing: Hearing = "clear") -> FloatArray:
        """Resample ``mono`` and queue every whole frame; ``hearing`` labels these samples.

        A frame made of samples with different labels gets the strongest (user over echo).
        """
        converted, first_at = self._resampler.process(mono, block_start)
        if not len(converted):
            return converted
        # Labels belong to sample ranges: the pending samples carry the merged label of the
        # chunks they came from, and fewer than a frame is ever pending, so only the first frame
        # cut now can hold them; every later frame, and the remainder, is this chunk's alone.
        if self._framer.pending:
            self._pending_hearing = louder(self._pending_hearing, hearing)
        else:
            self._pending_at = first_at
            self._pending_hearing = hearing
        _, frames = self._framer.push(converted)
        label = self._pending_hearing
        for frame in frames:
            try:
                self.frames.put_nowait(MicFrame(float_to_pcm16(frame), self._pending_at, label))
            except queue.Full:
                self.overflows += 1
            else:
                if self.on_frame is not None:
                    self.on_frame()
            label = hearing
            # Added up frame by frame as it always was: index / rate would differ in the last bits.
            self._pending_at += self._frame_s
        if frames:
            self._pending_hearing = hearing
        return converted


class Capture(StreamOwner):
    direction = "input"

    def __init__(
        self,
        device: AudioDevice,
        *,
        block_ms: float = 10.0,
        frame_ms: int = 20,
        max_queued_frames: int = 500,
        detector: BargeInDetector | None = None,
        echo_input: queue.Queue[tuple[FloatArray, float]] | None = None,
        echo_possible: Callable[[float], bool] | None = None,
    ) -> None:
        super().__init__(device, block_ms)
        self.detector = detector
        # Without echo cancellation: could the assistant be heard in a block captured at this time?
        self.echo_possible = echo_possible
        # With echo cancellation the 16 kHz samples go to the echo worker, which feeds the detector.
        self.echo_input = echo_input
        self.echo_drops = 0
        # With echo cancellation the echo worker fills this from its 16 kHz output.
        model_in_rate = float(VAD_RATE) if echo_input is not None else self.rate
        self.model = FrameSink(model_in_rate, MODEL_RATE, frame_ms, max_queued_frames)
        self._vad_resampler = TimedResampler(self.rate, VAD_RATE)
        self.device_overflows = 0
        self.level_dbfs = -100.0

    @property
    def frames(self) -> queue.Queue[MicFrame]:
        return self.model.frames

    @property
    def overflows(self) -> int:
        return self.model.overflows

    def process_block(self, block: FloatArray, block_start: float) -> None:
        """Everything the callback does with one block; separate so tests can drive it directly."""
        mono = downmix(block)
        peak = float(np.max(np.abs(mono))) if len(mono) else 0.0
        self.level_dbfs = 20.0 * float(np.log10(max(peak, 1e-5)))
        if self.echo_input is not None:
            vad, at = self._vad_resampler.process(mono, block_start)
            if len(vad):
                try:
                    self.echo_input.put_nowait((vad, at))
                except queue.Full:
                    self.echo_drops += 1
            return
        if self.detector is not None:
            vad, at = self._vad_resampler.process(mono, block_start)
            if len(vad):
                self.detector.feed(float_to_int16(vad), at)
        self.model.process(mono, block_start, self._hearing(block_start))

    def _hearing(self, captured_at: float) -> Hearing:
        if self.detector is not None and self.detector.in_speech:
            return "user"
        if self.echo_possible is not None and self.echo_possible(captured_at):
            return "echo"
        return "clear"

    def _callback(self, indata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        if status.input_overflow:
            self.device_overflows += 1
        self.process_block(indata, block_start_time(now, frames, self.rate, time_info))
