"""The tray icon: the conversation's state at a glance, its menu, and notifications that need the user.

``AppActions`` holds the menu's ``QAction``s and the requests they make; the tray menu and the
fallback main window (``main_window.py``) both show them, so either surface drives the app the same
way. ``TrayController`` shows the state as icon and tooltip and turns notices a user must act on
(device lost, authentication failed, endpoint unreachable) into desktop notifications.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from PySide6.QtCore import QObject, Signal, Slot
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QSystemTrayIcon

from app.ui.icons import EN_DASH, icon_for
from app.ui.state_display import StateDisplay

__all__ = ["APP_TITLE", "AppActions", "ShownNotification", "TrayController"]

APP_TITLE = "Helpdesk Voice"
NOTIFY_REPEAT_S = 30.0
NOTIFY_SHOW_MS = 10_000
PTT_HINT = "Hold Space or “Hold to talk” in the transcript window"


class AppActions(QObject):
    """The app's commands as actions; the signals say what the user asked for."""

    start_requested = Signal()
    stop_requested = Signal()
    mute_toggled = Signal(bool)
    ptt_toggled = Signal(bool)
    transcript_requested = Signal()
    settings_requested = Signal()
    about_requested = Signal()
    quit_requested = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._running = False

        self.start_stop = QAction("&Start conversation", self)
        self.start_stop.triggered.connect(self._start_stop)

        self.mute = QAction("&Mute microphone", self)
        self.mute.setCheckable(True)
        self.mute.toggled.connect(self.mute_toggled)

        self.ptt = QAction("&Push-to-talk", self)
        self.ptt.setCheckable(True)
        self.ptt.toggled.connect(self._ptt_changed)
        self.ptt_hint = QAction(PTT_HINT, self)
        self.ptt_hint.setEnabled(False)  # a hint, not a command
        self.ptt_hint.setVisible(False)

        self.show_transcript = QAction("Show &transcript", self)
        self.show_transcript.triggered.connect(self.transcript_requested)
        self.settings = QAction("S&ettings…", self)
        self.settings.triggered.connect(self.settings_requested)
        self.about = QAction(f"&About {APP_TITLE}", self)
        self.about.triggered.connect(self.about_requested)
        self.quit = QAction("&Quit", self)
        self.quit.triggered.connect(self.quit_requested)

    @property
    def running(self) -> bool:
        return self._running

    def set_running(self, running: bool) -> None:
        """Whether a conversation is on (or starting): the first item offers the opposite."""
        self._running = running
        self.start_stop.setText("S&top conversation" if running else "&Start conversation")

    def set_muted(self, muted: bool) -> None:
        """Show the engine's mute flag without asking for it again."""
        if self.mute.isChecked() != muted:
            self.mute.blockSignals(True)
            self.mute.setChecked(muted)
            self.mute.blockSignals(False)

    def set_push_to_talk(self, on: bool) -> None:
        """Show the push-to-talk mode in use without asking for it again."""
        if self.ptt.isChecked() != on:
            self.ptt.blockSignals(True)
            self.ptt.setChecked(on)
            self.ptt.blockSignals(False)
        self.ptt_hint.setVisible(on)

    def fill_menu(self, menu: QMenu) -> None:
        menu.addAction(self.start_stop)
        menu.addSeparator()
        menu.addAction(self.mute)
        menu.addAction(self.ptt)
        menu.addAction(self.ptt_hint)
        menu.addSeparator()
        menu.addAction(self.show_transcript)
        menu.addAction(self.settings)
        menu.addAction(self.about)
        menu.addSeparator()
        menu.addAction(self.quit)

    @Slot()
    def _start_stop(self) -> None:
        if self._running:
            self.stop_requested.emit()
        else:
            self.start_requested.emit()

    @Slot(bool)
    def _ptt_changed(self, on: bool) -> None:
        self.ptt_hint.setVisible(on)
        self.ptt_toggled.emit(on)


@dataclass(frozen=True)
class ShownNotification:
    title: str
    message: str
    at: float


class TrayController(StateDisplay, QObject):
    """Owns the ``QSystemTrayIcon`` and its menu; the menu's requests are ``actions``' signals."""

    def __init__(
        self,
        actions: AppActions | None = None,
        parent: QObject | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(parent)
        self.actions = actions if actions is not None else AppActions(self)
        self._clock = clock
        self._last_shown: dict[str, float] = {}
        self.shown: list[ShownNotification] = []

        # QMenu is a widget and cannot take a QObject parent; the controller keeps it alive.
        self.menu = QMenu()
        self.menu.setTitle(APP_TITLE)
        self.actions.fill_menu(self.menu)
        self.tray = QSystemTrayIcon(self)
        self.tray.setContextMenu(self.menu)
        self.tray.activated.connect(self._activated)
        self._show_state()

    # ------------------------------------------------------------------------------------------
    # Showing
    # ------------------------------------------------------------------------------------------
    def show(self) -> None:
        self.tray.show()

    def hide(self) -> None:
        self.tray.hide()

    def dispose(self) -> None:
        self.tray.hide()
        self.menu.deleteLater()

    def tooltip(self) -> str:
        text = f"{APP_TITLE} {EN_DASH} {self.label}"
        if self.shows_progress:
            text += f"\n{self.progress}"
        return text

    def _show_state(self) -> None:
        self.tray.setIcon(icon_for(self.state, self.muted))
        self.tray.setToolTip(self.tooltip())
        self.actions.set_muted(self.muted)

    # ------------------------------------------------------------------------------------------
    # Reports (queued from the engine through the bridge, or from the app)
    # ------------------------------------------------------------------------------------------
    def alert(self, message: str) -> None:
        self.notify(message)

    def notify(
        self,
        message: str,
        title: str = APP_TITLE,
        icon: QSystemTrayIcon.MessageIcon = QSystemTrayIcon.MessageIcon.Critical,
    ) -> bool:
        """A desktop notification, at most one per ``NOTIFY_REPEAT_S`` for the same text.

        Critical by default (alerts); good news, such as a ticket's real number, says Information.
        """
        now = self._clock()
        last = self._last_shown.get(message)
        if last is not None and now - last < NOTIFY_REPEAT_S:
            return False
        self._last_shown[message] = now
        self.shown.append(ShownNotification(title, message, now))
        self.tray.showMessage(title, message, icon, NOTIFY_SHOW_MS)
        return True

    @Slot(QSystemTrayIcon.ActivationReason)
    def _activated(self, reason: QSystemTrayIcon.ActivationReason) -> None:
        # A left click (or double click) opens the transcript; the right click shows the menu itself.
        if reason in (
            QSystemTrayIcon.ActivationReason.Trigger,
            QSystemTrayIcon.ActivationReason.DoubleClick,
        ):
            self.actions.transcript_requested.emit()
