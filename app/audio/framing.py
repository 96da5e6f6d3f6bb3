"""Fixed-size frames out of a stream of samples that arrives in chunks of any length.

The capture path hands on audio in device-sized blocks, but the model, the speech detector and the
echo canceller each take fixed frames (20 ms, 10 ms, 10 ms). :class:`Framer` is the one place that
cuts them, so the three differ only in what a frame's time and label mean to them.
"""

from __future__ import annotations

from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

S = TypeVar("S", bound=np.generic)


class Framer(Generic[S]):
    """Cuts a stream of samples into ``frame_samples``-long frames, whatever the chunk sizes.

    Each frame comes with the stream index of its first sample (samples counted from the start or
    the last :meth:`reset`), not a time: each caller has its own clock (a resampler's timestamp, a
    pending start time, a stream timeline).

    Pure and not thread-safe: each owner pushes from its one thread (the capture callback, the echo
    worker), so it takes no lock. The model's framer runs inside the PortAudio callback, so a push
    copies only what a frame spanning two chunks needs: other frames, and the remainder, are views
    of the pushed chunk. Every caller pushes a fresh array (the resamplers' output, a PCM16
    conversion), never the device's own buffer, which PortAudio reuses; a caller must not write to
    a chunk once it is pushed.
    """

    def __init__(self, frame_samples: int, dtype: type[S]) -> None:
        if frame_samples <= 0:
            raise ValueError(f"a frame needs at least one sample, not {frame_samples}")
        self.frame_samples = frame_samples
        self._dtype: np.dtype[S] = np.dtype(dtype)  # numpy's own instance: ``is`` is the cheapest check
        self._rest: npt.NDArray[S] = np.zeros(0, self._dtype)  # fewer than frame_samples
        self._start = 0  # stream index of _rest[0]

    @property
    def pending(self) -> int:
        """Samples waiting for the rest of their frame (fewer than ``frame_samples``)."""
        return len(self._rest)

    def reset(self) -> None:
        """Drop the remainder and count from 0 again: the next samples start a new stream."""
        self._rest = np.zeros(0, self._dtype)  # not a view: the old stream's chunk can go
        self._start = 0

    def push(self, samples: npt.NDArray[S]) -> tuple[int, list[npt.NDArray[S]]]:
        """Add 1-D ``samples``; the whole frames they complete, and the stream index of the first.

        Frame ``i`` starts at stream index ``start + i * frame_samples``. A plain tuple, not a
        named one: this runs in the audio callback, where a named tuple costs as much as the cut.
        """
        if samples.dtype is not self._dtype:
            # A frame cut from the chunk is a view of it: without this, frames of two dtypes.
            samples = samples.astype(self._dtype)
        size = self.frame_samples
        rest = self._rest
        start = self._start
        frames: list[npt.NDArray[S]] = []
        if len(rest):
            need = size - len(rest)
            if len(samples) < need:
                self._rest = np.concatenate((rest, samples))
                return start, frames
            # The one frame that spans two chunks, and the only samples copied.
            frames.append(np.concatenate((rest, samples[:need])))
            samples = samples[need:]
        while len(samples) >= size:
            frames.append(samples[:size])
            samples = samples[size:]
        self._rest = samples
        self._start = start + len(frames) * size
        return start, frames
