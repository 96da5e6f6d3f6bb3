"""Where the realtime WebSocket connects, and with which credentials.

An :class:`Endpoint` is the finished URL plus the HTTP headers of the opening handshake. The builders
check their input and fail with a :class:`ValueError` that says what to fix; no message and no repr
ever contains the API key, because both end up in logs and on screen.

The API key comes from ``HELPDESK_VOICE_API_KEY`` or the OS keyring, never from files or the command
line: a key in a file or in argv is readable by other local users and lands in shell history. It is
sent only over ``wss://`` or to this computer: over plain ``ws://`` anyone on the network path could
read it, so a custom ``ws://`` server elsewhere is connected to without it (:attr:`Endpoint.notes`
says so).
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal, Protocol, TypeAlias
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

__all__ = [
    "API_KEY_ENV",
    "KEYRING_SERVICE",
    "KEYRING_USERNAME",
    "ApiKeyLookup",
    "CredentialSource",
    "Endpoint",
    "EndpointKind",
    "KeyStoreError",
    "azure_endpoint",
    "custom_endpoint",
    "endpoint_from_url",
    "is_loopback_host",
    "lookup_api_key",
    "openai_endpoint",
    "redact_url",
    "resolve_api_key",
    "store_api_key",
]

EndpointKind: TypeAlias = Literal["openai", "azure", "custom", "embedded"]

API_KEY_ENV: Final = "HELPDESK_VOICE_API_KEY"
KEYRING_SERVICE: Final = "helpdesk-voice"
KEYRING_USERNAME: Final = "api-key"

OPENAI_REALTIME_URL: Final = "wss://api.openai.com/v1/realtime"
_OPENAI_HOST: Final = "api.openai.com"
# Azure OpenAI resources answer on either domain, depending on how the resource was created.
_AZURE_SUFFIXES: Final = (".openai.azure.com", ".cognitiveservices.azure.com")
_AZURE_PATH: Final = "/openai/v1/realtime"
# An Azure resource name: letters, digits and hyphens, which is also what a DNS label allows.
_AZURE_RESOURCE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?")
# Query values that are safe to show; anything else in a query may be a token and is masked.
_SHOWN_QUERY_KEYS: Final = frozenset({"model", "deployment", "api-version"})
# Visible ASCII only: a space, CR or LF in a header value is rejected or, worse, splits the header.
_HEADER_SAFE: Final = frozenset(string.ascii_letters + string.digits + string.punctuation)
_MASK: Final = "***"


class CredentialSource(Protocol):
    """Headers that are good for one connection only (a short-lived secret), asked for before each.

    Raises :class:`app.realtime.errors.CredentialUnavailable` when none can be had; the transport
    then reports the problem and retries as it would a refused connection.
    """

    async def headers(self) -> dict[str, str]: ...


@dataclass(frozen=True, slots=True, repr=False)
class Endpoint:
    """A realtime WebSocket URL and the headers of its opening handshake (credentials included).

    ``credentials``, when set, adds headers fetched anew for every connection (a token service's
    short-lived secret), so no long-lived key has to be on this computer.
    """

    url: str
    headers: dict[str, str] = field(default_factory=dict)
    kind: EndpointKind = "custom"
    notes: tuple[str, ...] = ()  # what the user should know before connecting (a key held back)
    credentials: CredentialSource | None = None

    def __repr__(self) -> str:
        shown = {name: _MASK for name in self.headers}
        fetched = "" if self.credentials is None else ", credentials=fetched per connection"
        return f"Endpoint(kind={self.kind!r}, url={redact_url(self.url)!r}, headers={shown!r}{fetched})"

    __str__ = __repr__

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""

    @property
    def display_url(self) -> str:
        """The URL with anything that could be a secret masked, for logs and the settings page."""
        return redact_url(self.url)


def redact_url(url: str) -> str:
    """``url`` without user info and with query values masked, except model and deployment names."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "<invalid URL>"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    query = [
        (key, value if key in _SHOWN_QUERY_KEYS else _MASK)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def _check_key(api_key: str, what: str) -> str:
    # Pasted keys often carry a trailing newline; anything else outside visible ASCII is a mistake.
    key = api_key.strip() if isinstance(api_key, str) else ""
    if not key:
        raise ValueError(f"{what} needs an API key, and the one given is empty")
    if not set(key) <= _HEADER_SAFE:
        raise ValueError(
            "the API key contains characters that cannot be sent in an HTTP header "
            "(spaces, line breaks or non-ASCII characters); copy it again from the provider's page"
        )
    return key


def _split(url: str, what: str) -> tuple[str, str, int | None, str, list[tuple[str, str]]]:
    """scheme, host, port, path and query of ``url``, or a ValueError that names the problem."""
    if not isinstance(url, str) or not url.strip():
        raise ValueError(f"{what} is empty")
    url = url.strip()
    if any(ch.isspace() for ch in url):
        raise ValueError(f"{what} must not contain spaces or line breaks")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} is not a valid URL ({exc})") from None
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"{what} must be a full address such as wss://host/path, not {redact_url(url)!r}")
    if not host:
        raise ValueError(f"{what} has no host name: {redact_url(url)!r}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what} must not contain a user name or password; use the API key instead")
    if parts.fragment:
        raise ValueError(f"{what} must not contain a '#' fragment")
    query = parse_qsl(parts.query, keep_blank_values=True)
    return parts.scheme.lower(), host.lower(), port, parts.path, query


def _join(scheme: str, host: str, port: int | None, path: str, query: list[tuple[str, str]]) -> str:
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    return urlunsplit((scheme, netloc, path, urlencode(query), ""))


def _with_param(query: list[tuple[str, str]], name: str, value: str) -> list[tuple[str, str]]:
    return [(key, val) for key, val in query if key != name] + [(name, value)]


def _check_name(value: str, what: str) -> str:
    name = value.strip() if isinstance(value, str) else ""
    if not name:
        raise ValueError(f"the {what} is empty")
    if any(ch.isspace() for ch in name):
        raise ValueError(f"the {what} must not contain spaces: {name!r}")
    return name


def _bearer(api_key: str, what: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_check_key(api_key, what)}"}


def openai_endpoint(model: str, api_key: str, base_url: str = OPENAI_REALTIME_URL) -> Endpoint:
    """The OpenAI realtime endpoint for ``model``: ``BASE_URL?model=MODEL`` with a Bearer key."""
    model = _check_name(model, "model name")
    scheme, host, port, path, query = _split(base_url, "the OpenAI base URL")
    if scheme != "wss" and not (scheme == "ws" and is_loopback_host(host)):  # ws:// only for tests
        raise ValueError(f"the OpenAI base URL must start with wss://, not {scheme}://")
    url = _join(scheme, host, port, path, _with_param(query, "model", model))
    return Endpoint(url, _bearer(api_key, "OpenAI"), "openai")


def _azure_host(resource: str) -> tuple[str, int | None]:
    text = resource.strip() if isinstance(resource, str) else ""
    if not text:
        raise ValueError("the Azure resource is empty; give its name or https://NAME.openai.azure.com")
    if "://" not in text:
        if not _AZURE_RESOURCE.fullmatch(text):
            raise ValueError(
                f"{text!r} is not an Azure resource name (letters, digits and hyphens) "
                "nor an address such as https://NAME.openai.azure.com"
            )
        return f"{text.lower()}{_AZURE_SUFFIXES[0]}", None
    scheme, host, port, _path, _query = _split(text, "the Azure resource address")
    if scheme not in ("https", "wss"):
        raise ValueError(f"the Azure resource address must start with https:// or wss://, not {scheme}://")
    if not host.endswith(_AZURE_SUFFIXES):
        raise ValueError(
            f"{host!r} is not an Azure OpenAI host (NAME.openai.azure.com or "
            "NAME.cognitiveservices.azure.com); use a custom endpoint for other servers"
        )
    return host, port


def azure_endpoint(resource: str, deployment: str, api_key: str) -> Endpoint:
    """The Azure OpenAI GA realtime endpoint of ``deployment`` with an ``api-key`` header.

    ``resource`` is the resource name or its address (``https://NAME.openai.azure.com``, any path
    ignored), as the Azure portal shows it.
    """
    host, port = _azure_host(resource)
    deployment = _check_name(deployment, "Azure deployment name")
    url = _join("wss", host, port, _AZURE_PATH, [("model", deployment)])
    return Endpoint(url, {"api-key": _check_key(api_key, "Azure")}, "azure")


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` names this computer (``localhost``, 127.0.0.0/8, ``::1``)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def custom_endpoint(url: str, api_key: str | None) -> Endpoint:
    """Any other realtime-compatible server; a Bearer header is sent only when a key is given.

    The key goes only over ``wss://`` or to this computer; a ``ws://`` server elsewhere gets none.
    """
    scheme, host, port, path, query = _split(url, "the endpoint URL")
    if scheme not in ("ws", "wss"):
        raise ValueError(f"the endpoint URL must start with ws:// or wss://, not {scheme}://")
    clean = _join(scheme, host, port, path, query)
    if api_key is None or not api_key.strip():
        return Endpoint(clean, {}, "custom")
    headers = _bearer(api_key, "this endpoint")
    if scheme == "ws" and not is_loopback_host(host):
        note = (
            f"the API key is not sent to {host}: ws:// is not encrypted, so anyone on the network "
            "could read it; use a wss:// address to connect with the key"
        )
        return Endpoint(clean, {}, "custom", (note,))
    return Endpoint(clean, headers, "custom")


def endpoint_from_url(url: str, api_key: str | None) -> Endpoint:
    """An endpoint from one pasted URL: OpenAI and Azure hosts get their own header forms.

    OpenAI and Azure URLs must name the model or deployment in the query (``?model=...``); an
    ``https://`` address of theirs is accepted and turned into ``wss://``.
    """
    scheme, host, port, path, query = _split(url, "the endpoint URL")
    names = {key for key, _ in query}
    if host == _OPENAI_HOST or host.endswith(_AZURE_SUFFIXES):
        azure = host != _OPENAI_HOST
        provider = "Azure OpenAI" if azure else "OpenAI"
        if scheme not in ("wss", "https"):
            raise ValueError(f"{provider} URLs must start with wss:// or https://, not {scheme}://")
        if api_key is None or not api_key.strip():
            raise ValueError(f"{provider} needs an API key")
        if azure and path.rstrip("/") in ("", "/openai"):
            raise ValueError(
                "this Azure address has no realtime path; use "
                f"wss://{host}{_AZURE_PATH}?model=DEPLOYMENT or give the deployment name separately"
            )
        if not names & ({"model", "deployment"} if azure else {"model"}):
            raise ValueError(f"the {provider} URL must name the model: add ?model=NAME")
        if not azure and path.rstrip("/") == "":
            path = "/v1/realtime"  # the host alone is a common paste; the realtime path is fixed
        clean = _join("wss", host, port, path, query)
        if azure:
            return Endpoint(clean, {"api-key": _check_key(api_key, "Azure")}, "azure")
        return Endpoint(clean, _bearer(api_key, "OpenAI"), "openai")
    return custom_endpoint(url, api_key)


# ---------------------------------------------------------------------------------------------------
# The API key
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, repr=False)
class ApiKeyLookup:
    """The outcome of looking for the API key; ``reason`` says why there is none, for the user."""

    key: str | None
    source: Literal["environment", "keyring"] | None
    reason: str | None = None

    def __repr__(self) -> str:
        shown = None if self.key is None else _MASK
        return f"ApiKeyLookup(key={shown!r}, source={self.source!r}, reason={self.reason!r})"

    __str__ = __repr__


class KeyStoreError(Exception):
    """The keyring refused to store the key; the message never contains the key."""


def _keyring_problem(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "NoKeyringError":  # keyring's own text goes on about packages, which helps nobody here
        return "the system keyring is unavailable: no keyring service such as GNOME Keyring or KWallet runs"
    # Otherwise keyring's first sentence names the locked collection or the failing service, which
    # is what the user needs; a backend's exception for a failed *read* carries no password.
    detail = str(exc).strip().split(". ")[0].rstrip(".")
    return f"the system keyring is unavailable ({name}: {detail})" if detail else f"keyring error ({name})"


def lookup_api_key(environ: Mapping[str, str] = os.environ) -> ApiKeyLookup:
    """The API key from ``HELPDESK_VOICE_API_KEY`` or else the keyring, with where it came from."""
    from_env = environ.get(API_KEY_ENV, "").strip()
    if from_env:
        return ApiKeyLookup(from_env, "environment")
    try:
        import keyring  # imported late: picking a backend can talk to D-Bus, which costs time

        stored = keyring.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
    except Exception as exc:  # any backend failure (no backend, locked, D-Bus) means "no key here"
        return ApiKeyLookup(None, None, _keyring_problem(exc))
    if stored is None or not stored.strip():
        return ApiKeyLookup(None, None, f"no API key: set {API_KEY_ENV} or store one in the keyring")
    return ApiKeyLookup(stored.strip(), "keyring")


def resolve_api_key(environ: Mapping[str, str] = os.environ) -> str | None:
    """The API key, or None; :func:`lookup_api_key` also says why there is none."""
    return lookup_api_key(environ).key


def store_api_key(api_key: str) -> None:
    """Saves the key in the OS keyring, where :func:`resolve_api_key` finds it."""
    key = _check_key(api_key, "the keyring")
    try:
        import keyring

        keyring.set_password(KEYRING_SERVICE, KEYRING_USERNAME, key)
    except Exception as exc:
        # Only the type: a backend's message about a failed write might quote what it was given.
        raise KeyStoreError(f"the system keyring could not store the key ({type(exc).__name__})") from None
