"""The ticket tools with a ticket system: create_ticket tells the real number, get_ticket_status reads it.

The system is the in-memory stand-in (tests/memory_ticket_system.py); tests/test_connector_rt.py and
the end-to-end tests run the same tools against the real Request Tracker, as does the last test here,
which checks that the HTTP clients the reads open are closed.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import ticket_systems
from app.config import TicketSettings
from app.sealed_files import DataKeyring
from app.tools import TicketOutbox, default_registry
from app.tools.connectors import ConnectorError
from app.tools.delivery import DeliveryWorker
from app.tools.registry import ToolRegistry
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem, call_tool
from tests.rt_server import RtInstance

CONTACT = "dana@contoso.example"


@pytest.fixture
def tools(worker: DeliveryWorker) -> ToolRegistry:
    return default_registry(delivery=worker, contact=CONTACT)


async def _file(tools: ToolRegistry, summary: str = "VPN drops every hour") -> dict[str, Any]:
    return await call_tool(
        tools, "create_ticket", summary=summary, description="It drops.", category="network"
    )


async def test_a_new_ticket_is_answered_with_the_systems_own_number(
    tools: ToolRegistry, system: MemorySystem
) -> None:
    answer = await _file(tools)
    assert answer["status"] == "delivered" and answer["ticket_number"] == "MD-1"
    assert answer["system"] == "Memory desk" and "MD-1" in answer["message"]
    assert system.filed(answer["ticket_id"]) == 1
    assert next(iter(system.tickets.values())).contact == CONTACT


async def test_a_ticket_the_system_cannot_take_now_is_answered_with_the_local_id(
    tools: ToolRegistry, system: MemorySystem
) -> None:
    system.fail_next = [ConnectorError("unavailable", "The helpdesk is not answering.")] * 2
    answer = await _file(tools)
    assert answer["status"] == "queued" and "ticket_number" not in answer
    assert answer["ticket_id"] in answer["message"] and "sent" in answer["message"]
    status = await call_tool(tools, "get_ticket_status", ticket=answer["ticket_id"])
    assert status["status"].startswith("queued") and status["why"] == "The helpdesk is not answering."


async def test_status_of_a_delivered_ticket_reads_the_system(
    tools: ToolRegistry, system: MemorySystem
) -> None:
    ticket_id = (await _file(tools))["ticket_id"]
    system.statuses[1] = "open"  # a technician picked it up
    status = await call_tool(tools, "get_ticket_status", ticket=ticket_id.lower().replace("-", " "))
    assert (status["ticket_id"], status["number"], status["status"]) == (ticket_id, "MD-1", "open")
    assert status["url"] == "https://desk.example/1" and status["title"] == "VPN drops every hour"
    by_number = await call_tool(tools, "get_ticket_status", ticket="1")
    assert by_number["status"] == "open"


async def test_status_says_when_the_system_cannot_be_read(tools: ToolRegistry, system: MemorySystem) -> None:
    ticket_id = (await _file(tools))["ticket_id"]
    system.fail_next = [ConnectorError("unavailable", "The helpdesk is not answering.")]
    status = await call_tool(tools, "get_ticket_status", ticket=ticket_id)
    assert status["number"] == "MD-1" and "could not be read" in status["status"]


async def test_without_a_ticket_named_the_users_open_tickets_are_listed(
    tools: ToolRegistry, system: MemorySystem
) -> None:
    await _file(tools, "VPN drops")
    await _file(tools, "Printer jams")
    system.statuses[1] = "resolved"
    listing = await call_tool(tools, "get_ticket_status")
    assert [ticket["title"] for ticket in listing["open"]] == ["Printer jams"]
    assert listing["queued_here"] == []


async def test_an_unknown_ticket_is_a_clear_error(tools: ToolRegistry) -> None:
    result = await tools.run("get_ticket_status", json.dumps({"ticket": "HD-9999"}))
    assert not result.ok and "no ticket HD-9999" in str(result.output)


async def test_without_a_system_tickets_are_listed_as_queued_here(
    tmp_path: Path, file_keyring: FileKeyring
) -> None:
    tools = default_registry(outbox_dir=tmp_path / "outbox")
    filed = await _file(tools)
    assert filed["status"] == "queued"
    listing = await call_tool(tools, "get_ticket_status")
    assert [ticket["ticket_id"] for ticket in listing["queued_here"]] == [filed["ticket_id"]]
    assert "no ticket system" in listing["note"]


async def test_status_reads_close_the_http_client_they_open_and_the_worker_closes_its_own(
    tmp_path: Path, file_keyring: FileKeyring, rt: RtInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against the real Request Tracker: every client ``make_connector`` opens is closed by its user."""
    made: list[httpx.Client] = []
    new_client = ticket_systems._new_client

    def recorded() -> httpx.Client:
        client = new_client()
        made.append(client)
        return client

    monkeypatch.setattr(ticket_systems, "_new_client", recorded)
    ticket_systems.store_ticket_secret("rt", rt.token)
    settings = TicketSettings("rt", rt.base_url, rt.queue, "", "", "", "", CONTACT)
    outbox = TicketOutbox(tmp_path / "outbox", keys=DataKeyring())
    worker = DeliveryWorker(outbox, lambda: ticket_systems.make_connector(settings))
    worker.start()
    try:
        tools = default_registry(delivery=worker, contact=CONTACT)
        filed = await _file(tools)
        assert filed["status"] == "delivered" and filed["ticket_number"].startswith("RT #"), filed
        (delivering,) = made
        assert not delivering.is_closed  # the worker's, kept for its next tickets

        status = await call_tool(tools, "get_ticket_status", ticket=filed["ticket_id"])
        assert status["number"] == filed["ticket_number"] and status["status"] == "new"
        await call_tool(tools, "get_ticket_status")  # the user's open tickets
        refused = await tools.run("get_ticket_status", json.dumps({"ticket": "RT #999999"}))
        assert not refused.ok  # a failed read closes its client too
        reads = made[1:]
        assert len(reads) == 3 and all(client.is_closed for client in reads)
        assert not delivering.is_closed

        # New settings: the worker's next connector replaces the old, whose client it closes.
        worker.reconfigure()
        deadline = time.monotonic() + 30
        # The old one is closed just before the new one is made: wait for both.
        while not (delivering.is_closed and len(made) == 5) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert delivering.is_closed and len(made) == 5 and not made[-1].is_closed
    finally:
        worker.stop()
    assert all(client.is_closed for client in made)  # stopping closes the last one
