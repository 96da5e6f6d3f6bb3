"""Handoff to a person: request_human puts the conversation as heard on the ticket and says how IT
reaches the user; notes (a handoff, diagnostics) reach the ticket system as comments.

The ticket system is the in-memory stand-in (tests/memory_ticket_system.py); notes are sealed in the
outbox with a real keyring backend (a file).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from app.sealed_files import DataKeyring, is_sealed
from app.tools import default_registry
from app.tools.connectors import ConnectorError
from app.tools.delivery import DeliveryWorker
from app.tools.handoff import HandoffOptions
from app.tools.registry import ToolRegistry
from app.tools.tickets import TicketOutbox, conversation_text
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem, call_tool

HEARD = [
    ("user", "My VPN keeps dropping."),
    ("assistant", "Let's fix that. First, open the VPN app and..."),  # cut where the user spoke over it
    ("user", "I tried that already. Let me talk to someone."),
]
OPTIONS = HandoffOptions(
    phone="+1 555 0100", chat_url="https://chat.contoso.example", callback="within two hours"
)


@pytest.fixture
def tools(worker: DeliveryWorker) -> ToolRegistry:
    return default_registry(
        delivery=worker, contact="dana@contoso.example", handoff=OPTIONS, transcript=lambda: HEARD
    )


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_handoff_sentence_says_how_and_when() -> None:
    assert OPTIONS.sentence("HD-1001") == (
        "A person from IT will contact you within two hours about ticket HD-1001. If it cannot wait, you "
        "can call +1 555 0100 or chat at https://chat.contoso.example."
    )
    assert HandoffOptions().sentence("HD-1001") == "A person from IT will contact you about ticket HD-1001."


async def test_a_handoff_without_a_ticket_files_one_with_the_conversation_as_heard(
    tools: ToolRegistry, system: MemorySystem
) -> None:
    answer = await call_tool(tools, "request_human", reason="VPN still drops after the steps")
    assert answer["handoff"] == "requested" and answer["phone"] == "+1 555 0100"
    assert answer["message"] == OPTIONS.sentence(answer["ticket_id"])
    _wait(lambda: system.filed(answer["ticket_id"]) == 1)
    (draft,) = system.tickets.values()
    assert draft.summary == "User asked for a person: VPN still drops after the steps"
    assert "Assistant: Let's fix that. First, open the VPN app and..." in draft.description
    assert draft.description.index("User: My VPN") < draft.description.index("User: I tried that")
    assert draft.contact == "dana@contoso.example"


async def test_a_handoff_on_a_filed_ticket_adds_the_conversation_to_it(
    tools: ToolRegistry, system: MemorySystem, worker: DeliveryWorker
) -> None:
    filed = await call_tool(
        tools, "create_ticket", summary="VPN drops", description="It drops.", category="network"
    )
    answer = await call_tool(tools, "request_human", reason="still broken", ticket=filed["ticket_id"].lower())
    assert answer["ticket_id"] == filed["ticket_id"]
    _wait(lambda: len(system.comments.get(1, [])) == 2)
    filed_with, comment = system.comments[1]
    # The ticket got the conversation as heard when it was filed; the handoff adds it again, later.
    assert filed_with.startswith("The conversation when the ticket was filed, as the user heard it:")
    assert comment.startswith("The user asked to talk to a person: still broken")
    assert conversation_text(HEARD) in comment
    assert worker.outbox.notes(filed["ticket_id"]) == []  # taken by the system: not added twice
    assert system.filed(filed["ticket_id"]) == 1


async def test_a_handoff_on_an_unknown_ticket_is_a_clear_error(tools: ToolRegistry) -> None:
    result = await tools.run("request_human", json.dumps({"reason": "help", "ticket": "HD-9999"}))
    assert not result.ok and "no ticket HD-9999" in json.dumps(result.output)


def test_a_note_waits_sealed_until_its_ticket_is_delivered_and_a_failed_comment_is_retried(
    tmp_path: Path, file_keyring: FileKeyring, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("app.tools.delivery.FIRST_RETRY_S", 0.05)
    outbox = TicketOutbox(tmp_path / "outbox", keys=DataKeyring())
    ticket_id = outbox.create("Printer jams", "Paper jams on every page.", "hardware").id
    outbox.add_note(ticket_id, "Diagnostics: OS Linux")
    (note_file,) = (tmp_path / "outbox" / ".notes").iterdir()
    assert is_sealed(note_file.read_bytes()) and b"Diagnostics" not in note_file.read_bytes()
    system: MemorySystem | None = None
    worker = DeliveryWorker(outbox, lambda: system)
    worker.start()
    try:
        time.sleep(0.2)
        assert outbox.notes(ticket_id) == [(note_file.name, "Diagnostics: OS Linux")]  # no system yet
        system = MemorySystem()
        worker.reconfigure()
        assert worker.wait_delivered(ticket_id, timeout=10) is not None
        _wait(lambda: system is not None and system.comments.get(1) == ["Diagnostics: OS Linux"])
        original, tries = system.comment, []

        def refuse_once(ref: str, text: str) -> None:
            tries.append(text)
            if len(tries) == 1:
                raise ConnectorError("unavailable", "The helpdesk is not answering.")
            original(ref, text)

        monkeypatch.setattr(system, "comment", refuse_once)
        worker.add_note(ticket_id, "Handoff: the user asked for a person")
        _wait(lambda: system is not None and len(system.comments.get(1, [])) == 2)
    finally:
        worker.stop()
    assert outbox.notes(ticket_id) == []
