"""PortAudio stream plumbing shared by capture, playback and the measurement tools."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any, Literal, Self

from app.audio.devices import AudioDevice

MAX_CHANNELS = 2  # PortAudio's ALSA pulse devices report 32 channels; nobody needs more than stereo

StreamCallback = Callable[[Any, int, Any, Any], None]


def stream_channels(device: AudioDevice, direction: Literal["input", "output"]) -> int:
    return max(1, min(device.channels(direction), MAX_CHANNELS))


def frames_for_ms(rate: float, ms: float) -> int:
    return max(1, round(rate * ms / 1000.0))


def open_stream(
    direction: Literal["input", "output"],
    device: AudioDevice,
    callback: StreamCallback,
    block_ms: float = 10.0,
    rate: float | None = None,
    channels: int | None = None,
) -> Any:
    """A float32, low-latency stream on ``device`` (not started) at its own rate by default."""
    import sounddevice as sd

    samplerate = float(rate or device.default_samplerate)
    factory = sd.InputStream if direction == "input" else sd.OutputStream
    return factory(
        device=device.index,
        samplerate=samplerate,
        channels=channels or stream_channels(device, direction),
        dtype="float32",
        blocksize=frames_for_ms(samplerate, block_ms),
        latency="low",
        callback=callback,
    )


def converts_to(device: AudioDevice, direction: Literal["input", "output"], rate: float) -> bool:
    """Whether a stream on ``device`` can run at ``rate``, the host converting from the device's own.

    PulseAudio, PipeWire and Core Audio convert; Windows' shared-mode WASAPI refuses other rates.
    """
    import sounddevice as sd

    check = sd.check_input_settings if direction == "input" else sd.check_output_settings
    try:
        channels = stream_channels(device, direction)
        check(device=device.index, samplerate=rate, channels=channels, dtype="float32")
    except Exception:
        return False
    return True


class StreamOwner:
    """Owns one PortAudio stream: opened on first start, closed on close or leaving a ``with``."""

    direction: Literal["input", "output"]

    def __init__(self, device: AudioDevice, block_ms: float, rate: float | None = None) -> None:
        self.device = device
        self.rate = float(rate or device.default_samplerate)
        self.channels = stream_channels(device, self.direction)
        self._block_ms = block_ms
        self._stream: Any = None
        self._running = False  # started by us and not stopped by us
        self._started_at = 0.0
        self._last_callback_at = 0.0  # monotonic; a float store is atomic, so the callback may write it

    @property
    def block_ms(self) -> float:
        return self._block_ms

    @property
    def blocksize(self) -> int:
        """Frames per callback at the stream's rate."""
        return frames_for_ms(self.rate, self._block_ms)

    @property
    def latency(self) -> float:
        """The stream's reported latency in seconds (0 before it is opened)."""
        return float(self._stream.latency) if self._stream is not None else 0.0

    def start(self) -> None:
        if self._stream is None:
            self._stream = self._open(self._block_ms)
            self._opened()
        self._started_at = time.monotonic()
        self._stream.start()
        self._running = True

    def stop(self) -> None:
        self._running = False
        if self._stream is not None:
            self._stream.stop()

    def close(self) -> None:
        self._running = False
        if self._stream is not None:
            stream, self._stream = self._stream, None
            # A stream whose device vanished may fail to close; it is gone either way.
            with contextlib.suppress(Exception):
                stream.close()

    def lost(self, now: float, stall_s: float = 1.5) -> bool:
        """True when the running stream stopped by itself or its callbacks stopped coming.

        Both happen when a device is unplugged or its sound server goes away: PortAudio either ends
        the stream or, through some ALSA plugins, simply stops calling back.
        """
        if not self._running or self._stream is None:
            return False
        try:
            active = bool(self._stream.active)
        except Exception:
            return True
        return not active or now - max(self._started_at, self._last_callback_at) > stall_s

    def delivering(self, now: float, within_s: float = 0.25) -> bool:
        """True when the running stream has called back lately (a reopened stream may stay silent)."""
        last = self._last_callback_at
        return self._running and last > self._started_at and now - last < within_s

    def reopen(self) -> None:
        """Closes the stream and opens it anew on the same device; raises if it still cannot open."""
        self.close()
        self.start()

    def _open(self, block_ms: float) -> Any:
        """The owner's stream, opened (not started) with ``block_ms`` blocks."""
        return self._open_with(block_ms, self._timed_callback)

    def _open_with(self, block_ms: float, callback: StreamCallback) -> Any:
        """A new stream on the device (not started) calling ``callback`` with ``block_ms`` blocks."""
        return open_stream(self.direction, self.device, callback, block_ms, self.rate, self.channels)

    def _timed_callback(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        self._last_callback_at = time.monotonic()
        self._callback(data, frames, time_info, status)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _opened(self) -> None:
        """Hook for subclasses that need the opened stream's figures."""

    def _callback(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        raise NotImplementedError
