"""The helpdesk tools the realtime model can call: knowledge base search, tickets and their status."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from app.tools.delivery import DeliveryWorker
from app.tools.diagnostics import DiagnosticsOptions, attach_diagnostics_tool
from app.tools.handoff import HandoffOptions, request_human_tool
from app.tools.kb import Article, KeywordIndex, default_kb_dir, load_articles, search_knowledge_base_tool
from app.tools.kb_sources import KnowledgeBase
from app.tools.registry import Tool, ToolError, ToolRegistry, ToolResult
from app.tools.ticket_status import ticket_status_tool
from app.tools.tickets import Ticket, TicketListing, TicketOutbox, create_ticket_tool, default_outbox_dir

__all__ = [
    "Article",
    "DiagnosticsOptions",
    "KeywordIndex",
    "Ticket",
    "TicketListing",
    "TicketOutbox",
    "Tool",
    "ToolError",
    "ToolRegistry",
    "ToolResult",
    "default_kb_dir",
    "default_outbox_dir",
    "default_registry",
    "load_articles",
]

_log = logging.getLogger(__name__)


def default_registry(
    outbox_dir: Path | None = None,
    kb_dir: Path | None = None,
    *,
    delivery: DeliveryWorker | None = None,
    contact: str | None = None,
    handoff: HandoffOptions | None = None,
    transcript: Callable[[], list[tuple[str, str]]] | None = None,
    kb_folders: Sequence[str] = (),
    diagnostics: DiagnosticsOptions | None = None,
    knowledge: KnowledgeBase | None = None,
) -> ToolRegistry:
    """A registry with ``search_knowledge_base``, ``create_ticket`` and ``get_ticket_status``.

    With ``delivery``, tickets go to the company's ticket system through it (and its outbox is the
    one used); ``contact`` is the user's e-mail address, stored on tickets and used to list theirs.
    ``request_human`` puts ``transcript()`` (the conversation as heard) on the ticket and says what
    ``handoff`` offers.
    ``attach_diagnostics`` is offered only when ``diagnostics`` is given and enabled (a policy may
    turn it off), with its fields and hosts.

    Bad article files are logged and left out rather than raised: one broken file must not cost the
    user the whole assistant. Nothing is written until a ticket is created.
    """
    if knowledge is None:  # else the caller's, over the same folders, shared with its other uses
        knowledge = KnowledgeBase(kb_folders, kb_dir)  # logs its own problems
    registry = ToolRegistry()
    registry.register(search_knowledge_base_tool(knowledge.index))
    outbox = delivery.outbox if delivery is not None else TicketOutbox(outbox_dir)
    registry.register(create_ticket_tool(outbox, contact=contact, delivery=delivery, transcript=transcript))
    if delivery is not None:
        registry.register(ticket_status_tool(outbox, delivery.state_of, delivery.connector, contact))
    else:
        registry.register(ticket_status_tool(outbox, lambda ticket_id: None, lambda: None, contact))
    registry.register(
        request_human_tool(
            outbox,
            transcript or (lambda: []),
            handoff or HandoffOptions(),
            delivery=delivery,
            contact=contact,
        )
    )
    if diagnostics is not None and diagnostics.enabled:
        registry.register(attach_diagnostics_tool(outbox, diagnostics, delivery=delivery))
    return registry
