"""Tickets by voice into the real Request Tracker, through the whole app.

The headless app with its offline assistant hears a ticket request through the virtual microphone,
files the ticket, and the delivery hands it to the Request Tracker of the ``rt`` fixture: the
assistant says RT's own number, and RT holds the ticket with the user's words. What goes wrong on
the way (RT down, a kill before delivery, a refused token, a lost reply) is in
tests/faults/test_ticket_faults.py, with these helpers.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.testkit.rig import VirtualAudioRig
from app.tools.connectors.rt import RequestTrackerConnector, key_marker, ticketsql_string
from tests.app_driver import HeadlessApp, speak, start_on_rig
from tests.rt_server import RtInstance, attachment_texts, rest

pytestmark = pytest.mark.devices

CONTACT = "dana@contoso.example"
REQUEST = "please open a ticket, my monitor flickers all the time"


def app_env(tmp_path: Path, rt: RtInstance, url: str | None = None) -> dict[str, str | None]:
    return {
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_TICKETS_SYSTEM": "rt",
        "HELPDESK_VOICE_TICKETS_URL": url or rt.base_url,
        "HELPDESK_VOICE_TICKETS_QUEUE": rt.queue,
        "HELPDESK_VOICE_TICKETS_SECRET": rt.token,
        "HELPDESK_VOICE_TICKETS_CONTACT": CONTACT,
    }


def delivery_journal(tmp_path: Path) -> dict[str, dict[str, object]]:
    tickets: dict[str, dict[str, object]] = json.loads(
        (tmp_path / "data" / "outbox" / "delivery.json").read_text("utf-8")
    )["tickets"]
    return tickets


def idempotency_key(tmp_path: Path, ticket_id: str) -> str:
    install = (tmp_path / "data" / "outbox" / "delivery-install-id").read_text("ascii").strip()
    return f"hv-{install}-{ticket_id}"


def rt_tickets_with(rt: RtInstance, key: str) -> list[dict[str, object]]:
    """Every RT ticket whose subject carries the key, asked of RT directly (not through the connector)."""
    query = f"Subject LIKE {ticketsql_string(key_marker(key))}"
    answer = httpx.get(
        f"{rt.base_url}/REST/2.0/tickets",
        params={"query": query, "fields": "Subject,Queue,Requestor"},
        headers={"Authorization": f"token {rt.token}"},
        timeout=10,
    )
    answer.raise_for_status()
    items: list[dict[str, object]] = answer.json()["items"]
    return items


def ask_for_a_ticket(
    app: HeadlessApp, virtual_audio: VirtualAudioRig, speech: Callable[[str, int], FloatArray], answer: str
) -> str:
    """Says :data:`REQUEST` once the app listens; the assistant's answer line, which holds ``answer``."""
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    app.wait_for(lambda line: line.startswith("listening on"), 120)
    time.sleep(0.8)
    speak(virtual_audio, speech(REQUEST, feed_rate))
    return app.wait_for(lambda line: line.startswith("assistant:") and answer in line, 60)


def local_id_in(said: str) -> str:
    """The HD- id the assistant said ("I've created ticket HD-1001. ...")."""
    return "HD-" + said.split("ticket HD-", 1)[1].split(".")[0].split()[0]


def test_a_spoken_ticket_lands_in_request_tracker_and_its_number_is_said(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
    rt: RtInstance,
) -> None:
    app = start_on_rig(virtual_audio, app_env(tmp_path, rt))
    try:
        said = ask_for_a_ticket(app, virtual_audio, speech, "RT number")
        ref = str(next(iter(delivery_journal(tmp_path).values()))["ref"])
        comments = wait_for_comments(rt, ref, 1)  # the conversation, added right after the ticket
    finally:
        app.stop()
    # The technician reads what was said, as the user heard it, not only the model's summary.
    (conversation,) = comments
    assert conversation.startswith("The conversation when the ticket was filed, as the user heard it:")
    assert "User: " in conversation and "monitor" in conversation.lower()
    (ticket_id, state), *others = delivery_journal(tmp_path).items()
    assert others == [] and state["system"] == "Request Tracker", state
    number = str(state["number"])
    assert number.replace(" #", " number ") in said, (said, number)
    ticket = RequestTrackerConnector(httpx.Client(timeout=10), rt.base_url, rt.queue, rt.token).get(
        str(state["ref"])
    )
    assert "monitor" in ticket.title.lower() and ticket.status == "new"
    assert [t["id"] for t in rt_tickets_with(rt, idempotency_key(tmp_path, ticket_id))] == [state["ref"]]


def test_by_voice_diagnostics_with_consent_status_and_a_handoff_reach_the_ticket_in_rt(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
    rt: RtInstance,
) -> None:
    """The rest of a ticket's life by voice, through the offline assistant and the real RT."""
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    env = app_env(tmp_path, rt) | {"HELPDESK_VOICE_HANDOFF_CALLBACK": "within two working hours"}
    app = start_on_rig(virtual_audio, env)

    def say(words: str, answer: str) -> str:
        seen = len(app.lines)
        speak(virtual_audio, speech(words, feed_rate))
        return app.wait_for(
            lambda line: line.startswith("assistant:") and answer in line and line not in app.lines[:seen], 60
        )

    try:
        filed = ask_for_a_ticket(app, virtual_audio, speech, "RT number")
        assert "technical details" in filed and "Nothing personal" in filed, filed  # asked, not taken
        ref = str(next(iter(delivery_journal(tmp_path).values()))["ref"])
        time.sleep(1.0)
        say("yes please", "I've attached them")
        status = say("what is happening with my ticket", "is new")
        assert "RT number" in status, status
        handed = say("let me talk to someone", "A person from IT will contact you")
        assert "within two working hours" in handed, handed
        comments = wait_for_comments(rt, ref, 3)
    finally:
        app.stop()
    conversation, diagnostics, handoff = comments
    assert conversation.startswith("The conversation when the ticket was filed")
    assert diagnostics.startswith("Diagnostics from the user's computer (sent with their consent):"), (
        diagnostics
    )
    assert handoff.startswith("The user asked to talk to a person") and "User: " in handoff


def wait_for_comments(rt: RtInstance, ref: str, count: int, timeout: float = 20.0) -> list[str]:
    """The ticket's comments in RT (asked as RT's superuser), once there are ``count`` of them."""
    deadline = time.monotonic() + timeout
    while True:
        history = rest(rt, "GET", f"/ticket/{ref}/history", params={"fields": "Type"})["items"]
        ids = [str(item["id"]) for item in history if item["Type"] == "Comment"]
        if len(ids) >= count or time.monotonic() > deadline:
            texts = attachment_texts(rt, ref)
            return [texts[transaction].strip() for transaction in ids]
        time.sleep(0.2)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
