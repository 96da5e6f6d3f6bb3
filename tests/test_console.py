"""The headless console's files: metrics per turn, and the events a test driver reads."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path

from app.console import ConsoleListener
from app.core.actions import Notice, State, StateChanged, ToolActivity, Transcript, TurnCompleted
from app.core.metrics import TurnMetrics


def test_events_are_one_json_object_per_line_on_the_monotonic_clock(tmp_path: Path) -> None:
    events, metrics = tmp_path / "events.jsonl", tmp_path / "metrics.jsonl"
    out, err = io.StringIO(), io.StringIO()
    listener = ConsoleListener(
        lambda: "listening on MIC -> SPEAKER", metrics, out=out, err=err, events_path=events
    )
    before = time.monotonic()
    listener.on_state(StateChanged(State.LISTENING, muted=False))
    listener.on_transcript(Transcript("user", "item_1", "I forgot my", final=False))
    listener.on_transcript(Transcript("user", "item_1", "I forgot my password", final=True))
    listener.on_tool(ToolActivity("call_1", "search_kb", "done", "Looked up: password"))
    listener.on_transcript(Transcript("assistant", "item_2", "Let's reset it.", final=True, interrupted=True))
    listener.on_turn(
        TurnCompleted(TurnMetrics(turn=1, backend="embedded", ttfa_ms=321.04), "I forgot my password", "x")
    )
    listener.on_notice(Notice("warning", "microphone lost"))

    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [line["kind"] for line in lines] == ["state", "transcript", "tool", "transcript", "turn", "notice"]
    assert all(before - 0.001 <= line["t"] <= time.monotonic() + 0.001 for line in lines)  # 0.1 ms steps
    assert lines[0]["state"] == "listening"
    assert lines[1] == {**lines[1], "role": "user", "text": "I forgot my password", "interrupted": False}
    assert lines[2]["name"] == "search_kb" and lines[2]["status"] == "done"
    assert lines[3]["interrupted"] is True
    assert lines[4]["metrics"]["ttfa_ms"] == 321.0 and lines[4]["user"] == "I forgot my password"
    assert lines[5]["message"] == "microphone lost"
    assert json.loads(metrics.read_text())["turn"] == 1
    assert out.getvalue().splitlines()[:2] == ["listening on MIC -> SPEAKER", "you: I forgot my password"]


def test_a_file_that_cannot_be_written_is_said_once_and_the_other_still_written(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")
    events = blocked / "events.jsonl"  # a directory that is a file: every write fails
    metrics = tmp_path / "metrics.jsonl"
    err = io.StringIO()
    listener = ConsoleListener(lambda: "", metrics, out=io.StringIO(), err=err, events_path=events)
    for turn in (1, 2):
        listener.on_turn(TurnCompleted(TurnMetrics(turn=turn, backend="embedded"), "", ""))
    assert err.getvalue().count("cannot write events to") == 1
    assert len(metrics.read_text().splitlines()) == 2
