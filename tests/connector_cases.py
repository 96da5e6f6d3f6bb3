"""What the connector tests (tests/test_connector_*.py) share: the drafts they file, the replay of
recorded contracts each test checks when it ends, and how a failure is caught and checked for secrets.

The drafts are the ones the recorded contracts (tests/data/contracts) expect, so they must not change
without the recordings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TypeVar

import httpx
import pytest

from app.tools.connectors.base import ConnectorError, TicketDraft
from tests.contracts import Replay

__all__ = ["DRAFT", "KEY", "WALK_IN", "ReplayHarness", "checked", "classified", "raising", "refused"]

KEY = "hv-7f3c2a9e-5b1d-4c8e-9a6f-2d4b8e1c0a57"

# A ticket for a known caller, with the key above.
DRAFT = TicketDraft(
    local_id="HD-1042",
    idempotency_key=KEY,
    summary="VPN drops every few minutes",
    description="The VPN disconnects every few minutes since this morning.",
    category="network",
    urgency="high",
    contact="ana.lopez@example.com",
    created_at="2026-12-04T16:07:00+00:00",
)
# A ticket for someone the system does not know: filed without a caller.
WALK_IN = TicketDraft(
    local_id="HD-1043",
    idempotency_key="hv-0b6e1d2c-walkin",
    summary="Printer on floor 3 jams",
    description="Paper jams on every second page.",
    category="hardware",
    urgency="low",
    contact="walk-in@example.com",
    created_at="2026-12-04T16:09:00+00:00",
)


class ReplayHarness:
    """The recordings one test replays to its connector; :func:`checked` checks them when it ends."""

    def __init__(self) -> None:
        self.replay: Replay | None = None

    def client(self, system: str, names: tuple[str, ...]) -> httpx.Client:
        """A client that answers from ``names`` in tests/data/contracts/``system`` and nothing else."""
        self.replay = Replay.of(system, names)
        return self.replay.client()


H = TypeVar("H", bound=ReplayHarness)


def checked(harness: H) -> Iterator[H]:
    """A fixture's body: the harness for the test, then every recording used and nothing else asked."""
    yield harness
    if harness.replay is not None:
        harness.replay.check()


def refused(call: Callable[[], object], *secrets: str) -> ConnectorError:
    """The ConnectorError ``call`` raises, after checking that its message says none of ``secrets``."""
    with pytest.raises(ConnectorError) as caught:
        call()
    for secret in secrets:
        assert secret not in caught.value.message
    return caught.value


def classified(error: ConnectorError, problem: str, said: str) -> None:
    """``error`` is the ``problem`` it should be, and its message says ``said`` (a reason, a hint)."""
    assert error.problem == problem
    assert said in error.message


def raising(exc: Exception) -> httpx.Client:
    """A client whose every request fails with ``exc`` (a timeout, a refused connection)."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return httpx.Client(transport=httpx.MockTransport(handler))
