"""The rules that span settings: what each backend needs besides its own name.

Each setting is checked alone by :mod:`app.config`; these rules look at several at once (a custom
backend needs a URL, Azure needs a resource and a deployment, OpenAI a model, the cloud backends an
API key). They live here once, so the Settings dialog (which marks the field) and the launch plan
(which refuses to start) say the same sentence for the same problem. :func:`cross_field_notes` are
the milder kind: settings that work together, only not as asked (the ticket system's articles
turned on for a system that has none); the launch plan shows them as warnings and starts anyway.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from app.config import SETTINGS, TICKET_SYSTEMS_WITH_ARTICLES, Value
from app.realtime.endpoint import API_KEY_ENV

__all__ = ["API_KEY_FIELD", "FieldProblem", "cross_field_notes", "cross_field_problems"]

API_KEY_FIELD: Final = "api_key"  # not a setting (the key lives in the keyring): its problems' key

# Per backend, the settings it cannot do without and what each one is, for the sentence.
_REQUIRED: Final[Mapping[str, tuple[tuple[str, str], ...]]] = {
    "custom": (("endpoint.url", "the server's address (ws:// or wss://)"),),
    "openai": (("endpoint.model", "a model name (for example gpt-realtime)"),),
    "azure": (
        ("endpoint.azure_resource", "the name of your Azure OpenAI resource"),
        ("endpoint.azure_deployment", "the name of the realtime model's deployment"),
    ),
}
# A custom server may take a key, but many (a local one) do not: only the cloud services need one.
_NEEDS_KEY: Final = frozenset({"openai", "azure"})


@dataclass(frozen=True, slots=True)
class FieldProblem:
    """A rule that does not hold: the key it belongs to (``api_key`` for the key) and one sentence.

    The sentence does not name the field, so each place can put it where it belongs: the dialog
    under the field's label, the launcher as the whole error.
    """

    key: str
    message: str


def _blank(value: Value | None) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def cross_field_problems(values: Mapping[str, Value], api_key_present: bool) -> list[FieldProblem]:
    """Every cross-field rule that ``values`` break, fields first, then the API key.

    ``values`` maps dotted keys to values, each already valid on its own; a key that is missing
    counts as empty. ``api_key_present``: a key is stored or given, and may go to this backend.
    Pure: reads no file, no keyring, no environment.
    """
    backend = values.get("backend", SETTINGS["backend"].default)
    if not isinstance(backend, str):
        return []
    name = SETTINGS["backend"].label(backend)
    problems = [
        FieldProblem(key, f"the {name} backend needs {what}")
        for key, what in _REQUIRED.get(backend, ())
        if _blank(values.get(key))
    ]
    # A token service hands out short-lived secrets instead (endpoint.token_url): no key is needed.
    if backend in _NEEDS_KEY and not api_key_present and _blank(values.get("endpoint.token_url")):
        problems.append(
            FieldProblem(
                API_KEY_FIELD,
                f"no API key for {name} is stored; type one in Settings (it is kept in the system "
                f"keyring) or set {API_KEY_ENV}",
            )
        )
    return problems


def cross_field_notes(values: Mapping[str, Value]) -> list[FieldProblem]:
    """Settings that do not stop the assistant but will not do what they ask; pure, like the problems."""
    notes: list[FieldProblem] = []
    system = values.get("tickets.system", SETTINGS["tickets.system"].default)
    if values.get("kb.ticket_system_articles") is True and system not in TICKET_SYSTEMS_WITH_ARTICLES:
        if system == "none":
            message = "no ticket system is chosen, so there is no knowledge base of one to read"
        else:
            name = SETTINGS["tickets.system"].label(str(system))
            message = (
                f"{name} has no knowledge base this app can read (only Request Tracker and ServiceNow "
                "have one); its articles are not used"
            )
        notes.append(FieldProblem("kb.ticket_system_articles", message))
    return notes
