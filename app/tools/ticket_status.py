"""The ``get_ticket_status`` tool: "what's happening with my ticket?", read from the real system.

With a ticket named (the ``HD-`` id the user heard, or the system's own number), it reads that
ticket through the connector: its status, title and link. With none, it lists the user's open
tickets in the system (by ``tickets.contact``) and the ones still queued on this computer. A ticket
not delivered yet is answered from the delivery journal (queued, and why); a system that cannot be
read now is said so, with what was last known.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any, Final

from app.tools.connectors import Connector, ConnectorError, RemoteTicket
from app.tools.delivery import DeliveryState, connector_for
from app.tools.registry import Tool, ToolError
from app.tools.tickets import TicketOutbox

__all__ = ["ticket_status_tool"]

_LOCAL_ID: Final = re.compile(r"\s*HD[-\s]?(\d{4,})\s*", re.IGNORECASE)
_MAX_LISTED: Final = 10

PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "ticket": {
            "type": "string",
            "description": "The ticket the user asks about: the id they were told (HD-1042) or the "
            "helpdesk's own number (RT #123, INC0010042, IT-17). Leave it out to list their open tickets.",
            "maxLength": 64,
        }
    },
    "additionalProperties": False,
}


def _remote(remote: RemoteTicket) -> dict[str, Any]:
    shown: dict[str, Any] = {"number": remote.number, "status": remote.status}
    if remote.title:
        shown["title"] = remote.title
    if remote.url:
        shown["url"] = remote.url
    if remote.updated_at:
        shown["updated_at"] = remote.updated_at
    return shown


def ticket_status_tool(
    outbox: TicketOutbox,
    state_of: Callable[[str], DeliveryState | None],
    connector: Callable[[], Connector | None],
    contact: str | None,
) -> Tool:
    """``state_of`` reads the delivery journal; ``connector()`` makes a connector (None: no system).

    Each read makes its own connector and releases it when done (:func:`connector_for`): a tool
    call must not leave the HTTP client it opened behind.
    """

    def local(ticket_id: str) -> dict[str, Any]:
        ticket = outbox.find(ticket_id)
        state = state_of(ticket_id)
        if ticket is None and state is None:
            raise ToolError("not_found", f"There is no ticket {ticket_id} from this computer.")
        answer: dict[str, Any] = {"ticket_id": ticket_id}
        if ticket is not None:
            answer["summary"] = ticket.summary
        if state is None or not state.delivered:
            answer["status"] = "queued on this computer, not yet with the IT helpdesk"
            if state is not None and state.problem:
                answer["why"] = state.problem
            return answer
        answer |= {"number": state.number, "system": state.system}
        if state.ref is None:
            return answer | {"status": "delivered"}
        with connector_for(connector) as system:
            if system is None:
                return answer | {"status": "delivered"}
            try:
                return answer | _remote(system.get(state.ref))
            except ConnectorError as exc:
                return answer | {
                    "status": "delivered; its current status could not be read",
                    "why": exc.message,
                }

    def remote(number: str) -> dict[str, Any]:
        with connector_for(connector) as system:
            if system is None:
                raise ToolError("no_ticket_system", f"{number} is not a ticket id from this computer.")
            ref = re.sub(r"^\s*RT\s*#?\s*", "", number.strip(), flags=re.IGNORECASE)
            try:
                return _remote(system.get(ref))
            except ConnectorError as exc:
                raise ToolError(
                    "status_unavailable", f"The status of {number} could not be read: {exc.message}"
                ) from exc

    def listing() -> dict[str, Any]:
        queued = [
            {"ticket_id": ticket.id, "summary": ticket.summary, "status": "queued on this computer"}
            for ticket in outbox.list()
            if not ((state := state_of(ticket.id)) is not None and state.delivered)
        ][:_MAX_LISTED]
        answer: dict[str, Any] = {"queued_here": queued}
        with connector_for(connector) as system:
            if system is None:
                return answer | {"note": "no ticket system is set up; tickets stay on this computer"}
            if not contact:
                return answer | {
                    "note": "the user's e-mail address is not set, so their tickets cannot be listed"
                }
            try:
                open_tickets = system.open_tickets(contact)
            except ConnectorError as exc:
                return answer | {"note": f"the helpdesk's tickets could not be read: {exc.message}"}
        return answer | {"open": [_remote(ticket) for ticket in open_tickets[:_MAX_LISTED]]}

    def status(arguments: dict[str, Any]) -> dict[str, Any]:
        asked = str(arguments.get("ticket") or "").strip()
        if not asked:
            return listing()
        match = _LOCAL_ID.fullmatch(asked)
        return local(f"HD-{match.group(1)}") if match else remote(asked)

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        try:  # the keyring, the disk and the network all block: a thread of its own
            return await asyncio.to_thread(status, arguments)
        except ConnectorError as exc:  # making the connector: a setting or credential missing
            raise ToolError("ticket_system_not_set_up", exc.message) from exc

    return Tool(
        name="get_ticket_status",
        description=(
            "Look up the user's helpdesk tickets: one ticket's status when they name it, or their open "
            "tickets when they ask what is happening with their tickets. Read the status to them in "
            "plain words."
        ),
        parameters=PARAMETERS,
        handler=handler,
    )
