"""The reports of a driven conversation: a JSON document with every measurement, and JUnit XML (one
test case per turn) that any CI shows. Pure: results in, text out."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Any

from app.testkit.judge import TurnEvents, Verdict
from app.testkit.scenario import Scenario, Turn
from app.testkit.timing import TurnTiming


@dataclass
class TurnResult:
    turn: Turn
    timing: TurnTiming
    events: TurnEvents
    verdicts: list[Verdict]
    started_at: float  # when its audio was handed to the feed (monotonic seconds)
    seconds: float  # from its start to the next turn's (or the end)
    audio_file: str | None = None  # the recording kept for a failed turn

    @property
    def passed(self) -> bool:
        return all(verdict.passed for verdict in self.verdicts)

    @property
    def failures(self) -> list[Verdict]:
        return [verdict for verdict in self.verdicts if not verdict.passed]


@dataclass
class RunResult:
    scenario: Scenario
    turns: list[TurnResult]
    app: dict[str, Any] = field(default_factory=dict)  # how the app was run, its devices
    problem: str | None = None  # the run could not finish (the app died, a device went away)

    @property
    def passed(self) -> bool:
        return (
            self.problem is None
            and len(self.turns) == len(self.scenario.turns)
            and all(turn.passed for turn in self.turns)
        )


def to_json(run: RunResult) -> str:
    return json.dumps(as_dict(run), indent=2) + "\n"


def as_dict(run: RunResult) -> dict[str, Any]:
    return {
        "scenario": run.scenario.name,
        "file": str(run.scenario.path),
        "passed": run.passed,
        "problem": run.problem,
        "app": run.app,
        "turns": [_turn_dict(result) for result in run.turns],
    }


def _turn_dict(result: TurnResult) -> dict[str, Any]:
    timing, seen, turn = result.timing, result.events, result.turn
    return {
        "turn": turn.number,
        "say": turn.plain_text,
        "audio": str(turn.audio) if turn.audio else None,
        "voice": turn.voice,
        "pauses_ms": list(turn.pauses_ms),
        "when": turn.when,
        "passed": result.passed,
        "measured": {
            "speech_start": timing.speech_start,
            "speech_end": timing.speech_end,
            "answer_at": timing.answer_at,
            "answer_end": timing.answer_end,
            "first_sound_ms": timing.first_sound_ms,
            "cut_off": timing.cut_off,
            "talked_over": timing.talked_over,
            "halt_ms": timing.halt_ms,
        },
        "app_reported": {
            "heard": seen.heard,
            "answers": seen.answers,
            "tools": seen.tools,
            "failed_tools": seen.failed_tools,
            "tickets": seen.tickets,
            "ttfa_ms": seen.app_ttfa_ms,
            "halt_ms": seen.app_halt_ms,
            "false_interruptions": seen.false_interruptions,
        },
        "expectations": [
            {"name": v.name, "passed": v.passed, "expected": v.expected, "actual": v.actual}
            for v in result.verdicts
        ],
        "recording": result.audio_file,
    }


def to_junit(run: RunResult) -> str:
    """JUnit XML: a suite for the scenario, a test case per turn, a failure listing what did not hold."""
    failures = sum(not turn.passed for turn in run.turns)
    missing = len(run.scenario.turns) - len(run.turns)
    suite = ET.Element(
        "testsuite",
        name=run.scenario.name,
        tests=str(len(run.scenario.turns)),
        failures=str(failures),
        errors=str(missing),
        time=f"{sum(turn.seconds for turn in run.turns):.3f}",
    )
    classname = f"helpdesk-voice.drive.{run.scenario.path.stem}"
    for result in run.turns:
        case = ET.SubElement(
            suite, "testcase", classname=classname, name=result.turn.label, time=f"{result.seconds:.3f}"
        )
        if result.failures:
            failure = ET.SubElement(case, "failure", message="; ".join(v.message for v in result.failures))
            failure.text = "\n".join(v.message for v in result.failures)
        ET.SubElement(case, "system-out").text = _turn_story(result)
    for turn in run.scenario.turns[len(run.turns) :]:
        case = ET.SubElement(suite, "testcase", classname=classname, name=turn.label, time="0")
        ET.SubElement(case, "error", message=run.problem or "not run").text = run.problem or "not run"
    ET.indent(suite)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(suite, encoding="unicode") + "\n"


def _turn_story(result: TurnResult) -> str:
    lines = [
        f"heard: {' / '.join(result.events.heard) or '(nothing)'}",
        f"answer: {' / '.join(result.events.answers) or '(none)'}",
    ]
    if result.events.tools:
        lines.append(f"tools: {', '.join(result.events.tools)}")
    for verdict in result.verdicts:
        lines.append(f"{'ok' if verdict.passed else 'FAILED'} {verdict.name}: {verdict.actual}")
    if result.audio_file:
        lines.append(f"recording: {result.audio_file}")
    return "\n".join(lines)


def summary_lines(run: RunResult) -> list[str]:
    """What the terminal shows: a line per turn, the failures under it, and the outcome."""
    lines = []
    for result in run.turns:
        timing = result.timing
        figures = []
        if timing.first_sound_ms is not None:
            figures.append(f"first sound {timing.first_sound_ms:g} ms")
        if timing.halt_ms is not None:
            figures.append(f"halt {timing.halt_ms:g} ms")
        if timing.cut_off:
            figures.append("answered before the user finished")
        mark = "PASS" if result.passed else "FAIL"
        lines.append(f"{mark} {result.turn.label}" + (f" ({', '.join(figures)})" if figures else ""))
        lines.extend(f"     {verdict.message}" for verdict in result.failures)
        if result.audio_file:
            lines.append(f"     recording kept: {result.audio_file}")
    if run.problem:
        lines.append(f"could not finish: {run.problem}")
    passed = sum(turn.passed for turn in run.turns)
    lines.append(f"{run.scenario.name}: {passed} of {len(run.scenario.turns)} turns passed")
    return lines
