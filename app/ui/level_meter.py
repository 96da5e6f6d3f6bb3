"""A small horizontal audio level meter with a peak-hold mark, drawn only in palette colours.

Callers feed it dBFS readings (``set_level``) as often as they like; the peak mark holds for a
moment and then falls, as on a mixing desk, so a short loud word stays visible long enough to read.
Screen readers get the level in words, updated only when the words change, so a meter refreshed
20 times a second does not flood them with announcements.
"""

from __future__ import annotations

import math
import time
from typing import Final

from PySide6.QtCore import QEvent, QLineF, QRectF, QSize
from PySide6.QtGui import QPainter, QPaintEvent, QPalette, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

__all__ = ["CEILING_DBFS", "FLOOR_DBFS", "LevelMeter", "describe_level"]

FLOOR_DBFS: Final = -60.0
CEILING_DBFS: Final = 0.0
PEAK_HOLD_S: Final = 1.0
PEAK_FALL_DB_PER_S: Final = 20.0
# Wording thresholds (dBFS, lower bound of each band). Speech at a sensible distance peaks around
# -20..-6 dBFS; above -3 it is likely to clip, below -45 the microphone is barely picking anything up.
_BANDS: Final = (
    (-3.0, "too loud"),
    (-12.0, "loud"),
    (-30.0, "good"),
    (-45.0, "quiet"),
    (FLOOR_DBFS + 0.5, "very quiet"),
)
_DESCRIPTION_STEP_DB: Final = 5  # the number in the description moves in steps, not with every block


def _clamp(dbfs: float) -> float:
    if math.isnan(dbfs):
        return FLOOR_DBFS
    return min(CEILING_DBFS, max(FLOOR_DBFS, dbfs))


def describe_level(dbfs: float) -> str:
    """The level in words: silent, very quiet, quiet, good, loud or too loud."""
    level = _clamp(dbfs)
    for lower, word in _BANDS:
        if level >= lower:
            return word
    return "silent"


class LevelMeter(QWidget):
    """Horizontal meter from -60 to 0 dBFS: a bar for the current level, a line for the recent peak."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._label = "Audio level"
        self._level = FLOOR_DBFS
        self._held = FLOOR_DBFS  # the peak mark's value when it was last raised
        self._held_at = 0.0  # monotonic time it was raised
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self._spoken = ("", "")
        self._update_accessible_text()

    # ------------------------------------------------------------------------------------------
    # API
    # ------------------------------------------------------------------------------------------
    def set_level(self, dbfs: float) -> None:
        """Show ``dbfs`` (clamped to -60..0; NaN or -inf read as the floor)."""
        level = _clamp(dbfs)
        now = time.monotonic()
        if level >= self._peak_at(now):
            self._held, self._held_at = level, now
        if level != self._level:
            self._level = level
            self.update()
        elif self._held != FLOOR_DBFS:
            self.update()  # the peak mark may be falling
        self._update_accessible_text()

    def level(self) -> float:
        """The level last set, clamped to -60..0 dBFS."""
        return self._level

    def peak(self) -> float:
        """Where the peak-hold mark is now, in dBFS (never below the current level)."""
        return max(self._level, self._peak_at(time.monotonic()))

    def set_label(self, label: str) -> None:
        """What the meter measures, for screen readers (``"Microphone level"``)."""
        self._label = label
        self._update_accessible_text()

    # ------------------------------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------------------------------
    def _peak_at(self, now: float) -> float:
        falling_for = now - self._held_at - PEAK_HOLD_S
        if falling_for <= 0:
            return self._held
        return max(FLOOR_DBFS, self._held - falling_for * PEAK_FALL_DB_PER_S)

    def _update_accessible_text(self) -> None:
        word = describe_level(self._level)
        name = f"{self._label}: {word}"
        if self._level <= FLOOR_DBFS:
            description = f"{self._label} is {word}, below {FLOOR_DBFS:.0f} dB"
        else:
            rounded = _DESCRIPTION_STEP_DB * round(self._level / _DESCRIPTION_STEP_DB)
            description = f"{self._label} is {word}, about {rounded:.0f} dB below full scale"
        if (name, description) == self._spoken:
            return
        self._spoken = (name, description)
        self.setAccessibleName(name)
        self.setAccessibleDescription(description)
        self.setToolTip(description)

    @staticmethod
    def _fraction(dbfs: float) -> float:
        return (_clamp(dbfs) - FLOOR_DBFS) / (CEILING_DBFS - FLOOR_DBFS)

    def sizeHint(self) -> QSize:
        return QSize(160, 14)

    def minimumSizeHint(self) -> QSize:
        return QSize(40, 8)

    def paintEvent(self, event: QPaintEvent) -> None:
        palette = self.palette()  # the current colour group, so a disabled meter looks disabled
        painter = QPainter(self)
        try:
            frame = QRectF(self.rect()).adjusted(0.5, 0.5, -0.5, -0.5)
            painter.setPen(QPen(palette.color(QPalette.ColorRole.Mid), 1.0))
            painter.setBrush(palette.color(QPalette.ColorRole.Base))
            painter.drawRect(frame)
            inner = frame.adjusted(1.5, 1.5, -1.5, -1.5)
            if inner.width() <= 0 or inner.height() <= 0:
                return
            filled = inner.width() * self._fraction(self._level)
            if filled > 0:
                painter.fillRect(
                    QRectF(inner.left(), inner.top(), filled, inner.height()),
                    palette.color(QPalette.ColorRole.Highlight),
                )
            peak = self.peak()
            if peak > FLOOR_DBFS:
                x = inner.left() + inner.width() * self._fraction(peak)
                x = min(max(x, inner.left() + 1.0), inner.right() - 1.0)
                painter.setPen(QPen(palette.color(QPalette.ColorRole.WindowText), 2.0))
                painter.drawLine(QLineF(x, inner.top(), x, inner.bottom()))
        finally:
            painter.end()

    def changeEvent(self, event: QEvent) -> None:
        if event.type() == QEvent.Type.PaletteChange:
            self.update()
        super().changeEvent(event)
