"""Judging a driven conversation: the app's events split into turns, and each turn's expectations
checked against what was measured. Pure: events (the dictionaries of the app's ``--events``
file) and :class:`~app.testkit.timing.TurnTiming` in, verdicts out."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from app.testkit.scenario import Expect, Turn
from app.testkit.timing import TurnTiming

_TICKET = re.compile(r"\bTicket (\S+?)[.,]? (?:created|is filed)")
_WORDS = re.compile(r"[^\w']+")


@dataclass
class TurnEvents:
    """What the app reported during one turn."""

    heard: list[str] = field(default_factory=list)  # the user's final transcripts
    answers: list[str] = field(default_factory=list)  # the answers as the user heard them
    tools: list[str] = field(default_factory=list)  # tools that finished
    failed_tools: list[str] = field(default_factory=list)
    tickets: list[str] = field(default_factory=list)  # ticket numbers the app created
    talked_over: int = 0  # answers of this turn that ended in a barge-in
    false_interruptions: int = 0  # answers paused on something that was not the user, then resumed
    app_ttfa_ms: list[float] = field(default_factory=list)  # the app's own figures, for reference
    app_halt_ms: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    name: str
    passed: bool
    expected: str
    actual: str

    @property
    def message(self) -> str:
        return f"{self.name}: expected {self.expected}, got {self.actual}"


def split_events(
    events: Sequence[dict[str, Any]], starts: Sequence[float], barge_ins: Sequence[bool]
) -> list[TurnEvents]:
    """Each event goes to the turn whose time it falls in (from its start to the next turn's),
    except the end of an answer that the next turn talked over: that one is the earlier turn's."""
    turns = [TurnEvents() for _ in starts]
    for event in sorted(events, key=lambda e: float(e.get("t", 0.0))):
        at = float(event.get("t", 0.0))
        index = _turn_at(at, starts)
        if index is None:
            continue
        kind = event.get("kind")
        if kind == "turn":
            metrics = event.get("metrics") or {}
            if metrics.get("barge_in") and index > 0 and barge_ins[index] and not turns[index].heard:
                index -= 1  # the answer the user talked over, ending as they speak
            _take_turn(turns[index], event, metrics)
        elif kind == "transcript" and event.get("role") == "user" and event.get("text"):
            turns[index].heard.append(str(event["text"]))
        elif kind == "tool" and event.get("status") in ("done", "failed"):
            name = str(event.get("name", ""))
            if event.get("status") == "done":
                turns[index].tools.append(name)
                if name == "create_ticket":
                    turns[index].tickets.extend(_TICKET.findall(str(event.get("message", "")))[:1] or ["?"])
            else:
                turns[index].failed_tools.append(name)
    return turns


def _turn_at(at: float, starts: Sequence[float]) -> int | None:
    index = None
    for number, start in enumerate(starts):
        if at >= start:
            index = number
    return index


def _take_turn(turn: TurnEvents, event: dict[str, Any], metrics: dict[str, Any]) -> None:
    if event.get("assistant"):
        turn.answers.append(str(event["assistant"]))
    turn.talked_over += bool(metrics.get("barge_in"))
    turn.false_interruptions += int(metrics.get("false_interruptions") or 0)
    for key, into in (("ttfa_ms", turn.app_ttfa_ms), ("halt_ms", turn.app_halt_ms)):
        if isinstance(metrics.get(key), int | float):
            into.append(float(metrics[key]))


def contains(text: str, phrase: str) -> bool:
    """``phrase`` is in ``text`` as whole words, ignoring case and punctuation."""
    words = " ".join(_WORDS.sub(" ", text.lower()).split())
    wanted = " ".join(_WORDS.sub(" ", phrase.lower()).split())
    return bool(wanted) and f" {wanted} " in f" {words} "


def judge(turn: Turn, timing: TurnTiming, seen: TurnEvents, next_talks_over: bool) -> list[Verdict]:
    """Every checked expectation of ``turn``, in the order :meth:`Expect.names` gives."""
    expect = turn.expect
    heard = " / ".join(seen.heard) or "nothing"
    answer = " / ".join(seen.answers) or "no answer"
    checks = {
        "heard": lambda: _all_words("heard", expect.heard, seen.heard, heard),
        "answer": lambda: _all_words("answer", expect.answer, seen.answers, answer),
        "answer_any": lambda: Verdict(
            "answer_any",
            any(contains(" ".join(seen.answers), word) for word in expect.answer_any),
            "one of " + ", ".join(repr(w) for w in expect.answer_any) + " in the answer",
            repr(answer),
        ),
        "tools": lambda: Verdict(
            "tools",
            all(name in seen.tools for name in expect.tools),
            "tools " + ", ".join(expect.tools) + " called and finished",
            (", ".join(seen.tools) or "no tool finished")
            + (f" ({', '.join(seen.failed_tools)} failed)" if seen.failed_tools else ""),
        ),
        "ticket": lambda: Verdict(
            "ticket",
            bool(seen.tickets) == expect.ticket,
            "a ticket created" if expect.ticket else "no ticket created",
            ("ticket " + ", ".join(seen.tickets)) if seen.tickets else "no ticket",
        ),
        "answered": lambda: _answered(expect, timing, turn.timeout_s),
        "no_cut_off": lambda: Verdict(
            "no_cut_off",
            not timing.cut_off,
            "the answer to start after the user finished",
            _cut_off_text(timing),
        ),
        "first_sound_ms": lambda: _within(
            "first_sound_ms", expect.first_sound_ms, timing.first_sound_ms, "of the end of speech"
        ),
        "halt_ms": lambda: _halt(expect, timing),
        "no_self_interruption": lambda: _self_interruption(seen, timing, next_talks_over),
    }
    return [checks[name]() for name in expect.names()]


def _all_words(name: str, wanted: Sequence[str], texts: Sequence[str], shown: str) -> Verdict:
    joined = " ".join(texts)
    missing = [word for word in wanted if not contains(joined, word)]
    return Verdict(
        name,
        not missing,
        ", ".join(repr(w) for w in wanted) + (" heard" if name == "heard" else " in the answer"),
        repr(shown) + (f" (missing {', '.join(repr(w) for w in missing)})" if missing else ""),
    )


def _answered(expect: Expect, timing: TurnTiming, timeout_s: float) -> Verdict:
    sounded = timing.answer_at is not None
    if expect.answered:
        return Verdict(
            "answered",
            sounded,
            f"an answer on the speaker within {timeout_s:g} s",
            "an answer" if sounded else "no sound from the speaker",
        )
    return Verdict("answered", not sounded, "no answer", "an answer" if sounded else "no answer")


def _cut_off_text(timing: TurnTiming) -> str:
    if not timing.cut_off or timing.speech_end is None or timing.answer_at is None:
        return "it did" if timing.answer_at is not None else "no answer"
    return f"an answer {round((timing.speech_end - timing.answer_at) * 1000)} ms before the user finished"


def _within(name: str, limit: float | None, value: float | None, since: str) -> Verdict:
    return Verdict(
        name,
        value is not None and limit is not None and value <= limit,
        f"within {limit:g} ms {since}",
        f"{value:g} ms" if value is not None else "not measured (no answer, or it came too early)",
    )


def _halt(expect: Expect, timing: TurnTiming) -> Verdict:
    if not timing.talked_over:
        return Verdict(
            "halt_ms",
            False,
            f"the speaker quiet within {expect.halt_ms:g} ms of the user's onset",
            "the answer was not playing when the user began",
        )
    return _within("halt_ms", expect.halt_ms, timing.halt_ms, "of the user's onset")


def _self_interruption(seen: TurnEvents, timing: TurnTiming, next_talks_over: bool) -> Verdict:
    problems = []
    # Cuts the user made: the next turn talking over the answer, and this turn's own words going
    # on over an answer that came too early (that one fails no_cut_off instead).
    expected_cuts = int(next_talks_over) + int(timing.cut_off)
    cut = max(0, seen.talked_over - expected_cuts)
    if cut > 0:
        problems.append(f"the answer was cut {cut} time(s) with nobody talking over it")
    if seen.false_interruptions:
        problems.append(
            f"the answer paused {seen.false_interruptions} time(s) on something that was not the user"
        )
    return Verdict(
        "no_self_interruption",
        not problems,
        "the answer played without stopping on its own",
        "; ".join(problems) or "it did",
    )
