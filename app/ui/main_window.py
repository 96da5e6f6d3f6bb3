"""The app's windows: the conversation panel, the tray's transcript window, and the no-tray main window.

``ConversationPanel`` is the state (icon and words), the microphone level, the push-to-talk button
and the transcript pane. With a system tray it lives in ``TranscriptWindow``, which closing only
hides. Without one, ``MainWindow`` holds it together with the tray menu's commands and a banner
saying why the app is a window; closing that window quits.
"""

from __future__ import annotations

from PySide6.QtCore import QEvent, Qt, Signal, Slot
from PySide6.QtGui import QAction, QCloseEvent
from PySide6.QtWidgets import (
    QApplication,
    QFrame,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from app.ui.icons import EN_DASH, app_icon, icon_for
from app.ui.level_meter import LevelMeter
from app.ui.state_display import StateDisplay
from app.ui.transcript import TranscriptView, space_key
from app.ui.tray import APP_TITLE, AppActions

__all__ = ["NO_TRAY_REASON", "ConversationPanel", "MainWindow", "TranscriptWindow"]

NO_TRAY_REASON = "No system tray was found on this desktop, so Helpdesk Voice runs in this window."
STATE_ICON_PX = 32


class ConversationPanel(StateDisplay, QWidget):
    """State line, level meter, push-to-talk button and the transcript pane.

    ``talk`` carries push-to-talk presses and releases: the "Hold to talk" button, or the Space key
    anywhere in the panel except where it types (the message box, the search box).
    """

    talk = Signal(bool)

    def __init__(self, transcript: TranscriptView | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.transcript = transcript if transcript is not None else TranscriptView()
        self._talking = False

        self.state_icon = QLabel(self)
        self.state_icon.setFixedSize(STATE_ICON_PX, STATE_ICON_PX)
        self.state_label = QLabel(self)
        self.state_label.setAccessibleName("Assistant state")
        self.state_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        font = self.state_label.font()
        font.setBold(True)
        self.state_label.setFont(font)
        self.progress_label = QLabel(self)
        self.progress_label.setAccessibleName("Start-up progress")
        self.progress_label.setWordWrap(True)
        self.level_meter = LevelMeter(self)
        self.level_meter.set_label("Microphone level")
        self.level_meter.setMaximumWidth(180)

        self.talk_button = QPushButton("Hold to &talk", self)
        self.talk_button.setAccessibleName("Hold to talk")
        self.talk_button.setToolTip("Push-to-talk: hold this button, or the Space key, while you speak")
        self.talk_button.pressed.connect(lambda: self._set_talking(True))
        self.talk_button.released.connect(lambda: self._set_talking(False))
        self.talk_button.setVisible(False)

        words = QVBoxLayout()
        words.setSpacing(0)
        words.addWidget(self.state_label)
        words.addWidget(self.progress_label)
        status = QHBoxLayout()
        status.addWidget(self.state_icon)
        status.addLayout(words, 1)
        status.addWidget(QLabel("Mic", self))
        status.addWidget(self.level_meter)
        status.addWidget(self.talk_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(status)
        layout.addWidget(self.transcript, 1)
        self.transcript.setParent(self)
        self.transcript.ptt_key_changed.connect(self._set_talking)
        self._show_state()

    # ------------------------------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------------------------------
    def _show_state(self) -> None:
        self.state_icon.setPixmap(icon_for(self.state, self.muted).pixmap(STATE_ICON_PX, STATE_ICON_PX))
        self.state_icon.setToolTip(self.label)
        self.state_label.setText(self.label)
        self.progress_label.setText(self.progress if self.shows_progress else "")
        self.progress_label.setVisible(self.shows_progress)

    def alert(self, message: str) -> None:
        # The taskbar entry flashes for the window the panel is in, if the user has it open.
        if self.window().isVisible():
            QApplication.alert(self.window())

    def set_level(self, dbfs: float) -> None:
        self.level_meter.set_level(dbfs)

    # ------------------------------------------------------------------------------------------
    # Push-to-talk
    # ------------------------------------------------------------------------------------------
    @property
    def push_to_talk(self) -> bool:
        return not self.talk_button.isHidden()

    def set_push_to_talk(self, on: bool) -> None:
        if not on:
            self._set_talking(False)
        self.talk_button.setVisible(on)
        self.transcript.set_push_to_talk(on)
        if on and self.isVisible():
            # Space then works at once: a focused button presses on Space by itself.
            self.talk_button.setFocus()

    @Slot(bool)
    def _set_talking(self, pressed: bool) -> None:
        if pressed == self._talking or (pressed and not self.push_to_talk):
            return
        self._talking = pressed
        self.talk_button.setDown(pressed)
        self.talk.emit(pressed)

    def event(self, event: QEvent) -> bool:
        # Space that no child used (the transcript reports its own; the text boxes type it) talks,
        # except where it would type.
        pressed = space_key(event)
        if pressed is not None and self.push_to_talk and not isinstance(self.focusWidget(), QLineEdit):
            self._set_talking(pressed)
            event.accept()
            return True
        # Losing focus mid-press must not leave the microphone open.
        if event.type() == QEvent.Type.WindowDeactivate:
            self._set_talking(False)
        return super().event(event)


class TranscriptWindow(QWidget):
    """The tray app's transcript window; closing it only hides it (the tray keeps the app running)."""

    def __init__(self, panel: ConversationPanel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.panel = panel if panel is not None else ConversationPanel()
        self.setWindowTitle(f"{APP_TITLE} {EN_DASH} Transcript")
        self.setWindowIcon(app_icon())
        layout = QVBoxLayout(self)
        layout.addWidget(self.panel)
        self.resize(720, 520)

    def present(self) -> None:
        self.show()
        self.raise_()
        self.activateWindow()

    def closeEvent(self, event: QCloseEvent) -> None:
        self.panel._set_talking(False)
        self.hide()
        event.ignore()


def _tool_button(parent: QWidget, action: QAction) -> QToolButton:
    button = QToolButton(parent)
    button.setDefaultAction(action)
    button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
    button.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
    return button


class MainWindow(QMainWindow):
    """The app as a window, for desktops without a system tray."""

    def __init__(
        self,
        actions: AppActions,
        panel: ConversationPanel | None = None,
        reason: str = NO_TRAY_REASON,
        parent: QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.app_actions = actions
        self.panel = panel if panel is not None else ConversationPanel()
        self._closing = False
        self.setWindowTitle(APP_TITLE)
        self.setWindowIcon(app_icon())

        menu = self.menuBar().addMenu("&Conversation")
        actions.fill_menu(menu)
        menu.removeAction(actions.show_transcript)  # the transcript is always shown here

        self.banner = QLabel(reason, self)
        self.banner.setWordWrap(True)
        self.banner.setAccessibleName("Why this window")
        self.banner.setFrameShape(QFrame.Shape.StyledPanel)
        self.banner.setMargin(6)

        buttons = QHBoxLayout()
        for action in (actions.start_stop, actions.mute, actions.ptt, actions.settings, actions.about):
            buttons.addWidget(_tool_button(self, action))
        buttons.addStretch(1)
        buttons.addWidget(_tool_button(self, actions.quit))

        central = QWidget(self)
        layout = QVBoxLayout(central)
        layout.addWidget(self.banner)
        layout.addLayout(buttons)
        layout.addWidget(self.panel, 1)
        self.setCentralWidget(central)
        self.resize(720, 560)

    def allow_close(self) -> None:
        """The app is quitting: let the window close without asking to quit again."""
        self._closing = True

    def closeEvent(self, event: QCloseEvent) -> None:
        if self._closing:
            event.accept()
            return
        # The app decides when it is done (it stops the conversation first), then closes us.
        event.ignore()
        self.app_actions.quit_requested.emit()
