from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from app.audio.capture import FrameSink
from app.audio.framing import Framer
from app.core.hearing import Hearing, louder

ODD_SIZES = [7, 333, 160, 1, 0, 999, 159, 161, 480, 2]


def _cut(
    framer: Framer[np.generic], signal: npt.NDArray[np.generic], sizes: list[int]
) -> list[tuple[int, bytes]]:
    """Push ``signal`` in chunks of ``sizes`` (cycled); every frame as (stream index, bytes)."""
    out: list[tuple[int, bytes]] = []
    position, k = 0, 0
    while position < len(signal):
        size = sizes[k % len(sizes)]
        start, frames = framer.push(signal[position : position + size])
        out.extend((start + i * framer.frame_samples, f.tobytes()) for i, f in enumerate(frames))
        position += size
        k += 1
    return out


@pytest.mark.parametrize("dtype", [np.int16, np.float32])
def test_odd_chunk_sizes_give_the_frames_and_indices_of_one_big_chunk(dtype: type[np.generic]) -> None:
    signal = np.arange(10_000).astype(dtype)
    start, frames = Framer(160, dtype).push(signal)
    whole = [(start + i * 160, f.tobytes()) for i, f in enumerate(frames)]
    assert [index for index, _ in whole] == list(range(0, 9_920, 160))
    for sizes in (ODD_SIZES, [1], [159], [161], [320], [12_345]):
        assert _cut(Framer(160, dtype), signal, sizes) == whole
    assert all(f.dtype == dtype for f in frames)


def test_the_remainder_waits_for_the_rest_of_its_frame() -> None:
    framer = Framer(4, np.int16)
    assert framer.push(np.array([1, 2, 3], np.int16)) == (0, [])
    assert framer.pending == 3
    assert framer.push(np.zeros(0, np.int16)) == (0, [])
    start, frames = framer.push(np.array([4, 5, 6, 7, 8, 9], np.int16))
    assert start == 0
    assert [f.tolist() for f in frames] == [[1, 2, 3, 4], [5, 6, 7, 8]]
    assert framer.pending == 1
    start, frames = framer.push(np.array([10, 11, 12], np.int16))
    assert start == 8 and [f.tolist() for f in frames] == [[9, 10, 11, 12]]
    assert framer.pending == 0


def test_reset_drops_the_remainder_and_counts_from_zero() -> None:
    framer = Framer(160, np.float32)
    framer.push(np.ones(400, np.float32))
    assert framer.pending == 80
    framer.reset()
    assert framer.pending == 0
    start, frames = framer.push(np.full(170, 2.0, np.float32))
    assert start == 0 and len(frames) == 1 and np.all(frames[0] == 2.0)


def test_a_frame_spanning_chunks_is_its_own_array() -> None:
    # The echo stage keeps the raw frame in its results: the next push must not change it.
    framer = Framer(4, np.float32)
    framer.push(np.array([1, 2], np.float32))
    _, (frame,) = framer.push(np.array([3, 4, 5], np.float32))
    framer.push(np.array([6, 7, 8, 9, 10], np.float32))
    assert frame.tolist() == [1, 2, 3, 4]


def test_another_dtype_is_converted_so_all_frames_share_one() -> None:
    framer = Framer(4, np.float32)
    framer.push(np.array([0.5, 0.25], np.float64))
    _, frames = framer.push(np.arange(6, dtype=np.float64))  # type: ignore[arg-type]
    assert [f.dtype for f in frames] == [np.float32, np.float32]
    assert [f.tolist() for f in frames] == [[0.5, 0.25, 0.0, 1.0], [2.0, 3.0, 4.0, 5.0]]


def test_a_frame_needs_a_sample() -> None:
    with pytest.raises(ValueError, match="at least one sample"):
        Framer(0, np.int16)


def test_model_frames_get_the_strongest_label_of_the_chunks_they_contain() -> None:
    """The capture's model frames, checked against labels laid over sample ranges."""
    rng = np.random.default_rng(3)
    labels: list[Hearing] = ["clear", "echo", "user"]
    sink = FrameSink(24000, 24000, 20, 10_000)  # same rate: no resampler delay, sample k is sample k
    per_sample: list[Hearing] = []
    position = 0
    for size in [int(rng.integers(0, 1200)) for _ in range(300)]:
        label = labels[int(rng.integers(0, 3))]
        sink.process(np.zeros(size, np.float32), 5.0 + position / 24000, label)
        per_sample.extend([label] * size)
        position += size
    frames = [sink.frames.get_nowait() for _ in range(sink.frames.qsize())]
    assert len(frames) == position // 480
    for k, frame in enumerate(frames):
        expected: Hearing = "clear"
        for label in set(per_sample[k * 480 : (k + 1) * 480]):
            expected = louder(expected, label)
        assert frame.hearing == expected
        assert frame.captured_at == pytest.approx(5.0 + k * 0.02, abs=1e-9)
