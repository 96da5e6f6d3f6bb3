"""Playback: the jitter buffer behind a low-latency PortAudio output stream.

The callback renders one block from the jitter buffer, copies it to every channel, and publishes
exactly what it handed to the device, with its timing, for the echo canceller.

While nothing plays the stream is stopped (:meth:`Player.rest`), so an idle app makes no output
callbacks at all; the first audio pushed starts it again (:meth:`Player.push`), and the jitter
buffer's lead covers the start. The echo canceller's timeline takes the gap as a restart.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.audio.devices import AudioDevice
from app.audio.jitter import JitterBuffer
from app.audio.resample import FloatArray
from app.audio.streams import StreamOwner

# Quiet this long after the last sound (and nothing queued), the output stream stops until the next
# answer: long enough that the gaps between an answer's chunks never stop it.
REST_AFTER_S = 1.5


@dataclass(frozen=True)
class PlayedBlock:
    """Samples handed to the device in one callback (mono, device rate) and when."""

    handed_at: float  # monotonic time of the callback
    audible_at: float  # when its first sample reaches the listener (handed_at + output latency)
    samples: FloatArray
    # The device ran dry just before this block (it played silence the stream does not hold):
    # this block and all after it are heard later than the stream so far implies.
    underflow: bool = False


class Player(StreamOwner):
    direction = "output"

    def __init__(
        self,
        device: AudioDevice,
        *,
        block_ms: float = 10.0,
        target_ms: float = 60.0,
        fade_ms: float = 5.0,
        reference_blocks: int = 400,
    ) -> None:
        super().__init__(device, block_ms)
        self.buffer = JitterBuffer(self.rate, target_ms=target_ms, fade_ms=fade_ms)
        self.reference: deque[PlayedBlock] = deque(maxlen=reference_blocks)
        self.device_underflows = 0
        # When the last sound handed to the device ends at the listener (monotonic seconds).
        self.sounded_until = float("-inf")
        self.resting = False  # stopped for lack of anything to play, not by the owner
        self.rests = 0  # times it stopped so, for tests and the idle benchmark
        self._woke_at = float("-inf")
        self.wake_failed = False  # a wake found the device gone

    def _opened(self) -> None:
        self.buffer.output_latency = self.latency

    # The conversation layer's verbs, so callers need not reach into the buffer.
    def push(self, item_id: str, pcm16: bytes) -> bool:
        accepted = self.buffer.push(item_id, pcm16)
        if self.resting:
            self.wake()
        return accepted

    def wake(self) -> None:
        """Starts the stream a rest stopped. A device that went away meanwhile does not raise here:
        :meth:`lost` then says so, and the engine reports and reopens it like any lost device."""
        if not self.resting:
            return
        self.resting = False
        try:
            self.start()
        except Exception:
            self.wake_failed = True

    def start(self) -> None:
        super().start()
        self.wake_failed = False
        self._woke_at = time.monotonic()

    def lost(self, now: float, stall_s: float = 1.5) -> bool:
        return self.wake_failed or super().lost(now, stall_s)

    def rest(self, now: float) -> bool:
        """Stops the running stream when nothing has played for :data:`REST_AFTER_S` and nothing is
        queued or paused; True when it did. Called from the engine's loop, never the callback."""
        if self.resting or not self._running or self.buffer.is_active() or self.buffer.paused:
            return False
        if now - max(self.sounded_until, self._woke_at) < REST_AFTER_S or self._stream is None:
            return False
        self._running = False
        # abort, not stop: nothing is queued, and stop would wait out the device's buffers.
        with contextlib.suppress(Exception):  # a device already gone: waking says so
            self._stream.abort()
        self.resting = True
        self.rests += 1
        return True

    def close(self) -> None:
        self.resting = False
        super().close()

    def end_item(self, item_id: str) -> None:
        self.buffer.end_item(item_id)

    def halt(self, item_ids: Iterable[str] | None = None) -> None:
        self.buffer.halt(item_ids)

    def pause(self) -> None:
        self.buffer.pause()

    def resume(self) -> None:
        self.buffer.resume()

    @property
    def paused(self) -> bool:
        return self.buffer.paused

    def is_playing(self) -> bool:
        # False while paused too: the buffer is inactive then, so barge-in does not fire on silence.
        return self.buffer.is_active()

    def _callback(self, outdata: FloatArray, frames: int, time_info: Any, status: Any) -> None:
        now = time.monotonic()
        underflow = bool(status.output_underflow)
        if underflow:
            self.device_underflows += 1
        block = self.buffer.render(frames, now)
        outdata[:] = block[:, None]
        audible_at = now + self.buffer.output_latency
        self.reference.append(PlayedBlock(now, audible_at, block, underflow))
        if block.any():
            self.sounded_until = audible_at + frames / self.rate
