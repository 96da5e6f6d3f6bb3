"""A ticket system in memory, standing in for one unit: the delivery's and the status tool's tests."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

from app.tools.connectors import ConnectorError, RemoteTicket, TicketDraft
from app.tools.delivery import DeliveryWorker
from app.tools.registry import ToolRegistry
from app.tools.tickets import TicketOutbox


class MemorySystem:
    """A ticket system in memory; ``fail_next`` makes the next calls fail, ``lose_reply`` files the
    ticket and then fails as a lost reply would."""

    name = "Memory desk"

    def __init__(self) -> None:
        self.tickets: dict[str, TicketDraft] = {}
        self.fail_next: list[ConnectorError] = []
        self.lose_reply = False
        self.calls: list[str] = []
        self.statuses: dict[int, str] = {}  # a technician's changes, by ticket number
        self.comments: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise self.fail_next.pop(0)

    def _remote(self, number: int) -> RemoteTicket:
        draft = list(self.tickets.values())[number - 1]
        status = self.statuses.get(number, "new")
        return RemoteTicket(
            f"MD-{number}", status, f"https://desk.example/{number}", draft.summary, ref=str(number)
        )

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        with self.lock:
            self.calls.append("find")
            self._maybe_fail()
            for number, draft in enumerate(self.tickets.values(), 1):
                if draft.idempotency_key == idempotency_key:
                    return self._remote(number)
            return None

    def create(self, draft: TicketDraft) -> RemoteTicket:
        with self.lock:
            self.calls.append("create")
            self._maybe_fail()
            self.tickets[draft.local_id + f"#{len(self.tickets)}"] = draft
            if self.lose_reply:
                self.lose_reply = False
                raise ConnectorError("unavailable", "The connection dropped before the system answered.")
            return self._remote(len(self.tickets))

    def get(self, ref: str) -> RemoteTicket:
        with self.lock:
            self.calls.append("get")
            self._maybe_fail()
            if not ref.isdigit() or not 1 <= int(ref) <= len(self.tickets):
                raise ConnectorError("not_found", f"There is no ticket {ref} in the Memory desk.")
            return self._remote(int(ref))

    def comment(self, ref: str, text: str) -> None:
        with self.lock:
            self.comments.setdefault(int(ref), []).append(text)

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        with self.lock:
            self.calls.append("open_tickets")
            self._maybe_fail()
            drafts = list(self.tickets.values())
            return [
                self._remote(number)
                for number in range(len(drafts), 0, -1)
                if drafts[number - 1].contact == contact and self.statuses.get(number, "new") != "resolved"
            ]

    def filed(self, local_id: str) -> int:
        return sum(1 for draft in self.tickets.values() if draft.local_id == local_id)


async def call_tool(tools: ToolRegistry, name: str, **arguments: Any) -> dict[str, Any]:
    """The tool's output, which must be a success."""
    result = await tools.run(name, json.dumps(arguments))
    assert result.ok, result.output
    output: dict[str, Any] = result.output
    return output


def run_until_notes_are_sent(
    worker: DeliveryWorker, outbox: TicketOutbox, ticket_id: str | None, timeout: float = 10.0
) -> None:
    """Runs ``worker`` until ``ticket_id`` is delivered (when given) and no note waits, then stops it."""
    worker.start()
    try:
        if ticket_id is not None:
            assert worker.wait_delivered(ticket_id, timeout=timeout) is not None
        deadline = time.monotonic() + timeout
        while outbox.note_names() and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        worker.stop()
