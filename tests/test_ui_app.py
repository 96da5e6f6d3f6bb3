"""The tray app as a whole: starting off the GUI thread, the no-tray window, quitting on time, and a
real conversation through the embedded server and the virtual audio devices."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import asyncio
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QMenu
from pytestqt.qtbot import QtBot

import app as app_package
from app import defaults
from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.config import load_settings
from app.core.actions import State, StateChanged, Transcript
from app.engine import Engine, EngineListener
from app.launch import ConversationRunner, LaunchError, LaunchPlan, plan_from_settings
from app.testkit.rig import VirtualAudioRig
from app.tools import default_registry
from app.tools.tickets import TicketOutbox
from app.ui import app as ui_app
from app.ui.app import QUIT_DEADLINE_S, HelpdeskApp, Phase, Runner
from app.ui.icons import icon_for
from app.ui.main_window import NO_TRAY_REASON, ConversationPanel
from app.ui.settings_dialog import TICKET_SECRET_FIELD
from app.ui.ticket_delivery import AppDelivery
from app.ui.transcript_store import read_transcript
from tests.app_driver import speak
from tests.file_keyring import FileKeyring
from tests.memory_ticket_system import MemorySystem, call_tool

QUIT_BOUND_S = 1.5
ROOT = Path(__file__).resolve().parents[1]


def embedded_plan(push_to_talk: bool = False) -> LaunchPlan:
    return LaunchPlan(
        backend="embedded",
        endpoint=None,
        session=defaults.session_config(backend="embedded"),
        push_to_talk=push_to_talk,
    )


class ScriptedRunner:
    """Stands in for ConversationRunner where a test needs to hold start() or stop() in place."""

    def __init__(
        self,
        plan: LaunchPlan,
        listener: EngineListener,
        progress: Callable[[str], None],
        *,
        release: threading.Event,
        stop_takes: float = 0.0,
        returns_after: float = 0.0,
    ) -> None:
        self.plan = plan
        self.listener = listener
        self.progress = progress
        self.release = release
        self.stop_takes = stop_takes
        self.returns_after = returns_after
        self.engine: Engine | None = None
        self.description = ""
        self.start_thread: int | None = None
        self.stopped = threading.Event()

    def start(self) -> None:
        self.start_thread = threading.get_ident()
        self.progress("loading speech recognition")
        while not self.release.wait(0.01):
            if self.stopped.is_set():
                raise LaunchError("stopped before it started")
        self.description = "listening on MIC -> SPEAKER"
        self.listener.on_state(StateChanged(State.LISTENING, muted=False))
        # A real engine reports from its own thread, so its first state can beat start()'s return.
        time.sleep(self.returns_after)

    def stop(self, timeout: float = 1.0) -> None:
        self.stopped.set()
        time.sleep(self.stop_takes)


def phase_now(helpdesk: HelpdeskApp) -> Phase:
    """The app's phase now. A call, not ``helpdesk.phase``: mypy would keep an asserted attribute
    narrowed across the calls that change it and reject the next assert."""
    return helpdesk.phase


class Factory:
    def __init__(self, stop_takes: float = 0.0, returns_after: float = 0.0) -> None:
        self.release = threading.Event()
        self.runners: list[ScriptedRunner] = []
        self.stop_takes = stop_takes
        self.returns_after = returns_after

    def __call__(self, plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> Runner:
        runner = ScriptedRunner(
            plan,
            listener,
            progress,
            release=self.release,
            stop_takes=self.stop_takes,
            returns_after=self.returns_after,
        )
        self.runners.append(runner)
        return runner


@pytest.fixture
def make_app(qtbot: QtBot) -> Iterator[Callable[..., HelpdeskApp]]:
    made: list[HelpdeskApp] = []

    def make(*args: object, **kwargs: object) -> HelpdeskApp:
        helpdesk = HelpdeskApp(*args, **kwargs)  # type: ignore[arg-type]
        made.append(helpdesk)
        return helpdesk

    yield make
    for helpdesk in made:
        if not helpdesk.quitting:
            helpdesk.quit()
        qtbot.waitUntil(lambda h=helpdesk: h.quit_seconds is not None, timeout=5000)  # type: ignore[misc]
        for widget in (helpdesk.main_window, helpdesk.transcript_window):
            if widget is not None:
                widget.deleteLater()


def tray_image(helpdesk: HelpdeskApp) -> QImage:
    assert helpdesk.tray is not None
    return helpdesk.tray.tray.icon().pixmap(22, 22).toImage()


# ----------------------------------------------------------------------------------------------
# Without devices
# ----------------------------------------------------------------------------------------------
def test_starting_runs_off_the_gui_thread_and_reports_progress(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot
) -> None:
    factory = Factory(returns_after=0.3)
    helpdesk = make_app(embedded_plan, tray_available=True, runner_factory=factory)
    assert helpdesk.tray is not None and helpdesk.transcript_window is not None
    helpdesk.start()
    assert helpdesk.phase == "starting"
    assert helpdesk.actions.start_stop.text().replace("&", "") == "Stop conversation"
    # The runner is still blocked in start(); the GUI carries on and shows its progress.
    tray_icon = helpdesk.tray.tray  # narrowed by the assert above, which the lambda cannot see
    qtbot.waitUntil(lambda: "loading speech recognition" in tray_icon.toolTip(), timeout=2000)
    assert helpdesk.tray.tray.toolTip().startswith("Helpdesk Voice \u2013 Connecting…")
    assert helpdesk.panel.progress_label.text() == "loading speech recognition"
    assert factory.runners[0].start_thread != threading.get_ident()

    helpdesk.send_text("my printer is jammed")  # typed while starting: kept, not lost
    factory.release.set()
    # The engine says "listening" before start() returns: the tray waits for the start to be
    # confirmed, so what it shows and the app's phase never disagree.
    qtbot.wait(150)
    assert phase_now(helpdesk) == "starting"
    assert helpdesk.state.state is State.CONNECTING
    qtbot.waitUntil(lambda: helpdesk.state.state is State.LISTENING, timeout=2000)
    assert phase_now(helpdesk) == "running"
    assert helpdesk.tray.tray.toolTip() == "Helpdesk Voice \u2013 Listening"
    assert helpdesk.panel.state_label.text() == "Listening"
    assert helpdesk.description == "listening on MIC -> SPEAKER"

    helpdesk.stop()
    qtbot.waitUntil(lambda: helpdesk.phase == "stopped", timeout=2000)
    assert factory.runners[0].stopped.is_set()
    assert helpdesk.tray.tray.toolTip() == "Helpdesk Voice \u2013 Stopped"
    assert helpdesk.actions.start_stop.text().replace("&", "") == "Start conversation"


def test_stop_while_starting_cancels_quietly(make_app: Callable[..., HelpdeskApp], qtbot: QtBot) -> None:
    factory = Factory()
    helpdesk = make_app(embedded_plan, tray_available=True, runner_factory=factory)
    notified: list[str] = []
    assert helpdesk.tray is not None
    helpdesk.tray.tray.showMessage = lambda *args: notified.append(args[1])  # type: ignore[method-assign]
    helpdesk.start()
    qtbot.waitUntil(lambda: len(factory.runners) == 1, timeout=2000)
    helpdesk.stop()
    qtbot.waitUntil(lambda: helpdesk.phase == "stopped", timeout=2000)
    assert factory.runners[0].stopped.is_set()
    qtbot.wait(100)  # the runner's "stopped before it started" arrives late and is not an error
    assert helpdesk.state.state is State.IDLE
    assert notified == []
    assert not [e for e in helpdesk.transcript.model.entries if e.kind == "notice"]


def test_push_to_talk_from_the_menu_restarts_with_it(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot
) -> None:
    factory = Factory()
    factory.release.set()
    helpdesk = make_app(embedded_plan, tray_available=True, runner_factory=factory)
    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=2000)
    assert not helpdesk.panel.push_to_talk
    helpdesk.actions.ptt.trigger()
    qtbot.waitUntil(lambda: len(factory.runners) == 2 and helpdesk.phase == "running", timeout=3000)
    assert factory.runners[0].stopped.is_set()
    assert [r.plan.push_to_talk for r in factory.runners] == [False, True]
    assert helpdesk.panel.push_to_talk and helpdesk.actions.ptt_hint.isVisible()


def test_failed_start_shows_the_reason_and_without_a_tray_a_window_says_why(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot
) -> None:
    def no_key() -> LaunchPlan:
        raise LaunchError("no API key for OpenAI: enter one in Settings")

    helpdesk = make_app(no_key)  # offscreen has no system tray
    assert helpdesk.tray is None and helpdesk.main_window is not None
    helpdesk.show()
    window = helpdesk.main_window
    qtbot.waitExposed(window)
    assert window.banner.text() == NO_TRAY_REASON
    assert window.banner.isVisible() and helpdesk.transcript.isVisible()
    menu = window.menuBar().actions()[0].menu()
    assert isinstance(menu, QMenu)  # typed as QObject
    menu_texts = [a.text().replace("&", "") for a in menu.actions()]
    assert "Start conversation" in menu_texts and "Quit" in menu_texts

    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.state.state is State.ERROR, timeout=2000)
    assert helpdesk.phase == "stopped"
    assert helpdesk.panel.state_label.text() == "Error: no API key for OpenAI: enter one in Settings"
    qtbot.waitUntil(lambda: "Could not start" in helpdesk.transcript.model.plain_text(), timeout=2000)
    icon = helpdesk.panel.state_icon.pixmap().toImage()
    assert icon == icon_for(State.ERROR, False).pixmap(32, 32).toImage()

    # Closing the window quits the app.
    with qtbot.waitSignal(helpdesk.finished, timeout=3000):
        window.close()
    assert helpdesk.quitting and not window.isVisible()


def test_quit_is_bounded_even_when_stopping_hangs(make_app: Callable[..., HelpdeskApp], qtbot: QtBot) -> None:
    factory = Factory(stop_takes=5.0)
    factory.release.set()
    helpdesk = make_app(embedded_plan, tray_available=True, runner_factory=factory)
    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=2000)
    started = time.monotonic()
    with qtbot.waitSignal(helpdesk.finished, timeout=4000):
        helpdesk.quit()
    elapsed = time.monotonic() - started
    assert QUIT_DEADLINE_S - 0.1 < elapsed < QUIT_DEADLINE_S + 0.5
    assert helpdesk.tray is not None and not helpdesk.tray.tray.isVisible()


# ----------------------------------------------------------------------------------------------
# The real thing: embedded server, engine, virtual devices
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def isolated_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HELPDESK_VOICE_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("HELPDESK_VOICE_POLICY", str(tmp_path / "no-policy.toml"))
    monkeypatch.setenv("HELPDESK_VOICE_DATA_DIR", str(tmp_path / "data"))
    for name in list(os.environ):
        if name.startswith("HELPDESK_VOICE_") and name not in (
            "HELPDESK_VOICE_CONFIG_DIR",
            "HELPDESK_VOICE_POLICY",
            "HELPDESK_VOICE_DATA_DIR",
            "HELPDESK_VOICE_REQUIRE_DEVICES",
            "HELPDESK_VOICE_ASSETS",
        ):
            monkeypatch.delenv(name)


@pytest.mark.devices
@pytest.mark.usefixtures("isolated_settings")
def test_real_conversation_in_the_tray_app(
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    make_app: Callable[..., HelpdeskApp],
    qtbot: QtBot,
) -> None:
    def plan() -> LaunchPlan:
        overrides = {"audio.input_device": virtual_audio.mic, "audio.output_device": virtual_audio.speaker}
        return plan_from_settings(load_settings(overrides))

    helpdesk = make_app(plan, tray_available=True)
    assert helpdesk.tray is not None
    stopped_icon = tray_image(helpdesk)
    states: list[State] = []
    helpdesk.bridge.state_changed.connect(lambda event: states.append(event.state))
    helpdesk.start()
    connecting_icon = tray_image(helpdesk)
    assert connecting_icon != stopped_icon
    qtbot.waitUntil(lambda: helpdesk.state.state is State.LISTENING, timeout=180_000)
    assert helpdesk.phase == "running"
    assert helpdesk.tray.tray.toolTip() == "Helpdesk Voice \u2013 Listening"
    assert tray_image(helpdesk) not in (stopped_icon, connecting_icon)
    assert helpdesk.plan is not None and helpdesk.plan.backend == "embedded"
    assert virtual_audio.mic in helpdesk.description
    runner = helpdesk.runner
    assert runner is not None and runner.engine is not None
    engine = runner.engine
    server = getattr(runner, "_server", None)
    server_pid = getattr(server, "pid", None)

    # Typed text gets an answer in the pane.
    helpdesk.transcript.input_box.setText("I forgot my password")
    helpdesk.transcript.submit_text()

    def answer() -> str:
        for entry in helpdesk.transcript.model.entries:
            if entry.kind == "assistant" and entry.final and entry.text:
                return entry.text
        return ""

    qtbot.waitUntil(lambda: bool(answer()), timeout=30_000)
    assert "password" in answer().lower(), answer()
    assert helpdesk.transcript.model.entries[0].kind == "user"
    helpdesk.transcript.refresh()
    assert "You: I forgot my password" in helpdesk.transcript.browser.toPlainText()
    qtbot.waitUntil(lambda: helpdesk.state.state is State.LISTENING, timeout=30_000)
    assert State.ASSISTANT_SPEAKING in states

    # Spoken input: the tray shows the user speaking, and the microphone level reaches the meter.
    levels: list[float] = []
    original = helpdesk.panel.set_level

    def record_level(dbfs: float) -> None:
        levels.append(dbfs)
        original(dbfs)

    helpdesk.panel.set_level = record_level  # type: ignore[method-assign]
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    spoken = threading.Thread(
        target=speak, args=(virtual_audio, speech("my laptop is not charging", feed_rate))
    )
    spoken.start()
    qtbot.waitUntil(lambda: State.USER_SPEAKING in states[-20:], timeout=15_000)
    assert helpdesk.tray.tray.toolTip() in (
        "Helpdesk Voice \u2013 You are speaking",
        "Helpdesk Voice \u2013 Thinking…",
        "Helpdesk Voice \u2013 Speaking",
    )
    spoken.join(15)
    qtbot.waitUntil(
        lambda: sum(e.kind == "user" for e in helpdesk.transcript.model.entries) >= 2, timeout=20_000
    )
    assert max(levels) > -40.0, max(levels)

    # Quit: audio, connection and the embedded server stop within the bound.
    started = time.monotonic()
    with qtbot.waitSignal(helpdesk.finished, timeout=5000):
        helpdesk.quit()
    elapsed = time.monotonic() - started
    print(f"quit took {elapsed:.3f} s (app measured {helpdesk.quit_seconds:.3f} s)")
    assert phase_now(helpdesk) == "stopped", "quit gave up waiting for the conversation to stop"
    assert elapsed < QUIT_BOUND_S
    assert not engine.running
    if server_pid is not None:
        assert not Path(f"/proc/{server_pid}").exists() or _is_zombie(server_pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


SIGNAL_SCRIPT = """
import sys
from app.launch import LaunchError
from app.ui.app import run_gui

def plan():
    raise LaunchError("no microphone here")

sys.exit(run_gui(plan))
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_run_gui_quits_cleanly_on_a_signal(signum: int, tmp_path: Path) -> None:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path)}
    child = subprocess.Popen(
        [sys.executable, "-c", SIGNAL_SCRIPT], env=env, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert child.stderr is not None
        lines: list[str] = []
        for line in child.stderr:  # the app is up once its failed autostart is logged
            lines.append(line)
            if "no microphone here" in line:
                break
        assert any("no microphone here" in line for line in lines), lines
        assert child.poll() is None  # the failed start does not end the app: the user can fix it
        sent = time.monotonic()
        child.send_signal(signum)
        code = child.wait(5)
        elapsed = time.monotonic() - sent
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert code == 0
    assert elapsed < QUIT_BOUND_S


def test_saved_settings_restart_the_conversation_and_about_names_the_backend(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot
) -> None:
    factory = Factory()
    factory.release.set()
    helpdesk = make_app(embedded_plan, tray_available=True, runner_factory=factory)
    helpdesk.actions.about.trigger()
    assert helpdesk._about is not None and helpdesk._about.isVisible()
    assert "Backend: not connected" in helpdesk._about.text()
    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=2000)
    helpdesk.actions.about.trigger()
    text = helpdesk._about.text()
    assert f"Helpdesk Voice</b> {app_package.__version__}" in text
    assert "Apache License 2.0" in text
    assert "embedded: the offline assistant on this computer" in text
    assert "listening on MIC -&gt; SPEAKER" in text  # device names are escaped in the rich text

    helpdesk.actions.settings.trigger()
    dialog = helpdesk._settings_dialog
    assert dialog is not None and dialog.isVisible()
    helpdesk.actions.settings.trigger()  # a second click raises the same dialog
    assert helpdesk._settings_dialog is dialog
    dialog.settings_saved.emit()
    qtbot.waitUntil(lambda: len(factory.runners) == 2 and helpdesk.phase == "running", timeout=3000)
    assert factory.runners[0].stopped.is_set() and not factory.runners[1].stopped.is_set()
    dialog.reject()


def test_push_to_talk_button_and_space_key(qtbot: QtBot) -> None:
    panel = ConversationPanel()
    qtbot.addWidget(panel)
    panel.show()
    qtbot.waitExposed(panel)
    talks: list[bool] = []
    panel.talk.connect(talks.append)
    assert panel.talk_button.isHidden()
    qtbot.keyPress(panel, Qt.Key.Key_Space)  # push-to-talk off: Space does nothing
    assert talks == []

    panel.set_push_to_talk(True)
    assert panel.talk_button.isVisible()
    qtbot.mousePress(panel.talk_button, Qt.MouseButton.LeftButton)
    qtbot.mouseRelease(panel.talk_button, Qt.MouseButton.LeftButton)
    assert talks == [True, False]

    panel.transcript.browser.setFocus()
    qtbot.keyPress(panel.transcript.browser, Qt.Key.Key_Space)
    qtbot.keyRelease(panel.transcript.browser, Qt.Key.Key_Space)
    assert talks == [True, False, True, False]

    panel.transcript.input_box.setFocus()
    qtbot.keyClick(panel.transcript.input_box, Qt.Key.Key_Space)  # typing a space is typing
    assert talks == [True, False, True, False]
    assert panel.transcript.input_box.text() == " "

    qtbot.keyPress(panel, Qt.Key.Key_Space)
    panel.set_push_to_talk(False)  # switching it off mid-press lets go
    assert talks[-2:] == [True, False]


# ----------------------------------------------------------------------------------------------
# Keeping the transcript, ticket links
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_keyring: FileKeyring) -> Path:
    """The app's data folder under ``tmp_path``, with a keyring that holds the key that seals it."""
    monkeypatch.setenv("HELPDESK_VOICE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def said(helpdesk: HelpdeskApp, item: str, text: str) -> None:
    helpdesk.transcript.on_transcript(Transcript("user", item, text, final=True))


def saved_texts(path: Path) -> list[str]:
    return [entry["text"] for entry in json.loads(read_transcript(path))["entries"]]


@pytest.mark.usefixtures("data_dir")
def test_transcript_is_saved_after_a_pause_and_on_quit(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ui_app, "TRANSCRIPT_SAVE_MS", 300)
    helpdesk = make_app(
        embedded_plan, tray_available=True, runner_factory=Factory(), retention_days=lambda: 30
    )
    store = helpdesk.transcript_store
    assert store.flush(5.0)
    assert not store.path.exists()  # nothing said yet, nothing written

    changed = time.monotonic()
    for n in range(5):
        said(helpdesk, f"u{n}", f"line {n}")
    assert store.flush(5.0) and not store.path.exists()  # debounced: not on every change
    qtbot.waitUntil(store.path.exists, timeout=3000)
    assert time.monotonic() - changed >= 0.25
    assert saved_texts(store.path) == [f"line {n}" for n in range(5)]

    said(helpdesk, "u9", "one more thing")
    with qtbot.waitSignal(helpdesk.finished, timeout=3000):
        helpdesk.quit()
    assert helpdesk.quit_seconds is not None and helpdesk.quit_seconds < 1.0
    assert saved_texts(store.path)[-1] == "one more thing"  # written on quit, not lost


@pytest.mark.usefixtures("data_dir")
def test_retention_zero_from_the_settings_deletes_and_stops_keeping(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot
) -> None:
    days = [30]
    helpdesk = make_app(
        embedded_plan, tray_available=True, runner_factory=Factory(), retention_days=lambda: days[0]
    )
    store = helpdesk.transcript_store
    said(helpdesk, "u1", "my password expired")
    helpdesk.save_transcript()
    assert store.flush(5.0) and store.path.exists()

    days[0] = 0
    helpdesk._settings_saved()
    said(helpdesk, "u2", "and my printer")
    helpdesk.save_transcript()
    assert store.flush(5.0)
    assert not store.path.exists() and list(store.directory.iterdir()) == []


def test_a_transcript_that_cannot_be_saved_is_one_notice(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot, data_dir: Path
) -> None:
    data_dir.mkdir(parents=True)
    (data_dir / "transcripts").write_text("", encoding="utf-8")  # a file where the folder goes
    helpdesk = make_app(
        embedded_plan, tray_available=True, runner_factory=Factory(), retention_days=lambda: 30
    )

    def warnings() -> list[str]:
        return [e.text for e in helpdesk.transcript.model.entries if e.kind == "notice"]

    for n in range(3):
        said(helpdesk, f"u{n}", f"line {n}")
        helpdesk.save_transcript()
        assert helpdesk.transcript_store.flush(5.0)
    qtbot.waitUntil(lambda: len(warnings()) == 1, timeout=2000)
    qtbot.wait(50)  # a second report would be queued by now
    assert len(warnings()) == 1
    assert "transcript" in warnings()[0].lower()
    assert helpdesk.phase == "stopped" and helpdesk.state.state is State.IDLE  # the app carries on


def test_a_ticket_link_shows_the_ticket_from_the_outbox(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot, data_dir: Path
) -> None:
    ticket = TicketOutbox().create(
        "Printer jams on every page", "The office printer jams after one sheet.", "hardware", "high"
    )
    assert (data_dir / "outbox" / f"{ticket.id}.json").exists()
    helpdesk = make_app(
        embedded_plan, tray_available=True, runner_factory=Factory(), retention_days=lambda: 30
    )
    helpdesk.transcript.browser.anchorClicked.emit(QUrl(f"ticket:{ticket.id}"))
    box = helpdesk._ticket_box
    assert box is not None and box.isVisible()
    assert not box.isModal()
    assert box.windowTitle() == f"Ticket {ticket.id}"
    for part in (ticket.id, "Printer jams on every page", "jams after one sheet", "high", "queued"):
        assert part in box.text()

    helpdesk.transcript.browser.anchorClicked.emit(QUrl("ticket:HD-4242"))
    assert helpdesk._ticket_box is box and box.isVisible()
    assert box.windowTitle() == "Ticket HD-4242"
    assert "HD-4242 is not in this computer's ticket outbox" in box.text()

    (data_dir / "outbox" / "HD-4243.json").write_text("{broken", encoding="utf-8")
    helpdesk.show_ticket("HD-4243")
    assert "HD-4243 could not be read" in box.text()
    box.hide()


# ----------------------------------------------------------------------------------------------
# The app's own ticket delivery
# ----------------------------------------------------------------------------------------------
async def _file_ticket(helpdesk: HelpdeskApp) -> dict[str, Any]:
    worker = helpdesk.delivery.worker
    assert worker is not None
    return await call_tool(
        default_registry(delivery=worker),
        "create_ticket",
        summary="Printer jams",
        description="It jams.",
        category="hardware",
    )


def test_the_apps_delivery_takes_new_ticket_settings_without_restarting_the_conversation(
    make_app: Callable[..., HelpdeskApp], qtbot: QtBot, data_dir: Path
) -> None:
    system = MemorySystem()
    configured = threading.Event()  # stands for "a ticket system is saved in Settings"
    delivery = AppDelivery(lambda: system if configured.is_set() else None)
    factory = Factory()
    factory.release.set()
    helpdesk = make_app(
        embedded_plan,
        tray_available=True,
        runner_factory=factory,
        delivery=delivery,
        retention_days=lambda: 30,
    )
    assert helpdesk.tray is not None
    helpdesk.start()
    qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=2000)
    filed = asyncio.run(_file_ticket(helpdesk))
    assert filed["status"] == "queued"  # no system yet: kept here

    helpdesk.actions.settings.trigger()
    dialog = helpdesk._settings_dialog
    assert dialog is not None
    configured.set()
    dialog.last_saved = frozenset({"tickets.system", "tickets.url", "tickets.queue", TICKET_SECRET_FIELD})
    dialog.settings_saved.emit()
    reached = f"Ticket {filed['ticket_id']} reached Memory desk as MD-1."

    def notices() -> list[str]:
        return [e.text for e in helpdesk.transcript.model.entries if e.kind == "notice"]

    qtbot.waitUntil(lambda: reached in notices(), timeout=10_000)
    assert system.filed(filed["ticket_id"]) == 1
    assert [shown.message for shown in helpdesk.tray.shown] == [reached]
    assert len(factory.runners) == 1 and helpdesk.phase == "running"  # the conversation went on

    # The e-mail address is the conversation's too (its tools use it): that save restarts it.
    dialog.last_saved = frozenset({"tickets.contact"})
    dialog.settings_saved.emit()
    qtbot.waitUntil(lambda: len(factory.runners) == 2 and helpdesk.phase == "running", timeout=3000)
    dialog.reject()

    worker = helpdesk.delivery.worker
    assert worker is not None
    with qtbot.waitSignal(helpdesk.finished, timeout=3000):
        helpdesk.quit()
    assert helpdesk.delivery.worker is None  # stopped with the app, not waited for
    assert worker._thread is not None
    worker._thread.join(5)
    assert not worker._thread.is_alive()


def test_a_conversation_files_through_the_apps_delivery_and_leaves_it_running(
    make_app: Callable[..., HelpdeskApp], data_dir: Path
) -> None:
    helpdesk = make_app(embedded_plan, tray_available=True, retention_days=lambda: 30)
    worker = helpdesk.delivery.worker
    assert worker is not None
    runner = ConversationRunner(embedded_plan(), helpdesk.bridge.listener, None, helpdesk.delivery.worker)
    assert runner.delivery_worker() is worker
    runner.stop()
    assert helpdesk.delivery.worker is worker and worker._thread is not None and worker._thread.is_alive()


def test_start_at_login_follows_the_setting_and_a_failure_is_a_notice(
    make_app: Callable[..., HelpdeskApp], tmp_path: Path
) -> None:
    from app.autostart import StartAtLogin

    wanted = [True]
    login = StartAtLogin(["/opt/helpdesk-voice/helpdesk-voice"], platform="linux", home=tmp_path, environ={})
    helpdesk = make_app(embedded_plan, tray_available=True, autostart=login, start_at_login=lambda: wanted[0])
    helpdesk.apply_start_at_login()
    assert (
        login.enabled
        and login.path is not None
        and "Exec=/opt/helpdesk-voice/helpdesk-voice" in login.path.read_text()
    )
    wanted[0] = False
    helpdesk.apply_start_at_login()
    assert not login.enabled
    # A home the entry cannot be written in: said in the transcript, the app goes on.
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    broken = make_app(
        embedded_plan,
        tray_available=True,
        autostart=StartAtLogin(["x"], platform="linux", home=blocked, environ={}),
        start_at_login=lambda: True,
    )
    broken.apply_start_at_login()
    assert "Start at login could not be changed" in broken.transcript.model.plain_text()
