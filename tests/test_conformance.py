"""docs/protocol.md's conformance table is true to the code and names every GA event.

The GA event types come from the ``openai`` package's own unions (``RealtimeClientEvent``,
``RealtimeServerEvent``); what the app sends and the offline server emits is read from the event
builders' source (the first argument of each ``_event(...)`` call); what the app reads and the server
accepts from their dispatch tables. A row that claims more or less than the code, a GA event the table
forgets, or a "no" without a reason fails here.
"""

from __future__ import annotations

import ast
import re
import typing
from pathlib import Path

from openai.types.realtime.realtime_client_event import RealtimeClientEvent
from openai.types.realtime.realtime_server_event import RealtimeServerEvent

from app.core import protocol
from app.localmodel import session

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "protocol.md"
ROW = re.compile(r"^\|\s*`([a-z_.]+)`\s*\|\s*(yes|no)\s*\|\s*(yes|no)\s*\|(.*)\|\s*$")


def _ga_types(union: object) -> set[str]:
    members = typing.get_args(union)
    if typing.get_origin(union) is typing.Annotated:
        members = typing.get_args(members[0])
    return {value for model in members for value in typing.get_args(model.model_fields["type"].annotation)}


def _built_types(path: Path) -> set[str]:
    """Event types a builder module makes: the literal first argument of every ``_event(...)`` call."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id == "_event"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return found


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
    assert "response.create" in _built_types(ROOT / "app" / "core" / "protocol.py")
    assert "response.done" in _built_types(ROOT / "app" / "localmodel" / "events.py")


def test_client_events_row_by_row() -> None:
    rows = _table("Client events")
    assert set(rows) == _ga_types(RealtimeClientEvent), "the table and the GA client events differ"
    assert _column(rows, 0) == _built_types(ROOT / "app" / "core" / "protocol.py"), "what the app sends"
    assert _column(rows, 1) == set(session._HANDLERS), "what the offline server accepts"
    unexplained = [
        name for name, (sent, accepted, note) in rows.items() if not (sent and accepted) and not note
    ]
    assert unexplained == [], f"a 'no' needs a reason: {unexplained}"


def test_server_events_row_by_row() -> None:
    rows = _table("Server events")
    assert set(rows) == _ga_types(RealtimeServerEvent), "the table and the GA server events differ"
    assert _column(rows, 0) == _built_types(ROOT / "app" / "localmodel" / "events.py"), (
        "what the server sends"
    )
    assert _column(rows, 1) == set(protocol._PARSERS), "what the app reads"
    unexplained = [name for name, (sent, read, note) in rows.items() if not (sent and read) and not note]
    assert unexplained == [], f"a 'no' needs a reason: {unexplained}"
