"""Signing in to the token service with the user's own company login (HTTP Negotiate).

On a laptop joined to the company's domain the user already holds a Kerberos ticket from signing
in (Windows, a Mac bound to Active Directory, Linux with SSSD or ``kinit``). With
``endpoint.token_auth = "integrated"`` the app sends the token service a fresh Negotiate token for
the service ``HTTP/<token service host>`` instead of a device credential, so there is nothing to
distribute to each laptop at all: who may get secrets is decided by the domain.

The token comes from ``pyspnego``: Windows' SSPI there, GSSAPI (MIT or Heimdal Kerberos) elsewhere,
which needs the optional ``kerberos`` extra on Linux and macOS. Making one may ask the domain's KDC
for a service ticket, so :class:`IntegratedSignIn` is called off the event loop. Every failure
becomes :class:`CredentialUnavailable` with a sentence a user can act on; whether trying again can
help (a KDC that did not answer) or not (not signed in, no such service) decides ``retryable``.
"""

from __future__ import annotations

import base64
import re
import sys
from typing import Final

from app.realtime.errors import ConnectionProblem, CredentialUnavailable, ProblemKind

__all__ = ["IntegratedSignIn", "explain_failure", "integrated_auth_available"]

_SERVICE: Final = "HTTP"

# Kerberos' own words (MIT, Heimdal and Windows' SSPI) for the failures a user can do something
# about, and what to tell them. First match wins; anything else is reported as it came.
_KNOWN_FAILURES: Final[tuple[tuple[re.Pattern[str], bool, str], ...]] = (
    (
        re.compile(
            r"no kerberos credentials|no credentials (were supplied|cache)|credential cache|"
            r"SEC_E_NO_CREDENTIALS|ticket expired|credentials have expired",
            re.IGNORECASE,
        ),
        False,
        "you are not signed in to the company domain (no valid Kerberos ticket); sign in again "
        "(on Linux: kinit), then try again",
    ),
    (
        re.compile(r"not found in kerberos database|SEC_E_TARGET_UNKNOWN|unknown server", re.IGNORECASE),
        False,
        "the domain does not know the token service {host} (no service principal HTTP/{host}); "
        "ask IT to register it, or check endpoint.token_url",
    ),
    (
        re.compile(
            r"cannot (contact|find) any KDC|cannot reach|SEC_E_NO_AUTHENTICATING_AUTHORITY|"
            r"timed? ?out|connection refused",
            re.IGNORECASE,
        ),
        True,
        "the company domain's sign-in servers cannot be reached; trying again",
    ),
    (
        re.compile(r"clock skew", re.IGNORECASE),
        True,
        "this computer's clock is too far from the domain's; fix the clock, then try again",
    ),
)


def integrated_auth_available() -> str | None:
    """None when a Negotiate token can be made here, or the sentence saying what is missing."""
    try:
        import spnego  # noqa: F401
    except ImportError:
        return "integrated sign-in needs the pyspnego package, which is not installed"
    if sys.platform == "win32":
        return None  # SSPI is part of Windows
    try:  # pyspnego's GSSAPI provider needs both bindings
        import gssapi  # noqa: F401
        import krb5  # noqa: F401
    except ImportError:
        return (
            "integrated sign-in needs Kerberos support (the app's 'kerberos' extra, which brings "
            "GSSAPI), which is not installed"
        )
    return None


def explain_failure(host: str, words: str) -> tuple[bool, str]:
    """Whether trying again may help, and what to tell the user, for Kerberos' ``words``."""
    for pattern, retryable, sentence in _KNOWN_FAILURES:
        if pattern.search(words):
            return retryable, sentence.format(host=host)
    return False, f"integrated sign-in to {host} failed ({words.strip()[:200]})"


class IntegratedSignIn:
    """Makes ``Authorization: Negotiate ...`` for a host, from the signed-in user's Kerberos ticket.

    Each call makes a new token: the service keeps a replay cache, so a token is good once.
    """

    def __init__(self, *, service: str = _SERVICE) -> None:
        self._service = service
        self.principal: str | None = None  # who signed in last, when the mechanism tells

    def __repr__(self) -> str:
        return f"IntegratedSignIn(service={self._service!r})"

    def authorization(self, host: str) -> str:
        """The header value for ``host``; blocks while the KDC is asked for a service ticket."""
        missing = integrated_auth_available()
        if missing is not None:
            raise _unavailable(missing, retryable=False)
        import spnego
        import spnego.exceptions

        try:
            context = spnego.client(hostname=host, service=self._service, protocol="negotiate")
            token = context.step()
        except (spnego.exceptions.SpnegoError, OSError, ValueError) as exc:
            retryable, sentence = explain_failure(host, str(exc))
            raise _unavailable(sentence, retryable=retryable, detail=type(exc).__name__) from None
        if not token:
            raise _unavailable(f"integrated sign-in to {host} produced no token", retryable=False)
        self.principal = _client_principal(context)
        return "Negotiate " + base64.b64encode(token).decode("ascii")


def _client_principal(context: object) -> str | None:
    """Who signed in, for messages: the provider's answer, or else GSSAPI's default credential."""
    try:
        name = context.client_principal  # type: ignore[attr-defined]
        if name:
            return str(name)
        if sys.platform != "win32":
            import gssapi

            return str(gssapi.Credentials(usage="initiate").name)
    except Exception:  # only ever for a message; not knowing is fine
        return None
    return None


def _unavailable(message: str, *, retryable: bool, detail: str | None = None) -> CredentialUnavailable:
    kind: ProblemKind = "network" if retryable else "unauthorized"
    return CredentialUnavailable(
        ConnectionProblem(kind, f"Integrated sign-in: {message}.", retryable=retryable, detail=detail)
    )
