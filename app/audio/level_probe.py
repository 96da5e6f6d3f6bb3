"""Device checks for the settings screen: a live input level and a test sound on an output.

Both open their own short-lived PortAudio stream, independent of the conversation's streams, so a
user can try a device before choosing it. Neither needs Qt; the settings dialog polls
:attr:`InputLevelProbe.level_dbfs` on a timer.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any, Final

import numpy as np

from app.audio.devices import AudioDevice, DeviceError, Direction
from app.audio.earcon import EARCON_RATE, earcon_samples
from app.audio.resample import FloatArray, StreamResampler
from app.audio.streams import open_stream

__all__ = [
    "SILENCE_DBFS",
    "DeviceUnavailable",
    "InputLevelProbe",
    "chime",
    "peak_dbfs",
    "play_test_sound",
]

# What a block of digital silence reads as: far below any meter's floor, yet a finite number, so
# callers can compare and format it without special cases.
SILENCE_DBFS: Final = -100.0
_SILENCE_AMPLITUDE: Final = 10.0 ** (SILENCE_DBFS / 20.0)
PROBE_BLOCK_MS: Final = 20.0  # a meter redrawn at 20 Hz gains nothing from shorter blocks
_TEST_SOUND_GAP_S: Final = 0.12
_CLOSE_MARGIN_S: Final = 2.0  # how long past the sound's length a stuck stream is waited for


class DeviceUnavailable(DeviceError):
    """A listed device could not be opened (unplugged, in use elsewhere, or refused by the system)."""


def peak_dbfs(block: Any) -> float:
    """The block's peak in dBFS (full scale 1.0), :data:`SILENCE_DBFS` for silence or an empty block.

    Uses only reductions, so it allocates nothing per block and is safe in an audio callback.
    """
    if block.size == 0:
        return SILENCE_DBFS
    peak = max(float(block.max()), -float(block.min()))
    if not peak > _SILENCE_AMPLITUDE:  # also catches NaN from a misbehaving driver
        return SILENCE_DBFS
    return 20.0 * math.log10(peak)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return text if text else type(exc).__name__


def _cannot_open(direction: Direction, device: AudioDevice, exc: BaseException | None) -> DeviceUnavailable:
    why = f": {_reason(exc)}" if exc is not None else ""
    return DeviceUnavailable(f"cannot open the {direction} device {device.name!r}{why}")


def _close_quietly(stream: Any) -> None:
    # A stream whose device has gone away can fail to close; it is unusable either way.
    with contextlib.suppress(Exception):
        stream.close(ignore_errors=True)


class InputLevelProbe:
    """Measures the peak level of ``device``'s input while started.

    :attr:`level_dbfs` holds the peak of the most recent block; the audio callback writes it with a
    single float store (atomic under the GIL), so readers need no lock and the callback never waits.
    """

    def __init__(self, device: AudioDevice, block_ms: float = PROBE_BLOCK_MS) -> None:
        self.device = device
        self.level_dbfs: float = SILENCE_DBFS
        self._block_ms = block_ms
        self._stream: Any = None

    @property
    def running(self) -> bool:
        return self._stream is not None

    def start(self) -> None:
        """Opens and starts the input stream; raises :class:`DeviceUnavailable` when it cannot."""
        if self._stream is not None:
            return
        if self.device.max_input_channels < 1:
            raise DeviceUnavailable(f"{self.device.name!r} is not an input device (it has no input channels)")
        try:
            stream = open_stream("input", self.device, self._callback, self._block_ms)
        except Exception as exc:  # PortAudioError, ValueError for a stale index, OSError without PortAudio
            raise _cannot_open("input", self.device, exc) from None
        try:
            stream.start()
        except Exception as exc:
            _close_quietly(stream)
            raise _cannot_open("input", self.device, exc) from None
        self.level_dbfs = SILENCE_DBFS
        self._stream = stream

    def stop(self) -> None:
        """Closes the stream (if open) and reads silence again; safe to call at any time."""
        stream, self._stream = self._stream, None
        if stream is not None:
            _close_quietly(stream)
        self.level_dbfs = SILENCE_DBFS

    def __enter__(self) -> InputLevelProbe:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _callback(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        self.level_dbfs = peak_dbfs(indata)


def chime(rate: float) -> FloatArray:
    """The test sound at ``rate``: the earcon twice.

    The app's own cue, so the volume the user settles on suits what the app really plays.
    """
    note = earcon_samples()
    pair = np.concatenate([note, np.zeros(int(EARCON_RATE * _TEST_SOUND_GAP_S), np.float32), note])
    return StreamResampler(EARCON_RATE, rate, "HQ").process(pair, last=True)


class _OneShot:
    """Feeds a signal to an output stream once, then tells PortAudio the stream is complete."""

    def __init__(self, signal: FloatArray, stop_exception: type[BaseException]) -> None:
        self.signal = signal
        self.position = 0
        self.done = threading.Event()
        self._stop = stop_exception

    def callback(self, outdata: Any, frames: int, time_info: Any, status: Any) -> None:
        chunk = self.signal[self.position : self.position + frames]
        outdata[: len(chunk)] = chunk[:, None]
        outdata[len(chunk) :] = 0
        self.position += frames
        if self.position >= len(self.signal):
            self.done.set()
            # PortAudio plays out the buffers already handed over, then ends the stream.
            raise self._stop


def _close_when_finished(stream: Any, player: _OneShot, seconds: float) -> None:
    deadline = time.monotonic() + seconds + _CLOSE_MARGIN_S
    player.done.wait(seconds + _CLOSE_MARGIN_S)
    # After the last block PortAudio still plays what it holds; closing now would cut the tail.
    while time.monotonic() < deadline:
        try:
            if not stream.active:
                break
        except Exception:
            break
        time.sleep(0.02)
    _close_quietly(stream)


def play_test_sound(device: AudioDevice) -> None:
    """Starts the test sound on ``device`` and returns at once; it closes its stream when done.

    Raises :class:`DeviceUnavailable` (before returning) when the device cannot be opened.
    """
    if device.max_output_channels < 1:
        raise DeviceUnavailable(f"{device.name!r} is not an output device (it has no output channels)")
    try:
        import sounddevice as sd

        stop_exception: type[BaseException] = sd.CallbackStop
    except Exception as exc:  # OSError when the PortAudio library itself is missing
        raise _cannot_open("output", device, exc) from None
    signal = chime(device.default_samplerate)
    player = _OneShot(signal, stop_exception)
    try:
        stream = open_stream("output", device, player.callback, block_ms=20.0)
    except Exception as exc:
        raise _cannot_open("output", device, exc) from None
    try:
        stream.start()
    except Exception as exc:
        _close_quietly(stream)
        raise _cannot_open("output", device, exc) from None
    seconds = len(signal) / device.default_samplerate
    # The closer thread owns the stream from here on, so the caller never waits for the sound.
    threading.Thread(
        target=_close_when_finished, args=(stream, player, seconds), name="test-sound", daemon=True
    ).start()
