"""The headless console: transcript lines on stdout, status on stderr, metrics to a file."""

from __future__ import annotations

import sys
import threading
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
    ) -> None:
        self.ready_line = ready_line
        self.metrics_path = metrics_path
        self.turns_wanted = turns
        self.turns_done = 0
        self.enough = threading.Event()  # set when --turns is reached
        self._out = out
        self._err = err
        self._ready = False
        self._metrics_failed = False

    def on_state(self, event: StateChanged) -> None:
        if event.state is State.LISTENING and not self._ready:
            self._ready = True
            self._print(self.ready_line())

    def on_transcript(self, event: Transcript) -> None:
        if event.role == "user" and event.final and event.text:
            self._print(f"you: {event.text}")

    def on_tool(self, event: ToolActivity) -> None:
        self._print(f"[{event.message}]", self._err)

    def on_turn(self, event: TurnCompleted) -> None:
        if event.assistant_text:
            self._print(f"assistant: {event.assistant_text}")
        self._write_metrics(event)
        self.turns_done += 1
        if self.turns_wanted is not None and self.turns_done >= self.turns_wanted:
            self.enough.set()

    def on_notice(self, event: Notice) -> None:
        self._print(f"helpdesk-voice: {event.message}", self._err)

    def _write_metrics(self, event: TurnCompleted) -> None:
        if self.metrics_path is None or self._metrics_failed:
            return
        try:
            self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_path.open("a", encoding="utf-8") as file:
                file.write(event.metrics.to_json() + "\n")
        except OSError as exc:
            self._metrics_failed = True  # say it once, keep the conversation going
            self._print(
                f"helpdesk-voice: cannot write metrics to {self.metrics_path}: {exc.strerror}", self._err
            )

    def _print(self, line: str, stream: TextIO | None = None) -> None:
        print(line, file=stream or self._out, flush=True)
