"""The transcript pane: model without Qt, the widget offscreen, and the engine-to-GUI bridge."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import json
import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from PySide6.QtCore import QObject, Qt, Slot
from PySide6.QtWidgets import QApplication
from pytestqt.qtbot import QtBot

from app.core.actions import Notice, ToolActivity, Transcript, TurnCompleted
from app.core.metrics import TurnMetrics
from app.ui.bridge import EngineBridge
from app.ui.transcript import TranscriptView, linkify
from app.ui.transcript_model import TranscriptModel


def fixed_clock() -> datetime:
    return datetime(2024, 5, 6, 9, 8, 7)


def feed_conversation(target: TranscriptModel | TranscriptView) -> None:
    events: list[Transcript | ToolActivity | TurnCompleted] = [
        Transcript("user", "u1", "My VPN ", final=False),
        Transcript("user", "u1", "is down", final=False),
        Transcript("user", "u1", "My VPN is down.", final=True),
        Transcript("assistant", "a1", "Let me ", final=False),
        Transcript("assistant", "a1", "open a ticket.", final=False),
        ToolActivity("c1", "create_ticket", "started", "Creating a ticket..."),
        ToolActivity("c1", "create_ticket", "done", "Ticket HD-1042 created"),
        TurnCompleted(TurnMetrics(turn=1, backend="test", ttfa_ms=812.4), "My VPN is down.", "x"),
    ]
    on_text: Callable[[Transcript], object]
    on_tool: Callable[[ToolActivity], object]
    on_turn: Callable[[TurnCompleted], object]
    if isinstance(target, TranscriptView):
        on_text, on_tool, on_turn = target.on_transcript, target.on_tool, target.on_turn
    else:
        on_text, on_tool, on_turn = target.apply_transcript, target.apply_tool, target.apply_turn
    for event in events:
        if isinstance(event, Transcript):
            on_text(event)
        elif isinstance(event, ToolActivity):
            on_tool(event)
        else:
            on_turn(event)


# ----------------------------------------------------------------------------------------------
# Model (no Qt)
# ----------------------------------------------------------------------------------------------
def test_model_deltas_append_and_final_replaces() -> None:
    model = TranscriptModel(clock=fixed_clock)
    model.apply_transcript(Transcript("assistant", "a1", "Hel", final=False))
    model.apply_transcript(Transcript("assistant", "a1", "lo th", final=False))
    assert model.entries[0].text == "Hello th"
    assert not model.entries[0].final
    model.apply_transcript(Transcript("assistant", "a1", "Hello there.", final=True))
    model.apply_transcript(Transcript("assistant", "a1", " late", final=False))  # ignored after final
    assert len(model) == 1
    assert model.entries[0].text == "Hello there."
    assert model.entries[0].final
    assert model.entries[0].timestamp == "09:08:07"


def test_model_tool_updates_one_line_and_turn_attaches_ttfa() -> None:
    model = TranscriptModel(clock=fixed_clock)
    feed_conversation(model)
    kinds = [e.kind for e in model.entries]
    assert kinds == ["user", "assistant", "tool"]
    assert model.entries[2].text == "Ticket HD-1042 created"
    assert model.entries[2].status == "done"
    assert model.entries[1].ttfa_ms == pytest.approx(812.4)
    assert model.find("vpn") == [0]


def test_model_export_json_and_markdown(tmp_path: Path) -> None:
    model = TranscriptModel(clock=fixed_clock)
    feed_conversation(model)
    model.apply_transcript(
        Transcript("assistant", "a2", "The VPN gateway is...", final=True, interrupted=True)
    )
    model.apply_notice(Notice("warning", "Connection lost, reconnecting"))

    json_path = model.export(tmp_path / "out" / "t.json")
    data = json.loads(json_path.read_text(encoding="utf-8"))
    texts = [e["text"] for e in data["entries"]]
    assert texts == [
        "My VPN is down.",
        "Let me open a ticket.",
        "Ticket HD-1042 created",
        "The VPN gateway is...",
        "Connection lost, reconnecting",
    ]
    assert data["entries"][0]["time"] == "2024-05-06T09:08:07"
    assert data["entries"][1]["ttfa_ms"] == 812.4
    assert data["entries"][3]["interrupted"] is True

    md = model.export(tmp_path / "t.md").read_text(encoding="utf-8")
    assert md.startswith("# Helpdesk Voice transcript")
    assert "- **You** (09:08:07): My VPN is down." in md
    assert "- **Assistant** (09:08:07): The VPN gateway is... *(interrupted)*" in md
    assert "Ticket HD-1042 created" in md
    assert "first audio 812 ms" in md
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["out", "t.json", "t.md"]  # no temp files left


def test_linkify_escapes_and_links() -> None:
    out = linkify("See https://example.com/kb?a=1&b=2. Ticket HD-1042 <b>")
    assert '<a href="https://example.com/kb?a=1&amp;b=2">https://example.com/kb?a=1&amp;b=2</a>.' in out
    assert '<a href="ticket:HD-1042">HD-1042</a>' in out
    assert "&lt;b&gt;" in out


# ----------------------------------------------------------------------------------------------
# Widget
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def view(qtbot: QtBot) -> TranscriptView:
    widget = TranscriptView(TranscriptModel(clock=fixed_clock))
    qtbot.addWidget(widget)
    return widget


def test_streamed_deltas_render_in_order(view: TranscriptView) -> None:
    for delta in ("One ", "two ", "three"):
        view.on_transcript(Transcript("assistant", "a1", delta, final=False))
    view.on_transcript(Transcript("user", "u2", "next", final=False))
    view.refresh()
    text = view.browser.toPlainText()
    assert "Assistant: One two three" in text
    assert text.index("One two three") < text.index("You: next")
    assert "09:08:07" in text


def test_render_is_coalesced_on_timer(view: TranscriptView, qtbot: QtBot) -> None:
    view.on_transcript(Transcript("user", "u1", "hello", final=False))
    qtbot.waitUntil(lambda: "hello" in view.browser.toPlainText(), timeout=1000)


def test_final_replaces_partial(view: TranscriptView) -> None:
    view.on_transcript(Transcript("user", "u1", "reset my pass", final=False))
    view.refresh()
    view.on_transcript(Transcript("user", "u1", "Reset my password, please.", final=True))
    view.refresh()
    text = view.browser.toPlainText()
    assert "Reset my password, please." in text
    assert "reset my pass" not in text


def test_interruption_shows_cut_text_and_marker(view: TranscriptView) -> None:
    view.on_transcript(Transcript("assistant", "a1", "First open the settings and then", final=False))
    view.on_transcript(Transcript("assistant", "a1", "First open the...", final=True, interrupted=True))
    view.refresh()
    text = view.browser.toPlainText()
    assert "First open the..." in text
    assert "[interrupted]" in text
    assert "and then" not in text


def test_tool_activity_links_and_ttfa(view: TranscriptView) -> None:
    feed_conversation(view)
    view.on_transcript(Transcript("assistant", "a2", "See https://kb.example.com/vpn for steps.", final=True))
    view.refresh()
    text = view.browser.toPlainText()
    assert "Ticket HD-1042 created" in text
    assert "Creating a ticket" not in text
    assert "first audio 812 ms" in text
    rendered = view.browser.toHtml()
    assert 'href="ticket:HD-1042"' in rendered
    assert 'href="https://kb.example.com/vpn"' in rendered
    assert view.browser.openExternalLinks()


def test_ticket_link_click_emits(view: TranscriptView, qtbot: QtBot) -> None:
    from PySide6.QtCore import QUrl

    with qtbot.waitSignal(view.ticket_activated) as blocker:
        view.browser.anchorClicked.emit(QUrl("ticket:HD-1042"))
    assert blocker.args == ["HD-1042"]


def test_search_highlights_and_selects_match(view: TranscriptView) -> None:
    feed_conversation(view)
    view.refresh()
    view.search_box.setText("vpn")
    assert view.browser.textCursor().selectedText().lower() == "vpn"
    assert "background-color" in view.browser.toHtml()
    assert view.find_next()  # wraps around to the only match
    view.search_box.setText("nothing like this")
    assert not view.browser.textCursor().hasSelection()


def test_copy_all(view: TranscriptView) -> None:
    feed_conversation(view)
    view.copy_all()
    copied = QApplication.clipboard().text()
    assert "[09:08:07] You: My VPN is down." in copied
    assert "Ticket HD-1042 created" in copied


def test_export_from_view(view: TranscriptView, tmp_path: Path) -> None:
    feed_conversation(view)
    data = json.loads(view.export(tmp_path / "t.json").read_text(encoding="utf-8"))
    assert len(data["entries"]) == 3
    assert "My VPN is down." in view.export(tmp_path / "t.md").read_text(encoding="utf-8")


def test_typed_text_emits_and_clears(view: TranscriptView, qtbot: QtBot) -> None:
    received: list[str] = []
    view.text_submitted.connect(received.append)
    view.input_box.setText("   ")
    qtbot.keyClick(view.input_box, Qt.Key.Key_Return)
    assert received == []
    view.input_box.setText("  my printer is jammed ")
    with qtbot.waitSignal(view.text_submitted) as blocker:
        qtbot.keyClick(view.input_box, Qt.Key.Key_Return)
    assert blocker.args == ["my printer is jammed"]
    assert view.input_box.text() == ""
    view.input_box.setText("again")
    view.send_button.click()
    assert received[-1] == "again"


def test_accessible_names(view: TranscriptView) -> None:
    for widget in (view.search_box, view.browser, view.input_box, view.send_button, view.copy_button):
        assert widget.accessibleName()


# ----------------------------------------------------------------------------------------------
# Bridge
# ----------------------------------------------------------------------------------------------
class ThreadRecorder(QObject):
    def __init__(self) -> None:
        super().__init__()
        self.threads: list[int] = []

    @Slot(object)
    def record(self, _event: object) -> None:
        self.threads.append(threading.get_ident())


def test_bridge_delivers_engine_thread_calls_on_gui_thread(view: TranscriptView, qtbot: QtBot) -> None:
    bridge = EngineBridge()
    view.attach(bridge)
    recorder = ThreadRecorder()
    bridge.transcript_received.connect(recorder.record)
    gui_thread = threading.get_ident()
    engine_threads: list[int] = []

    def engine() -> None:
        engine_threads.append(threading.get_ident())
        bridge.listener.on_transcript(Transcript("assistant", "a1", "from the engine", final=True))
        bridge.listener.on_tool(ToolActivity("c1", "create_ticket", "done", "Ticket HD-2001 created"))

    with qtbot.waitSignals([bridge.transcript_received, bridge.tool_activity], timeout=2000):
        worker = threading.Thread(target=engine)
        worker.start()
        worker.join()
    qtbot.waitUntil(lambda: len(view.model) == 2, timeout=2000)
    assert recorder.threads == [gui_thread]
    assert engine_threads[0] != gui_thread
    view.refresh()
    assert "from the engine" in view.browser.toPlainText()
    assert "HD-2001" in view.browser.toPlainText()


def test_bridge_forwards_every_report(qtbot: QtBot) -> None:
    from app.core.actions import State, StateChanged

    bridge = EngineBridge()
    with qtbot.waitSignal(bridge.state_changed) as state:
        bridge.on_state(StateChanged(State.LISTENING, muted=False))
    assert state.args[0].state is State.LISTENING
    with qtbot.waitSignal(bridge.notice_received):
        bridge.on_notice(Notice("error", "boom"))
    with qtbot.waitSignal(bridge.turn_completed):
        bridge.on_turn(TurnCompleted(TurnMetrics(turn=1, backend="t"), "", ""))


def test_space_in_the_transcript_is_push_to_talk_only_when_enabled(
    view: TranscriptView, qtbot: QtBot
) -> None:
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QKeyEvent

    view.show()
    qtbot.waitExposed(view)
    keys: list[bool] = []
    view.ptt_key_changed.connect(keys.append)
    view.browser.setFocus()
    qtbot.keyPress(view.browser, Qt.Key.Key_Space)
    qtbot.keyRelease(view.browser, Qt.Key.Key_Space)
    assert keys == []  # off: Space scrolls as usual

    view.set_push_to_talk(True)
    assert view.push_to_talk
    qtbot.keyPress(view.browser, Qt.Key.Key_Space)
    # Holding the key repeats presses and releases; none of them may toggle talking.
    for kind in (QEvent.Type.KeyRelease, QEvent.Type.KeyPress):
        repeat = QKeyEvent(kind, Qt.Key.Key_Space, Qt.KeyboardModifier.NoModifier, " ", True)
        QApplication.sendEvent(view.browser, repeat)
    qtbot.keyRelease(view.browser, Qt.Key.Key_Space)
    qtbot.keyClick(view.browser, Qt.Key.Key_A)  # other keys are not talk keys
    assert keys == [True, False]

    view.input_box.setFocus()
    qtbot.keyClick(view.input_box, Qt.Key.Key_Space)  # in a text box Space types
    view.search_box.setFocus()
    qtbot.keyClick(view.search_box, Qt.Key.Key_Space)
    assert keys == [True, False]
    assert view.input_box.text() == " " and view.search_box.text() == " "

    view.set_push_to_talk(False)
    qtbot.keyClick(view.browser, Qt.Key.Key_Space)
    assert keys == [True, False]


def test_changes_to_the_transcript_are_announced(view: TranscriptView, qtbot: QtBot) -> None:
    changes: list[bool] = []
    view.changed.connect(lambda: changes.append(True))
    feed_conversation(view)
    assert len(changes) == 8  # every delta, final, tool update and the turn's first-audio time
    view.on_turn(TurnCompleted(TurnMetrics(turn=2, backend="test", ttfa_ms=None), "", ""))
    assert len(changes) == 8  # nothing to show: nothing changed
    view.search_box.setText("vpn")  # looking is not changing
    assert len(changes) == 8
