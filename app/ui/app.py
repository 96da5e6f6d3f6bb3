"""The tray app: the conversation behind a tray icon (or a window where there is no tray).

``HelpdeskApp`` wires the pieces. Everything that can block (reading the key from the keyring,
opening devices, starting the offline server, stopping) runs on worker threads, so the GUI thread
never waits for the engine. Those threads, the engine and the transcript store's writer touch no Qt
object: they put their results and reports on queues (``EngineBridge.listener`` for the engine's),
which a timer of the app empties on the GUI thread. A thread that outlives the app then only fills a
queue nobody reads; a signal emitted there could reach a QObject in the middle of being deleted. Each
start gets a generation number: results from a start that was stopped or superseded in the meantime
are dropped.

Tickets are sent by the app's own delivery worker (:mod:`app.ui.ticket_delivery`), which runs from
start to quit whether or not a conversation does: saving ticket settings reconfigures it, so
tickets queued meanwhile go out and their real numbers show in the transcript at once.
"""

from __future__ import annotations

import html
import logging
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial
from types import FrameType
from typing import TYPE_CHECKING, Literal, Protocol

from PySide6.QtCore import QObject, Qt, QTimer, Signal, SignalInstance, Slot
from PySide6.QtWidgets import QApplication, QMessageBox, QSystemTrayIcon

import app as app_package
from app.autostart import StartAtLogin
from app.core.actions import Notice, State, StateChanged
from app.launch import LaunchError, LaunchPlan
from app.tools.tickets import Ticket, TicketOutbox
from app.ui.bridge import REPORT_POLL_MS, EngineBridge
from app.ui.icons import app_icon
from app.ui.main_window import ConversationPanel, MainWindow, TranscriptWindow
from app.ui.state_display import StateDisplay
from app.ui.ticket_delivery import AppDelivery
from app.ui.tickets_page import DELIVERY_ONLY_KEYS
from app.ui.transcript import TranscriptView
from app.ui.transcript_model import TranscriptModel
from app.ui.transcript_store import TranscriptStore
from app.ui.tray import APP_TITLE, AppActions, TrayController

if TYPE_CHECKING:
    from app.engine import Engine, EngineListener
    from app.ui.settings_dialog import SettingsDialog

__all__ = ["HelpdeskApp", "default_plan", "run_gui", "settings_retention_days", "ticket_details"]

log = logging.getLogger("app.ui")

STOP_TIMEOUT_S = 1.0
# Quitting waits this long for the conversation to stop, then leaves anyway: the offline server
# dies with the process (it watches its parent), and nothing else outlives it.
QUIT_DEADLINE_S = 1.2
LEVEL_POLL_MS = 50
SIGNAL_TICK_MS = 200
DELIVERY_POLL_MS = 100  # how often the delivery worker's reports are taken to the transcript
SILENCE_DBFS = -120.0
TRANSCRIPT_SAVE_MS = 2000
LICENCE = "Apache License 2.0"

Phase = Literal["stopped", "starting", "running", "stopping"]


class Runner(Protocol):
    """What the app needs of ``app.launch.ConversationRunner``."""

    engine: Engine | None
    description: str

    def start(self) -> None: ...
    def stop(self, timeout: float = 1.0) -> None: ...


RunnerFactory = Callable[[LaunchPlan, "EngineListener", Callable[[str], None]], Runner]


def _shared_delivery_runner(
    delivery: AppDelivery, plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]
) -> Runner:
    from app.launch import ConversationRunner

    return ConversationRunner(plan, listener, progress, delivery.worker)


def settings_start_at_login() -> bool:
    """Whether the app should start at login, as the user's effective settings (or policy) say."""
    from app.config import load_settings

    return load_settings().typed.start_at_login


def settings_retention_days() -> int:
    """How many days transcripts are kept, as the user's effective settings say."""
    from app.config import load_settings

    days = load_settings().value("transcript.retention_days")
    assert isinstance(days, int)  # the setting's own rules make it an int from 0 to 3650
    return days


def ticket_details(ticket: Ticket) -> str:
    contact = f"\nContact: {ticket.contact}" if ticket.contact else ""
    return (
        f"{ticket.id}: {ticket.summary}\n\n"
        f"Status: {ticket.status}\nCategory: {ticket.category}\nUrgency: {ticket.urgency}\n"
        f"Created: {ticket.created_at}{contact}\n\n{ticket.description}"
    )


def ticket_not_found(ticket_id: str) -> str:
    return (
        f"Ticket {ticket_id} is not in this computer's ticket outbox. It may have been sent to the "
        "helpdesk's ticket system already, or it was created on another computer."
    )


def default_plan() -> LaunchPlan:
    """The plan the user's effective settings describe (read afresh: settings may have changed)."""
    from app.config import load_settings
    from app.launch import plan_from_settings

    return plan_from_settings(load_settings())


@dataclass(frozen=True)
class _Progress:
    generation: int
    line: str


@dataclass(frozen=True)
class _Started:
    generation: int
    plan: LaunchPlan
    description: str


@dataclass(frozen=True)
class _Failed:
    generation: int
    reason: str


@dataclass(frozen=True)
class _Stopped:
    generation: int


@dataclass(frozen=True)
class _StoreFailed:
    message: str  # why the transcript could not be kept


_Result = _Progress | _Started | _Failed | _Stopped | _StoreFailed


class _Lifecycle:
    """The thread side of starting and stopping, holding no Qt object at all.

    A worker thread can outlive the app (quitting does not wait for a stuck stop). It reports only
    by putting a result on :attr:`results`, which the app reads with a timer on the GUI thread: a
    signal emitted here could reach a QObject that the GUI thread is deleting at that moment, and
    if the thread held the last reference to the app, the app's Qt objects would be destroyed on it.
    """

    def __init__(
        self,
        plan_factory: Callable[[], LaunchPlan],
        runner_factory: RunnerFactory,
        listener: EngineListener,
    ) -> None:
        self.results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        self.plan_factory = plan_factory
        self.runner_factory = runner_factory
        self.listener = listener
        self.lock = threading.Lock()  # guards generation and runner against the workers
        self.generation = 0
        self.runner: Runner | None = None

    def store_failed(self, message: str) -> None:
        """The transcript store's ``on_error``, called on its writer thread."""
        self.results.put(_StoreFailed(message))

    def start(self, ptt_choice: bool | None, muted: bool) -> int:
        with self.lock:
            self.generation += 1
            generation = self.generation
        threading.Thread(
            target=self._start, args=(generation, ptt_choice, muted), name="helpdesk-start", daemon=True
        ).start()
        return generation

    def _start(self, generation: int, ptt_choice: bool | None, muted: bool) -> None:
        try:
            plan = self.plan_factory()
            if ptt_choice is not None:
                plan = replace(plan, push_to_talk=ptt_choice)
            runner = self.runner_factory(
                plan, self.listener, lambda line: self.results.put(_Progress(generation, line))
            )
            with self.lock:
                if generation != self.generation:
                    return  # stopped before the runner existed: nothing to undo
                self.runner = runner
            runner.start()
            engine = runner.engine
            if engine is not None and muted:
                engine.set_muted(True)  # before the user can be heard
        except LaunchError as exc:
            self.results.put(_Failed(generation, str(exc)))
        except Exception as exc:  # a bug must not leave the app stuck "connecting"
            log.exception("starting the conversation failed")
            self.results.put(_Failed(generation, f"the conversation could not start: {exc}"))
        else:
            self.results.put(_Started(generation, plan, runner.description))

    def stop(self) -> int:
        with self.lock:
            self.generation += 1
            generation = self.generation
            runner, self.runner = self.runner, None
        threading.Thread(
            target=self._stop, args=(generation, runner), name="helpdesk-stop", daemon=True
        ).start()
        return generation

    def _stop(self, generation: int, runner: Runner | None) -> None:
        try:
            if runner is not None:
                runner.stop(STOP_TIMEOUT_S)
        except Exception:
            log.exception("stopping the conversation failed")
        finally:
            self.results.put(_Stopped(generation))


class HelpdeskApp(QObject):
    """The app's controller. ``finished`` fires once quitting has stopped the conversation."""

    finished = Signal()

    def __init__(
        self,
        plan_factory: Callable[[], LaunchPlan] = default_plan,
        *,
        tray_available: bool | None = None,
        runner_factory: RunnerFactory | None = None,
        model: TranscriptModel | None = None,
        retention_days: Callable[[], int] = settings_retention_days,
        delivery: AppDelivery | None = None,
        autostart: StartAtLogin | None = None,
        start_at_login: Callable[[], bool] = settings_start_at_login,
        parent: QObject | None = None,
    ) -> None:
        """``runner_factory`` None: the real conversation, filing through the app's ``delivery``
        (made from the saved settings and the user's outbox when None)."""
        super().__init__(parent)
        self.phase: Phase = "stopped"
        self.plan: LaunchPlan | None = None
        self.description = ""
        self.state = StateChanged(State.IDLE, muted=False)
        self._muted = False
        self._ptt_choice: bool | None = None  # chosen in the menu this session; None: the settings'
        self._pending_text: list[str] = []
        # The engine's thread may report a state before the start is confirmed here; the tray keeps
        # "Connecting" until then, so state and phase never disagree.
        self._early_state: StateChanged | None = None
        self._restart_after_stop = False
        self._quitting = False
        self._quit_started = 0.0
        self.quit_seconds: float | None = None  # how long quitting took (for tests and logs)
        self._settings_dialog: SettingsDialog | None = None
        self._about: QMessageBox | None = None
        self._ticket_box: QMessageBox | None = None
        self._retention_days = retention_days
        self._autostart = autostart
        self._start_at_login = start_at_login

        # Not polling by itself: _take_results empties it first, so that what the engine said before a
        # worker's result (its state while starting, its last words) is shown before that result.
        self.bridge = EngineBridge(self, poll=False)
        self.delivery = delivery if delivery is not None else AppDelivery()
        if runner_factory is None:
            # Bound to the delivery, not to the app: the lifecycle's threads hold no Qt object.
            runner_factory = partial(_shared_delivery_runner, self.delivery)
        self._lifecycle = _Lifecycle(plan_factory, runner_factory, self.bridge.listener)

        self.actions = AppActions(self)
        self.transcript = TranscriptView(model)
        self.transcript.attach(self.bridge)
        self.panel = ConversationPanel(self.transcript)

        if tray_available is None:
            tray_available = QSystemTrayIcon.isSystemTrayAvailable()
        self.tray: TrayController | None = None
        self.transcript_window: TranscriptWindow | None = None
        self.main_window: MainWindow | None = None
        if tray_available:
            self.tray = TrayController(self.actions, self)
            self.transcript_window = TranscriptWindow(self.panel)
        else:
            self.main_window = MainWindow(self.actions, self.panel)

        # Every surface that shows the state (tray icon and tooltip, the panel's status line).
        self._displays: list[StateDisplay] = [self.panel] if self.tray is None else [self.tray, self.panel]

        wiring: list[tuple[SignalInstance, Callable[..., object]]] = [
            (self.bridge.state_changed, self._on_state),
            (self.bridge.notice_received, self._on_notice),
            (self.actions.start_requested, self.start),
            (self.actions.stop_requested, self.stop),
            (self.actions.mute_toggled, self._mute_toggled),
            (self.actions.ptt_toggled, self._ptt_toggled),
            (self.actions.transcript_requested, self.show_transcript),
            (self.actions.settings_requested, self.show_settings),
            (self.actions.about_requested, self.show_about),
            (self.actions.quit_requested, self.quit),
            (self.panel.talk, self._talk),
            (self.transcript.text_submitted, self.send_text),
            (self.transcript.ticket_activated, self.show_ticket),
            (self.transcript.changed, self._transcript_changed),
        ]
        for source, slot in wiring:
            source.connect(slot)

        self._level_timer = QTimer(self)
        self._level_timer.setInterval(LEVEL_POLL_MS)
        self._level_timer.timeout.connect(self._poll_engine)
        self._level_timer.start()

        self._quit_timer = QTimer(self)
        self._quit_timer.setSingleShot(True)
        self._quit_timer.timeout.connect(self._finish_quit)

        # The store reports from its writer thread into the workers' queue, which holds no Qt object.
        self.transcript_store = TranscriptStore(retention_days(), on_error=self._lifecycle.store_failed)
        self._save_timer = QTimer(self)
        self._save_timer.setSingleShot(True)
        self._save_timer.setInterval(TRANSCRIPT_SAVE_MS)
        self._save_timer.timeout.connect(self.save_transcript)

        # The workers' results and the engine's reports, from their threads, to the GUI thread.
        self._results_timer = QTimer(self)
        self._results_timer.setInterval(REPORT_POLL_MS)
        self._results_timer.timeout.connect(self._take_results)
        self._results_timer.start()

        # The worker reports on its own thread into a queue; this timer brings them to the pane.
        self._delivery_timer = QTimer(self)
        self._delivery_timer.setInterval(DELIVERY_POLL_MS)
        self._delivery_timer.timeout.connect(self._take_delivery_notices)
        self._delivery_timer.start()
        self.delivery.start()

    # ------------------------------------------------------------------------------------------
    # Surfaces
    # ------------------------------------------------------------------------------------------
    @property
    def _generation(self) -> int:
        return self._lifecycle.generation

    @property
    def runner(self) -> Runner | None:
        return self._lifecycle.runner

    @property
    def engine(self) -> Engine | None:
        runner = self._lifecycle.runner
        return runner.engine if runner is not None else None

    def show(self) -> None:
        if self.tray is not None:
            self.tray.show()
        elif self.main_window is not None:
            self.main_window.show()

    @Slot()
    def show_transcript(self) -> None:
        if self.transcript_window is not None:
            self.transcript_window.present()
        elif self.main_window is not None:
            self.main_window.show()
            self.main_window.raise_()
            self.main_window.activateWindow()

    def _show_state(self, event: StateChanged) -> None:
        self.state = event
        for display in self._displays:
            display.on_state(event)
        self.actions.set_muted(event.muted)

    def _show_error(self, message: str) -> None:
        self._show_state(StateChanged(State.ERROR, self._muted))
        self._set_error_detail(message)

    def _set_error_detail(self, message: str) -> None:
        for display in self._displays:
            display.set_error_detail(message)

    def _alert(self, message: str) -> None:
        """Tell the user something they must act on: a notification, or the window's attention."""
        for display in self._displays:
            display.alert(message)

    # ------------------------------------------------------------------------------------------
    # Engine reports (queued through the bridge)
    # ------------------------------------------------------------------------------------------
    @Slot(object)
    def _on_state(self, event: StateChanged) -> None:
        if self.phase in ("stopped", "stopping") and event.state not in (State.IDLE, State.ERROR):
            return  # late news from an engine that is being stopped
        if self.phase == "starting" and event.state is not State.ERROR:
            self._early_state = event
            return
        self._show_state(event)

    @Slot(object)
    def _on_notice(self, notice: Notice) -> None:
        for display in self._displays:
            display.on_notice(notice)

    @Slot()
    def _take_results(self) -> None:
        self.bridge.deliver()
        # A result can end quitting (_finish_quit stops the timer): nothing after it is wanted.
        while self._results_timer.isActive():
            try:
                result = self._lifecycle.results.get_nowait()
            except queue.Empty:
                return
            match result:
                case _Progress(generation, line):
                    self._on_progress(generation, line)
                case _Started(generation, plan, description):
                    self._on_started(generation, plan, description)
                case _Failed(generation, reason):
                    self._on_failed(generation, reason)
                case _Stopped(generation):
                    self._on_stopped(generation)
                case _StoreFailed(message):
                    self._on_store_failed(message)

    @Slot()
    def _take_delivery_notices(self) -> None:
        for notice in self.delivery.take_notices():
            # Through the bridge, as the engine's notices go: to the transcript and the displays.
            self.bridge.on_notice(notice)
            if notice.level == "info" and self.tray is not None:
                # The real number often arrives with nobody talking to the assistant (after a
                # settings change, a network back): a notification says it where the user looks.
                self.tray.notify(notice.message, icon=QSystemTrayIcon.MessageIcon.Information)

    # ------------------------------------------------------------------------------------------
    # Starting and stopping
    # ------------------------------------------------------------------------------------------
    @Slot()
    def start(self) -> None:
        """Start the conversation on a worker thread (no-op while one is on or starting)."""
        if self._quitting or self.phase in ("starting", "running"):
            return
        if self.phase == "stopping":
            self._restart_after_stop = True
            return
        self.phase = "starting"
        self._early_state = None
        self.actions.set_running(True)
        self._show_state(StateChanged(State.CONNECTING, self._muted))
        self._set_progress("starting…")
        self._lifecycle.start(self._ptt_choice, self._muted)

    def _set_progress(self, line: str) -> None:
        for display in self._displays:
            display.set_progress(line)

    def _on_progress(self, generation: int, line: str) -> None:
        if generation == self._generation and self.phase == "starting":
            self._set_progress(line)

    def _on_started(self, generation: int, plan: LaunchPlan, description: str) -> None:
        if generation != self._generation or self.phase != "starting":
            return
        self.phase = "running"
        early, self._early_state = self._early_state, None
        if early is not None:
            self._show_state(early)
        self.plan = plan
        self.description = description
        self._set_progress("")
        self.actions.set_push_to_talk(plan.push_to_talk)
        self.panel.set_push_to_talk(plan.push_to_talk)
        engine = self.engine
        if engine is not None:
            # The engine reports its own states from now on; mute may have changed meanwhile.
            engine.set_muted(self._muted)
            for text in self._pending_text:
                engine.send_text(text)
        self._pending_text.clear()
        for warning in plan.warnings:
            self._on_notice(Notice("warning", warning[:1].upper() + warning[1:] + "."))
        log.info("%s (%s)", description, plan.describe())

    def _on_failed(self, generation: int, reason: str) -> None:
        if generation != self._generation or self.phase != "starting":
            return
        log.warning("the conversation could not start: %s", reason)
        self._pending_text.clear()
        self._stop_runner()  # whatever part of it started
        self.phase = "stopped"
        self.actions.set_running(False)
        self._set_progress("")
        self._show_error(reason)
        self.transcript.on_notice(Notice("error", f"Could not start: {reason}"))
        self._alert(f"Could not start: {reason}")

    @Slot()
    def stop(self) -> None:
        """Stop the conversation on a worker thread; ``_on_stopped`` follows on the GUI thread."""
        if self.phase in ("stopped", "stopping"):
            self._restart_after_stop = False
            if self.phase == "stopped" and self._quitting:
                self._finish_quit()
            return
        self._restart_after_stop = False
        self.phase = "stopping"
        self.actions.set_running(False)
        self.panel.set_push_to_talk(False)
        self._stop_runner()

    def _stop_runner(self) -> None:
        self._lifecycle.stop()

    def _on_stopped(self, generation: int) -> None:
        if generation != self._generation or self.phase != "stopping":
            return
        self.phase = "stopped"
        self.panel.set_level(SILENCE_DBFS)
        self.save_transcript()
        if self.state.state is not State.ERROR:
            self._show_state(StateChanged(State.IDLE, self._muted))
        if self._quitting:
            self._finish_quit()
        elif self._restart_after_stop:
            self._restart_after_stop = False
            self.start()

    @Slot()
    def restart(self) -> None:
        """Stop and start again with a fresh plan (settings changed, push-to-talk toggled)."""
        if self.phase == "stopped":
            self.start()
            return
        self.stop()
        self._restart_after_stop = True

    @Slot()
    def _poll_engine(self) -> None:
        engine = self.engine
        if engine is None or self.phase != "running":
            return
        if not engine.running:
            # The engine gave up by itself (a fatal connection problem); it has said why.
            self.stop()
            return
        self.panel.set_level(engine.input_level_dbfs)

    # ------------------------------------------------------------------------------------------
    # User commands
    # ------------------------------------------------------------------------------------------
    @Slot(bool)
    def _mute_toggled(self, muted: bool) -> None:
        self._muted = muted
        engine = self.engine
        if engine is not None and self.phase == "running":
            engine.set_muted(muted)  # the engine answers with a state report
        else:
            self._show_state(StateChanged(self.state.state, muted))

    @Slot(bool)
    def _ptt_toggled(self, on: bool) -> None:
        # The conversation's turn taking is fixed when its session starts: switch by restarting.
        self._ptt_choice = on
        if self.phase in ("starting", "running"):
            self.restart()

    @Slot(bool)
    def _talk(self, pressed: bool) -> None:
        engine = self.engine
        if engine is not None and self.phase == "running":
            engine.push_to_talk(pressed)

    @Slot(str)
    def send_text(self, text: str) -> None:
        engine = self.engine
        if engine is not None and self.phase == "running":
            engine.send_text(text)
            return
        # Typing to a stopped assistant means "talk to me": keep the text for when it is up.
        self._pending_text.append(text)
        if self.phase == "stopped":
            self.start()

    @Slot()
    def show_settings(self) -> None:
        from app.ui.settings_dialog import SettingsDialog

        if self._settings_dialog is not None and self._settings_dialog.isVisible():
            self._settings_dialog.raise_()
            self._settings_dialog.activateWindow()
            return
        dialog = SettingsDialog(parent=None)
        dialog.setWindowIcon(app_icon())
        dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        dialog.settings_saved.connect(self._settings_saved)
        dialog.destroyed.connect(self._settings_closed)
        self._settings_dialog = dialog
        dialog.show()

    def apply_start_at_login(self) -> None:
        """Makes this user's login entry match the setting (at start too: a policy may have changed
        it, or the app moved); a failure is a notice, never a failed start."""
        try:
            if self._autostart is None:
                self._autostart = StartAtLogin()
            if self._autostart.apply(self._start_at_login()):
                log.info("start at login: %s", "on" if self._autostart.enabled else "off")
        except (OSError, ValueError) as exc:
            self.transcript.on_notice(Notice("warning", f"Start at login could not be changed: {exc}."))

    @Slot()
    def _settings_closed(self) -> None:
        self._settings_dialog = None

    @Slot()
    def _settings_saved(self) -> None:
        self._ptt_choice = None  # the saved settings say what the user wants now
        self.transcript_store.set_retention(self._retention_days())
        self.save_transcript()  # kept from now on if retention went from 0 to some days
        # Tickets go out with the new settings now, conversation or not.
        self.delivery.reconfigure()
        self.apply_start_at_login()
        dialog = self._settings_dialog
        saved = dialog.last_saved if dialog is not None else frozenset()
        if saved and all(key in DELIVERY_ONLY_KEYS or key == "start_at_login" for key in saved):
            return  # only where tickets go changed: the delivery has it, the conversation goes on
        if self.phase != "stopped" or self.state.state is State.ERROR:
            self.restart()

    # ------------------------------------------------------------------------------------------
    # Transcript keeping
    # ------------------------------------------------------------------------------------------
    @Slot()
    def _transcript_changed(self) -> None:
        # At most one write per interval however fast deltas stream in.
        if not self._save_timer.isActive():
            self._save_timer.start()

    @Slot()
    def save_transcript(self) -> None:
        """Hand the transcript to the store now (it writes on its own thread); nothing if empty."""
        self._save_timer.stop()
        if len(self.transcript.model) and self.transcript_store.enabled:
            self.transcript_store.save(self.transcript.model.to_json())

    def _on_store_failed(self, message: str) -> None:
        self.transcript.on_notice(Notice("warning", message))

    # ------------------------------------------------------------------------------------------
    # Ticket links
    # ------------------------------------------------------------------------------------------
    @Slot(str)
    def show_ticket(self, ticket_id: str) -> None:
        """The ticket's details from the local outbox, in a window that does not block the app."""
        title = f"Ticket {ticket_id}"
        try:
            ticket = TicketOutbox().find(ticket_id)
        except (OSError, ValueError) as exc:
            text = f"Ticket {ticket_id} could not be read: {exc}"
        else:
            text = ticket_details(ticket) if ticket is not None else ticket_not_found(ticket_id)
        if self._ticket_box is None:
            # Not exec(), like About: a modal loop would hold up quitting.
            self._ticket_box = QMessageBox(QMessageBox.Icon.Information, title, "")
            self._ticket_box.setWindowIcon(app_icon())
            self._ticket_box.setTextFormat(Qt.TextFormat.PlainText)  # ticket text is the user's words
            self._ticket_box.setWindowModality(Qt.WindowModality.NonModal)
        self._ticket_box.setWindowTitle(title)
        self._ticket_box.setText(text)
        self._ticket_box.show()
        self._ticket_box.raise_()

    def about_text(self) -> str:
        if self.plan is not None and self.phase == "running":
            backend = html.escape(f"{self.plan.backend}: {self.plan.describe()}")
            if self.description:
                backend += f"<br>{html.escape(self.description)}"
        else:
            backend = "not connected"
        return (
            f"<b>{APP_TITLE}</b> {app_package.__version__}<br>"
            "A hands-free IT helpdesk assistant for the desktop.<br><br>"
            f"Licence: {LICENCE}<br>Backend: {backend}"
        )

    @Slot()
    def show_about(self) -> None:
        if self._about is None:
            # Not exec(): a modal loop here would hold up quitting from the tray or a signal.
            self._about = QMessageBox(QMessageBox.Icon.NoIcon, f"About {APP_TITLE}", "")
            self._about.setIconPixmap(app_icon().pixmap(64, 64))
            self._about.setWindowIcon(app_icon())
            self._about.setTextFormat(Qt.TextFormat.RichText)
        self._about.setText(self.about_text())
        self._about.show()
        self._about.raise_()

    # ------------------------------------------------------------------------------------------
    # Quitting
    # ------------------------------------------------------------------------------------------
    @property
    def quitting(self) -> bool:
        return self._quitting

    @Slot()
    def quit(self) -> None:
        """Stop the conversation (at most ``QUIT_DEADLINE_S``), close everything, emit ``finished``."""
        if self._quitting:
            return
        self._quitting = True
        self._quit_started = time.monotonic()
        self._level_timer.stop()
        self._restart_after_stop = False
        if self.tray is not None:
            self.tray.hide()
        for window in (self.transcript_window, self._settings_dialog, self._about, self._ticket_box):
            if window is not None:
                window.hide()
        if self.main_window is not None:
            self.main_window.allow_close()
            self.main_window.hide()
        self._quit_timer.start(int(QUIT_DEADLINE_S * 1000))
        self._delivery_timer.stop()
        self.delivery.stop()  # not waited for: a try in flight ends in its thread, its key guards a retry
        # Handed to the writer thread now, so it is written while the conversation stops.
        self.save_transcript()
        self.transcript_store.close()
        self.stop()

    @Slot()
    def _finish_quit(self) -> None:
        if self.quit_seconds is not None:
            return
        self._quit_timer.stop()
        # The last write had the time the conversation took to stop; it gets what is left of the
        # deadline, not more (a dead disk must not hold quitting up).
        left = self._quit_started + QUIT_DEADLINE_S - time.monotonic()
        if not self.transcript_store.flush(max(0.0, left)):
            log.warning("quitting before the transcript was written")
        self.quit_seconds = time.monotonic() - self._quit_started
        if self.phase != "stopped":
            log.warning("quitting before the conversation finished stopping")
        log.info("quit in %.2f s", self.quit_seconds)
        # Whatever a straggling worker or engine still reports has nobody left to show it to.
        self._results_timer.stop()
        self.bridge.blockSignals(True)
        if self.tray is not None:
            self.tray.dispose()
        if self.main_window is not None:
            self.main_window.close()
        self.finished.emit()


def _install_signal_handlers(helpdesk: HelpdeskApp) -> Callable[[], None]:
    """SIGINT/SIGTERM quit cleanly; returns a function that restores the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        # Python runs this between bytecodes of the GUI thread; post the quit to the event loop.
        QTimer.singleShot(0, helpdesk.quit)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore


def run_gui(plan_factory: Callable[[], LaunchPlan] | None = None, argv: Sequence[str] | None = None) -> int:
    """Run the tray app until the user quits; the conversation starts at once. Returns the exit code."""
    existing = QApplication.instance()
    qt_app = existing if isinstance(existing, QApplication) else QApplication(list(argv or sys.argv[:1]))
    qt_app.setApplicationName("helpdesk-voice")
    qt_app.setApplicationDisplayName(APP_TITLE)
    qt_app.setApplicationVersion(app_package.__version__)
    qt_app.setDesktopFileName("helpdesk-voice")
    qt_app.setWindowIcon(app_icon())
    # The tray keeps the app alive with no window open; the app quits itself after stopping.
    qt_app.setQuitOnLastWindowClosed(False)

    from app.config import config_paths
    from app.ui.single_instance import SingleInstance, instance_name

    instance = SingleInstance(instance_name(config_paths().user.parent))
    if instance.ask_running_app_to_show():
        print("Helpdesk Voice is already running; its transcript is shown.", file=sys.stderr)
        return 0
    helpdesk = HelpdeskApp(plan_factory or default_plan)
    helpdesk.apply_start_at_login()

    def show_for_another_launch() -> None:
        log.info("another launch asked for this app: showing its transcript")
        helpdesk.show_transcript()

    instance.claim(show_for_another_launch)
    helpdesk.finished.connect(qt_app.quit)
    restore = _install_signal_handlers(helpdesk)
    # Python only runs signal handlers when the interpreter gets control; Qt's loop is C++.
    ticker = QTimer()
    ticker.timeout.connect(lambda: None)
    ticker.start(SIGNAL_TICK_MS)
    try:
        helpdesk.show()
        helpdesk.start()  # hands-free: the conversation starts without a click
        code = qt_app.exec()
    finally:
        ticker.stop()
        restore()
        instance.release()
    if not helpdesk.quitting:  # the loop ended some other way (session logout): still stop cleanly
        helpdesk.save_transcript()
        helpdesk.transcript_store.close()
        helpdesk.delivery.stop()
        runner = helpdesk.runner
        if runner is not None:
            runner.stop(STOP_TIMEOUT_S)
        helpdesk.transcript_store.flush(STOP_TIMEOUT_S)
    return int(code)
