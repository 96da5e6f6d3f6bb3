"""The ticket tools with a ticket system: create_ticket tells the real number, get_ticket_status reads it.

The system is the in-memory stand-in (tests/memory_ticket_system.py); tests/test_connector_rt.py and
the end-to-end tests run the same tools against the real Request Tracker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.tools import default_registry
from app.tools.connectors import ConnectorError
from app.tools.delivery import DeliveryWorker
from app.tools.registry import ToolRegistry
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem, call_tool

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
