"""docs/protocol.md's conformance table is true to the code and names every GA event.

The GA event types come from the ``openai`` package's own unions (``RealtimeClientEvent``,
``RealtimeServerEvent``). Both roles share the event types of ``app/core/protocol.py``, so what each
side sends or acts on is read from which of those types its code names: the app's modules for what the
app sends and acts on, the offline server's (``app/localmodel/``) for what it sends, and its dispatch
table for what it accepts. A row that claims more or less than the code, a GA event the table forgets,
or a "no" without a reason fails here.
"""

from __future__ import annotations

import ast
import re
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from app.core import protocol

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
ROW = re.compile(r"^\|\s*`([a-z_.]+)`\s*\|\s*(yes|no)\s*\|\s*(yes|no)\s*\|(.*)\|\s*$")


def _ga_types(union: object) -> set[str]:
    members = typing.get_args(union)
    if typing.get_origin(union) is typing.Annotated:
        members = typing.get_args(members[0])
    return {value for model in members for value in typing.get_args(model.model_fields["type"].annotation)}


def _named_in(paths: list[Path], classes: Iterable[type[Any]]) -> set[str]:
    """The event types of ``classes`` whose class the modules at ``paths`` name (``p.X`` or ``X``)."""
    names = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Name):
                names.add(node.id)
            elif isinstance(node, ast.Attribute):
                names.add(node.attr)
    return {cls.TYPE for cls in classes if cls.__name__ in names}


SERVER_FILES = sorted((ROOT / "app" / "localmodel").glob("*.py"))
SHARED_FILES = {ROOT / "app" / "core" / "protocol.py", ROOT / "app" / "core" / "wire.py"}
APP_FILES = sorted(set((ROOT / "app").rglob("*.py")) - set(SERVER_FILES) - SHARED_FILES)


def _server_sends() -> set[str]:
    return _named_in(SERVER_FILES, protocol.SERVER_EVENTS.values())


def _table(heading: str) -> dict[str, tuple[bool, bool, str]]:
    """The rows under ``heading``: event -> (first column, second column, note)."""
    text = DOC.read_text(encoding="utf-8")
    section = text.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, tuple[bool, bool, str]] = {}
    for line in section.splitlines():
        match = ROW.match(line.strip())
        if match:
            assert match.group(1) not in rows, f"{match.group(1)} is listed twice under {heading}"
            rows[match.group(1)] = (match.group(2) == "yes", match.group(3) == "yes", match.group(4).strip())
    return rows


def _column(rows: dict[str, tuple[bool, bool, str]], index: int) -> set[str]:
    return {name for name, row in rows.items() if row[index]}


def test_the_ga_event_lists_are_read() -> None:
    """The checks below rest on these: they must see the events, not an empty set."""
    assert {"session.update", "response.create", "conversation.item.truncate"} <= _ga_types(
        RealtimeClientEvent
    )
    assert {"session.created", "response.done", "error"} <= _ga_types(RealtimeServerEvent)
    assert "response.create" in _named_in(APP_FILES, protocol.CLIENT_EVENTS.values())
    assert "response.output_audio.delta" in _named_in(APP_FILES, protocol.SERVER_EVENTS.values())
    assert "response.done" in _server_sends()


def test_client_events_row_by_row() -> None:
    rows = _table("Client events")
    assert set(rows) == _ga_types(RealtimeClientEvent), "the table and the GA client events differ"
    assert _column(rows, 0) == _named_in(APP_FILES, protocol.CLIENT_EVENTS.values()), "what the app sends"
    accepts = _named_in([ROOT / "app" / "localmodel" / "session.py"], protocol.CLIENT_EVENTS.values())
    assert _column(rows, 1) == accepts, "what the offline server accepts"
    unexplained = [
        name for name, (sent, accepted, note) in rows.items() if not (sent and accepted) and not note
    ]
    assert unexplained == [], f"a 'no' needs a reason: {unexplained}"


def test_server_events_row_by_row() -> None:
    rows = _table("Server events")
    assert set(rows) == _ga_types(RealtimeServerEvent), "the table and the GA server events differ"
    assert _column(rows, 0) == _server_sends(), "what the server sends"
    assert _column(rows, 1) == _named_in(APP_FILES, protocol.SERVER_EVENTS.values()), "what the app acts on"
    unexplained = [name for name, (sent, read, note) in rows.items() if not (sent and read) and not note]
    assert unexplained == [], f"a 'no' needs a reason: {unexplained}"
