"""Streaming sample-rate conversion and format helpers (soxr keeps filter state across blocks)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
import soxr

FloatArray = npt.NDArray[np.float32]
Quality = Literal["QQ", "LQ", "MQ", "HQ", "VHQ"]

# soxr withholds its filter delay; LQ keeps that to about 10 ms, which matters on the capture
# path (barge-in and capture-to-wire latency). Playback is buffered anyway and can afford HQ.
CAPTURE_QUALITY: Quality = "LQ"
PLAYBACK_QUALITY: Quality = "HQ"


class StreamResampler:
    """Mono float32 resampling of a stream delivered in blocks of any size."""

    def __init__(self, in_rate: float, out_rate: float, quality: Quality = CAPTURE_QUALITY) -> None:
        self.in_rate = float(in_rate)
        self.out_rate = float(out_rate)
        self._quality: Quality = quality
        self._stream: soxr.ResampleStream | None = None
        self.reset()

    def reset(self) -> None:
        """Forget the filter state, for a new, unrelated stream."""
        if self.in_rate == self.out_rate:
            self._stream = None
        else:
            self._stream = soxr.ResampleStream(
                self.in_rate, self.out_rate, 1, dtype="float32", quality=self._quality
            )

    def process(self, block: FloatArray, last: bool = False) -> FloatArray:
        """Resample one block; ``last`` flushes what the filter still holds."""
        mono = np.ascontiguousarray(block, dtype=np.float32)
        if self._stream is None:
            return mono.copy()
        out: FloatArray = self._stream.resample_chunk(mono, last=last)
        if last:
            self.reset()
        return out


def downmix(block: npt.NDArray[np.float32]) -> FloatArray:
    """Mono from a (frames, channels) block; a 1-D block is already mono."""
    if block.ndim == 1:
        return block.astype(np.float32, copy=False)
    if block.shape[1] == 1:
        return block[:, 0].astype(np.float32, copy=False)
    result: FloatArray = block.mean(axis=1, dtype=np.float32)
    return result


def float_to_int16(samples: FloatArray) -> npt.NDArray[np.int16]:
    clipped = np.clip(samples, -1.0, 32767.0 / 32768.0)
    return (clipped * 32768.0).astype(np.int16)


def float_to_pcm16(samples: FloatArray) -> bytes:
    return float_to_int16(samples).astype("<i2", copy=False).tobytes()


def pcm16_to_float(data: bytes) -> FloatArray:
    if len(data) % 2:
        raise ValueError(f"PCM16 data must have an even number of bytes, got {len(data)}")
    result: FloatArray = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
    return result
