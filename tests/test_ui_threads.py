"""Worker threads that finish after the window or app they report to is gone.

Each test holds a worker in place with a ``threading.Event``, deletes the real Qt objects it would
report to, then lets it finish: nothing may raise (on the worker's thread or in a Qt slot), nothing
may crash, and the late result must be left unread rather than reach a deleted object. A worker
that emitted a signal on a deleted dialog once crashed the next test; these keep that from coming
back anywhere in the app.
"""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import shiboken6
from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QWidget
from pytestqt.qtbot import QtBot

from app import defaults
from app.config import TicketSettings
from app.core.actions import Notice, State, StateChanged, Transcript
from app.engine import Engine, EngineListener
from app.launch import LaunchPlan
from app.ui import tickets_page, transcript_store
from app.ui.app import HelpdeskApp, Runner
from app.ui.bridge import REPORT_POLL_MS, EngineBridge, EngineReports
from app.ui.settings_dialog import SettingsDialog
from tests.file_keyring import FileKeyring

T = TypeVar("T")

WAIT_S = 5.0  # only a broken test waits this long: every worker is released explicitly


def embedded_plan() -> LaunchPlan:
    return LaunchPlan(backend="embedded", endpoint=None, session=defaults.session_config(backend="embedded"))


@pytest.fixture
def thread_errors(monkeypatch: pytest.MonkeyPatch) -> list[BaseException]:
    """What escaped any thread's target during the test (pytest would only warn about it)."""
    errors: list[BaseException] = []

    def record(args: threading.ExceptHookArgs) -> None:
        if args.exc_value is not None:
            errors.append(args.exc_value)

    monkeypatch.setattr(threading, "excepthook", record)
    return errors


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, file_keyring: FileKeyring) -> Path:
    monkeypatch.setenv("HELPDESK_VOICE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def drain(results: queue.SimpleQueue[T]) -> list[T]:
    taken: list[T] = []
    while True:
        try:
            taken.append(results.get_nowait())
        except queue.Empty:
            return taken


def quit_and_delete(qtbot: QtBot, helpdesk: HelpdeskApp) -> None:
    """Quits the app as the user would, then deletes it and its windows, as the end of a test does."""
    with qtbot.waitSignal(helpdesk.finished, timeout=int(WAIT_S * 1000)):
        helpdesk.quit()
    widgets: list[QWidget] = [w for w in (helpdesk.main_window, helpdesk.transcript_window) if w is not None]
    objects: list[QObject] = [helpdesk, helpdesk.bridge, helpdesk.transcript, *widgets]
    helpdesk.deleteLater()
    for widget in widgets:
        widget.deleteLater()
    qtbot.waitUntil(lambda: not any(shiboken6.isValid(o) for o in objects), timeout=int(WAIT_S * 1000))


def settle(qtbot: QtBot) -> None:
    """Long enough for several of the GUI's queue readers' ticks, had any survived."""
    qtbot.wait(5 * REPORT_POLL_MS)


# ----------------------------------------------------------------------------------------------
# The engine's reports
# ----------------------------------------------------------------------------------------------
class EngineAfterQuit:
    """A runner whose engine thread keeps reporting after a stop that gave up waiting for it."""

    def __init__(self, plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> None:
        self.listener = listener
        self.engine: Engine | None = None
        self.description = "listening on MIC -> SPEAKER"
        self.release = threading.Event()
        self.reported = threading.Event()
        self.thread = threading.Thread(target=self._engine, name="test-engine", daemon=True)

    def start(self) -> None:
        self.listener.on_state(StateChanged(State.LISTENING, muted=False))
        self.thread.start()

    def stop(self, timeout: float = 1.0) -> None:
        pass  # stuck: the thread goes on

    def _engine(self) -> None:
        self.release.wait(WAIT_S)
        self.listener.on_state(StateChanged(State.USER_SPEAKING, muted=False))
        self.listener.on_transcript(Transcript("user", "u1", "said after quitting", final=True))
        self.listener.on_notice(Notice("error", "The assistant stopped unexpectedly."))
        self.reported.set()


def test_engine_reports_after_the_app_is_deleted_reach_no_qt_object(
    qtbot: QtBot, data_dir: Path, thread_errors: list[BaseException]
) -> None:
    runners: list[EngineAfterQuit] = []

    def factory(plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> Runner:
        runners.append(EngineAfterQuit(plan, listener, progress))
        return runners[-1]

    helpdesk = HelpdeskApp(
        embedded_plan, tray_available=False, runner_factory=factory, retention_days=lambda: 30
    )
    with qtbot.capture_exceptions() as qt_errors:
        helpdesk.start()
        qtbot.waitUntil(lambda: helpdesk.phase == "running", timeout=int(WAIT_S * 1000))
        assert helpdesk.state.state is State.LISTENING  # reports do arrive while the app lives
        runner = runners[0]
        listener = runner.listener
        # What a thread holds must not be a Qt object: one can be deleted while the thread uses it.
        assert isinstance(listener, EngineReports) and not isinstance(listener, QObject)
        quit_and_delete(qtbot, helpdesk)

        runner.release.set()
        runner.thread.join(WAIT_S)
        assert not runner.thread.is_alive()
        settle(qtbot)

    assert runner.reported.is_set()  # every call returned
    assert thread_errors == []
    assert qt_errors == []
    # Dropped: still in the queue, which nothing reads any more.
    late = listener.take()
    assert [type(event) for event in late] == [StateChanged, Transcript, Notice]


def test_a_bridge_deleted_while_a_thread_reports_is_left_alone(
    qtbot: QtBot, thread_errors: list[BaseException]
) -> None:
    bridge = EngineBridge()
    listener = bridge.listener
    seen: list[object] = []
    bridge.state_changed.connect(seen.append)
    release = threading.Event()

    def engine() -> None:
        release.wait(WAIT_S)
        listener.on_state(StateChanged(State.THINKING, muted=False))

    worker = threading.Thread(target=engine, name="test-engine", daemon=True)
    with qtbot.capture_exceptions() as qt_errors:
        worker.start()
        bridge.deleteLater()
        qtbot.waitUntil(lambda: not shiboken6.isValid(bridge), timeout=int(WAIT_S * 1000))
        release.set()
        worker.join(WAIT_S)
        assert not worker.is_alive()
        settle(qtbot)
    assert thread_errors == [] and qt_errors == []
    assert seen == []
    assert listener.take() == [StateChanged(State.THINKING, muted=False)]


# ----------------------------------------------------------------------------------------------
# Starting and stopping
# ----------------------------------------------------------------------------------------------
class SlowStart:
    """A runner whose start (devices, the offline server) takes until the test releases it."""

    def __init__(self, plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> None:
        self.listener = listener
        self.progress = progress
        self.engine: Engine | None = None
        self.description = "listening on MIC -> SPEAKER"
        self.release = threading.Event()
        self.began = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.current_thread()
        self.began.set()
        self.release.wait(WAIT_S)
        self.progress("loading speech recognition")
        self.listener.on_state(StateChanged(State.LISTENING, muted=False))

    def stop(self, timeout: float = 1.0) -> None:
        pass


def test_a_start_that_finishes_after_the_app_is_deleted_is_dropped(
    qtbot: QtBot, data_dir: Path, thread_errors: list[BaseException]
) -> None:
    runners: list[SlowStart] = []

    def factory(plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> Runner:
        runners.append(SlowStart(plan, listener, progress))
        return runners[-1]

    helpdesk = HelpdeskApp(
        embedded_plan, tray_available=False, runner_factory=factory, retention_days=lambda: 30
    )
    results = helpdesk._lifecycle.results
    with qtbot.capture_exceptions() as qt_errors:
        helpdesk.start()
        qtbot.waitUntil(lambda: bool(runners) and runners[0].began.is_set(), timeout=int(WAIT_S * 1000))
        runner = runners[0]
        assert not isinstance(runner.listener, QObject)
        quit_and_delete(qtbot, helpdesk)

        runner.release.set()
        assert runner.thread is not None
        runner.thread.join(WAIT_S)  # the lifecycle's own thread: its result is put by now
        assert not runner.thread.is_alive()
        settle(qtbot)

    assert thread_errors == [] and qt_errors == []
    late = drain(results)
    assert [type(result).__name__ for result in late] == ["_Progress", "_Started"]


def test_a_transcript_write_failing_after_the_app_is_deleted_is_dropped(
    qtbot: QtBot, data_dir: Path, monkeypatch: pytest.MonkeyPatch, thread_errors: list[BaseException]
) -> None:
    release = threading.Event()
    busy = threading.Event()

    def stuck_disk(directory: Path, retention_days: int, now: object = None) -> list[Path]:
        busy.set()
        release.wait(WAIT_S)
        raise OSError(30, "Read-only file system")

    # The store's first piece of work, on its writer thread, as the app starts.
    monkeypatch.setattr(transcript_store, "prune_transcripts", stuck_disk)
    helpdesk = HelpdeskApp(
        embedded_plan, tray_available=False, runner_factory=SlowStart, retention_days=lambda: 30
    )
    store = helpdesk.transcript_store
    results = helpdesk._lifecycle.results
    with qtbot.capture_exceptions() as qt_errors:
        assert busy.wait(WAIT_S)
        quit_and_delete(qtbot, helpdesk)  # quitting gives up on the write after its deadline

        release.set()
        store._thread.join(WAIT_S)
        assert not store._thread.is_alive()
        settle(qtbot)

    assert thread_errors == [] and qt_errors == []
    late = drain(results)
    assert [type(result).__name__ for result in late] == ["_StoreFailed"]
    assert "Read-only file system" in str(late[0])


# ----------------------------------------------------------------------------------------------
# The Settings dialog's Test connection
# ----------------------------------------------------------------------------------------------
@pytest.fixture
def slow_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[threading.Event, list[threading.Thread]]]:
    """A ticket system that answers only when the test says so; the threads that asked it."""
    release = threading.Event()
    asked: list[threading.Thread] = []

    def try_connection(settings: TicketSettings, secret: str = "") -> tuple[bool, str]:
        asked.append(threading.current_thread())
        release.wait(WAIT_S)
        return True, "Connected to Request Tracker (late)."

    monkeypatch.setattr(tickets_page, "try_connection", try_connection)
    yield release, asked
    release.set()


def test_a_connection_test_answered_after_the_dialog_closed_is_dropped(
    qtbot: QtBot,
    env: dict[str, str],
    file_keyring: FileKeyring,
    slow_server: tuple[threading.Event, list[threading.Thread]],
    thread_errors: list[BaseException],
) -> None:
    release, asked = slow_server
    dialog = SettingsDialog(environ=env)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)  # as the app opens it
    dialog.ticket_system_combo.setCurrentIndex(dialog.ticket_system_combo.findData("rt"))
    dialog.ticket_url_edit.setText("https://rt.example.com/rt")
    dialog.ticket_queue_edit.setText("General")
    dialog.ticket_secret_edit.setText("token-typed-in-the-dialog")
    results = dialog.connection_test._results
    with qtbot.capture_exceptions() as qt_errors:
        dialog.tabs.setCurrentWidget(dialog.tickets_page)  # not Audio: the microphone stays closed
        dialog.show()
        qtbot.mouseClick(dialog.test_connection_button, Qt.MouseButton.LeftButton)
        qtbot.waitUntil(lambda: len(asked) == 1, timeout=int(WAIT_S * 1000))
        assert dialog.connection_test.running
        generation = dialog.connection_test._generation
        dialog.close()
        qtbot.waitUntil(lambda: not shiboken6.isValid(dialog), timeout=int(WAIT_S * 1000))

        release.set()
        asked[0].join(WAIT_S)
        assert not asked[0].is_alive()
        settle(qtbot)

    assert thread_errors == [] and qt_errors == []
    late = drain(results)
    assert late == [(generation, True, "Connected to Request Tracker (late).")]
