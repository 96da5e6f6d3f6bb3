"""What went wrong with the connection, in words a user can act on, and whether to try again.

:func:`classify` turns whatever the WebSocket stack raised into a :class:`ConnectionProblem`: a kind
for code to branch on, one human sentence or two for the screen, and whether trying again can help.
:func:`classify_error_event` does the same for the ``error`` events that end a session (a rejected
key). This module is the one place that decides fatal against retryable, for handshake statuses,
close codes and error events alike.

Messages never quote credentials; text from the server (a close reason, an error body) is made
printable here, and the transport also scrubs it of the secrets it sent.
"""

from __future__ import annotations

import errno
import json
import math
import re
import socket
import ssl
from dataclasses import dataclass, replace
from typing import Final, Literal, TypeAlias

from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidProxy,
    InvalidStatus,
    InvalidUpgrade,
    InvalidURI,
    ProxyError,
)
from websockets.frames import CloseCode

from app.core.safe_text import one_line, printable

__all__ = [
    "KEEPALIVE_TIMEOUT_REASON",
    "ConnectionProblem",
    "CredentialUnavailable",
    "ProblemKind",
    "classify",
    "classify_error_event",
    "format_bytes",
    "parse_retry_after",
]

ProblemKind: TypeAlias = Literal[
    "unauthorized",
    "forbidden",
    "not_found",
    "rate_limited",
    "server_error",
    "http_error",
    "redirect",
    "tls",
    "dns",
    "refused",
    "timeout",
    "network",
    "proxy",
    "handshake",
    "invalid_url",
    "peer_silent",
    "dropped",
    "too_big",
    "protocol_error",
    "server_closed",
    "closed",
    "handler_error",
    "unexpected",
]

# The close reason websockets' keepalive sends when a pong does not come back in time.
KEEPALIVE_TIMEOUT_REASON: Final = "keepalive ping timeout"
_DETAIL_CHARS: Final = 300
_FRAME_SIZE: Final = re.compile(r"frame with (\d+) bytes")
_RETRY_AFTER_LIMIT: Final = 24 * 3600.0  # beyond a day the header is nonsense, not advice
# Error events after which the session cannot go on and a new one would fail the same way: the key
# was refused (OpenAI sends ``invalid_api_key``; compatible servers use the error types).
_FATAL_ERROR_CODES: Final = frozenset({"invalid_api_key", "invalid_authentication", "account_deactivated"})
_FATAL_ERROR_TYPES: Final = frozenset({"authentication_error", "permission_error"})


@dataclass(frozen=True, slots=True)
class ConnectionProblem:
    """One failure to connect or one lost connection.

    ``status`` is the HTTP status of a rejected handshake, ``close_code`` the WebSocket close code of a
    lost connection, ``retry_after`` the server's Retry-After in seconds, ``detail`` technical text
    (a server's error message or close reason) for the log and a "details" view.
    """

    kind: ProblemKind
    message: str
    retryable: bool
    status: int | None = None
    close_code: int | None = None
    retry_after: float | None = None
    detail: str | None = None

    def __str__(self) -> str:
        return self.message


class CredentialUnavailable(Exception):
    """Connecting could not even start: the credential for it could not be had (a token service).

    Whoever fetches the credential knows best what went wrong, so it says so in ``problem``;
    :func:`classify` passes that on unchanged, and the transport retries or gives up by it.
    """

    def __init__(self, problem: ConnectionProblem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def format_bytes(size: int) -> str:
    mib = 1 << 20
    if size >= mib:
        return f"{size // mib} MiB" if size % mib == 0 else f"{size / mib:.1f} MiB"
    if size >= 1024:
        return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size / 1024:.1f} KiB"
    return f"{size} bytes"


def _where(host: str | None) -> str:
    return f" {host}" if host else ""


def _body_detail(body: bytes | bytearray) -> str | None:
    """The server's own error message from a rejected handshake: JSON ``error.message`` or the text."""
    text = bytes(body[: _DETAIL_CHARS * 8]).decode("utf-8", "replace").strip()
    if not text:
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict):
        error = parsed.get("error")
        message = error.get("message") if isinstance(error, dict) else parsed.get("message")
        if isinstance(message, str) and message.strip():
            text = message.strip()
    return one_line(text, _DETAIL_CHARS)


def parse_retry_after(value: str | None, limit: float = _RETRY_AFTER_LIMIT) -> float | None:
    """A Retry-After header's seconds, at most ``limit``; None when absent or not usable.

    Only the delta-seconds form: the HTTP-date form needs a trustworthy clock, which a laptop lacks.
    """
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, limit)


def _from_status(exc: InvalidStatus) -> ConnectionProblem:
    response = exc.response
    status = response.status_code
    detail = _body_detail(response.body)
    if status == 401:
        return ConnectionProblem(
            "unauthorized",
            "The server did not accept the API key (HTTP 401). Check the API key in the settings.",
            retryable=False,
            status=status,
            detail=detail,
        )
    if status == 403:
        return ConnectionProblem(
            "forbidden",
            "The API key has no permission for this endpoint or model (HTTP 403). "
            "Check the API key and what it is allowed to use.",
            retryable=False,
            status=status,
            detail=detail,
        )
    if status == 404:
        return ConnectionProblem(
            "not_found",
            "The endpoint, model or deployment was not found (HTTP 404). "
            "Check the endpoint address and the model or deployment name.",
            retryable=False,
            status=status,
            detail=detail,
        )
    if status == 429:
        return ConnectionProblem(
            "rate_limited",
            "The service is rate limiting this account or its quota is used up (HTTP 429). "
            "Trying again after a longer pause; if this persists, check the account's usage limits.",
            retryable=True,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            detail=detail,
        )
    if 500 <= status <= 599:
        return ConnectionProblem(
            "server_error",
            f"The server had an internal problem (HTTP {status}). Trying again.",
            retryable=True,
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            detail=detail,
        )
    if 300 <= status <= 399:
        # Following a redirect could hand the api-key header to another host, so none is followed.
        return ConnectionProblem(
            "redirect",
            f"The server redirected the connection elsewhere (HTTP {status}); redirects are not "
            "followed so the API key stays with the configured host. Check the endpoint address.",
            retryable=False,
            status=status,
            detail=response.headers.get("Location"),
        )
    if status == 408:
        return ConnectionProblem(
            "timeout",
            "The server timed out waiting for the connection request (HTTP 408). Trying again.",
            retryable=True,
            status=status,
            detail=detail,
        )
    if 400 <= status <= 499:
        return ConnectionProblem(
            "http_error",
            f"The server refused the connection request (HTTP {status}). Check the endpoint settings.",
            retryable=False,
            status=status,
            detail=detail,
        )
    return ConnectionProblem(
        "handshake",
        f"The server answered with HTTP {status} instead of opening a WebSocket. "
        "Check that the address is a realtime endpoint.",
        retryable=True,
        status=status,
        detail=detail,
    )


def _from_close(exc: ConnectionClosed, max_message_bytes: int | None) -> ConnectionProblem:
    sent, rcvd = exc.sent, exc.rcvd
    if sent is not None and (rcvd is None or exc.rcvd_then_sent is False):
        return _closed_by_us(sent.code, sent.reason, max_message_bytes)
    if rcvd is None:
        # No close frame either way: the TCP connection died (reset, network change, server crash).
        return ConnectionProblem(
            "dropped",
            f"The connection to the server was lost unexpectedly (close code {CloseCode.ABNORMAL_CLOSURE}, "
            "no closing handshake). Reconnecting.",
            retryable=True,
            close_code=int(CloseCode.ABNORMAL_CLOSURE),
            detail=str(exc.__cause__) if exc.__cause__ is not None else None,
        )
    reason = one_line(rcvd.reason, _DETAIL_CHARS) or None
    if rcvd.code == CloseCode.POLICY_VIOLATION:
        # Servers close with 1008 for a key they rejected after the handshake, or for breaking
        # their rules: the same request would be refused again.
        return ConnectionProblem(
            "unauthorized",
            f"The server refused this connection (close code {rcvd.code}"
            + (f": {reason}" if reason else "")
            + "). Check the API key and the endpoint in the settings.",
            retryable=False,
            close_code=rcvd.code,
            detail=reason,
        )
    if rcvd.code == CloseCode.MESSAGE_TOO_BIG:
        return ConnectionProblem(
            "too_big",
            "The server closed the connection because a message from this app was too big for it "
            f"(close code {rcvd.code}). Reconnecting.",
            retryable=True,
            close_code=rcvd.code,
            detail=reason,
        )
    if rcvd.code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
        return ConnectionProblem(
            "server_closed",
            f"The server ended the session (close code {rcvd.code}). Reconnecting.",
            retryable=True,
            close_code=rcvd.code,
            detail=reason,
        )
    text = f": {reason}" if reason else ""
    return ConnectionProblem(
        "dropped",
        f"The server closed the connection abnormally (close code {rcvd.code}{text}). Reconnecting.",
        retryable=True,
        close_code=rcvd.code,
        detail=reason,
    )


def _closed_by_us(code: int, reason: str, max_message_bytes: int | None) -> ConnectionProblem:
    """This side started the closing handshake: on request, or because of what the server did."""
    reason = one_line(reason, _DETAIL_CHARS)
    if code == CloseCode.INTERNAL_ERROR and reason == KEEPALIVE_TIMEOUT_REASON:
        return ConnectionProblem(
            "peer_silent",
            "The server stopped responding (no answer to keepalive pings). Reconnecting.",
            retryable=True,
            close_code=code,
        )
    if code == CloseCode.MESSAGE_TOO_BIG:
        match = _FRAME_SIZE.search(reason)
        size = f" ({format_bytes(int(match.group(1)))})" if match else ""
        limit = f"the {format_bytes(max_message_bytes)} limit" if max_message_bytes else "the size limit"
        return ConnectionProblem(
            "too_big",
            f"The server sent a message{size} larger than {limit}, so the connection was closed. "
            "Reconnecting.",
            retryable=True,
            close_code=code,
            detail=reason or None,
        )
    if code in (CloseCode.NORMAL_CLOSURE, CloseCode.GOING_AWAY):
        return ConnectionProblem(
            "closed", "The connection was closed by this app.", retryable=False, close_code=code
        )
    text = f": {reason}" if reason else ""
    return ConnectionProblem(
        "protocol_error",
        f"The server sent data that breaks the WebSocket protocol (close code {code}{text}). Reconnecting.",
        retryable=True,
        close_code=code,
        detail=reason or None,
    )


def _is_refused(exc: OSError) -> bool:
    if isinstance(exc, ConnectionRefusedError) or exc.errno == errno.ECONNREFUSED:
        return True
    # Python 3.11 folds the failures for several addresses (::1 and 127.0.0.1) into one plain OSError.
    text = str(exc)
    return text.startswith("Multiple exceptions") and f"[Errno {errno.ECONNREFUSED}]" in text


def classify_error_event(code: str | None, error_type: str | None, message: str) -> ConnectionProblem | None:
    """The problem an ``error`` event means when it ends the session (a refused key), else None.

    Every other error event is about one request (a bad item id, a cancel with nothing to cancel)
    and the conversation carries on.
    """
    if code not in _FATAL_ERROR_CODES and error_type not in _FATAL_ERROR_TYPES:
        return None
    detail = one_line(message, _DETAIL_CHARS) or None
    return ConnectionProblem(
        "unauthorized",
        f"The server did not accept the API key ({code or error_type}). Check the API key in the settings.",
        retryable=False,
        detail=detail,
    )


def classify(
    exc: BaseException,
    *,
    host: str | None = None,
    max_message_bytes: int | None = None,
    open_timeout: float | None = None,
) -> ConnectionProblem:
    """The :class:`ConnectionProblem` behind an exception from connecting or receiving.

    ``host``, ``max_message_bytes`` and ``open_timeout`` only make the messages more specific.
    """
    problem = _classify(exc, host=host, max_message_bytes=max_message_bytes, open_timeout=open_timeout)
    detail = None if problem.detail is None else printable(problem.detail)
    return replace(problem, message=printable(problem.message), detail=detail)


def _classify(
    exc: BaseException,
    *,
    host: str | None = None,
    max_message_bytes: int | None = None,
    open_timeout: float | None = None,
) -> ConnectionProblem:
    if isinstance(exc, CredentialUnavailable):
        return exc.problem
    if isinstance(exc, InvalidStatus):
        return _from_status(exc)
    if isinstance(exc, ConnectionClosed):
        return _from_close(exc, max_message_bytes)
    if isinstance(exc, InvalidURI):
        return ConnectionProblem(
            "invalid_url", "The endpoint address is not a valid WebSocket URL.", retryable=False
        )
    if isinstance(exc, InvalidProxy | ProxyError):
        return ConnectionProblem(
            "proxy",
            "The network proxy refused or broke the connection. Check the proxy settings.",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, InvalidUpgrade | InvalidMessage):
        return ConnectionProblem(
            "handshake",
            f"The server{_where(host)} did not answer as a WebSocket server. "
            "Check that the address is a realtime endpoint.",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, InvalidHandshake):
        return ConnectionProblem(
            "handshake",
            f"The WebSocket handshake with{_where(host) or ' the server'} failed.",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = exc.verify_message or exc.reason or "unknown reason"
        return ConnectionProblem(
            "tls",
            f"The server's TLS certificate could not be verified ({reason}). A proxy or security "
            "software that inspects HTTPS, or a wrong system clock, are the usual causes.",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, ssl.SSLError):
        return ConnectionProblem(
            "tls",
            f"The secure (TLS) connection to{_where(host) or ' the server'} failed "
            f"({exc.reason or type(exc).__name__}).",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, socket.gaierror):
        return ConnectionProblem(
            "dns",
            f"The server{_where(host)} could not be found (DNS lookup failed). "
            "Check the endpoint address and the network connection.",
            retryable=True,
            detail=str(exc),
        )
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        after = f" within {open_timeout:g} s" if open_timeout is not None else " in time"
        return ConnectionProblem(
            "timeout",
            f"The server{_where(host)} did not answer{after}. Trying again.",
            retryable=True,
        )
    if isinstance(exc, OSError):
        if _is_refused(exc):
            return ConnectionProblem(
                "refused",
                f"The server{_where(host)} refused the connection (nothing is listening there). "
                "Check the endpoint address, or whether the local server is running.",
                retryable=True,
                detail=str(exc),
            )
        return ConnectionProblem(
            "network",
            f"The server{_where(host)} could not be reached ({exc.strerror or type(exc).__name__}). "
            "Check the network connection.",
            retryable=True,
            detail=str(exc),
        )
    return ConnectionProblem(
        "unexpected",
        f"The connection failed unexpectedly ({type(exc).__name__}).",
        retryable=True,
        detail=str(exc)[:_DETAIL_CHARS] or None,
    )
