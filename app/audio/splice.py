"""Where a second capture stream's audio takes over from the first's, with no gap and no repeat.

Capture changes its block size by opening a second stream on the same device before closing the
first (:meth:`app.audio.capture.Capture.set_cadence`): closing first would lose the audio of the
reopen, and the change happens as the user starts to speak. For a while both streams deliver the
same sound, so the end of what the first delivered is looked for in what the second holds, and the
second carries on from just after it. The two need not be equal sample for sample: a sound server
that converts the rate resamples each stream on its own. So the match is the best normalised
correlation; sound that repeats itself (a held vowel, a tone) matches at every period, and the
capture times choose among those, which is at worst a whole period early or late (a splice no ear
finds). Where nothing matches (a near-silent tail fits anywhere), the capture times decide alone:
PortAudio reports them within several milliseconds.
"""

from __future__ import annotations

import numpy as np

from app.audio.resample import FloatArray

# The first stream's end looked for in the second: about 5 ms, several cycles of most voices.
KEY_SAMPLES = 256
# Quieter than this the key is too plain to place (digital silence matches everywhere).
MIN_KEY_PEAK = 1e-3
# A normalised correlation at least this high is the same sound (two resamplings of one signal
# score above 0.999; unrelated sound far below).
MIN_MATCH = 0.98


def continuation(tail: FloatArray, fresh: FloatArray, expected: int | None = None) -> int | None:
    """Index in ``fresh`` of the sample that follows ``tail``'s last, or None when it is not found.

    ``len(fresh)`` means ``fresh`` ends exactly where ``tail`` does. Of several matches the one
    nearest ``expected`` (the capture times' guess) wins, else the first.
    """
    if len(tail) < KEY_SAMPLES or len(fresh) < KEY_SAMPLES:
        return None
    key = tail[-KEY_SAMPLES:].astype(np.float64)
    if float(np.max(np.abs(key))) < MIN_KEY_PEAK:
        return None
    samples = fresh.astype(np.float64)
    products = np.correlate(samples, key, mode="valid")
    energy = np.concatenate(([0.0], np.cumsum(samples * samples)))
    window_energy = energy[KEY_SAMPLES:] - energy[:-KEY_SAMPLES]
    scores = products / (np.sqrt(np.maximum(window_energy, 1e-12)) * float(np.linalg.norm(key)))
    # Peaks only: beside a match, smooth sound scores nearly as high one sample off.
    padded = np.concatenate(([-np.inf], scores, [-np.inf]))
    peaks = (scores >= MIN_MATCH) & (scores >= padded[:-2]) & (scores >= padded[2:])
    found = np.flatnonzero(peaks) + KEY_SAMPLES
    if not len(found):
        return None
    if expected is None:
        return int(found[0])
    return int(found[np.argmin(np.abs(found - expected))])


def by_time(tail_end_at: float, fresh_start_at: float, fresh_samples: int, rate: float) -> int:
    """The same index from capture times: the samples of ``fresh`` captured before ``tail`` ended."""
    overlap = round((tail_end_at - fresh_start_at) * rate)
    return max(0, min(fresh_samples, overlap))
