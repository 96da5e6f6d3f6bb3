"""The live transcript pane: both sides' speech as it streams, tool activity, search, copy, export.

``TranscriptModel`` (``transcript_model.py``) holds the entries; this widget renders them into a
``QTextBrowser`` as rich text coloured only through the palette, so it follows the system theme.
Reports arrive through ``attach(bridge)`` as queued signals on the GUI thread; renders are
coalesced on a short timer so a burst of deltas costs one layout.
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QGuiApplication, QKeyEvent, QPalette, QTextCursor
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from app.core.actions import Notice, ToolActivity, Transcript, TurnCompleted
from app.ui.bridge import EngineBridge
from app.ui.transcript_model import INTERRUPTED_MARK, LABELS, Entry, TranscriptModel

__all__ = ["TranscriptModel", "TranscriptView", "linkify", "space_key"]

RENDER_DELAY_MS = 30
TICKET_SCHEME = "ticket"
_LINK = re.compile(r"(?P<url>https?://[^\s<>\"']+)|(?P<ticket>\bHD-\d{4,}\b)")
_URL_TRAILING = ".,;:!?)]}'\""


def _highlight(text: str, query: str, mark: str) -> str:
    """``text`` escaped for HTML, with case-insensitive matches of ``query`` wrapped in ``mark``."""
    if not query:
        return html.escape(text, quote=False)
    parts: list[str] = []
    start = 0
    for found in re.finditer(re.escape(query), text, re.IGNORECASE):
        parts.append(html.escape(text[start : found.start()], quote=False))
        parts.append(mark.format(html.escape(found.group(), quote=False)))
        start = found.end()
    parts.append(html.escape(text[start:], quote=False))
    return "".join(parts)


def space_key(event: QEvent) -> bool | None:
    """True for a Space press, False for its release, None for anything else.

    Auto-repeat counts as neither: holding the key for push-to-talk must not toggle it repeatedly.
    """
    if event.type() not in (QEvent.Type.KeyPress, QEvent.Type.KeyRelease):
        return None
    assert isinstance(event, QKeyEvent)
    if event.key() != Qt.Key.Key_Space or event.isAutoRepeat():
        return None
    return event.type() == QEvent.Type.KeyPress


def linkify(text: str, query: str = "", mark: str = "{}") -> str:
    """HTML for ``text``: http(s) URLs and ticket ids (HD-1042) become anchors; matches are marked."""
    out: list[str] = []
    pos = 0
    for match in _LINK.finditer(text):
        label = match.group()
        end = match.end()
        if match.group("url"):
            stripped = label.rstrip(_URL_TRAILING)
            end -= len(label) - len(stripped)
            label = stripped
            href = label
        else:
            href = f"{TICKET_SCHEME}:{label}"
        out.append(_highlight(text[pos : match.start()], query, mark))
        out.append(f'<a href="{html.escape(href)}">{_highlight(label, query, mark)}</a>')
        pos = end
    out.append(_highlight(text[pos:], query, mark))
    return "".join(out).replace("\n", "<br>")


class TranscriptView(QWidget):
    """The transcript pane. ``text_submitted`` carries what the user typed instead of speaking.

    With ``set_push_to_talk(True)``, Space held in the transcript text reports ``ptt_key_changed``
    (True on press, False on release) instead of scrolling; the text boxes keep typing spaces.
    """

    text_submitted = Signal(str)
    ticket_activated = Signal(str)  # a ticket id link was clicked
    ptt_key_changed = Signal(bool)
    changed = Signal()  # the model changed (an entry was added or updated)

    def __init__(self, model: TranscriptModel | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.model = model if model is not None else TranscriptModel()
        self._query = ""
        self._push_to_talk = False
        self.setAccessibleName("Transcript pane")

        self.search_box = QLineEdit(self)
        self.search_box.setPlaceholderText("Search transcript (Enter: next match)")
        self.search_box.setAccessibleName("Search transcript")
        self.search_box.setClearButtonEnabled(True)
        self.search_box.textChanged.connect(self._search_changed)
        self.search_box.returnPressed.connect(self.find_next)

        self.browser = QTextBrowser(self)
        self.browser.setAccessibleName("Conversation transcript")
        self.browser.setAccessibleDescription("Live transcript of the conversation; select and copy text")
        self.browser.setOpenExternalLinks(True)  # http(s) links open in the system browser
        self.browser.setOpenLinks(False)  # never navigate the pane itself
        self.browser.setTextInteractionFlags(
            Qt.TextInteractionFlag.TextBrowserInteraction | Qt.TextInteractionFlag.TextSelectableByKeyboard
        )
        self.browser.anchorClicked.connect(self._anchor_clicked)
        self.browser.installEventFilter(self)

        self.input_box = QLineEdit(self)
        self.input_box.setPlaceholderText("Type a message instead of speaking")
        self.input_box.setAccessibleName("Message to the assistant")
        self.input_box.returnPressed.connect(self.submit_text)

        self.send_button = QPushButton("&Send", self)
        self.send_button.setAccessibleName("Send typed message")
        self.send_button.clicked.connect(self.submit_text)

        self.copy_button = QPushButton("&Copy all", self)
        self.copy_button.setAccessibleName("Copy the whole transcript")
        self.copy_button.clicked.connect(self.copy_all)

        self.export_button = QPushButton("&Export...", self)
        self.export_button.setAccessibleName("Export the transcript to Markdown or JSON")
        self.export_button.clicked.connect(self._export_dialog)

        top = QHBoxLayout()
        top.addWidget(self.search_box, 1)
        top.addWidget(self.copy_button)
        top.addWidget(self.export_button)
        bottom = QHBoxLayout()
        bottom.addWidget(self.input_box, 1)
        bottom.addWidget(self.send_button)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.browser, 1)
        layout.addLayout(bottom)

        # keyboard order: type, send, transcript, search, copy, export
        QWidget.setTabOrder(self.input_box, self.send_button)
        QWidget.setTabOrder(self.send_button, self.browser)
        QWidget.setTabOrder(self.browser, self.search_box)
        QWidget.setTabOrder(self.search_box, self.copy_button)
        QWidget.setTabOrder(self.copy_button, self.export_button)
        self.setFocusProxy(self.input_box)

        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(RENDER_DELAY_MS)
        self._timer.timeout.connect(self.refresh)

    # ------------------------------------------------------------------------------------------
    # Engine reports (connect through attach; they arrive on the GUI thread)
    # ------------------------------------------------------------------------------------------
    def attach(self, bridge: EngineBridge) -> None:
        bridge.transcript_received.connect(self.on_transcript)
        bridge.tool_activity.connect(self.on_tool)
        bridge.turn_completed.connect(self.on_turn)
        bridge.notice_received.connect(self.on_notice)

    @Slot(object)
    def on_transcript(self, event: Transcript) -> None:
        self.model.apply_transcript(event)
        self._model_changed()

    @Slot(object)
    def on_tool(self, event: ToolActivity) -> None:
        self.model.apply_tool(event)
        self._model_changed()

    @Slot(object)
    def on_turn(self, event: TurnCompleted) -> None:
        if self.model.apply_turn(event) is not None:
            self._model_changed()

    @Slot(object)
    def on_notice(self, event: Notice) -> None:
        self.model.apply_notice(event)
        self._model_changed()

    # ------------------------------------------------------------------------------------------
    # Rendering
    # ------------------------------------------------------------------------------------------
    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start()

    def _model_changed(self) -> None:
        self._schedule()
        self.changed.emit()

    def to_html(self) -> str:
        palette = self.palette()
        muted = palette.color(QPalette.ColorRole.PlaceholderText).name()
        mark = (
            f'<span style="background-color:{palette.color(QPalette.ColorRole.Highlight).name()};'
            f'color:{palette.color(QPalette.ColorRole.HighlightedText).name()}">{{}}</span>'
        )
        return "".join(self._entry_html(e, muted, mark) for e in self.model.entries)

    def _entry_html(self, entry: Entry, muted: str, mark: str) -> str:
        stamp = f'<span style="color:{muted}">{entry.timestamp}</span>'
        body = linkify(entry.text, self._query, mark)
        if entry.kind in ("user", "assistant"):
            line = f"{stamp} <b>{LABELS[entry.kind]}:</b> {body}"
            if entry.interrupted:
                line += f' <i style="color:{muted}">[{INTERRUPTED_MARK}]</i>'
            if entry.ttfa_ms is not None:
                line += f' <small style="color:{muted}">(first audio {entry.ttfa_ms:.0f} ms)</small>'
        elif entry.kind == "tool":
            line = f"{stamp} <i>{body}</i>"
        else:
            level = html.escape((entry.status or "notice").capitalize())
            line = f"{stamp} <b>{level}:</b> {body}"
        return f'<p style="margin-top:2px;margin-bottom:2px">{line}</p>'

    @Slot()
    def refresh(self) -> None:
        """Render the model now, keeping the selection and the scroll position (or the bottom)."""
        self._timer.stop()
        bar = self.browser.verticalScrollBar()
        at_bottom = bar.value() >= bar.maximum() - 4
        scroll = bar.value()
        cursor = self.browser.textCursor()
        anchor, position = cursor.anchor(), cursor.position()
        self.browser.setHtml(self.to_html())
        end = max(0, self.browser.document().characterCount() - 1)
        restored = self.browser.textCursor()
        restored.setPosition(min(anchor, end))
        restored.setPosition(min(position, end), QTextCursor.MoveMode.KeepAnchor)
        self.browser.setTextCursor(restored)
        bar.setValue(bar.maximum() if at_bottom else scroll)

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self._schedule()
        super().changeEvent(event)

    # ------------------------------------------------------------------------------------------
    # Push-to-talk key
    # ------------------------------------------------------------------------------------------
    @property
    def push_to_talk(self) -> bool:
        return self._push_to_talk

    def set_push_to_talk(self, enabled: bool) -> None:
        self._push_to_talk = enabled

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        # The text browser scrolls a page on Space; while push-to-talk is on, Space means talk there.
        if watched is self.browser and self._push_to_talk:
            pressed = space_key(event)
            if pressed is not None:
                self.ptt_key_changed.emit(pressed)
                return True
        return super().eventFilter(watched, event)

    # ------------------------------------------------------------------------------------------
    # Search, typing, copy, export
    # ------------------------------------------------------------------------------------------
    @Slot(str)
    def _search_changed(self, text: str) -> None:
        self._query = text.strip()
        self.refresh()
        if self._query:
            self.browser.moveCursor(QTextCursor.MoveOperation.Start)
            self.find_next()

    @Slot()
    def find_next(self) -> bool:
        """Select the next match of the search text, wrapping around; False when there is none."""
        if not self._query:
            return False
        if self.browser.find(self._query):
            return True
        self.browser.moveCursor(QTextCursor.MoveOperation.Start)
        return self.browser.find(self._query)

    @Slot()
    def submit_text(self) -> None:
        text = self.input_box.text().strip()
        if not text:
            return
        self.input_box.clear()
        self.text_submitted.emit(text)

    @Slot()
    def copy_all(self) -> None:
        QGuiApplication.clipboard().setText(self.model.plain_text())

    def export(self, path: str | Path) -> Path:
        """Markdown, or JSON for a ``.json`` path; written atomically."""
        return self.model.export(path)

    @Slot()
    def _export_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Export transcript", "transcript.md", "Markdown (*.md);;JSON (*.json)"
        )
        if not path:
            return
        try:
            self.export(path)
        except OSError as exc:
            QMessageBox.warning(self, "Export failed", f"Could not write {path}: {exc}")

    @Slot(QUrl)
    def _anchor_clicked(self, url: QUrl) -> None:
        if url.scheme() == TICKET_SCHEME:
            self.ticket_activated.emit(url.path())
