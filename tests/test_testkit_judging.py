"""Judging a driven turn: times found in two recordings, events split into turns, verdicts, and
the JUnit XML a CI reads. Made-up signals and events; the real thing runs in test_drive_e2e."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from app.testkit.driver import EventsFile
from app.testkit.judge import TurnEvents, contains, judge, split_events
from app.testkit.report import RunResult, TurnResult, as_dict, summary_lines, to_junit
from app.testkit.scenario import parse_scenario
from app.testkit.timing import TurnTiming, measure_turn, quiet_from

RATE = 1000.0  # a coarse clock keeps the arrays small; the logic does not depend on the rate
rng = np.random.default_rng(7)


def timeline(seconds: float, start: float = 100.0) -> tuple[np.ndarray, np.ndarray]:
    times = start + np.arange(int(seconds * RATE)) / RATE
    return times, np.zeros(len(times), np.float32)


def put(track: tuple[np.ndarray, np.ndarray], at: float, signal: np.ndarray) -> None:
    times, samples = track
    index = round((at - times[0]) * RATE)
    samples[index : index + len(signal)] += signal


def speechlike(seconds: float, gaps: tuple[tuple[float, float], ...] = ()) -> np.ndarray:
    signal = (rng.standard_normal(int(seconds * RATE)) * 0.2).astype(np.float32)
    for start, length in gaps:
        signal[int(start * RATE) : int((start + length) * RATE)] = 0.0
    return signal


def test_an_answer_after_the_user_is_timed_from_the_end_of_their_speech() -> None:
    mic, speaker = timeline(10), timeline(10)
    user = np.concatenate([np.zeros(200, np.float32), speechlike(1.5), np.zeros(300, np.float32)])
    put(mic, 101.03, user)  # the sound server's path: 30 ms after it was handed over
    put(mic, 104.0, speechlike(1.0) * 0.3)  # the answer's echo in the microphone is not the user
    put(speaker, 103.6, speechlike(2.0, gaps=((0.5, 0.2),)))
    timing = measure_turn(mic, RATE, speaker, user, played_at=101.0, window_end=110.0)
    assert timing.speech_start is not None and timing.speech_end is not None
    assert abs(timing.speech_start - 101.23) < 0.002 and abs(timing.speech_end - 102.73) < 0.002
    assert not timing.talked_over and not timing.cut_off
    assert timing.first_sound_ms is not None and abs(timing.first_sound_ms - 870) < 3
    assert timing.answer_end is not None and abs(timing.answer_end - 105.6) < 0.002


def test_an_answer_into_a_pause_is_a_cut_off() -> None:
    mic, speaker = timeline(10), timeline(10)
    user = speechlike(3.0, gaps=((1.0, 0.7),))
    put(mic, 101.0, user)
    put(speaker, 102.5, speechlike(1.0))  # during the pause
    timing = measure_turn(mic, RATE, speaker, user, played_at=101.0, window_end=110.0)
    assert timing.cut_off and timing.first_sound_ms is None
    verdicts = judge(
        parse_scenario("[[turn]]\nsay='a'", Path("s.toml")).turns[0], timing, TurnEvents(), False
    )
    cut = next(v for v in verdicts if v.name == "no_cut_off")
    assert not cut.passed and "ms before the user finished" in cut.actual


def test_talking_over_an_answer_times_the_halt_and_the_next_answer() -> None:
    mic, speaker = timeline(12), timeline(12)
    put(speaker, 101.0, speechlike(3.2, gaps=((2.9, 0.1),)))  # a word gap right at the onset
    user = speechlike(1.0)
    put(mic, 104.0, user)
    put(speaker, 105.6, speechlike(1.0))
    timing = measure_turn(mic, RATE, speaker, user, played_at=104.0, window_end=112.0)
    assert timing.talked_over
    assert timing.halt_ms is not None and abs(timing.halt_ms - 200) < 3
    assert timing.answer_at is not None and abs(timing.answer_at - 105.6) < 0.002
    assert timing.first_sound_ms is not None and abs(timing.first_sound_ms - 600) < 3


def test_no_quiet_stretch_means_no_halt() -> None:
    times, samples = timeline(2)
    samples[:] = 0.5
    assert quiet_from(times, samples, 100.5, 102.0) is None


def test_events_are_split_into_turns_and_a_talked_over_answer_stays_with_its_turn() -> None:
    events = [
        {"kind": "state", "t": 9.0, "state": "listening"},
        {"kind": "transcript", "t": 12.0, "role": "user", "text": "my VPN drops"},
        {"kind": "tool", "t": 12.5, "name": "search_kb", "status": "done", "message": "ok"},
        {
            "kind": "turn",
            "t": 21.0,
            "assistant": "Let's look at your VPN...",
            "metrics": {"barge_in": True, "halt_ms": 62.0},
        },
        {"kind": "transcript", "t": 22.0, "role": "user", "text": "open a ticket"},
        {
            "kind": "tool",
            "t": 22.5,
            "name": "create_ticket",
            "status": "done",
            "message": "Ticket HD-1001 created",
        },
        {"kind": "tool", "t": 22.6, "name": "lookup", "status": "failed", "message": "lookup failed"},
        {
            "kind": "turn",
            "t": 25.0,
            "assistant": "I've created ticket HD-1001.",
            "metrics": {"ttfa_ms": 480.0, "false_interruptions": 1},
        },
    ]
    first, second = split_events(events, [10.0, 20.0], [False, True])
    assert first.heard == ["my VPN drops"] and first.tools == ["search_kb"]
    assert (
        first.answers == ["Let's look at your VPN..."]
        and first.talked_over == 1
        and first.app_halt_ms == [62.0]
    )
    assert (
        second.heard == ["open a ticket"]
        and second.tickets == ["HD-1001"]
        and second.failed_tools == ["lookup"]
    )
    assert second.false_interruptions == 1 and second.app_ttfa_ms == [480.0]

    scenario = parse_scenario(
        """
[[turn]]
say = "my VPN drops"
expect = { answer = ["VPN"], tools = ["search_kb"], ticket = false }
[[turn]]
say = "open a ticket"
when = "barge_in"
expect = { heard = ["ticket"], ticket = true, answer = ["HD-1001", "printer"] }
""",
        Path("s.toml"),
    )
    answered = TurnTiming(1.0, 2.0, False, None, 2.4, 4.0)
    first_verdicts = judge(scenario.turns[0], answered, first, next_talks_over=True)
    assert all(v.passed for v in first_verdicts), [v.message for v in first_verdicts]
    second_verdicts = {v.name: v for v in judge(scenario.turns[1], answered, second, next_talks_over=False)}
    assert second_verdicts["ticket"].passed and second_verdicts["heard"].passed
    assert not second_verdicts["answer"].passed and "missing 'printer'" in second_verdicts["answer"].actual
    assert not second_verdicts["no_self_interruption"].passed  # paused once on something else
    # The same talked-over answer with nobody talking over it: the app cut itself off.
    alone = {v.name: v for v in judge(scenario.turns[0], answered, first, next_talks_over=False)}
    assert not alone["no_self_interruption"].passed and "cut 1 time" in alone["no_self_interruption"].actual


def test_words_match_whole_words_ignoring_case_and_punctuation() -> None:
    assert contains("Okay, let's look at your VPN.", "vpn")
    assert contains("Step 2 of 6: open it", "step 2")
    assert not contains("Step 20 of 26", "step 2")
    assert not contains("preventative", "vent")


def test_the_junit_report_has_a_case_per_turn_and_says_what_failed(tmp_path: Path) -> None:
    scenario = parse_scenario(
        "name = 'Demo'\n[[turn]]\nsay='hi'\nexpect={ first_sound_ms = 1 }\n[[turn]]\nsay='again'\n"
        "[[turn]]\nsay='never said'",
        Path("/s/demo.toml"),
    )
    events = TurnEvents(heard=["hi"], answers=["hello"])
    slow = TurnTiming(1.0, 2.0, False, None, 2.5, 3.0)
    results = [
        TurnResult(turn, slow, events, judge(turn, slow, events, False), 1.0, 4.0)
        for turn in scenario.turns[:2]
    ]
    results[0].audio_file = "/tmp/demo-turn1.wav"
    run = RunResult(scenario, results, problem="the app exited (code 1) mid-conversation: boom")
    suite = ET.fromstring(to_junit(run))
    assert suite.get("name") == "Demo" and suite.get("tests") == "3"
    assert (suite.get("failures"), suite.get("errors")) == ("1", "1")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == ["turn 1: hi", "turn 2: again", "turn 3: never said"]
    failure = cases[0].find("failure")
    assert failure is not None and "first_sound_ms: expected within 1 ms" in failure.get("message", "")
    assert "recording: /tmp/demo-turn1.wav" in (cases[0].findtext("system-out") or "")
    assert cases[1].find("failure") is None
    error = cases[2].find("error")
    assert error is not None and "mid-conversation" in error.get("message", "")
    assert not run.passed and as_dict(run)["turns"][0]["measured"]["first_sound_ms"] == 500.0
    lines = summary_lines(run)
    assert (
        lines[0].startswith("FAIL turn 1: hi (first sound 500 ms)")
        and lines[-1] == "Demo: 1 of 3 turns passed"
    )


def test_the_events_file_is_read_as_it_grows_and_a_torn_line_waits(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"kind": "state", "t": 1, "state": "listening"}) + "\n")
    events = EventsFile(path)  # only what comes after this
    assert events.poll() == [] and events.state() is None
    with path.open("a") as handle:
        handle.write(json.dumps({"kind": "turn", "t": 5}) + "\nnot json\n" + '{"kind": "state", "t": 6, "st')
    assert [e["kind"] for e in events.poll()] == ["turn"]
    with path.open("a") as handle:
        handle.write('ate": "thinking"}\n')
    assert events.state() == "thinking" and events.count("turn", 4.0) == 1 and events.count("turn", 5.5) == 0
