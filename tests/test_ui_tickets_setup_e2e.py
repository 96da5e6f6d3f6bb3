"""A new user points the running tray app at Request Tracker from the Settings dialog, end to end.

Real widgets (offscreen), the file-backed keyring, the settings files in ``tmp_path`` and the real
Request Tracker of the ``rt`` fixture. A ticket is filed through the assistant's own tool call while
no ticket system is set up, so it waits in the outbox. The user then opens Settings from the app,
picks Request Tracker, types its address, queue and a wrong token, and saves: the app's delivery
tries at once and the transcript says the token was refused. The right token, saved the same way,
gets the waiting ticket into RT, and the transcript (and the tray) say RT's own number; RT, asked as
its superuser, holds the ticket. No conversation restart is needed for any of it.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QMessageBox
from pytestqt.qtbot import QtBot

from app.launch import ConversationRunner
from app.tools import default_registry
from app.tools.connectors.rt import key_marker, ticketsql_string
from app.ui.app import HelpdeskApp
from app.ui.settings_dialog import SettingsDialog
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import call_tool
from tests.rt_server import RtInstance, rest
from tests.test_ui_app import Factory, embedded_plan

CONTACT = "dana@contoso.example"
SUMMARY = "Docking station does not charge the laptop"
WRONG_TOKEN = "1-99-00000000000000000000000000000000"
WAIT_MS = 30_000


@pytest.fixture
def new_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_keyring: FileKeyring) -> Path:
    """A user with no settings file, no policy and an empty keyring: nothing about tickets yet."""
    monkeypatch.setenv("HELPDESK_VOICE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HELPDESK_VOICE_POLICY", str(tmp_path / "no-policy.toml"))
    monkeypatch.setenv("HELPDESK_VOICE_DATA_DIR", str(tmp_path / "data"))
    for name in list(os.environ):
        if name.startswith("HELPDESK_VOICE_TICKETS_"):
            monkeypatch.delenv(name)
    return tmp_path / "data"


@pytest.fixture
def factory() -> Factory:
    """Conversations that start at once without devices: the test counts them to see restarts."""
    made = Factory()
    made.release.set()
    return made


@pytest.fixture
def helpdesk(qtbot: QtBot, new_user: Path, factory: Factory) -> Iterator[HelpdeskApp]:
    app = HelpdeskApp(embedded_plan, tray_available=True, runner_factory=factory, retention_days=lambda: 0)
    yield app
    if not app.quitting:
        app.quit()
    qtbot.waitUntil(lambda: app.quit_seconds is not None, timeout=5000)
    if app.transcript_window is not None:
        app.transcript_window.deleteLater()


def notices(app: HelpdeskApp) -> list[str]:
    return [entry.text for entry in app.transcript.model.entries if entry.kind == "notice"]


def notice_with(app: HelpdeskApp, *parts: str) -> str:
    return next((text for text in notices(app) if all(part in text for part in parts)), "")


def open_settings(qtbot: QtBot, app: HelpdeskApp) -> SettingsDialog:
    app.actions.settings.trigger()  # the tray menu's Settings…
    dialog = app._settings_dialog
    assert dialog is not None
    qtbot.waitExposed(dialog)
    dialog.tabs.setCurrentWidget(dialog.tickets_page)
    return dialog


def type_into(qtbot: QtBot, widget: Any, text: str) -> None:
    widget.clear()
    qtbot.keyClicks(widget, text)


def save(qtbot: QtBot, app: HelpdeskApp, dialog: SettingsDialog) -> None:
    with qtbot.waitSignal(dialog.finished, timeout=5000):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert dialog.errors() == {}
    qtbot.waitUntil(lambda: app._settings_dialog is None, timeout=5000)  # closed and deleted


def rt_tickets_with(rt: RtInstance, key: str) -> list[dict[str, Any]]:
    """RT's tickets whose subject carries the idempotency key, asked as RT's superuser."""
    query = f"Subject LIKE {ticketsql_string(key_marker(key))}"
    items: list[dict[str, Any]] = rest(
        rt, "GET", "/tickets", params={"query": query, "fields": "Subject,Queue"}
    )["items"]
    return items


def test_a_new_user_sets_up_request_tracker_in_settings_and_sees_the_real_number(
    qtbot: QtBot, helpdesk: HelpdeskApp, factory: Factory, rt: RtInstance, file_keyring: FileKeyring
) -> None:
    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=5000)
    worker = helpdesk.delivery.worker
    assert worker is not None
    # The conversation's tools file through the app's own worker: the path this test takes.
    runner = ConversationRunner(embedded_plan(), helpdesk.bridge.listener, None, helpdesk.delivery.worker)
    assert runner.delivery_worker() is worker
    tools = default_registry(delivery=worker)

    # No ticket system yet: the ticket is kept on this computer under its local id.
    filed = asyncio.run(
        call_tool(
            tools,
            "create_ticket",
            summary=SUMMARY,
            description="The laptop shows 'not charging' when docked; the dock's own light is on.",
            category="hardware",
            urgency="normal",
        )
    )
    ticket_id = filed["ticket_id"]
    assert filed["status"] == "queued" and re.fullmatch(r"HD-\d{4,}", ticket_id), filed
    assert "ticket_number" not in filed

    # Settings, Tickets: Request Tracker, its address and queue, the e-mail, and a mistyped token.
    dialog = open_settings(qtbot, helpdesk)
    assert "none stored" not in dialog.ticket_secret_status.text()  # no system chosen: nothing said
    dialog.ticket_system_combo.setCurrentIndex(dialog.ticket_system_combo.findData("rt"))
    assert dialog.ticket_url_edit.isVisible() and dialog.ticket_queue_edit.isVisible()
    assert "Auth token: none stored" in dialog.ticket_secret_status.text()
    assert not dialog.remove_credential_button.isEnabled()
    type_into(qtbot, dialog.ticket_url_edit, rt.base_url)
    type_into(qtbot, dialog.ticket_queue_edit, rt.queue)
    type_into(qtbot, dialog.ticket_contact_edit, CONTACT)
    type_into(qtbot, dialog.ticket_secret_edit, WRONG_TOKEN)
    save(qtbot, helpdesk, dialog)
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") == WRONG_TOKEN

    # RT refuses the token: said once in the transcript, with the ticket still kept here.
    qtbot.waitUntil(lambda: bool(notice_with(helpdesk, ticket_id, "refused")), timeout=WAIT_MS)
    refused = notice_with(helpdesk, ticket_id, "refused")
    assert "kept on this computer" in refused and "stays queued until this is fixed" in refused, refused
    assert WRONG_TOKEN[5:] not in " ".join(notices(helpdesk))
    state = worker.state_of(ticket_id)
    assert state is not None and not state.delivered and state.stopped
    conversations = len(factory.runners)

    # The right token, typed in the same dialog: only where tickets go changes.
    dialog = open_settings(qtbot, helpdesk)
    assert dialog.ticket_system_combo.currentData() == "rt"
    assert dialog.ticket_url_edit.text() == rt.base_url and dialog.ticket_queue_edit.text() == rt.queue
    assert "Auth token: stored in the system keyring" in dialog.ticket_secret_status.text()
    assert dialog.remove_credential_button.isEnabled()
    type_into(qtbot, dialog.ticket_secret_edit, rt.token)
    save(qtbot, helpdesk, dialog)

    # The waiting ticket reaches RT: its number in the transcript pane and as a tray notification.
    qtbot.waitUntil(lambda: bool(notice_with(helpdesk, ticket_id, "reached")), timeout=WAIT_MS)
    reached = notice_with(helpdesk, ticket_id, "reached")
    match = re.fullmatch(rf"Ticket {ticket_id} reached Request Tracker as RT #(\d+)\.", reached)
    assert match is not None, reached
    number = match.group(1)
    assert helpdesk.tray is not None
    assert reached in [shown.message for shown in helpdesk.tray.shown]
    helpdesk.transcript.refresh()
    assert f"RT #{number}" in helpdesk.transcript.browser.toPlainText()
    # The conversation went on: saving a credential does not restart it.
    assert helpdesk.phase == "running" and len(factory.runners) == conversations

    # RT itself, asked as its superuser, holds exactly this one ticket with the user's words.
    (found,) = rt_tickets_with(rt, f"hv-{worker.install_id()}-{ticket_id}")
    assert str(found["id"]) == number
    ticket = rest(rt, "GET", f"/ticket/{number}")
    assert SUMMARY in ticket["Subject"] and ticket["Status"] == "new"
    queue = rest(rt, "GET", f"/queue/{ticket['Queue']['id']}")
    assert queue["Name"] == rt.queue

    # Asked by the assistant's status tool, through the app's worker: RT's own number and status.
    status = asyncio.run(call_tool(tools, "get_ticket_status", ticket=ticket_id))
    assert status["number"] == f"RT #{number}" and status["status"] == "new", status

    # Removing the credential asks first; then delivery has none, and says so.
    dialog = open_settings(qtbot, helpdesk)
    qtbot.mouseClick(dialog.remove_credential_button, Qt.MouseButton.LeftButton)
    box = dialog.remove_credential_box
    assert box is not None and box.isVisible()
    remove = box.button(QMessageBox.StandardButton.Yes)
    qtbot.mouseClick(remove, Qt.MouseButton.LeftButton)
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") is None
    assert "Auth token: none stored" in dialog.ticket_secret_status.text()
    qtbot.waitUntil(lambda: bool(notice_with(helpdesk, "no credential for Request Tracker")), timeout=WAIT_MS)
    assert notice_with(helpdesk, "no credential").startswith("Tickets are kept on this computer: ")
    assert notice_with(helpdesk, "no credential").endswith("; they stay queued until this is fixed.")
    dialog.reject()
