"""From the ``tickets.*`` settings and the keyring to a connector for the company's ticket system.

The credential (RT's auth token, ServiceNow's password, Jira's API token, the webhook's signing
secret) lives only in the OS keyring, under the app's service and ``tickets.<system>``;
``HELPDESK_VOICE_TICKETS_SECRET`` overrides it for testers and scripts, as the API key's variable
does. A setting or credential missing is a :class:`ConnectorError` (``config``) saying which, which
the delivery reports once and keeps the tickets queued: the assistant itself still starts.

A connector :func:`make_connector` builds on an HTTP client of its own owns that client: it is an
:class:`OwnedConnector`, which whoever asked for it closes (``close()`` or ``with``) once done, so a
status read or a superseded delivery connector does not leave its connections open.
"""

from __future__ import annotations

import logging
import os
from types import TracebackType
from typing import Any, Final, Self
from urllib.parse import urlsplit

import httpx

from app.config import TICKET_SYSTEM_CHOICES, TicketSettings
from app.tools.connectors import Connector, ConnectorError, RemoteTicket, TicketDraft

__all__ = [
    "SECRET_ENV",
    "OwnedConnector",
    "delete_ticket_secret",
    "load_ticket_secret",
    "make_connector",
    "store_ticket_secret",
    "stored_ticket_secret",
    "system_name",
    "try_connection",
]

log = logging.getLogger(__name__)

SECRET_ENV: Final = "HELPDESK_VOICE_TICKETS_SECRET"
KEYRING_SERVICE: Final = "helpdesk-voice"  # the API key's service: one entry per credential
TIMEOUT: Final = httpx.Timeout(10.0, connect=5.0)
_CREDENTIAL: Final = {
    "rt": "an auth token",
    "servicenow": "the API user's password",
    "jsm": "an API token",
    "webhook": "the signing secret",
}


def system_name(system: str) -> str:
    """The system as people call it ("Request Tracker")."""
    return next((label for value, label in TICKET_SYSTEM_CHOICES if value == system), system)


def _keyring_user(system: str) -> str:
    return f"tickets.{system}"


def load_ticket_secret(system: str) -> str | None:
    """The system's credential: the environment's, else the keyring's, else None. Blocking."""
    supplied = os.environ.get(SECRET_ENV, "").strip()
    if supplied:
        return supplied
    import keyring  # late: picking a backend may talk to D-Bus
    from keyring.errors import KeyringError

    try:
        stored = keyring.get_password(KEYRING_SERVICE, _keyring_user(system))
    except KeyringError as exc:
        raise ConnectorError("config", f"the system keyring could not be read: {exc}") from exc
    return stored.strip() if stored else None


def store_ticket_secret(system: str, secret: str) -> None:
    """Keeps the credential in the OS keyring (raises keyring's errors for the caller to say)."""
    import keyring

    keyring.set_password(KEYRING_SERVICE, _keyring_user(system), secret.strip())


def stored_ticket_secret(system: str) -> bool:
    """Whether the keyring holds a credential for ``system``; the environment's does not count.

    Raises :class:`ConnectorError` (``config``) when the keyring cannot be read. Blocking.
    """
    import keyring
    from keyring.errors import KeyringError

    try:
        stored = keyring.get_password(KEYRING_SERVICE, _keyring_user(system))
    except KeyringError as exc:
        raise ConnectorError("config", f"the system keyring could not be read: {exc}") from exc
    return bool(stored and stored.strip())


def delete_ticket_secret(system: str) -> bool:
    """Deletes the system's credential from the keyring; False when none was stored.

    Raises keyring's errors (no backend, locked, refused) for the caller to say. Blocking.
    """
    import keyring
    from keyring.errors import PasswordDeleteError

    try:
        keyring.delete_password(KEYRING_SERVICE, _keyring_user(system))
    except PasswordDeleteError:
        # Also what backends raise for an entry that is not there: nothing was deleted.
        return False
    return True


class OwnedConnector:
    """A connector together with the HTTP client it runs on, which closing it closes.

    Behaves as the connector it wraps (the ``Connector`` protocol); ``with`` closes it on leaving.
    """

    def __init__(self, connector: Connector, client: httpx.Client) -> None:
        self.connector = connector
        self.client = client

    @property
    def name(self) -> str:
        return self.connector.name

    def find(self, idempotency_key: str) -> RemoteTicket | None:
        return self.connector.find(idempotency_key)

    def create(self, draft: TicketDraft) -> RemoteTicket:
        return self.connector.create(draft)

    def get(self, ref: str) -> RemoteTicket:
        return self.connector.get(ref)

    def comment(self, ref: str, text: str) -> None:
        self.connector.comment(ref, text)

    def open_tickets(self, contact: str) -> list[RemoteTicket]:
        return self.connector.open_tickets(contact)

    def close(self) -> None:
        self.client.close()

    def __getattr__(self, name: str) -> Any:
        # What the connector offers beyond the Connector protocol (a knowledge base's articles)
        # stays reachable, and isinstance against such a runtime protocol still sees it.
        if name in ("connector", "client"):  # not set yet (copying, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.connector, name)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _new_client() -> httpx.Client:
    # Redirects are refused, not followed: the credential must only ever go to the configured host.
    return httpx.Client(timeout=TIMEOUT, follow_redirects=False)


def _needs(settings: TicketSettings, *fields: tuple[str, str]) -> None:
    missing = [what for name, what in fields if not str(getattr(settings, name)).strip()]
    if missing:
        raise ConnectorError(
            "config", f"{system_name(settings.system)} needs {' and '.join(missing)} in Settings (Tickets)"
        )


def make_connector(
    settings: TicketSettings, client: httpx.Client | None = None, secret: str | None = None
) -> Connector | None:
    """The connector the settings choose, or None for ``tickets.system = none``. Blocking (keyring).

    ``secret``: a credential typed and not stored yet (the Settings dialog's Test connection); else
    the stored one. With ``client`` given, the caller owns and closes it; without, the connector
    comes with a client of its own as an :class:`OwnedConnector`, and the caller closes that.
    """
    if settings.system == "none":
        return None
    url = ("url", "the system's address (https://...)")
    if settings.system == "rt":
        _needs(settings, url, ("queue", "a queue"))
    elif settings.system == "servicenow":
        _needs(settings, url, ("user", "the API user"))
    elif settings.system == "jsm":
        _needs(
            settings,
            url,
            ("user", "the e-mail of the API user"),
            ("service_desk_id", "the service desk's id"),
            ("request_type_id", "the request type's id"),
        )
    else:
        _needs(settings, url)
    secret = (secret or "").strip() or load_ticket_secret(settings.system)
    if not secret:
        raise ConnectorError(
            "config",
            f"no credential for {system_name(settings.system)} is stored: type "
            f"{_CREDENTIAL[settings.system]} in Settings (Tickets; it is kept in the system keyring) "
            f"or set {SECRET_ENV}",
        )
    if client is None:
        owned = _new_client()
        try:
            return OwnedConnector(_connector(settings, owned, secret), owned)
        except BaseException:
            owned.close()
            raise
    return _connector(settings, client, secret)


def _connector(settings: TicketSettings, client: httpx.Client, secret: str) -> Connector:
    if settings.system == "rt":
        from app.tools.connectors.rt import RequestTrackerConnector

        return RequestTrackerConnector(client, settings.url, settings.queue, secret)
    if settings.system == "servicenow":
        from app.tools.connectors.servicenow import ServiceNowConnector

        group = settings.assignment_group or None
        return ServiceNowConnector(client, settings.url, settings.user, secret, group)
    if settings.system == "jsm":
        from app.tools.connectors.jsm import JiraServiceManagementConnector

        return JiraServiceManagementConnector(
            client, settings.url, settings.user, secret, settings.service_desk_id, settings.request_type_id
        )
    from app.tools.connectors.webhook import WebhookConnector

    return WebhookConnector(client, settings.url, secret)


CONNECTION_TEST_KEY: Final = "hv-connection-test"  # a key no ticket has: find() is a harmless read


def try_connection(settings: TicketSettings, secret: str = "") -> tuple[bool, str]:
    """Whether the system answers a harmless read with these settings, and a sentence saying so.

    Blocking (network, keyring): call it off the GUI thread. ``secret`` empty means the stored one.
    """
    if settings.system == "none":
        return False, "No ticket system is chosen: tickets stay on this computer."
    client = _new_client()
    try:
        connector = make_connector(settings, client, secret)
        if connector is None:
            return False, "No ticket system is chosen: tickets stay on this computer."
        connector.find(CONNECTION_TEST_KEY)
    except ConnectorError as exc:
        return False, exc.message
    except Exception as exc:  # a connector bug must not leave a caller waiting for good
        log.exception("the ticket system connection test failed")
        return False, f"The connection test failed unexpectedly ({type(exc).__name__})."
    finally:
        client.close()
    host = urlsplit(settings.url).hostname or settings.url
    return True, f"Connected to {system_name(settings.system)} at {host}"
