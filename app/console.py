"""The headless console: transcript lines on stdout, status on stderr, metrics and events to files.

The events file (``--events``) is for test drivers (``helpdesk-voice drive``): one JSON object per
line, each with ``kind`` and ``t``, the system's monotonic clock in seconds, which on Linux is one
clock for every process, so a driver can place events beside the audio it recorded.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from app.core.actions import Notice, State, StateChanged, ToolActivity, Transcript, TurnCompleted


class ConsoleListener:
    """Prints ``ready_line()`` (``listening on IN -> OUT``) once ready, then ``you:``/``assistant:`` lines."""

    def __init__(
        self,
        ready_line: Callable[[], str],
        metrics_path: Path | None = None,
        turns: int | None = None,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        events_path: Path | None = None,
    ) -> None:
        self.ready_line = ready_line
        self.metrics_path = metrics_path
        self.events_path = events_path
        self.turns_wanted = turns
        self.turns_done = 0
        self.enough = threading.Event()  # set when --turns is reached
        self._out = out
        self._err = err
        self._ready = False
        self._failed: set[Path] = set()

    def on_state(self, event: StateChanged) -> None:
        self._event("state", state=event.state.name.lower(), muted=event.muted)
        if event.state is State.LISTENING and not self._ready:
            self._ready = True
            self._print(self.ready_line())

    def on_transcript(self, event: Transcript) -> None:
        if event.final:
            self._event(
                "transcript",
                role=event.role,
                item_id=event.item_id,
                text=event.text,
                interrupted=event.interrupted,
            )
        if event.role == "user" and event.final and event.text:
            self._print(f"you: {event.text}")

    def on_tool(self, event: ToolActivity) -> None:
        self._event(
            "tool", call_id=event.call_id, name=event.name, status=event.status, message=event.message
        )
        self._print(f"[{event.message}]", self._err)

    def on_turn(self, event: TurnCompleted) -> None:
        if event.assistant_text:
            self._print(f"assistant: {event.assistant_text}")
        if self.metrics_path is not None:
            self._append(self.metrics_path, "metrics", event.metrics.to_json())
        self._event(
            "turn", user=event.user_text, assistant=event.assistant_text, metrics=event.metrics.as_dict()
        )
        self.turns_done += 1
        if self.turns_wanted is not None and self.turns_done >= self.turns_wanted:
            self.enough.set()

    def on_notice(self, event: Notice) -> None:
        self._event("notice", level=event.level, message=event.message)
        self._print(f"helpdesk-voice: {event.message}", self._err)

    def _event(self, kind: str, **fields: object) -> None:
        if self.events_path is not None:
            line = json.dumps(
                {"kind": kind, "t": round(time.monotonic(), 4), **fields}, separators=(",", ":")
            )
            self._append(self.events_path, "events", line)

    def _append(self, path: Path, what: str, line: str) -> None:
        if path in self._failed:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as file:
                file.write(line + "\n")
        except OSError as exc:
            self._failed.add(path)  # say it once, keep the conversation going
            self._print(f"helpdesk-voice: cannot write {what} to {path}: {exc.strerror}", self._err)

    def _print(self, line: str, stream: TextIO | None = None) -> None:
        print(line, file=stream or self._out, flush=True)
