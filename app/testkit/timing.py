"""When things happened in a turn, read from two recordings on one clock: the app's microphone and
its speaker's monitor. Pure: arrays in, times out (monotonic seconds), so it is tested with made-up
signals and used the same way by ``drive`` and the benchmarks.

- The user's speech is found in the microphone by matching the known signal (a matched filter),
  so that the assistant's own echo in the microphone never counts as the user.
- The answer's first sound is the speaker's first loud sample after the user began (after the
  speaker went quiet, when the user talked over an answer).
- A halt is where the speaker goes quiet for :data:`HALT_GAP_S` after the user began talking over
  it: longer than the pauses between an answer's words and clauses.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Times = npt.NDArray[np.float64]
Samples = npt.NDArray[np.float32]

LOUD = 0.02  # about -34 dBFS: speech on the speaker or in the microphone, not noise or a faint echo
SPEECH_START = 0.002  # about -54 dBFS: the first audible sample of the known signal
HALT_GAP_S = 0.3
# The speaker's monitor is clean (no noise, no room), so a halt is timed to the answer's last
# audible sound, not its last loud one: the soft end of a word is still the assistant talking.
STILL_SOUNDING = 0.005  # about -46 dBFS


@dataclass(frozen=True)
class TurnTiming:
    """One turn, on the monotonic clock; None where it did not happen or could not be found."""

    speech_start: float | None  # the user's first audible sample in the microphone
    speech_end: float | None  # their last
    talked_over: bool  # the speaker was sounding when the user began
    halt_at: float | None  # talked over: where the speaker went quiet
    answer_at: float | None  # the answer's first sound on the speaker
    answer_end: float | None  # its last sound before the window ends

    @property
    def cut_off(self) -> bool:
        """The answer began before the user had finished."""
        return self.answer_at is not None and self.speech_end is not None and self.answer_at < self.speech_end

    @property
    def first_sound_ms(self) -> float | None:
        if self.answer_at is None or self.speech_end is None or self.cut_off:
            return None
        return round((self.answer_at - self.speech_end) * 1000.0, 1)

    @property
    def halt_ms(self) -> float | None:
        if self.halt_at is None or self.speech_start is None:
            return None
        return round((self.halt_at - self.speech_start) * 1000.0, 1)


def window(times: Times, samples: Samples, start: float, end: float) -> tuple[Times, Samples]:
    keep = (times >= start) & (times <= end)
    return times[keep], samples[keep]


def spoken_span(signal: Samples) -> tuple[int, int] | None:
    """Where speech in a signal begins (its first audible sample: an interruption is timed from the
    first sound the user makes) and ends (its last loud one: the tail of a word fading below
    -34 dBFS is not heard as more speech, and this is where the benchmarks have always measured
    time to first sound from)."""
    audible = np.flatnonzero(np.abs(signal) > SPEECH_START)
    loud = np.flatnonzero(np.abs(signal) > LOUD)
    if not len(audible):
        return None
    return int(audible[0]), int(loud[-1]) if len(loud) else int(audible[-1])


def locate(times: Times, samples: Samples, signal: Samples) -> float | None:
    """When ``signal`` (at the recording's rate) began in the recording: the matched filter's peak."""
    n, m = len(samples), len(signal)
    if n < m or m == 0 or not np.any(samples):
        return None
    size = 1 << int(np.ceil(np.log2(n + m)))
    corr = np.fft.irfft(np.fft.rfft(samples, size) * np.conj(np.fft.rfft(signal, size)), size)[: n - m + 1]
    return float(times[int(np.argmax(corr))])


def first_loud(
    times: Times, samples: Samples, after: float, before: float, threshold: float = LOUD
) -> float | None:
    t, s = window(times, samples, after, before)
    loud = np.flatnonzero(np.abs(s) > threshold)
    return float(t[loud[0]]) if len(loud) else None


def last_loud(
    times: Times, samples: Samples, after: float, before: float, threshold: float = LOUD
) -> float | None:
    t, s = window(times, samples, after, before)
    loud = np.flatnonzero(np.abs(s) > threshold)
    return float(t[loud[-1]]) if len(loud) else None


def quiet_from(
    times: Times,
    samples: Samples,
    after: float,
    before: float,
    gap_s: float = HALT_GAP_S,
    threshold: float = STILL_SOUNDING,
) -> float | None:
    """The start of the first stretch of at least ``gap_s`` with nothing above ``threshold``, after
    ``after``: the last such sample before it (``after`` itself when it was quiet already)."""
    t, s = window(times, samples, after, before)
    if len(t) == 0:
        return None
    loud = t[np.abs(s) > threshold]
    edges = np.concatenate(([after], loud, [before]))
    gaps = np.flatnonzero(np.diff(edges) >= gap_s)
    if len(gaps) == 0:
        return None
    return float(edges[gaps[0]])


def measure_turn(
    mic: tuple[Times, Samples],
    mic_rate: float,
    speaker: tuple[Times, Samples],
    signal: Samples,
    played_at: float,
    window_end: float,
) -> TurnTiming:
    """The turn whose ``signal`` (at the microphone's rate) was handed to the feed at ``played_at``,
    up to ``window_end`` (the next turn's start, or the end of the recording)."""
    span = spoken_span(signal)
    rate = mic_rate
    speech_start = speech_end = None
    if span is not None:
        # The sound server's path from feed to microphone takes some tens of ms; a second is ample.
        t, s = window(*mic, played_at - 0.05, played_at + len(signal) / rate + 1.0)
        begun = locate(t, s, signal)
        if begun is not None:
            speech_start = begun + span[0] / rate
            speech_end = begun + span[1] / rate
    start = speech_start if speech_start is not None else played_at
    # Sounding: loud in the stretch before the onset that is shorter than a halt's gap, so a pause
    # between the answer's words at that moment does not hide it.
    sounding = first_loud(*speaker, start - HALT_GAP_S, start + 0.05, STILL_SOUNDING) is not None
    halt_at = quiet_from(*speaker, start, window_end) if sounding else None
    # halt_at is the talked-over answer's last loud sample: the new answer is the next one.
    answer_from = (None if halt_at is None else halt_at + 1e-4) if sounding else start
    answer_at = None if answer_from is None else first_loud(*speaker, answer_from, window_end)
    answer_end = None if answer_at is None else last_loud(*speaker, answer_at, window_end)
    return TurnTiming(speech_start, speech_end, sounding, halt_at, answer_at, answer_end)
