"""Short-lived client secrets from the company's token service, so laptops hold no API key.

With ``endpoint.token_url`` set, every connection (the first, each reconnect, each session rollover)
starts by asking that service for a client secret, in the shape OpenAI's
``POST /v1/realtime/client_secrets`` answers (``{"value": "ek_...", "expires_at": <unix seconds>,
"session": {...}}``), and connects with ``Authorization: Bearer <value>``. The laptop proves who it
is to the token service with a per-device credential of its own (the keyring entry
``helpdesk-voice`` / ``token_service``, or ``HELPDESK_VOICE_TOKEN_CREDENTIAL``), sent as a bearer
token; the company's API key stays on the token service. Or, with ``endpoint.token_auth =
"integrated"``, with the user's own company sign-in (HTTP Negotiate, :mod:`integrated_auth`).

The pieces that decide (the request, the answer's parsing with one clear sentence per malformed
case, the expiry maths) are plain functions; :class:`ClientSecretSource` is the thin httpx adapter
the transport calls. Every failure becomes :class:`CredentialUnavailable` with a
:class:`ConnectionProblem`, so the transport's existing backoff retries it. No message, repr or
log line contains the credential or a secret.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol

import httpx

from app.realtime.endpoint import KEYRING_SERVICE, is_loopback_host, redact_url
from app.realtime.errors import ConnectionProblem, CredentialUnavailable, ProblemKind, parse_retry_after

__all__ = [
    "DEFAULT_MARGIN_S",
    "TOKEN_CREDENTIAL_ENV",
    "TOKEN_KEYRING_USERNAME",
    "ClientSecret",
    "ClientSecretSource",
    "CredentialLookup",
    "TokenAuth",
    "TokenRequest",
    "build_request",
    "check_token_url",
    "lookup_token_credential",
    "parse_response",
]

TOKEN_CREDENTIAL_ENV: Final = "HELPDESK_VOICE_TOKEN_CREDENTIAL"
TOKEN_KEYRING_USERNAME: Final = "token_service"
# A secret with less than this left is not used: the handshake, a slow network and a clock a little
# off must all fit before it runs out.
DEFAULT_MARGIN_S: Final = 60.0
_TIMEOUT_S: Final = 10.0
_BODY_LIMIT: Final = 64 * 1024  # a client secret answer is a few hundred bytes; more is not one
_HEADER_SAFE: Final = frozenset(chr(c) for c in range(0x21, 0x7F))  # visible ASCII, no space
_RETRY_AFTER_LIMIT: Final = 3600.0


# ---------------------------------------------------------------------------------------------------
# The device credential
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class CredentialLookup:
    """The device credential for the token service, where it came from, or why there is none."""

    credential: str | None
    source: Literal["environment", "keyring"] | None
    reason: str | None = None

    def __repr__(self) -> str:
        shown = None if self.credential is None else "***"
        return f"CredentialLookup(credential={shown!r}, source={self.source!r}, reason={self.reason!r})"

    __str__ = __repr__


def lookup_token_credential(environ: Mapping[str, str] = os.environ) -> CredentialLookup:
    """The device credential from ``HELPDESK_VOICE_TOKEN_CREDENTIAL`` or else the keyring."""
    from_env = environ.get(TOKEN_CREDENTIAL_ENV, "").strip()
    if from_env:
        return CredentialLookup(from_env, "environment")
    missing = (
        f"no device credential for the token service: store it in the system keyring "
        f"({KEYRING_SERVICE} / {TOKEN_KEYRING_USERNAME}) or set {TOKEN_CREDENTIAL_ENV}"
    )
    try:
        import keyring  # late, as for the API key: choosing a backend may talk to D-Bus

        stored = keyring.get_password(KEYRING_SERVICE, TOKEN_KEYRING_USERNAME)
    except Exception as exc:  # any backend failure means "no credential here"; say which
        return CredentialLookup(None, None, f"{missing} (the keyring failed: {type(exc).__name__})")
    if stored is None or not stored.strip():
        return CredentialLookup(None, None, missing)
    return CredentialLookup(stored.strip(), "keyring")


def store_token_credential(credential: str | None) -> str:
    """Puts this device's credential in the system keyring (None or "": removes it); what was done,
    in a sentence. Raises RuntimeError with the keyring's reason when it cannot."""
    import keyring

    value = (credential or "").strip()
    try:
        if value:
            keyring.set_password(KEYRING_SERVICE, TOKEN_KEYRING_USERNAME, value)
            where = f"{KEYRING_SERVICE} / {TOKEN_KEYRING_USERNAME}"
            return f"the device credential is stored in the system keyring ({where})"
        try:
            keyring.delete_password(KEYRING_SERVICE, TOKEN_KEYRING_USERNAME)
        except keyring.errors.PasswordDeleteError:
            return "no device credential was stored"
        return "the device credential is removed from the system keyring"
    except keyring.errors.KeyringError as exc:
        raise RuntimeError(f"the system keyring cannot keep the device credential: {exc}") from exc


# ---------------------------------------------------------------------------------------------------
# Request, answer, expiry (pure)
# ---------------------------------------------------------------------------------------------------


def check_token_url(url: str) -> str:
    """``url`` cleaned, or a ValueError: https, or http only to this computer (the credential goes there)."""
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        raise ValueError("the token service address is empty")
    try:
        parsed = httpx.URL(text)
    except Exception as exc:
        raise ValueError(f"the token service address is not a valid URL ({type(exc).__name__})") from None
    if parsed.scheme not in ("https", "http") or not parsed.host:
        raise ValueError(f"the token service address must be https://HOST/..., not {redact_url(text)!r}")
    if parsed.userinfo:
        raise ValueError("the token service address must not contain a user name or password")
    if parsed.scheme == "http" and not is_loopback_host(parsed.host):
        raise ValueError(
            f"the token service address must use https:// ({parsed.host} is not this computer, and over "
            "http:// anyone on the network could read the device credential and the secrets)"
        )
    return text


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """One request for a client secret: what the adapter sends."""

    url: str
    headers: dict[str, str]
    body: bytes

    def __repr__(self) -> str:
        return f"TokenRequest(url={redact_url(self.url)!r}, headers={dict.fromkeys(self.headers, '***')!r})"

    __str__ = __repr__


def build_request(url: str, credential: str) -> TokenRequest:
    """The POST that asks ``url`` for a client secret, the device proving itself with ``credential``.

    The body is empty JSON: the session's model and voice are the token service's choice, not the
    laptop's, which is what lets the company decide what a secret may be used for.
    """
    key = credential.strip() if isinstance(credential, str) else ""
    if not key:
        raise ValueError("the device credential for the token service is empty")
    if not set(key) <= _HEADER_SAFE:
        raise ValueError(
            "the device credential contains characters that cannot be sent in an HTTP header "
            "(spaces, line breaks or non-ASCII characters)"
        )
    return _token_request(check_token_url(url), f"Bearer {key}")


def _token_request(url: str, authorization: str) -> TokenRequest:
    headers = {
        "Authorization": authorization,
        "Content-Type": "application/json",
        "Accept": "application/json",
    }
    return TokenRequest(url, headers, b"{}")


@dataclass(frozen=True, slots=True, repr=False)
class ClientSecret:
    """A short-lived secret for one realtime connection; ``expires_at`` in Unix seconds."""

    value: str
    expires_at: float

    def __repr__(self) -> str:
        return f"ClientSecret(value='***', expires_at={self.expires_at!r})"

    __str__ = __repr__

    def usable(self, now: float, margin: float = DEFAULT_MARGIN_S) -> bool:
        """Whether it still has more than ``margin`` seconds left at ``now`` (Unix seconds)."""
        return self.expires_at - margin > now

    def refresh_at(self, margin: float = DEFAULT_MARGIN_S) -> float:
        """When a new one must be asked for (Unix seconds)."""
        return self.expires_at - margin


def _problem(
    kind: ProblemKind,
    message: str,
    *,
    retryable: bool,
    status: int | None = None,
    retry_after: float | None = None,
    detail: str | None = None,
) -> CredentialUnavailable:
    return CredentialUnavailable(
        ConnectionProblem(
            kind, message, retryable=retryable, status=status, retry_after=retry_after, detail=detail
        )
    )


def _server_words(body: bytes) -> str | None:
    """The service's own error sentence (JSON ``error.message``, ``error`` or ``message``), short."""
    try:
        parsed = json.loads(body[:4096].decode("utf-8", "replace"))
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    error = parsed.get("error")
    text = error.get("message") if isinstance(error, dict) else error
    if not isinstance(text, str):
        text = parsed.get("message")
    if not isinstance(text, str) or not text.strip():
        return None
    clean = "".join(ch if ch.isprintable() else " " for ch in text.strip())
    return clean[:200]


_BAD_ANSWER: Final = "The token service's answer is not a client secret"


_DEVICE_REFUSED: Final = (
    "The token service did not accept this computer's device credential (HTTP {status}). Ask IT to "
    f"register this computer, or store its credential in the system keyring ({KEYRING_SERVICE} / "
    f"{TOKEN_KEYRING_USERNAME})."
)


def parse_response(
    status: int,
    body: bytes,
    now: float,
    *,
    retry_after: str | None = None,
    margin: float = DEFAULT_MARGIN_S,
    refused: str = _DEVICE_REFUSED,
) -> ClientSecret:
    """The client secret in a token service's answer, or :class:`CredentialUnavailable` saying why not.

    ``now`` is this computer's Unix time, to tell a secret that is already (nearly) expired, which
    is also what a wrong system clock looks like. ``refused`` is what a 401 or 403 tells the user
    (``{status}`` is filled in): it depends on how this computer proved itself.
    """
    words = _server_words(body) if status >= 400 else None
    said = f" It said: {words}" if words else ""
    if status in (401, 403):
        return_kind: Literal["unauthorized", "forbidden"] = "unauthorized" if status == 401 else "forbidden"
        raise _problem(
            return_kind,
            refused.format(status=status) + said,
            retryable=False,
            status=status,
            detail=words,
        )
    if status == 429:
        raise _problem(
            "rate_limited",
            f"The token service asks this computer to wait before asking for a new secret.{said}",
            retryable=True,
            status=status,
            retry_after=parse_retry_after(retry_after, _RETRY_AFTER_LIMIT),
            detail=words,
        )
    if status == 404:
        raise _problem(
            "not_found",
            "The token service address was not found (HTTP 404). Check endpoint.token_url.",
            retryable=False,
            status=status,
            detail=words,
        )
    if status >= 500:
        raise _problem(
            "server_error",
            f"The token service failed (HTTP {status}); trying again.{said}",
            retryable=True,
            status=status,
            retry_after=parse_retry_after(retry_after, _RETRY_AFTER_LIMIT),
            detail=words,
        )
    if not 200 <= status < 300:
        raise _problem(
            "http_error",
            f"The token service answered HTTP {status} instead of a client secret.{said}",
            retryable=True,
            status=status,
            detail=words,
        )

    def bad(why: str) -> CredentialUnavailable:
        return _problem("handshake", f"{_BAD_ANSWER}: {why}.", retryable=True, status=status, detail=why)

    if len(body) > _BODY_LIMIT:
        raise bad(f"it is {len(body)} bytes long")
    try:
        parsed = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise bad("it is not UTF-8 text") from None
    except ValueError:
        raise bad("it is not JSON") from None
    if not isinstance(parsed, dict):
        raise bad(f"it is a JSON {type(parsed).__name__}, not an object")
    value = parsed.get("value")
    if value is None:
        raise bad('it has no "value"')
    if not isinstance(value, str):
        raise bad(f'its "value" is a {type(value).__name__}, not text')
    value = value.strip()
    if not value:
        raise bad('its "value" is empty')
    if not set(value) <= _HEADER_SAFE:
        raise bad('its "value" contains characters that cannot be sent in an HTTP header')
    expires_at = parsed.get("expires_at")
    if expires_at is None:
        raise bad('it has no "expires_at"')
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise bad(f'its "expires_at" is a {type(expires_at).__name__}, not a number of seconds')
    if not math.isfinite(expires_at) or expires_at <= 0:
        raise bad(f'its "expires_at" ({expires_at}) is not a time')
    secret = ClientSecret(value, float(expires_at))
    if not secret.usable(now, margin):
        left = secret.expires_at - now
        when = f"expired {-left:.0f} s ago" if left <= 0 else f"expires in {left:.0f} s"
        raise _problem(
            "handshake",
            f"The token service handed out a secret that {when}, too soon to use (under {margin:.0f} s "
            "left). Check this computer's clock and the token service's secret lifetime.",
            retryable=True,
            status=status,
        )
    return secret


# ---------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------


class TokenAuth(Protocol):
    """How this computer proves itself to the token service other than with a device credential."""

    principal: str | None  # who it proved itself as last, when known

    def authorization(self, host: str) -> str:
        """An ``Authorization`` header value for one request to ``host``; may block (called in a
        thread). Raises :class:`CredentialUnavailable`."""
        ...


class ClientSecretSource:
    """Fetches a secret over HTTP for each connection: the transport's :class:`CredentialSource`.

    A secret is used for one connection only, and only with more than ``margin`` seconds left; a
    reconnect or rollover always asks anew. ``auth`` is the device credential (text) or a
    :class:`TokenAuth` asked for a fresh header per request. ``clock`` is Unix time (the service's
    ``expires_at`` is); ``transport`` lets tests put an httpx transport in between.
    """

    def __init__(
        self,
        token_url: str,
        auth: str | TokenAuth,
        *,
        margin: float = DEFAULT_MARGIN_S,
        timeout: float = _TIMEOUT_S,
        clock: Callable[[], float] = time.time,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not math.isfinite(margin) or margin < 0:
            raise ValueError(f"margin must be a finite number >= 0, not {margin!r}")
        if not math.isfinite(timeout) or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
        self._auth = None if isinstance(auth, str) else auth
        if isinstance(auth, str):
            self._request = build_request(token_url, auth)
        else:  # its Authorization is made anew at each fetch
            self._request = _token_request(check_token_url(token_url), "")
        self._margin = margin
        self._timeout = timeout
        self._clock = clock
        self._transport = transport
        self._host = httpx.URL(self._request.url).host
        self.fetched = 0  # how many secrets were fetched, for tests and diagnostics
        self.last_expires_at: float | None = None

    def __repr__(self) -> str:
        return f"ClientSecretSource(url={redact_url(self._request.url)!r})"

    __str__ = __repr__

    async def headers(self) -> dict[str, str]:
        secret = await self.fetch()
        return {"Authorization": f"Bearer {secret.value}"}

    async def fetch(self) -> ClientSecret:
        """One new secret, or :class:`CredentialUnavailable` (never any other exception from HTTP)."""
        request = self._request
        refused = _DEVICE_REFUSED
        if self._auth is not None:
            header = await asyncio.to_thread(self._auth.authorization, self._host)
            request = _token_request(request.url, header)
            who = f" as {self._auth.principal}" if self._auth.principal else ""
            refused = (
                f"The token service did not accept your company sign-in{who} (HTTP {{status}}). "
                "Ask IT to allow you to use Helpdesk Voice."
            )
        try:
            # No redirects: the device credential must go to the address the admin set, nowhere else.
            async with httpx.AsyncClient(
                timeout=self._timeout, follow_redirects=False, transport=self._transport
            ) as client:
                response = await client.post(request.url, headers=request.headers, content=request.body)
                body = await response.aread()
        except httpx.TimeoutException:
            raise _problem(
                "timeout",
                f"The token service at {self._host} did not answer within {self._timeout:g} s; trying again.",
                retryable=True,
            ) from None
        except httpx.ConnectError as exc:
            text = str(exc).lower()
            if "certificate" in text or "ssl" in text:
                raise _problem(
                    "tls",
                    f"The token service's TLS certificate at {self._host} could not be verified.",
                    retryable=True,
                    detail=type(exc).__name__,
                ) from None
            raise _problem(
                "refused",
                f"The token service at {self._host} cannot be reached; trying again.",
                retryable=True,
                detail=type(exc).__name__,
            ) from None
        except httpx.HTTPError as exc:
            raise _problem(
                "network",
                f"The connection to the token service at {self._host} failed ({type(exc).__name__}); "
                "trying again.",
                retryable=True,
            ) from None
        if 300 <= response.status_code < 400:
            raise _problem(
                "http_error",
                f"The token service at {self._host} redirects (HTTP {response.status_code}); the device "
                "credential is not sent on. Set endpoint.token_url to the final address.",
                retryable=False,
                status=response.status_code,
            )
        secret = parse_response(
            response.status_code,
            body,
            self._clock(),
            retry_after=response.headers.get("retry-after"),
            margin=self._margin,
            refused=refused,
        )
        self.fetched += 1
        self.last_expires_at = secret.expires_at
        return secret
