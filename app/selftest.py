"""``helpdesk-voice selftest``: is this machine ready for a conversation?

Checks, in the order a helpdesk technician would: the settings files, the keyring, the endpoint
(a real connection that must answer with a realtime session; for the offline assistant, its server
is started and asked), then the audio devices (:mod:`app.audio.roundtrip`: the test sound, the
echo path, speaker or headset mode). Each check prints one line saying what it found; the exit
code is 0 only when every check passed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from app.config import LoadedSettings, secrets
from app.core.protocol import ServerEvent
from app.launch import LaunchError, plan_from_settings
from app.realtime import ConnectionProblem, Endpoint, RealtimeTransport
from app.settings_rules import API_KEY_FIELD, cross_field_problems

PROBE_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{self.name}: {'ok' if self.ok else 'FAILED'}: {self.detail}"


def check_settings(settings: LoadedSettings) -> Check:
    if settings.problems:
        return Check("settings", False, "; ".join(settings.problems))
    locked = len(settings.locks)
    policy = f", {locked} locked by the site policy" if locked else ""
    return Check("settings", True, f"backend {settings.typed.backend}{policy}")


def check_keyring(settings: LoadedSettings, environ: Mapping[str, str] = os.environ) -> Check:
    status = secrets.status(environ)
    # Whether this backend needs a key is the rule the Settings dialog and the launcher use.
    problems = cross_field_problems(settings.values, api_key_present=False)
    needed = any(problem.key == API_KEY_FIELD for problem in problems)
    token_url = settings.typed.endpoint.token_url
    if token_url and settings.typed.backend != "embedded":
        if settings.typed.endpoint.token_auth == "integrated":
            return _check_company_sign_in(token_url)
        from app.realtime.client_secret import lookup_token_credential

        # No key on this computer by design: what matters is the device's credential.
        found = lookup_token_credential(environ)
        if found.credential is None:
            return Check(
                "API key", False, f"not used: a token service gives short-lived secrets; {found.reason}"
            )
        return Check(
            "API key",
            True,
            f"not used: a token service gives short-lived secrets (device credential: {found.source})",
        )
    if status.is_set:
        return Check("API key", True, status.describe())
    if needed:
        return Check("API key", False, status.describe())
    return Check("API key", True, f"not needed for the {settings.typed.backend} backend; {status.describe()}")


def _check_company_sign_in(token_url: str) -> Check:
    """Whether the signed-in user gets a service ticket for the token service's host."""
    from urllib.parse import urlsplit

    from app.realtime.errors import CredentialUnavailable
    from app.realtime.integrated_auth import IntegratedSignIn

    name = "API key"
    lead = "not used: a token service gives short-lived secrets"
    try:
        host = urlsplit(token_url).hostname or ""
        sign_in = IntegratedSignIn()
        sign_in.authorization(host)
    except CredentialUnavailable as exc:
        return Check(name, False, f"{lead}; {exc.problem.message}")
    except Exception as exc:  # a bad address: the settings check says more
        return Check(name, False, f"{lead}; the company sign-in could not be tried ({type(exc).__name__})")
    who = f" as {sign_in.principal}" if sign_in.principal else ""
    return Check(name, True, f"{lead} (company sign-in{who} works for {host})")


class _Ignore:
    """A transport handler for a probe, which never gets as far as a session."""

    async def on_connected(self, reconnected: bool) -> None: ...
    async def on_event(self, event: ServerEvent) -> None: ...
    async def on_disconnected(self, problem: ConnectionProblem, retry_in: float | None) -> None: ...


def probe(endpoint: Endpoint, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when ``endpoint`` answers with a realtime session, else what went wrong, for the user."""
    transport = RealtimeTransport(endpoint, _Ignore(), open_timeout=timeout)
    problem = asyncio.run(transport.probe())
    return None if problem is None else problem.message


def check_endpoint(settings: LoadedSettings, progress: Callable[[str], None]) -> Check:
    try:
        plan = plan_from_settings(settings)
    except LaunchError as exc:
        return Check("endpoint", False, str(exc))
    if plan.endpoint is not None:
        problem = probe(plan.endpoint)
        where = plan.endpoint.display_url
        return Check("endpoint", problem is None, problem or f"{where} answers with a realtime session")
    from app.localmodel.launcher import EmbeddedServerProcess, ServerStartError

    progress("starting the offline assistant to check it...")
    server = EmbeddedServerProcess(progress=lambda line: progress(f"  {line}"))
    try:
        endpoint = server.start()
        problem = probe(endpoint)
    except ServerStartError as exc:
        return Check("endpoint", False, f"the offline assistant could not start: {exc}")
    finally:
        server.stop()
    return Check("endpoint", problem is None, problem or "the offline assistant starts and answers")
