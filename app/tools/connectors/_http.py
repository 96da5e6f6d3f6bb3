"""The HTTP plumbing every connector shares: one request, and every way it can fail as a ConnectorError.

Each connector builds one :class:`HttpApi` with its system's wording (what its credentials are, what
to check when the URL is wrong) and sends through it. What is the same for every system lives here:
transport failures (timeout, refused connection, a URL that is not one), the classification of HTTP
statuses (401/403 auth, a wrong URL config, 429 rate_limited with its Retry-After, 5xx unavailable,
any other 4xx rejected), reading a 2xx body as JSON, and keeping secrets and walls of text out of the
messages people hear. What differs between systems (RT's 400 "Permission Denied", a record that is
missing rather than a wrong URL, each system's error body) stays in its connector, which handles it
before falling back on :meth:`HttpApi.refusal`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import httpx

from app.tools.connectors.base import ConnectorError

__all__ = ["MESSAGE_MAX", "TIMEOUT_S", "HttpApi", "error_body", "objects", "retry_after", "scrub", "shorten"]

TIMEOUT_S: Final = 20.0  # per request; the delivery retries later, so a slow system only delays a ticket
MESSAGE_MAX: Final = 200  # of a system's own error text quoted to the user: enough for the reason


@dataclass(frozen=True, slots=True)
class HttpApi:
    """One system's API as the connector reaches it, and how its failures are said."""

    client: httpx.Client
    name: str  # as a sentence names it: "ServiceNow", "the webhook"
    host: str  # never the whole URL: it may carry a token
    url_setting: str  # the setting to fix when the URL is not one: "the ServiceNow instance URL"
    credentials: str  # what a 401/403 refused: "the credentials or their roles", "the signature"
    auth_advice: str  # what to do about it, one or more sentences
    config_advice: str  # what to check when the URL leads nowhere (404, a redirect)
    secrets: tuple[str, ...] = ()  # scrubbed from every message the system's answer ends up in
    auth: httpx.Auth | None = None  # None: the client's own (RT and the webhook authenticate by header)
    wrong_url: Collection[int] = (404,)  # the statuses that mean the URL leads nowhere

    @property
    def where(self) -> str:
        """ "ServiceNow at acme.service-now.com", capitalised to start a sentence."""
        where = f"{self.name} at {self.host}"
        return where[:1].upper() + where[1:]

    def send(
        self,
        method: str,
        url: str,
        *,
        refuse: Callable[[httpx.Response], ConnectorError],
        params: Sequence[tuple[str, str]] | Mapping[str, str] | None = None,  # pairs: RT repeats names
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """The 2xx answer to one request; ``refuse`` says what any other status means for this call.

        Connectors raise nothing but ConnectorError, so every failure of the transport becomes one:
        those worth retrying (a timeout, a refused connection) are ``unavailable``.
        """
        try:
            response = self.client.request(
                method,
                url,
                params=tuple(params) if isinstance(params, Sequence) else params,
                json=json,
                content=content,
                headers={"Accept": "application/json", **(headers or {})},
                auth=self.auth if self.auth is not None else httpx.USE_CLIENT_DEFAULT,
                timeout=TIMEOUT_S,
            )
        except httpx.TimeoutException:
            raise ConnectorError("unavailable", f"{self.where} did not answer in time.") from None
        except (httpx.InvalidURL, httpx.UnsupportedProtocol):
            setting = self.url_setting[:1].upper() + self.url_setting[1:]
            raise ConnectorError("config", f"{setting} is not a valid http or https address.") from None
        except httpx.HTTPError as exc:
            # The exception's text may quote the URL, and with it a token: only its type is said.
            raise ConnectorError(
                "unavailable", f"Could not reach {self.name} at {self.host} ({type(exc).__name__})."
            ) from None
        except ValueError:  # text that cannot be encoded as UTF-8 JSON (a lone surrogate)
            raise ConnectorError(
                "rejected", f"The ticket's text could not be encoded for {self.name}."
            ) from None
        if not response.is_success:
            raise refuse(response)
        return response

    def json(self, response: httpx.Response, *, not_json: ConnectorError, allow_empty: bool = False) -> Any:
        """A 2xx answer's JSON (``{}`` for an empty one or a 204 when ``allow_empty``); else ``not_json``."""
        if allow_empty and (response.status_code == 204 or not response.content.strip()):
            return {}
        try:
            return response.json()
        except ValueError:
            raise not_json from None

    def said(self, text: str) -> str:
        """The system's own error text as a message may quote it: secrets out first, then shortened."""
        return shorten(scrub(text, self.secrets))

    def refusal(self, response: httpx.Response, action: str, said: str, *, missing: str) -> ConnectorError:
        """What a non-2xx status means when the connector knows nothing more specific about it.

        ``said`` is the system's own reason (already passed through :meth:`said`), ``missing`` what a
        wrong-URL status shows is not there ("no incident table at /api/now/table/incident").
        """
        status = response.status_code
        detail = f": {said}" if said else ""
        if status in (401, 403):
            return ConnectorError(
                "auth",
                f"{self.where} refused {self.credentials} when trying to {action} "
                f"(HTTP {status}){detail}. {self.auth_advice}",
            )
        if status in self.wrong_url:
            return ConnectorError(
                "config", f"{self.where} has {missing} (HTTP {status}){detail}. {self.config_advice}"
            )
        if 300 <= status < 400:
            # APIs do not redirect by themselves: a single sign-on page, http -> https, a moved site.
            return ConnectorError(
                "config", f"{self.where} redirected the request (HTTP {status}). {self.config_advice}"
            )
        if status == 429:
            return ConnectorError(
                "rate_limited",
                f"{self.where} is rate limiting requests{detail}.",
                retry_after=retry_after(response),
            )
        if status >= 500:
            return ConnectorError("unavailable", f"{self.where} failed with HTTP {status}{detail}.")
        return ConnectorError("rejected", f"{self.where} refused to {action} (HTTP {status}){detail}.")

    def malformed(self, answered: str) -> ConnectorError:
        """A 2xx answer without what the API documents: ``answered`` says how ("with a web page")."""
        # "unavailable", not "rejected": a 2xx that is not the documented JSON is what a proxy, a login
        # page, an outage page or a server mid-upgrade sends. The ticket may or may not exist; a retry is
        # safe because the delivery calls find() first, while "rejected" would drop the ticket for good.
        return ConnectorError("unavailable", f"{self.where} answered {answered}.")


def error_body(response: httpx.Response) -> Any:
    """A failure's body as JSON, or None when it is not JSON (an HTML error page, nothing)."""
    try:
        return response.json()
    except ValueError:
        return None


def objects(body: Any, key: str) -> list[Mapping[str, Any]] | None:
    """``body[key]`` when it is a list of JSON objects (a page of records), else None."""
    items = body.get(key) if isinstance(body, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        return None
    return items


def shorten(text: str) -> str:
    """``text`` on one line and at most :data:`MESSAGE_MAX` characters: a reason, not a stack trace."""
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[: MESSAGE_MAX - 1] + "…"


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every secret replaced: systems echo a bad token back in their error messages."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait from a Retry-After header (RFC 9110: seconds or an HTTP date), None without one."""
    value = response.headers.get("Retry-After", "").strip()
    if value.isdigit():
        return float(value)
    if not value:
        return None
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(UTC)).total_seconds())
