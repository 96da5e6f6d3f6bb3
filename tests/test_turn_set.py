"""The turn-taking test set of bench/turns.py: what the issue asks of it, and that it renders as written."""

from __future__ import annotations

import numpy as np

from bench.turn_set import load_set, render


def test_the_set_has_sixty_requests_a_third_paused_in_several_voices_and_speeds() -> None:
    requests = [request for request, _ in load_set()]
    assert len(requests) >= 60
    paused = [r for r in requests if r.paused]
    assert len(paused) * 3 >= len(requests)
    assert all(300 <= ms <= 900 for r in paused for ms in r.pauses_ms)
    assert len({r.voice for r in requests}) >= 8 and {"piper", "espeak"} <= {r.voice_kind for r in requests}
    assert len({r.speed for r in requests if r.voice_kind == "espeak"}) >= 5
    assert len({r.text for r in requests}) == len(requests)


def test_a_pause_written_in_a_request_is_that_much_silence_inside_its_audio() -> None:
    request, written = next((r, w) for r, w in load_set() if r.pauses_ms == (700,))
    samples, rate = render(request, written)
    frames = (
        np.abs(samples[: len(samples) // (rate // 100) * (rate // 100)]).reshape(-1, rate // 100).max(axis=1)
    )
    loud = np.flatnonzero(frames > 0.02)
    inside = frames[loud[0] : loud[-1] + 1] <= 0.02
    longest = run = 0
    for quiet in inside:
        run = run + 1 if quiet else 0
        longest = max(longest, run)
    assert 650 <= longest * 10 <= 800, longest * 10  # the break, give or take the words' own edges
    again, _ = render(request, written)
    assert np.array_equal(samples, again)  # the same every time
