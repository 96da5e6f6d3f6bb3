"""The tray's state icons and the words that go with them.

Each state has its own SVG in ``assets/icons/``: a headset in the state's colour with a badge whose
shape differs too (square, ring, bars, dots, speaker, slashed microphone, circular arrow, warning
triangle), so the state reads without relying on colour alone.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QIcon, QPainter, QPixmap
from PySide6.QtSvg import QSvgRenderer

from app.core.actions import State
from app.paths import assets_dir

__all__ = [
    "APP_ICON",
    "EN_DASH",
    "ICON_NAMES",
    "app_icon",
    "icon_for",
    "icon_name",
    "icon_path",
    "state_label",
]

APP_ICON = "app"
ICON_NAMES: tuple[str, ...] = (
    "idle",
    "listening",
    "user_speaking",
    "thinking",
    "assistant_speaking",
    "muted",
    "connecting",
    "error",
)
# Tray areas ask for 16-24 px; windows and notifications for larger ones. Pre-rendering these
# keeps the icon sharp without depending on Qt's optional SVG icon-engine plugin being deployed.
_SIZES = (16, 22, 24, 32, 48, 64, 128)

EN_DASH = "\N{EN DASH}"  # typographic dash in user-facing text; an escape keeps the source ASCII

_ICON_OF_STATE: dict[State, str] = {
    State.IDLE: "idle",
    State.CONNECTING: "connecting",
    State.LISTENING: "listening",
    State.USER_SPEAKING: "user_speaking",
    State.THINKING: "thinking",
    State.TOOL_RUNNING: "thinking",
    State.ASSISTANT_SPEAKING: "assistant_speaking",
    State.RECONNECTING: "connecting",
    State.ERROR: "error",
}

_LABELS: dict[State, str] = {
    State.IDLE: "Stopped",
    State.CONNECTING: "Connecting…",
    State.LISTENING: "Listening",
    State.USER_SPEAKING: "You are speaking",
    State.THINKING: "Thinking…",
    State.TOOL_RUNNING: "Working on it…",
    State.ASSISTANT_SPEAKING: "Speaking",
    State.RECONNECTING: f"Offline {EN_DASH} reconnecting",
    State.ERROR: "Error",
}

# Where mute says more than the state: during a conversation. Stopped, connecting and error
# states matter more to the user than the microphone switch.
_MUTE_SHOWS_IN = frozenset(
    {State.LISTENING, State.USER_SPEAKING, State.THINKING, State.TOOL_RUNNING, State.ASSISTANT_SPEAKING}
)

ERROR_DETAIL_CHARS = 80


def icon_name(state: State, muted: bool) -> str:
    """The icon file (without ``.svg``) shown for ``state`` with the microphone ``muted`` or not."""
    if muted and state in _MUTE_SHOWS_IN:
        return "muted"
    return _ICON_OF_STATE[state]


def state_label(state: State, muted: bool, detail: str = "") -> str:
    """Human words for the tooltip and status line, e.g. "Listening" or "Error: no microphone"."""
    if muted and state in _MUTE_SHOWS_IN:
        return "Muted"
    label = _LABELS[state]
    if state is State.ERROR and detail:
        short = " ".join(detail.split())
        if len(short) > ERROR_DETAIL_CHARS:
            short = short[: ERROR_DETAIL_CHARS - 1].rstrip() + "…"
        return f"{label}: {short}"
    return label


def icon_path(name: str) -> Path:
    return assets_dir() / "icons" / f"{name}.svg"


def render_svg(path: Path, size: int) -> QPixmap:
    """``path`` drawn on a transparent ``size`` square; a null pixmap when the file is not valid SVG."""
    renderer = QSvgRenderer(str(path))
    if not renderer.isValid():
        return QPixmap()
    pixmap = QPixmap(QSize(size, size))
    pixmap.fill(Qt.GlobalColor.transparent)
    painter = QPainter(pixmap)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter, QRectF(0, 0, size, size))
    painter.end()
    return pixmap


@cache
def _icon(name: str) -> QIcon:
    # Needs a QGuiApplication (pixmaps); cached because the state changes many times a minute.
    icon = QIcon()
    path = icon_path(name)
    for size in _SIZES:
        pixmap = render_svg(path, size)
        if not pixmap.isNull():
            icon.addPixmap(pixmap)
    return icon


def icon_for(state: State, muted: bool) -> QIcon:
    return _icon(icon_name(state, muted))


def app_icon() -> QIcon:
    return _icon(APP_ICON)
