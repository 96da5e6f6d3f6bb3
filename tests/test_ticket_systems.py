"""``make_connector``: who owns the HTTP client a connector runs on."""

from __future__ import annotations

import httpx
import pytest

from app.config import TicketSettings
from app.ticket_systems import OwnedConnector, make_connector
from app.tools.connectors.rt import RequestTrackerConnector
from app.tools.delivery import connector_for, release

RT = TicketSettings("rt", "https://rt.example.com/rt", "General", "", "", "", "", "")


def test_a_connector_made_without_a_client_owns_one_and_closing_it_closes_that() -> None:
    owned = make_connector(RT, secret="1-2-token")
    assert isinstance(owned, OwnedConnector)
    assert isinstance(owned.connector, RequestTrackerConnector) and owned.name == "Request Tracker"
    assert not owned.client.is_closed
    with owned:
        pass
    assert owned.client.is_closed


def test_a_client_the_caller_gives_stays_the_callers() -> None:
    with httpx.Client() as client:
        connector = make_connector(RT, client, secret="1-2-token")
        assert isinstance(connector, RequestTrackerConnector)
        release(connector)  # nothing of its own to close
        assert not client.is_closed


def test_connector_for_releases_the_connector_also_when_the_work_fails() -> None:
    made: list[OwnedConnector] = []

    def make() -> OwnedConnector:
        connector = make_connector(RT, secret="1-2-token")
        assert isinstance(connector, OwnedConnector)
        made.append(connector)
        return connector

    with pytest.raises(RuntimeError), connector_for(make):
        raise RuntimeError("the read failed")
    (connector,) = made
    assert connector.client.is_closed
    with connector_for(lambda: None) as nothing:  # no ticket system: nothing to release
        assert nothing is None
