"""The tray: state icons and words, the menu's requests, and notifications for what needs the user."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

from collections.abc import Callable
from itertools import combinations

import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QIcon, QImage, QPainter
from PySide6.QtSvg import QSvgRenderer
from PySide6.QtWidgets import QSystemTrayIcon
from pytestqt.qtbot import QtBot

from app.core.actions import Notice, State, StateChanged
from app.ui.icons import APP_ICON, ICON_NAMES, icon_for, icon_name, icon_path, state_label
from app.ui.state_display import StateDisplay, needs_user
from app.ui.tray import NOTIFY_REPEAT_S, TrayController

TRAY_PX = 22

# One (state, muted) per icon: the eight looks a user must tell apart.
DISTINCT: dict[str, tuple[State, bool]] = {
    "idle": (State.IDLE, False),
    "listening": (State.LISTENING, False),
    "user_speaking": (State.USER_SPEAKING, False),
    "thinking": (State.THINKING, False),
    "assistant_speaking": (State.ASSISTANT_SPEAKING, False),
    "muted": (State.LISTENING, True),
    "connecting": (State.CONNECTING, False),
    "error": (State.ERROR, False),
}


def image_of(icon: QIcon, size: int = TRAY_PX) -> QImage:
    return icon.pixmap(size, size).toImage().convertToFormat(QImage.Format.Format_ARGB32)


def alpha_mask(image: QImage) -> bytes:
    """Where the icon has ink at all."""
    return bytes(
        1 if image.pixelColor(x, y).alpha() > 96 else 0
        for y in range(image.height())
        for x in range(image.width())
    )


def light_mask(image: QImage) -> bytes:
    """Where the ink is light (the badge's glyph and halo), whatever the hue: what is left to tell
    the states apart by for someone who cannot tell the colours apart."""
    return bytes(
        1 if image.pixelColor(x, y).alpha() > 96 and image.pixelColor(x, y).lightnessF() > 0.8 else 0
        for y in range(image.height())
        for x in range(image.width())
    )


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def tray(qtbot: QtBot, clock: Clock) -> TrayController:
    controller = TrayController(clock=clock)
    shown: list[tuple[str, str, QSystemTrayIcon.MessageIcon]] = []

    # Record what reaches the system tray; offscreen there is no notification server to ask.
    def show_message(title: str, message: str, icon: QSystemTrayIcon.MessageIcon, msecs: int) -> None:
        shown.append((title, message, icon))

    controller.tray.showMessage = show_message  # type: ignore[method-assign,assignment]
    controller.system_messages = shown  # type: ignore[attr-defined]
    return controller


# ----------------------------------------------------------------------------------------------
# Icons
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ICON_NAMES, APP_ICON])
def test_svg_parses_and_renders_at_tray_size(name: str, qtbot: QtBot) -> None:
    path = icon_path(name)
    text = path.read_text(encoding="utf-8")
    assert text.lstrip().startswith("<svg") and "<title>" in text
    renderer = QSvgRenderer(str(path))
    assert renderer.isValid()
    image = QImage(TRAY_PX, TRAY_PX, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    renderer.render(painter, QRectF(0, 0, TRAY_PX, TRAY_PX))
    painter.end()
    inked = sum(alpha_mask(image)) / (TRAY_PX * TRAY_PX)
    assert inked > 0.2
    if name != APP_ICON:  # the app icon is a filled tile; state icons are glyphs on the panel
        assert inked < 0.8
    colours = {image.pixelColor(x, y).rgba() for y in range(TRAY_PX) for x in range(TRAY_PX)}
    assert len(colours) > 10  # a glyph with a badge, not a flat square


def test_each_state_has_its_own_icon_in_shape_and_colour(qtbot: QtBot) -> None:
    assert set(DISTINCT) == set(ICON_NAMES)
    images = {name: image_of(icon_for(state, muted)) for name, (state, muted) in DISTINCT.items()}
    for name, (state, muted) in DISTINCT.items():
        assert icon_name(state, muted) == name
        assert not images[name].isNull()
    for a, b in combinations(images, 2):
        assert images[a] != images[b], (a, b)
        # Not colour alone: the glyphs differ visibly (several pixels at tray size), not in one pixel.
        differing = sum(p != q for p, q in zip(light_mask(images[a]), light_mask(images[b]), strict=True))
        assert differing >= 8, (a, b, differing)


def test_related_states_share_icons_and_mute_wins_only_in_conversation(qtbot: QtBot) -> None:
    assert image_of(icon_for(State.TOOL_RUNNING, False)) == image_of(icon_for(State.THINKING, False))
    assert image_of(icon_for(State.RECONNECTING, False)) == image_of(icon_for(State.CONNECTING, False))
    assert icon_name(State.ASSISTANT_SPEAKING, True) == "muted"
    assert icon_name(State.ERROR, True) == "error"
    assert icon_name(State.RECONNECTING, True) == "connecting"
    assert icon_name(State.IDLE, True) == "idle"


def test_state_labels() -> None:
    assert state_label(State.LISTENING, False) == "Listening"
    assert state_label(State.USER_SPEAKING, False) == "You are speaking"
    assert state_label(State.THINKING, False) == "Thinking…"
    assert state_label(State.ASSISTANT_SPEAKING, False) == "Speaking"
    assert state_label(State.ASSISTANT_SPEAKING, True) == "Muted"
    assert state_label(State.CONNECTING, False) == "Connecting…"
    assert state_label(State.RECONNECTING, True) == "Offline \u2013 reconnecting"
    assert state_label(State.IDLE, False) == "Stopped"
    assert state_label(State.ERROR, False) == "Error"
    assert state_label(State.ERROR, False, "No  microphone\nfound") == "Error: No microphone found"
    long = state_label(State.ERROR, False, "x " * 100)
    assert long.startswith("Error: x x") and long.endswith("…") and len(long) < 100


# ----------------------------------------------------------------------------------------------
# Tray icon and tooltip
# ----------------------------------------------------------------------------------------------
def test_state_changes_change_icon_and_tooltip(tray: TrayController) -> None:
    assert tray.tray.toolTip() == "Helpdesk Voice \u2013 Stopped"
    seen: list[QImage] = [image_of(tray.tray.icon())]
    for state, words in [
        (State.CONNECTING, "Connecting…"),
        (State.LISTENING, "Listening"),
        (State.USER_SPEAKING, "You are speaking"),
        (State.THINKING, "Thinking…"),
        (State.ASSISTANT_SPEAKING, "Speaking"),
    ]:
        tray.on_state(StateChanged(state, muted=False))
        assert tray.tray.toolTip() == f"Helpdesk Voice \u2013 {words}"
        image = image_of(tray.tray.icon())
        assert image == image_of(icon_for(state, False))
        assert all(image != before for before in seen), state
        seen.append(image)

    tray.on_state(StateChanged(State.LISTENING, muted=True))
    assert tray.tray.toolTip() == "Helpdesk Voice \u2013 Muted"
    assert image_of(tray.tray.icon()) == image_of(icon_for(State.LISTENING, True))
    assert tray.actions.mute.isChecked()  # the menu follows the engine's mute flag

    tray.on_state(StateChanged(State.ERROR, muted=False))
    tray.on_notice(Notice("error", "The API key was refused"))
    assert tray.tray.toolTip() == "Helpdesk Voice \u2013 Error: The API key was refused"
    assert not tray.actions.mute.isChecked()
    tray.on_state(StateChanged(State.CONNECTING, muted=False))
    tray.set_progress("loading speech recognition")
    assert tray.tray.toolTip() == "Helpdesk Voice \u2013 Connecting…\nloading speech recognition"
    tray.on_state(StateChanged(State.LISTENING, muted=False))
    assert tray.tray.toolTip() == "Helpdesk Voice \u2013 Listening"  # error and progress are gone


# ----------------------------------------------------------------------------------------------
# Menu
# ----------------------------------------------------------------------------------------------
def test_menu_lists_the_commands(tray: TrayController) -> None:
    texts = [a.text().replace("&", "") for a in tray.menu.actions() if not a.isSeparator()]
    assert texts == [
        "Start conversation",
        "Mute microphone",
        "Push-to-talk",
        "Hold Space or “Hold to talk” in the transcript window",
        "Show transcript",
        "Settings…",
        "About Helpdesk Voice",
        "Quit",
    ]
    assert tray.tray.contextMenu() is tray.menu


@pytest.mark.parametrize(
    ("action", "signal"),
    [
        ("show_transcript", "transcript_requested"),
        ("settings", "settings_requested"),
        ("about", "about_requested"),
        ("quit", "quit_requested"),
    ],
)
def test_menu_actions_emit_requests(tray: TrayController, qtbot: QtBot, action: str, signal: str) -> None:
    with qtbot.waitSignal(getattr(tray.actions, signal), timeout=1000):
        getattr(tray.actions, action).trigger()


def test_start_stop_toggles(tray: TrayController, qtbot: QtBot) -> None:
    stops: list[bool] = []
    tray.actions.stop_requested.connect(lambda: stops.append(True))
    with qtbot.waitSignal(tray.actions.start_requested, timeout=1000):
        tray.actions.start_stop.trigger()
    assert stops == []
    tray.actions.set_running(True)
    assert tray.actions.start_stop.text().replace("&", "") == "Stop conversation"
    with qtbot.waitSignal(tray.actions.stop_requested, timeout=1000):
        tray.actions.start_stop.trigger()
    tray.actions.set_running(False)
    assert tray.actions.start_stop.text().replace("&", "") == "Start conversation"


def test_mute_and_push_to_talk_are_checkable(tray: TrayController, qtbot: QtBot) -> None:
    with qtbot.waitSignal(tray.actions.mute_toggled, timeout=1000) as muted:
        tray.actions.mute.trigger()
    assert muted.args == [True]
    with qtbot.waitSignal(tray.actions.mute_toggled, timeout=1000) as unmuted:
        tray.actions.mute.trigger()
    assert unmuted.args == [False]

    assert not tray.actions.ptt_hint.isVisible()
    with qtbot.waitSignal(tray.actions.ptt_toggled, timeout=1000) as ptt:
        tray.actions.ptt.trigger()
    assert ptt.args == [True]
    assert tray.actions.ptt_hint.isVisible()

    # Showing what the engine or the settings say asks for nothing.
    asked: list[bool] = []
    tray.actions.mute_toggled.connect(asked.append)
    tray.actions.ptt_toggled.connect(asked.append)
    tray.on_state(StateChanged(State.LISTENING, muted=True))
    tray.actions.set_push_to_talk(False)
    assert asked == []
    assert tray.actions.mute.isChecked() and not tray.actions.ptt.isChecked()
    assert not tray.actions.ptt_hint.isVisible()


def test_left_click_opens_the_transcript(tray: TrayController, qtbot: QtBot) -> None:
    with qtbot.waitSignal(tray.actions.transcript_requested, timeout=1000):
        tray.tray.activated.emit(QSystemTrayIcon.ActivationReason.Trigger)
    opened: list[bool] = []
    tray.actions.transcript_requested.connect(lambda: opened.append(True))
    tray.tray.activated.emit(QSystemTrayIcon.ActivationReason.Context)
    assert opened == []


# ----------------------------------------------------------------------------------------------
# Notifications
# ----------------------------------------------------------------------------------------------
def test_notices_that_need_the_user_are_notified(tray: TrayController) -> None:
    system: list[tuple[str, str, QSystemTrayIcon.MessageIcon]] = tray.system_messages  # type: ignore[attr-defined]
    tray.on_notice(Notice("info", "Connected"))
    tray.on_notice(Notice("warning", "Connection lost, reconnecting in 1.0 s"))
    assert system == []
    lost = "The microphone (USB headset) stopped working; was it unplugged?"
    tray.on_notice(Notice("warning", lost, needs_user=True))
    tray.on_notice(Notice("error", "Authentication failed: the API key was refused"))
    assert system == [
        ("Helpdesk Voice", lost, QSystemTrayIcon.MessageIcon.Critical),
        (
            "Helpdesk Voice",
            "Authentication failed: the API key was refused",
            QSystemTrayIcon.MessageIcon.Critical,
        ),
    ]
    assert [n.message for n in tray.shown] == [m for _, m, _ in system]


def test_identical_notifications_are_rate_limited(tray: TrayController, clock: Clock) -> None:
    system: list[tuple[str, str, QSystemTrayIcon.MessageIcon]] = tray.system_messages  # type: ignore[attr-defined]
    unreachable = Notice("error", "Cannot reach the server", needs_user=True)
    tray.on_notice(unreachable)
    clock.now += 10
    tray.on_notice(unreachable)
    tray.on_notice(Notice("error", "Something else went wrong"))  # other text: its own limit
    clock.now += NOTIFY_REPEAT_S - 10 - 0.5
    tray.on_notice(unreachable)
    assert [m for _, m, _ in system] == ["Cannot reach the server", "Something else went wrong"]
    clock.now += 1.0
    tray.on_notice(unreachable)
    assert [m for _, m, _ in system][-1] == "Cannot reach the server"
    assert len(system) == 3


def test_needs_user() -> None:
    assert needs_user(Notice("error", "x"))
    assert needs_user(Notice("warning", "x", needs_user=True))
    assert not needs_user(Notice("warning", "x"))
    assert not needs_user(Notice("info", "x"))


def test_tray_and_panel_follow_the_same_state_rules(tray: TrayController, qtbot: QtBot) -> None:
    from app.ui.main_window import ConversationPanel

    panel = ConversationPanel()
    qtbot.addWidget(panel)
    panel.show()

    def both(step: Callable[[StateDisplay], object]) -> None:
        step(tray)
        step(panel)

    def panel_progress() -> str:
        return panel.progress_label.text() if panel.progress_label.isVisible() else ""

    both(lambda d: d.on_state(StateChanged(State.CONNECTING, muted=False)))
    both(lambda d: d.set_progress("loading speech recognition"))
    assert tray.tooltip().endswith("\nloading speech recognition")
    assert panel_progress() == "loading speech recognition"

    both(lambda d: d.on_state(StateChanged(State.LISTENING, muted=False)))  # the step is over
    assert "\n" not in tray.tooltip() and panel_progress() == ""
    both(lambda d: d.set_progress("late step"))  # shown only while connecting
    assert "\n" not in tray.tooltip() and panel_progress() == ""

    both(lambda d: d.on_state(StateChanged(State.ERROR, muted=True)))
    both(lambda d: d.on_notice(Notice("warning", "no microphone")))  # only an error is the reason
    assert tray.label == panel.label == "Error"
    both(lambda d: d.on_notice(Notice("error", "no microphone")))
    assert tray.label == panel.label == panel.state_label.text() == "Error: no microphone"
    both(lambda d: d.on_state(StateChanged(State.LISTENING, muted=True)))  # the reason is over
    assert tray.label == panel.state_label.text() == "Muted"
