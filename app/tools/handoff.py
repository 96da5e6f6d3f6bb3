"""The ``request_human`` tool: "let me talk to someone".

It puts the conversation so far (as the user heard it: an answer they talked over is there only as
far as they heard it) on the ticket, filing one when there is none yet, and tells the user how and
when a person will reach them: the site policy's ``handoff.*`` settings (a phone number, a chat link,
a call-back window), or, without them, that a technician will contact them about the ticket.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from app.tools.registry import Tool, ToolError
from app.tools.tickets import DESCRIPTION_MAX, Delivery, TicketOutbox, conversation_text

__all__ = ["HandoffOptions", "request_human_tool"]

_LOCAL_ID: Final = re.compile(r"\s*HD[-\s]?(\d{4,})\s*", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class HandoffOptions:
    """How the helpdesk's people can be reached (each may be empty)."""

    phone: str = ""
    chat_url: str = ""
    callback: str = ""  # "within two working hours"

    def sentence(self, ticket_id: str) -> str:
        """What to tell the user, in one or two sentences."""
        when = f" {self.callback}" if self.callback else ""
        first = f"A person from IT will contact you{when} about ticket {ticket_id}."
        ways = [
            f"call {self.phone}" if self.phone else "",
            f"chat at {self.chat_url}" if self.chat_url else "",
        ]
        ways = [way for way in ways if way]
        return first + (f" If it cannot wait, you can {' or '.join(ways)}." if ways else "")


PARAMETERS: Final[dict[str, Any]] = {
    "type": "object",
    "properties": {
        "reason": {
            "type": "string",
            "description": "Why the user wants a person, in their terms, with what is still not working.",
            "minLength": 1,
            "maxLength": 500,
        },
        "ticket": {
            "type": "string",
            "description": "The ticket already filed in this conversation (HD-1042), if there is one.",
            "maxLength": 64,
        },
    },
    "required": ["reason"],
    "additionalProperties": False,
}


def request_human_tool(
    outbox: TicketOutbox,
    transcript: Callable[[], list[tuple[str, str]]],
    options: HandoffOptions,
    *,
    delivery: Delivery | None = None,
    contact: str | None = None,
) -> Tool:
    """``transcript()`` gives the conversation so far as (role, text) pairs; called on the event loop."""

    def hand_off(reason: str, ticket: str, heard: str) -> dict[str, Any]:
        note = f"The user asked to talk to a person: {reason}\n\nThe conversation so far:\n{heard}"
        match = _LOCAL_ID.fullmatch(ticket) if ticket else None
        if match is not None:
            ticket_id = f"HD-{match.group(1)}"
            try:
                if delivery is not None:
                    delivery.add_note(ticket_id, note)  # and to the system once the ticket is there
                else:
                    outbox.add_note(ticket_id, note)
            except ValueError as exc:
                raise ToolError("not_found", f"The handoff was not recorded: {exc}.") from exc
        else:
            # A new ticket carries the talk in its description, as much as fits; all of it as a note.
            description = note if len(note) <= DESCRIPTION_MAX else note[: DESCRIPTION_MAX - 3] + "..."
            summary = f"User asked for a person: {reason}"[:200]
            ticket_id = outbox.create(summary, description, "other", "normal", contact).id
            if len(note) > DESCRIPTION_MAX:
                outbox.add_note(ticket_id, note)
            if delivery is not None:
                delivery.deliver_soon()
        return {"ticket_id": ticket_id, "handoff": "requested", "message": options.sentence(ticket_id)} | {
            key: value
            for key, value in (
                ("phone", options.phone),
                ("chat_url", options.chat_url),
                ("callback", options.callback),
            )
            if value
        }

    async def handler(arguments: dict[str, Any]) -> dict[str, Any]:
        heard = conversation_text(transcript())  # now, on the loop: the conversation is not thread-safe
        try:
            return await asyncio.to_thread(
                hand_off, str(arguments["reason"]).strip(), str(arguments.get("ticket") or ""), heard
            )
        except OSError as exc:
            raise ToolError(
                "ticket_not_saved", f"The handoff could not be saved ({exc.strerror or exc})."
            ) from exc

    return Tool(
        name="request_human",
        description=(
            'Hand the user to a person from IT when they ask for one ("let me talk to someone"), or when '
            "you cannot help further. It records the conversation on the ticket (give the ticket id if one "
            "was filed) and returns how and when a person will reach them: tell the user exactly that."
        ),
        parameters=PARAMETERS,
        handler=handler,
    )
