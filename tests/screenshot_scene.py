"""Renders the README's screenshots from the real widgets: ``python -m tests.screenshot_scene OUTDIR``.

Run by ``tests/test_screenshots.py`` in a child process on an X server (Xvfb, with trayer as the
system tray): Qt's platform is fixed once a QApplication exists, so the offscreen test process
cannot do it. The transcript window is fed a conversation through ``EngineBridge``, as the engine
would, and the settings dialog reads settings from an empty config folder. Prints one JSON line:
whether a system tray was available and the files written.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QColor, QPalette, QPixmap
from PySide6.QtWidgets import QApplication, QSystemTrayIcon, QWidget

from app import defaults
from app.core.actions import Notice, State, StateChanged, ToolActivity, Transcript, TurnCompleted
from app.core.metrics import TurnMetrics
from app.engine import Engine, EngineListener
from app.launch import LaunchPlan
from app.ui.app import HelpdeskApp
from app.ui.bridge import EngineBridge
from app.ui.icons import app_icon
from app.ui.transcript_model import TranscriptModel
from app.ui.tray import TrayController

TRANSCRIPT_SIZE = (720, 520)
TRAY_AREA = (420, 300)  # the corner of the screen with the tray and its open menu
TRAY_WAIT_S = 5.0
TRAY_BAR_PX = 28  # the height tests/test_screenshots.py gives trayer
DESKTOP_COLOUR = "#3c4a5e"

Event = StateChanged | Transcript | ToolActivity | TurnCompleted | Notice


def settle(app: QApplication, seconds: float) -> None:
    """Let queued signals, render timers and the X server catch up."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        app.processEvents()
        time.sleep(0.01)


def stepping_clock(start: datetime, steps: Iterator[int]) -> Callable[[], datetime]:
    """Each transcript entry a few seconds after the last, as in a real conversation."""
    now = [start]

    def clock() -> datetime:
        now[0] += timedelta(seconds=next(steps, 4))
        return now[0]

    return clock


def turn(number: int, ttfa_ms: float, user: str, assistant: str) -> TurnCompleted:
    return TurnCompleted(TurnMetrics(turn=number, backend="embedded", ttfa_ms=ttfa_ms), user, assistant)


def conversation() -> list[Event]:
    vpn_steps = (
        "Sorry about that. Let's try three things:\n"
        "1. Quit the VPN client completely, then open it again.\n"
        "2. Move closer to your router or plug in a network cable.\n"
        "3. Connect to the Amsterdam gateway instead of Automatic.\n"
        "Tell me when you have done that."
    )
    ticket = (
        "I have opened ticket HD-1042 for the network team; they will call you within four working "
        "hours. You can follow it at https://helpdesk.example.com/tickets/HD-1042."
    )
    return [
        StateChanged(State.LISTENING, muted=False),
        StateChanged(State.USER_SPEAKING, muted=False),
        Transcript("user", "u1", "My VPN keeps ", final=False),
        Transcript(
            "user", "u1", "My VPN keeps dropping every few minutes when I work from home.", final=True
        ),
        StateChanged(State.THINKING, muted=False),
        ToolActivity("c1", "search_knowledge_base", "started", "Searching the knowledge base..."),
        ToolActivity("c1", "search_knowledge_base", "done", "Found: VPN connection drops"),
        StateChanged(State.ASSISTANT_SPEAKING, muted=False),
        Transcript("assistant", "a1", vpn_steps[:40], final=False),
        Transcript("assistant", "a1", vpn_steps, final=True),
        turn(1, 612.0, "", vpn_steps),
        StateChanged(State.USER_SPEAKING, muted=False),
        Transcript(
            "user", "u2", "Done, but it dropped again after two minutes. Can you open a ticket?", final=True
        ),
        StateChanged(State.TOOL_RUNNING, muted=False),
        ToolActivity("c2", "create_ticket", "started", "Creating a ticket..."),
        ToolActivity("c2", "create_ticket", "done", "Ticket HD-1042 created"),
        StateChanged(State.ASSISTANT_SPEAKING, muted=False),
        Transcript("assistant", "a2", ticket, final=True),
        turn(2, 540.0, "", ticket),
        Transcript(
            "assistant", "a3", "While you wait, you can still reach the intranet through", final=False
        ),
        StateChanged(State.USER_SPEAKING, muted=False),
        Transcript(
            "assistant", "a3", "While you wait, you can still reach the...", final=True, interrupted=True
        ),
        Transcript("user", "u3", "Sorry, one more thing.", final=True),
        turn(3, 498.0, "", ""),
        Transcript("user", "typed-4", "What was the ticket number again?", final=True),
        StateChanged(State.THINKING, muted=False),
        StateChanged(State.ASSISTANT_SPEAKING, muted=False),
        Transcript("assistant", "a4", "It is HD-1042. You will also get ", final=False),
    ]


def feed(bridge: EngineBridge, events: list[Event]) -> None:
    for event in events:
        if isinstance(event, StateChanged):
            bridge.on_state(event)
        elif isinstance(event, Transcript):
            bridge.on_transcript(event)
        elif isinstance(event, ToolActivity):
            bridge.on_tool(event)
        elif isinstance(event, TurnCompleted):
            bridge.on_turn(event)
        else:
            bridge.on_notice(event)


def save(pixmap: QPixmap, path: Path) -> str:
    if pixmap.isNull() or not pixmap.save(str(path), "PNG"):
        raise SystemExit(f"could not write {path}")
    return str(path)


class SceneRunner:
    """The conversation is scripted through the bridge: nothing to start but the app around it."""

    engine: Engine | None = None

    def __init__(self, plan: LaunchPlan, listener: EngineListener, progress: Callable[[str], None]) -> None:
        self.description = "listening on Headset Microphone -> Headset Speakers"

    def start(self) -> None:
        pass

    def stop(self, timeout: float = 1.0) -> None:
        pass


def scene_plan() -> LaunchPlan:
    return LaunchPlan(backend="embedded", endpoint=None, session=defaults.session_config(backend="embedded"))


def transcript_shot(app: QApplication, out: Path, helpdesk: HelpdeskApp) -> str:
    window = helpdesk.transcript_window
    if window is None:
        raise SystemExit("no system tray: the app made a main window instead of the transcript window")
    window.resize(*TRANSCRIPT_SIZE)
    window.present()
    feed(helpdesk.bridge, conversation())
    helpdesk.panel.set_level(-17.0)
    settle(app, 0.5)
    helpdesk.transcript.refresh()
    helpdesk.panel.set_level(-19.0)  # keeps the peak mark a little above the bar, as while speaking
    settle(app, 0.3)
    path = save(window.grab(), out / "transcript.png")
    window.hide()
    return path


def settings_shot(app: QApplication, out: Path) -> str:
    from app.config import load_settings
    from app.ui.settings_dialog import SettingsDialog

    with tempfile.TemporaryDirectory() as config:
        environ = {
            **os.environ,
            "HELPDESK_VOICE_CONFIG_DIR": config,
            "HELPDESK_VOICE_POLICY": f"{config}/none",
        }
        dialog = SettingsDialog(load_settings(environ=environ), environ=environ)
        dialog.setWindowIcon(app_icon())
        dialog.show()
        settle(app, 0.6)
        path = save(dialog.grab(), out / "settings.png")
        dialog.reject()
        settle(app, 0.1)
    return path


def backdrop(app: QApplication, top: int) -> QWidget:
    """A plain desktop below the tray bar: Xvfb's root window is black, which no desktop is."""
    screen = app.primaryScreen().geometry()
    desktop = QWidget(None, Qt.WindowType.FramelessWindowHint | Qt.WindowType.WindowStaysOnBottomHint)
    desktop.setAutoFillBackground(True)
    palette = desktop.palette()
    palette.setColor(QPalette.ColorRole.Window, QColor(DESKTOP_COLOUR))
    desktop.setPalette(palette)
    desktop.setGeometry(0, top, screen.width(), screen.height() - top)
    desktop.show()
    return desktop


def tray_shot(app: QApplication, out: Path, tray: TrayController) -> str:
    tray.show()
    settle(app, 0.5)
    screen = app.primaryScreen()
    geometry = tray.tray.geometry()
    desktop = backdrop(app, geometry.bottom() + 3 if geometry.isValid() else TRAY_BAR_PX)
    settle(app, 0.2)
    area_w, area_h = TRAY_AREA
    left = max(0, screen.geometry().width() - area_w)
    if geometry.isValid() and geometry.width() > 0:
        # The menu opens under the icon, as after a right click on it.
        tray.menu.popup(
            QPoint(max(left, geometry.right() - tray.menu.sizeHint().width()), geometry.bottom() + 2)
        )
    else:
        tray.menu.popup(QPoint(left + 40, 30))
    tray.menu.setActiveAction(tray.actions.mute)
    settle(app, 0.5)
    shot = screen.grabWindow(0, left, 0, area_w, area_h)
    tray.menu.hide()
    desktop.close()
    return save(shot, out / "tray.png")


def main(argv: list[str]) -> int:
    out = Path(argv[1] if len(argv) > 1 else "docs/screenshots")
    out.mkdir(parents=True, exist_ok=True)
    app = QApplication(argv[:1])
    app.setApplicationDisplayName("Helpdesk Voice")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)
    deadline = time.monotonic() + TRAY_WAIT_S
    while not QSystemTrayIcon.isSystemTrayAvailable() and time.monotonic() < deadline:
        settle(app, 0.1)
    tray_available = QSystemTrayIcon.isSystemTrayAvailable()

    clock = stepping_clock(datetime(2024, 5, 6, 9, 41, 0), iter([2, 9, 5]))
    # No tray_available: the app finds trayer's tray by itself, as it would on a desktop.
    helpdesk = HelpdeskApp(scene_plan, runner_factory=SceneRunner, model=TranscriptModel(clock=clock))
    helpdesk.show()
    helpdesk.start()
    settle(app, 0.3)
    if helpdesk.phase != "running":
        raise SystemExit(f"the scene's conversation did not start: {helpdesk.phase}")
    files = [transcript_shot(app, out, helpdesk), settings_shot(app, out)]
    if helpdesk.tray is not None:
        files.append(tray_shot(app, out, helpdesk.tray))
    helpdesk.finished.connect(app.quit)
    helpdesk.quit()
    app.exec()
    print(json.dumps({"platform": app.platformName(), "tray_available": tray_available, "files": files}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
