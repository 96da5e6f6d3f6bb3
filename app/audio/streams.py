"""PortAudio stream plumbing shared by capture, playback and the measurement tools."""

from __future__ import annotations

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


class StreamOwner:
    """Owns one PortAudio stream: opened on first start, closed on close or leaving a ``with``."""

    direction: Literal["input", "output"]

    def __init__(self, device: AudioDevice, block_ms: float) -> None:
        self.device = device
        self.rate = float(device.default_samplerate)
        self.channels = stream_channels(device, self.direction)
        self.blocksize = frames_for_ms(self.rate, block_ms)
        self._block_ms = block_ms
        self._stream: Any = None

    @property
    def latency(self) -> float:
        """The stream's reported latency in seconds (0 before it is opened)."""
        return float(self._stream.latency) if self._stream is not None else 0.0

    def start(self) -> None:
        if self._stream is None:
            self._stream = open_stream(
                self.direction, self.device, self._callback, self._block_ms, self.rate, self.channels
            )
            self._opened()
        self._stream.start()

    def stop(self) -> None:
        if self._stream is not None:
            self._stream.stop()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _opened(self) -> None:
        """Hook for subclasses that need the opened stream's figures."""

    def _callback(self, data: Any, frames: int, time_info: Any, status: Any) -> None:
        raise NotImplementedError
