"""The helpdesk tools the realtime model can call: knowledge base search and ticket creation."""

from __future__ import annotations

import logging
from pathlib import Path

from app.tools.kb import Article, KeywordIndex, default_kb_dir, load_articles, search_knowledge_base_tool
from app.tools.registry import Tool, ToolError, ToolRegistry, ToolResult
from app.tools.tickets import Ticket, TicketListing, TicketOutbox, create_ticket_tool, default_outbox_dir

__all__ = [
    "Article",
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


def default_registry(outbox_dir: Path | None = None, kb_dir: Path | None = None) -> ToolRegistry:
    """A registry with ``search_knowledge_base`` and ``create_ticket``.

    Bad article files are logged and left out rather than raised: one broken file must not cost the
    user the whole assistant. Nothing is written until a ticket is created.
    """
    articles, problems = load_articles(kb_dir if kb_dir is not None else default_kb_dir())
    for problem in problems:
        _log.warning("knowledge base: %s", problem)
    registry = ToolRegistry()
    registry.register(search_knowledge_base_tool(KeywordIndex(articles)))
    registry.register(create_ticket_tool(TicketOutbox(outbox_dir)))
    return registry
