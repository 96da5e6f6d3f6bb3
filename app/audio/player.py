"""Playback: the jitter buffer behind a low-latency PortAudio output stream.

The callback renders one block from the jitter buffer, copies it to every channel, and publishes
exactly what it handed to the device, with its timing, for the echo canceller.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from app.audio.devices import AudioDevice
from app.audio.jitter import JitterBuffer
from app.audio.resample import FloatArray
from app.audio.streams import StreamOwner


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

    def _opened(self) -> None:
        self.buffer.output_latency = self.latency

    # The conversation layer's verbs, so callers need not reach into the buffer.
    def push(self, item_id: str, pcm16: bytes) -> bool:
        return self.buffer.push(item_id, pcm16)

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
