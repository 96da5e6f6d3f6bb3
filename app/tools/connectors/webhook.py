"""A webhook: each ticket is POSTed, signed, to a URL the company runs (a Power Automate flow, a small
service in front of a system without a connector, a chat channel bridge).

The contract, for whoever writes the receiver
=============================================

Request: ``POST <url>`` with ``Content-Type: application/json`` and a UTF-8 JSON body::

    {
      "schema_version": 1,
      "type": "ticket",
      "idempotency_key": "hv-7f3c...",       # the same for every retry of this ticket
      "local_id": "HD-1042",                 # the number the user heard
      "summary": "...", "description": "...",
      "category": "network",                 # account, network, hardware, software, email, security, other
      "urgency": "high",                     # low, normal, high, critical
      "contact": "ana.lopez@example.com",    # or a name, or null
      "created_at": "2026-12-04T16:07:00+00:00",
      "source": "Helpdesk Voice"
    }

A comment on a ticket already sent (a handoff, diagnostics) is ``"type": "comment"`` with
``schema_version``, ``idempotency_key`` (its own), ``ticket`` (the ``number`` the receiver gave, or the
``local_id``), ``text`` and ``created_at``. A note the app keeps for a ticket (the conversation, a
handoff) has a key of its own, stable across retries and restarts, sent as ``idempotency_key`` and
in the ``Idempotency-Key`` header: **the receiver deduplicates comments on it as on tickets**.
:meth:`WebhookConnector.has_comment` cannot ask the receiver and always answers False, so after a
lost reply the note is simply sent again and the receiver's deduplication makes it count once.
Receivers should ignore fields they do not know; a new ``schema_version`` means a field changed
meaning.

Headers:

* ``Idempotency-Key``: as in the body. **The receiver deduplicates on it**: a second request with a
  key it has seen must not file a second ticket and should answer as it did the first time. This is
  where the key lives for this connector: :meth:`WebhookConnector.find` cannot ask the receiver, so it
  always answers None and a retry simply sends the ticket again.
* ``X-Helpdesk-Voice-Timestamp``: Unix time in whole seconds when the request was signed.
* ``X-Helpdesk-Voice-Signature``: ``sha256=`` and the lowercase hex HMAC-SHA256, keyed with the
  shared secret (UTF-8), of the bytes ``<timestamp>.<body>``: the timestamp header's value, a full
  stop, and the raw request body exactly as received (verify before parsing the JSON).

Verifying: recompute the HMAC over the raw body, compare in constant time, and refuse timestamps more
than a few minutes away from the receiver's clock (this stops a captured request from being replayed
later). :func:`verify_signature` does all three and may be copied into a receiver as it is.

Answer: any 2xx accepts the ticket. The body may be empty or a JSON object with any of ``number``
(the receiver's own ticket number), ``url`` and ``status``; without them the ticket keeps its local
number and the status "received". Errors: 401/403 when the signature or timestamp is refused, 404/410
when the URL is wrong, 429 with ``Retry-After`` when busy, 5xx when failing; other 4xx mean "this
ticket will never be accepted" and may carry ``{"error": "why"}``.

What this connector cannot do: a webhook gives no way to read a ticket back, so :meth:`get` and
:meth:`open_tickets` raise ``ConnectorError("config")`` saying so.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from app.tools.connectors._http import HttpApi, error_body
from app.tools.connectors.base import ConnectorError, RemoteTicket, TicketDraft

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "SCHEMA_VERSION",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookConnector",
    "sign",
    "verify_signature",
]

SCHEMA_VERSION: Final = 1
TIMESTAMP_HEADER: Final = "X-Helpdesk-Voice-Timestamp"
SIGNATURE_HEADER: Final = "X-Helpdesk-Voice-Signature"
DEFAULT_MAX_AGE_S: Final = 300.0


def sign(secret: str | bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Helpdesk-Voice-Signature`` value for ``body`` sent at ``timestamp``."""
    key = secret.encode() if isinstance(secret, str) else secret
    digest = hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: str | bytes,
    timestamp: str,
    body: bytes,
    header: str,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    *,
    now: float | None = None,
) -> bool:
    """Whether ``header`` signs ``body`` at ``timestamp`` with ``secret``, and the timestamp is fresh.

    ``timestamp`` and ``header`` are the raw header values, ``body`` the raw request body. A timestamp
    more than ``max_age_s`` from ``now`` (default: this machine's clock), in the past or the future,
    is refused, so a recorded request cannot be replayed later.
    """
    if (
        not (timestamp.isascii() and timestamp.isdigit())
        or not isinstance(header, str)
        or not header.startswith("sha256=")
    ):
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > max_age_s:
        return False
    expected = sign(secret, timestamp, body)
    return hmac.compare_digest(expected.encode("ascii"), header.strip().encode("ascii", "replace"))


class WebhookConnector:
    """Sends tickets and comments to one URL, signed with ``secret``."""

    def __init__(
        self, client: httpx.Client, url: str, secret: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._url = url
        self._secret = secret
        self._clock = clock
        self._http = HttpApi(
            client,
            name="the webhook",
            # The URL may carry a token of its own (many flow services put one in the query), so
            # messages name only the host.
            host=urlsplit(url).hostname or "its address",
            url_setting="the webhook URL",
            credentials="the signature",
            auth_advice="Check the shared secret on both sides and this computer's clock.",
            config_advice="Check the webhook URL in the settings.",
            secrets=(secret,),
            # The receiver's contract: 404/410 (and 405, a URL that takes no POST) mean a wrong URL.
            wrong_url=(404, 405, 410),
        )

    @property
    def name(self) -> str:
        return "Webhook"

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        return None  # the receiver deduplicates on Idempotency-Key, so sending again is the lookup

    def create(self, draft: TicketDraft) -> RemoteTicket:
        payload = {
            "schema_version": SCHEMA_VERSION,
            "type": "ticket",
            "idempotency_key": draft.idempotency_key,
            "local_id": draft.local_id,
            "summary": draft.summary,
            "description": draft.description,
            "category": draft.category,
            "urgency": draft.urgency,
            "contact": draft.contact,
            "created_at": draft.created_at,
            "source": "Helpdesk Voice",
        }
        answer = self._post(payload, draft.idempotency_key, action="deliver the ticket")
        number = answer.get("number")
        status = answer.get("status")
        url = answer.get("url")
        number_text = str(number) if isinstance(number, str | int) and str(number) else draft.local_id
        return RemoteTicket(
            number=number_text,
            status=status if isinstance(status, str) and status else "received",
            url=url if isinstance(url, str) and url.startswith(("https://", "http://")) else None,
            title=draft.summary,
            ref=number_text,
        )

    def get(self, ref: str) -> RemoteTicket:
        raise ConnectorError(
            "config",
            "This webhook gives no status: the company's system must be asked about the ticket directly.",
        )

    def comment(self, ref: str, text: str) -> None:
        # Its own key, derived from what it says, so a retried comment is deduplicated like a ticket.
        key = "comment-" + hashlib.sha256(f"{ref}\0{text}".encode()).hexdigest()[:32]
        self.comment_with_key(ref, text, key)

    def comment_with_key(self, ref: str, text: str, key: str) -> None:
        payload = {
            "schema_version": SCHEMA_VERSION,
            "type": "comment",
            "idempotency_key": key,
            "ticket": ref,
            "text": text,
            "created_at": datetime.fromtimestamp(self._clock(), UTC).isoformat(timespec="seconds"),
        }
        self._post(payload, key, action="deliver the comment")

    def has_comment(self, ref: str, key: str) -> bool:
        return False  # the receiver deduplicates on Idempotency-Key, so sending again is the lookup

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        raise ConnectorError(
            "config", "This webhook gives no status: it cannot list a person's open tickets."
        )

    def _post(self, payload: Mapping[str, Any], key: str, *, action: str) -> Mapping[str, Any]:
        try:
            body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        except ValueError:  # a lone surrogate cannot be UTF-8
            raise ConnectorError(
                "rejected", "The ticket's text could not be encoded as UTF-8 JSON."
            ) from None
        timestamp = str(int(self._clock()))
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": key,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        response = self._http.send(
            "POST",
            self._url,
            content=body,
            headers=headers,
            refuse=lambda response: self._error(response, action),
        )
        # "unavailable", not "rejected" or accepted: a 2xx that is neither empty nor a JSON object is
        # what a login page or proxy sends, so the receiver may never have seen the ticket. Sending
        # again is safe: the receiver deduplicates on the Idempotency-Key.
        not_json = self._http.malformed(
            "with something other than JSON (is the URL the receiver's, not a login page?)"
        )
        answer = self._http.json(response, not_json=not_json, allow_empty=True)
        if not isinstance(answer, dict):
            raise not_json
        return answer

    def _error(self, response: httpx.Response, action: str) -> ConnectorError:
        return self._http.refusal(
            response, action, self._http.said(_receiver_message(response)), missing="no receiver at this URL"
        )


def _receiver_message(response: httpx.Response) -> str:
    """The receiver's ``error`` (or ``message``, ``detail``), or a plain-text body; "" when neither."""
    body = error_body(response)
    if isinstance(body, dict):
        for name in ("error", "message", "detail"):
            if isinstance(body.get(name), str):
                return str(body[name])
        return ""
    if response.headers.get("Content-Type", "").startswith("text/plain"):
        return response.text
    return ""
