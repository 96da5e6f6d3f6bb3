"""Accepting a laptop user's company sign-in (HTTP Negotiate / Kerberos) at the token service.

The service holds a keytab for its own principal ``HTTP/<its host name>`` (made by the domain's
admins: ``ktpass`` on Active Directory, ``kadmin ktadd`` on MIT Kerberos). A laptop sends a
Negotiate token made from its user's ticket; accepting it proves who the user is, and the
allow-list decides whether that user gets secrets: exact principals (``alice@EXAMPLE.COM``) or a
whole realm (``*@EXAMPLE.COM``). The GSSAPI replay cache refuses a token seen before.

Needs the ``gssapi`` package (the app's ``kerberos`` extra); only imported when a keytab is set.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable
from pathlib import Path

__all__ = ["NegotiateAcceptor", "NegotiateRefused", "principal_allowed"]


class NegotiateRefused(Exception):
    """The Negotiate token was not accepted; the message is for the service's log only."""


def principal_allowed(principal: str, allow: Iterable[str]) -> bool:
    """Whether ``principal`` is on the allow-list: named exactly, or its realm as ``*@REALM``."""
    _, at, realm = principal.rpartition("@")
    return any(entry == principal or (bool(at) and entry == f"*@{realm}") for entry in allow)


class NegotiateAcceptor:
    """Checks Negotiate tokens with the service's keytab; one instance for the service's life."""

    def __init__(self, keytab: str) -> None:
        path = Path(keytab)
        try:
            with path.open("rb") as handle:
                handle.read(1)
        except OSError as exc:
            raise ValueError(f"cannot read the keytab {keytab}: {exc.strerror or exc}") from None
        try:
            import gssapi
        except ImportError:
            raise ValueError(
                "a keytab is set, but the gssapi package is not installed (install the 'kerberos' extra)"
            ) from None
        from gssapi.raw.misc import GSSError

        self._gssapi = gssapi
        self._error = GSSError
        try:
            self._credentials = gssapi.Credentials(usage="accept", store={b"keytab": str(path).encode()})
        except GSSError as exc:
            raise ValueError(f"the keytab {keytab} cannot be used: {exc}") from None

    def principal(self, header_value: str) -> str:
        """Who the ``Negotiate <base64>`` value proves the sender to be; :class:`NegotiateRefused`
        if it proves nothing. Blocking (reads the keytab and the replay cache): call it in a thread."""
        scheme, _, encoded = header_value.strip().partition(" ")
        if scheme.lower() != "negotiate" or not encoded.strip():
            raise NegotiateRefused("not a Negotiate token")
        try:
            token = base64.b64decode(encoded.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise NegotiateRefused("the Negotiate token is not base64") from None
        gssapi = self._gssapi
        try:
            context = gssapi.SecurityContext(creds=self._credentials, usage="accept")
            context.step(token)
            # gssapi keeps a failed step's error and raises it when the context is next read.
            complete = bool(context.complete)
            principal = str(context.initiator_name) if complete else ""
        except self._error as exc:
            raise NegotiateRefused(f"the Negotiate token was refused: {exc.gen_message()}") from None
        if not complete:
            # Kerberos completes in one step; more steps would be NTLM, which is not accepted.
            raise NegotiateRefused("the sign-in needs more than one step (not Kerberos)")
        return principal
