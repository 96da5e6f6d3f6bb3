"""Microphone capture: device rate and channels in, 24 kHz mono PCM16 20 ms frames out.

The PortAudio callback downmixes, resamples (soxr, state kept across blocks), feeds the barge-in
detector at 16 kHz and hands 20 ms frames to a bounded queue for the model. A sample waits for its
frame to fill, so 10 ms frames took 6 ms off the p95 from microphone to wire (42 to 36 ms,
bench/client_latency.py), but twice the messages while the user speaks cost the answer more: the
first sound came a median 31 ms later over 17 requests measured in pairs (bench/turns.py,
semantic_vad), the offline server judging the pause on a busier machine. With echo cancellation it
only hands the 16 kHz samples to the echo worker's bounded queue: the worker feeds the detector and
fills the model's queue (from 16 kHz) with the cleaned signal. It never blocks: a full queue drops
the frame and counts an overflow (or an echo drop).

While nobody speaks and nothing plays the engine asks for coarser blocks (:meth:`Capture.set_cadence`),
so the device calls back a tenth as often all day; the moment speech or playback starts it asks
for 10 ms blocks again. The change opens a second stream before closing the first, and
``app.audio.splice`` finds where one hands over to the other, so no sample is lost or repeated.
"""

from __future__ import annotations

import contextlib
import queue
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.audio.bargein import VAD_RATE, BargeInDetector
from app.audio.devices import AudioDevice
from app.audio.framing import Framer
from app.audio.resample import FloatArray, StreamResampler, downmix, float_to_int16, float_to_pcm16
from app.audio.splice import by_time, continuation
from app.audio.streams import StreamCallback, StreamOwner, converts_to, frames_for_ms
from app.core.hearing import Hearing, MicFrame, louder

MODEL_RATE = 24000
# A second stream that has not taken over within this long is given up (a device that stalled).
HANDOVER_TIMEOUT_S = 1.0
# Blocks the incoming stream may hold while the outgoing one finishes (a second at 10 ms).
MAX_STASHED_BLOCKS = 100


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
        # Called (from the audio side) once the frames of a block are queued, so the reader can wake
        # at once and take them all in one go; it must not block.
        self.on_frame: Callable[[], None] | None = None
        self._batching = False  # inside batch(): wake once at its end
        self._wake_pending = False
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
        queued = False
        for frame in frames:
            try:
                self.frames.put_nowait(MicFrame(float_to_pcm16(frame), self._pending_at, label))
            except queue.Full:
                self.overflows += 1
            else:
                queued = True
            label = hearing
            # Added up frame by frame as it always was: index / rate would differ in the last bits.
            self._pending_at += self._frame_s
        if frames:
            self._pending_hearing = hearing
        if queued:
            self._wake()
        return converted

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Frames queued inside wake the reader once, at the end (a chunk processed frame by frame)."""
        self._batching = True
        try:
            yield
        finally:
            self._batching = False
            if self._wake_pending:
                self._wake_pending = False
                self._wake()

    def _wake(self) -> None:
        if self._batching:
            self._wake_pending = True
        elif self.on_frame is not None:
            self.on_frame()


@dataclass
class Handover:
    """A second stream taking over from the first (written by both callbacks, read by the engine).

    Only one callback ever processes blocks: the outgoing stream until it sees the incoming one
    deliver, then, after its last block, the incoming one. Each flag has one writer.
    """

    stream: Any
    generation: int
    block_ms: float
    began_at: float
    arrived: bool = False  # the incoming stream has called back (its callback writes it)
    spliced: bool = False  # the incoming stream carries on (its callback writes it)
    tail: FloatArray | None = None  # the outgoing stream's last block (its callback writes it)
    tail_end_at: float = 0.0
    stash: list[tuple[FloatArray, float]] = field(default_factory=list)


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
        rate: float | None = None,
    ) -> None:
        # ``rate``: capture at this rate where the host converts to it (else at the device's own).
        # The sound server's converter delays far less than soxr's filter, which withholds about
        # 10 ms and hands out 20 ms bursts on the way down to 16 kHz.
        if rate is not None and rate != device.default_samplerate and not converts_to(device, "input", rate):
            rate = None
        super().__init__(device, block_ms, rate)
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
        self.spliced_by_content = 0  # handovers joined sample for sample (the rest by time)
        self.handovers = 0
        self._generation = 0  # of the last stream opened
        self._owner = 0  # the stream whose callback processes blocks
        self._handover: Handover | None = None

    def _open(self, block_ms: float) -> Any:
        self._owner, stream = self._open_next(block_ms)
        return stream

    def _open_next(self, block_ms: float) -> tuple[int, Any]:
        """A new stream (not started) whose callback carries the next generation number."""
        generation = self._generation + 1
        stream = self._open_with(block_ms, self._callback_for(generation))
        self._generation = generation
        return generation, stream

    def _callback_for(self, generation: int) -> StreamCallback:
        def callback(indata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
            now = time.monotonic()
            self._last_callback_at = now
            if status.input_overflow:
                self.device_overflows += 1
            self._on_block(generation, indata, block_start_time(now, frames, self.rate, time_info))

        return callback

    def set_cadence(self, block_ms: float, now: float) -> bool:
        """Moves the running stream to ``block_ms`` blocks without losing a sample; True when it began.

        From the engine's thread. The new stream opens beside the old one, which is closed once the
        new one has taken over (:meth:`settle_cadence`). A stream that cannot open leaves the old
        one running as it was.
        """
        self.settle_cadence(now)
        if self._handover is not None or not self._running or self._stream is None:
            return False
        if frames_for_ms(self.rate, block_ms) == self.blocksize:
            return False
        try:
            generation, stream = self._open_next(block_ms)
        except Exception:
            return False
        self._handover = Handover(stream, generation, block_ms, now)
        try:
            stream.start()
        except Exception:
            self._handover = None
            with contextlib.suppress(Exception):
                stream.close()
            return False
        return True

    def settle_cadence(self, now: float) -> None:
        """Closes the old stream once the new one has taken over, or gives up a new one that stalled."""
        handover = self._handover
        if handover is None:
            return
        if handover.spliced:
            old, self._stream = self._stream, handover.stream
            self._block_ms = handover.block_ms
            self._handover = None
            self.handovers += 1
            with contextlib.suppress(Exception):
                old.close()
        elif now - handover.began_at > HANDOVER_TIMEOUT_S and self._owner != handover.generation:
            self._handover = None
            with contextlib.suppress(Exception):
                handover.stream.close()

    def close(self) -> None:
        handover, self._handover = self._handover, None
        if handover is not None:
            with contextlib.suppress(Exception):
                handover.stream.close()
        super().close()

    def _on_block(self, generation: int, block: FloatArray, block_start: float) -> None:
        handover = self._handover
        if handover is not None and generation == handover.generation and not handover.spliced:
            if self._owner != generation:  # the old stream has not let go yet: keep the block
                handover.arrived = True
                if len(handover.stash) < MAX_STASHED_BLOCKS:
                    handover.stash.append((downmix(block).copy(), block_start))
                return
            self._splice(handover, block, block_start)
            return
        if generation != self._owner:
            return  # a stream on its way out
        mono = self.process_block(block, block_start)
        if handover is not None and handover.arrived:
            # The old stream's last block: the new one carries on from the end of it.
            handover.tail = mono.copy()
            handover.tail_end_at = block_start + len(mono) / self.rate
            self._owner = handover.generation

    def _splice(self, handover: Handover, block: FloatArray, block_start: float) -> None:
        pieces = [*handover.stash, (downmix(block), block_start)]
        fresh = np.concatenate([samples for samples, _ in pieces])
        fresh_start = pieces[0][1]
        timed = by_time(handover.tail_end_at, fresh_start, len(fresh), self.rate)
        try:
            index = continuation(handover.tail, fresh, timed) if handover.tail is not None else None
        except Exception:  # never lose the stream over finding a seam: the times will do
            index = None
        if index is not None:
            self.spliced_by_content += 1
        else:
            index = timed
        handover.stash.clear()
        if index < len(fresh):
            self.process_block(fresh[index:], fresh_start + index / self.rate)
        handover.spliced = True

    @property
    def frames(self) -> queue.Queue[MicFrame]:
        return self.model.frames

    @property
    def overflows(self) -> int:
        return self.model.overflows

    def process_block(self, block: FloatArray, block_start: float) -> FloatArray:
        """Everything the callback does with one block; separate so tests can drive it directly.

        Returns the block as mono (it may share memory with ``block``).
        """
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
            return mono
        if self.detector is not None:
            vad, at = self._vad_resampler.process(mono, block_start)
            if len(vad):
                self.detector.feed(float_to_int16(vad), at)
        self.model.process(mono, block_start, self._hearing(block_start))
        return mono

    def _hearing(self, captured_at: float) -> Hearing:
        if self.detector is not None and self.detector.in_speech:
            return "user"
        if self.echo_possible is not None and self.echo_possible(captured_at):
            return "echo"
        return "clear"
