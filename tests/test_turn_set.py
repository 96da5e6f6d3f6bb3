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


def test_the_judge_looks_at_a_paused_request_where_its_pause_begins() -> None:
    from bench.turn_words import first_cut, written_before_pause

    request, written = next((r, w) for r, w in load_set() if r.pauses_ms == (700,))
    samples, rate = render(request, written)
    start, end = first_cut(samples, rate, paused=True)
    whole_start, whole_end = first_cut(samples, rate, paused=False)
    assert start == whole_start
    # The pause (700 ms of silence) comes between the cut and the end of the request.
    assert (whole_end - end) / rate > 0.7
    assert np.abs(samples[end : end + int(0.6 * rate)]).max() < 0.01
    assert np.abs(samples[end - int(0.1 * rate) : end]).max() > 0.05  # words right before it
    assert written_before_pause(written) + " " in request.text + " "
    assert written_before_pause(written) != request.text


def test_the_judges_mistakes_are_counted_as_heard_and_as_written() -> None:
    from bench.turn_words import summarise

    def row(paused: bool, heard: bool, written: bool) -> dict[str, bool]:
        return {"paused": paused, "judged_complete": heard, "written_judged_complete": written}

    rows = [row(True, True, False), row(True, False, False), row(False, False, True), row(False, True, True)]
    result = summarise(rows)
    assert result["as_heard"] == {"paused_judged_complete": 1, "finished_judged_unfinished": 1}
    assert result["as_written"] == {"paused_judged_complete": 0, "finished_judged_unfinished": 0}
