"""The reference token service: hands registered laptops short-lived realtime secrets.

It holds the company's API key (from its own environment, never from a laptop) and answers
``POST /v1/realtime/client_secrets`` for a device whose bearer credential is on its allow-list, by
asking the upstream (OpenAI's or Azure's ``/v1/realtime/client_secrets``) for a secret with the
session defaults set here (model, voice, lifetime) and passing the answer on. Laptops cannot choose
the model or the lifetime: the body they send is ignored.

The allow-list holds SHA-256 hashes of the credentials, so a leaked configuration file lets nobody
in. Device credentials are random 256-bit tokens made by ``new-device``, which is why a plain hash
(no salt, no slow hash) is enough: there is nothing to guess a password from. Each device may ask
``rate_per_minute`` times in any 60 seconds; beyond that it gets 429 with Retry-After.

With a ``keytab`` (the service's own Kerberos key), laptops may instead prove who their user is
with the company sign-in (``Authorization: Negotiate``, see :mod:`negotiate`); ``kerberos_allow``
lists the principals (or ``*@REALM``) that get secrets, and the rate limit is per principal.

Configuration: a TOML file (``HELPDESK_TOKEN_SERVICE_CONFIG``) and environment variables, the
environment winning; see :func:`load_config`.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import math
import os
import secrets
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.token_service.negotiate import NegotiateAcceptor, NegotiateRefused, principal_allowed

__all__ = [
    "CONFIG_ENV",
    "RateLimiter",
    "ServiceConfig",
    "TokenServiceConfigError",
    "create_app",
    "hash_credential",
    "load_config",
    "new_credential",
]

log = logging.getLogger("app.token_service")

CONFIG_ENV: Final = "HELPDESK_TOKEN_SERVICE_CONFIG"
_ENV_PREFIX: Final = "HELPDESK_TOKEN_SERVICE_"
OPENAI_CLIENT_SECRETS: Final = "https://api.openai.com/v1/realtime/client_secrets"
_HASH_PREFIX: Final = "sha256:"
_WINDOW_S: Final = 60.0
_UPSTREAM_TIMEOUT_S: Final = 10.0


class TokenServiceConfigError(ValueError):
    """The service's configuration cannot work; the message says which setting and why."""


@dataclass(frozen=True, slots=True, repr=False)
class ServiceConfig:
    """What the service needs; ``devices`` maps each credential's SHA-256 (hex) to a device name."""

    upstream_url: str
    api_key: str
    devices: Mapping[str, str]
    upstream_auth: str = "bearer"  # "bearer" (OpenAI) or "api-key" (Azure's header)
    model: str = "gpt-realtime"
    voice: str = ""
    ttl_seconds: int = 600
    rate_per_minute: int = 6
    host: str = "127.0.0.1"
    port: int = 8787
    keytab: str = ""  # the service's Kerberos key: with it, Negotiate sign-ins are accepted
    kerberos_allow: tuple[str, ...] = ()  # principals, or "*@REALM", that may sign in that way

    def __repr__(self) -> str:
        return (
            f"ServiceConfig(upstream_url={self.upstream_url!r}, devices={len(self.devices)}, "
            f"model={self.model!r}, ttl_seconds={self.ttl_seconds}, rate_per_minute={self.rate_per_minute}, "
            f"kerberos={bool(self.keytab)})"
        )

    __str__ = __repr__


def new_credential() -> str:
    """A fresh device credential: 256 random bits, URL-safe."""
    return secrets.token_urlsafe(32)


def hash_credential(credential: str) -> str:
    """What the allow-list holds for ``credential``: ``sha256:<hex>``."""
    return _HASH_PREFIX + hashlib.sha256(credential.strip().encode()).hexdigest()


def _device_hashes(raw: object) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise TokenServiceConfigError('"devices" must be a table of device name = "sha256:<hex>"')
    hashes: dict[str, str] = {}
    for name, value in raw.items():
        if not isinstance(value, str) or not value.startswith(_HASH_PREFIX):
            raise TokenServiceConfigError(f'device {name!r}: the value must be "sha256:<64 hex digits>"')
        digest = value.removeprefix(_HASH_PREFIX).lower()
        if len(digest) != 64 or any(ch not in "0123456789abcdef" for ch in digest):
            raise TokenServiceConfigError(f'device {name!r}: the value must be "sha256:<64 hex digits>"')
        hashes[digest] = str(name)
    return hashes


def load_config(environ: Mapping[str, str] = os.environ) -> ServiceConfig:
    """The configuration from the TOML file named by ``HELPDESK_TOKEN_SERVICE_CONFIG`` and the environment.

    Environment variables ``HELPDESK_TOKEN_SERVICE_<KEY>`` override the file's top-level keys
    (``UPSTREAM_URL``, ``UPSTREAM_AUTH``, ``MODEL``, ``VOICE``, ``TTL_SECONDS``, ``RATE_PER_MINUTE``,
    ``HOST``, ``PORT``, ``KEYTAB``; ``KERBEROS_ALLOW`` comma-separated). The API key comes only from
    ``HELPDESK_TOKEN_SERVICE_API_KEY`` or ``OPENAI_API_KEY``, never from the file, so the file can
    be shared and versioned.
    """
    data: dict[str, Any] = {}
    path = environ.get(CONFIG_ENV, "").strip()
    if path:
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise TokenServiceConfigError(f"cannot read {path}: {exc.strerror or exc}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise TokenServiceConfigError(f"{path} is not valid TOML: {exc}") from None
    if "api_key" in data:
        raise TokenServiceConfigError(
            "the API key must not be in the file; "
            "set HELPDESK_TOKEN_SERVICE_API_KEY in the service's environment"
        )

    def text(key: str, default: str) -> str:
        value = environ.get(_ENV_PREFIX + key.upper(), data.get(key, default))
        if not isinstance(value, str):
            raise TokenServiceConfigError(f"{key} must be text")
        return value.strip()

    def whole(key: str, default: int, low: int, high: int) -> int:
        raw = environ.get(_ENV_PREFIX + key.upper(), data.get(key, default))
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise TokenServiceConfigError(f"{key} must be a whole number, not {raw!r}") from None
        if not low <= value <= high:
            raise TokenServiceConfigError(f"{key} must be from {low} to {high}, not {value}")
        return value

    api_key = (environ.get(_ENV_PREFIX + "API_KEY") or environ.get("OPENAI_API_KEY") or "").strip()
    if not api_key:
        raise TokenServiceConfigError(
            "no API key: set HELPDESK_TOKEN_SERVICE_API_KEY (or OPENAI_API_KEY) in the service's environment"
        )
    upstream = text("upstream_url", OPENAI_CLIENT_SECRETS)
    parsed = httpx.URL(upstream)
    loopback = parsed.host in ("127.0.0.1", "localhost", "::1")
    if parsed.scheme != "https" and not (parsed.scheme == "http" and loopback):
        raise TokenServiceConfigError("upstream_url must start with https:// (the API key goes there)")
    auth = text("upstream_auth", "bearer").lower()
    if auth not in ("bearer", "api-key"):
        raise TokenServiceConfigError('upstream_auth must be "bearer" (OpenAI) or "api-key" (Azure)')
    devices = _device_hashes(data.get("devices", {}))
    from_env = environ.get(_ENV_PREFIX + "DEVICES", "").strip()
    if from_env:  # name=sha256:<hex>,name=...: for containers without a file
        pairs = [item.partition("=") for item in from_env.split(",") if item.strip()]
        devices.update(_device_hashes({name.strip(): value.strip() for name, _, value in pairs}))
    keytab = text("keytab", "")
    allow_raw = environ.get(_ENV_PREFIX + "KERBEROS_ALLOW")
    allow_value: object = allow_raw.split(",") if allow_raw is not None else data.get("kerberos_allow", [])
    if not isinstance(allow_value, list) or not all(isinstance(item, str) for item in allow_value):
        raise TokenServiceConfigError('kerberos_allow must be a list of principals or "*@REALM"')
    kerberos_allow = tuple(item.strip() for item in allow_value if item.strip())
    bad = [item for item in kerberos_allow if "@" not in item or item.endswith("@")]
    if bad:
        raise TokenServiceConfigError(
            f'kerberos_allow entries must be user@REALM or "*@REALM", not {", ".join(map(repr, bad))}'
        )
    if kerberos_allow and not keytab:
        raise TokenServiceConfigError("kerberos_allow is set, but no keytab to check sign-ins with")
    if not devices and not kerberos_allow:
        log.warning("no devices are allowed: every request will be refused (add [devices] to the config)")
    return ServiceConfig(
        upstream_url=upstream,
        api_key=api_key,
        devices=devices,
        upstream_auth=auth,
        model=text("model", "gpt-realtime"),
        voice=text("voice", ""),
        ttl_seconds=whole("ttl_seconds", 600, 10, 7200),
        rate_per_minute=whole("rate_per_minute", 6, 1, 10_000),
        host=text("host", "127.0.0.1"),
        port=whole("port", 8787, 0, 65535),
        keytab=keytab,
        kerberos_allow=kerberos_allow,
    )


@dataclass
class RateLimiter:
    """At most ``per_minute`` grants per key in any 60 seconds (a sliding window), pure."""

    per_minute: int
    _grants: dict[str, collections.deque[float]] = field(default_factory=dict)

    def check(self, key: str, now: float) -> float | None:
        """None and counts a grant, or the seconds until the next grant is allowed."""
        grants = self._grants.setdefault(key, collections.deque())
        while grants and grants[0] <= now - _WINDOW_S:
            grants.popleft()
        if len(grants) >= self.per_minute:
            return max(grants[0] + _WINDOW_S - now, 0.0)
        grants.append(now)
        return None


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message}}, status_code=status, headers=headers)


def _device(config: ServiceConfig, authorization: str | None) -> str | None:
    """The device name the bearer credential belongs to, or None."""
    if not authorization or not authorization.lower().startswith("bearer "):
        return None
    digest = hash_credential(authorization[7:]).removeprefix(_HASH_PREFIX)
    found = None
    for known, name in config.devices.items():  # every entry, so the timing tells nothing
        if hmac.compare_digest(known, digest):
            found = name
    return found


def _session(config: ServiceConfig) -> dict[str, Any]:
    session: dict[str, Any] = {"type": "realtime", "model": config.model}
    if config.voice:
        session["audio"] = {"output": {"voice": config.voice}}
    return session


def create_app(
    config: ServiceConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
) -> Starlette:
    """The ASGI app; ``clock`` drives the rate limit, ``upstream_transport`` is for tests.

    Raises :class:`TokenServiceConfigError` when the keytab cannot be used.
    """
    limiter = RateLimiter(config.rate_per_minute)
    acceptor: NegotiateAcceptor | None = None
    if config.keytab:
        try:
            acceptor = NegotiateAcceptor(config.keytab)
        except ValueError as exc:
            raise TokenServiceConfigError(str(exc)) from None
    # A 401 names every way in, so a Negotiate client knows it may try its sign-in.
    challenge = {"WWW-Authenticate": "Negotiate"} if acceptor is not None else None
    if config.upstream_auth == "bearer":
        upstream_headers = {"Authorization": f"Bearer {config.api_key}"}
    else:
        upstream_headers = {"api-key": config.api_key}
    body = json.dumps(
        {
            "expires_after": {"anchor": "created_at", "seconds": config.ttl_seconds},
            "session": _session(config),
        }
    ).encode()

    async def signed_in(request: Request, authorization: str) -> Response | str:
        """The allowed principal a Negotiate header proves, or the refusal to send."""
        assert acceptor is not None
        try:
            principal = await asyncio.to_thread(acceptor.principal, authorization)
        except NegotiateRefused as exc:
            log.info("refused a sign-in from %s: %s", _peer(request), exc)
            return _error(401, "the company sign-in was not accepted", challenge)
        if not principal_allowed(principal, config.kerberos_allow):
            log.info("refused %s: not on kerberos_allow", principal)
            return _error(403, f"{principal} is not allowed to use this service")
        return principal

    async def client_secret(request: Request) -> Response:
        authorization = request.headers.get("authorization") or ""
        if acceptor is not None and authorization.lower().startswith("negotiate "):
            who = await signed_in(request, authorization)
            if isinstance(who, Response):
                return who
            device: str | None = who
        else:
            device = _device(config, authorization)
        if device is None:
            log.info("refused a request from %s: unknown device credential", _peer(request))
            return _error(401, "this device is not registered with the token service", challenge)
        wait = limiter.check(device, clock())
        if wait is not None:
            log.info("device %s is over its rate limit", device)
            seconds = str(max(1, math.ceil(wait)))
            return _error(429, "too many requests from this device", {"Retry-After": seconds})
        try:
            async with httpx.AsyncClient(
                timeout=_UPSTREAM_TIMEOUT_S, follow_redirects=False, transport=upstream_transport
            ) as client:
                answer = await client.post(
                    config.upstream_url,
                    headers={**upstream_headers, "Content-Type": "application/json"},
                    content=body,
                )
        except httpx.HTTPError as exc:
            log.warning("the upstream could not be reached (%s)", type(exc).__name__)
            return _error(502, "the upstream service cannot be reached")
        if answer.status_code == 429:
            retry = answer.headers.get("retry-after")
            return _error(503, "the upstream service is rate limiting", {"Retry-After": retry or "5"})
        if not 200 <= answer.status_code < 300:
            # The upstream's words may name the company's account; the laptop only learns the status.
            log.warning("the upstream refused (HTTP %d)", answer.status_code)
            return _error(502, f"the upstream service answered HTTP {answer.status_code}")
        log.info("issued a client secret to device %s", device)
        return Response(answer.content, status_code=200, media_type="application/json")

    async def health(_request: Request) -> Response:
        return JSONResponse({"ok": True, "devices": len(config.devices)})

    return Starlette(
        routes=[
            Route("/v1/realtime/client_secrets", client_secret, methods=["POST"]),
            Route("/healthz", health, methods=["GET"]),
        ]
    )


def _peer(request: Request) -> str:
    return request.client.host if request.client is not None else "an unknown address"
