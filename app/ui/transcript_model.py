"""The transcript as plain data: entries built from the engine's reports, exported without Qt.

Deltas append to the entry of their item, a final replaces that entry's text, tool activity updates
one line per call, and a completed turn attaches its time to first audio to the assistant's entry.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from app.core.actions import Notice, ToolActivity, Transcript, TurnCompleted
from app.fileio import write_atomically

EntryKind = Literal["user", "assistant", "tool", "notice"]

LABELS: dict[str, str] = {"user": "You", "assistant": "Assistant", "tool": "Tool", "notice": "Notice"}
INTERRUPTED_MARK = "interrupted"


@dataclass
class Entry:
    kind: EntryKind
    text: str
    at: datetime
    key: str | None = None  # item id (speech) or call id (tool)
    final: bool = False
    interrupted: bool = False
    status: str | None = None  # tool status or notice level
    name: str | None = None  # tool name
    ttfa_ms: float | None = None

    @property
    def timestamp(self) -> str:
        return self.at.strftime("%H:%M:%S")

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "kind": self.kind,
            "time": self.at.isoformat(timespec="seconds"),
            "text": self.text,
        }
        if self.key is not None:
            data["id"] = self.key
        if self.kind in ("user", "assistant"):
            data["final"] = self.final
            data["interrupted"] = self.interrupted
        if self.status is not None:
            data["status"] = self.status
        if self.name is not None:
            data["name"] = self.name
        if self.ttfa_ms is not None:
            data["ttfa_ms"] = round(self.ttfa_ms, 1)
        return data


class TranscriptModel:
    """Entries in order of first appearance. Each ``apply_*`` returns the index it changed."""

    def __init__(self, clock: Callable[[], datetime] = datetime.now) -> None:
        self.entries: list[Entry] = []
        self._clock = clock
        self._by_key: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def clear(self) -> None:
        self.entries.clear()
        self._by_key.clear()

    def _entry_for(self, kind: EntryKind, key: str) -> tuple[int, Entry]:
        index = self._by_key.get((kind, key))
        if index is None:
            index = len(self.entries)
            self.entries.append(Entry(kind, "", self._clock(), key=key))
            self._by_key[(kind, key)] = index
        return index, self.entries[index]

    def apply_transcript(self, event: Transcript) -> int:
        index, entry = self._entry_for(event.role, event.item_id)
        if event.final:
            entry.text = event.text
            entry.final = True
            entry.interrupted = event.interrupted
        elif not entry.final:  # a late delta never undoes a final
            entry.text += event.text
        return index

    def apply_tool(self, event: ToolActivity) -> int:
        index, entry = self._entry_for("tool", event.call_id)
        entry.text = event.message
        entry.status = event.status
        entry.name = event.name
        entry.final = event.status in ("done", "failed")
        return index

    def apply_turn(self, event: TurnCompleted) -> int | None:
        """Attach the turn's time to first audio to its last assistant entry (None: nothing to show)."""
        if event.metrics.ttfa_ms is None:
            return None
        for index in range(len(self.entries) - 1, -1, -1):
            entry = self.entries[index]
            if entry.kind == "assistant":
                entry.ttfa_ms = event.metrics.ttfa_ms
                return index
            if entry.kind == "user":
                break
        return None

    def apply_notice(self, event: Notice) -> int:
        self.entries.append(Entry("notice", event.message, self._clock(), final=True, status=event.level))
        return len(self.entries) - 1

    # ------------------------------------------------------------------------------------------
    # Search and export
    # ------------------------------------------------------------------------------------------
    def find(self, query: str) -> list[int]:
        """Indices of the entries whose text contains ``query`` (case-insensitive)."""
        needle = query.casefold()
        if not needle:
            return []
        return [i for i, e in enumerate(self.entries) if needle in e.text.casefold()]

    def plain_text(self) -> str:
        return "\n".join(_plain_line(e) for e in self.entries)

    def to_json(self) -> str:
        return json.dumps({"entries": [e.as_dict() for e in self.entries]}, indent=2, ensure_ascii=False)

    def to_markdown(self) -> str:
        lines = ["# Helpdesk Voice transcript", ""]
        for entry in self.entries:
            text = entry.text.replace("\n", "  \n")
            if entry.kind in ("user", "assistant"):
                line = f"- **{LABELS[entry.kind]}** ({entry.timestamp}): {text}"
                if entry.interrupted:
                    line += f" *({INTERRUPTED_MARK})*"
                if entry.ttfa_ms is not None:
                    line += f" <sub>first audio {entry.ttfa_ms:.0f} ms</sub>"
            elif entry.kind == "tool":
                line = f"- *{entry.timestamp} tool {entry.name or ''}:* {text}"
            else:
                line = f"- *{entry.timestamp} {entry.status or 'notice'}:* {text}"
            lines.append(line)
        return "\n".join(lines) + "\n"

    def export(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON for ``.json``, else Markdown, atomically (temporary file, then rename)."""
        target = Path(path)
        content = self.to_json() + "\n" if target.suffix.lower() == ".json" else self.to_markdown()
        write_atomically(target, content)
        return target


def _plain_line(entry: Entry) -> str:
    label = LABELS[entry.kind]
    line = f"[{entry.timestamp}] {label}: {entry.text}"
    if entry.interrupted:
        line += f" ({INTERRUPTED_MARK})"
    return line
