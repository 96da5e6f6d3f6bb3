"""What a surface showing the conversation's state keeps: state, mute flag, error detail, start-up step.

The tray and the conversation panel show the same facts in different widgets, and must agree on
when an error's reason or a start-up step stops applying; ``StateDisplay`` is that rule, written
once. Each surface supplies ``_show_state`` to draw the facts its own way.
"""

from __future__ import annotations

from app.core.actions import Notice, State, StateChanged
from app.ui.icons import state_label

__all__ = ["StateDisplay", "needs_user"]

# A start-up step ("loading speech recognition") only means something while connecting.
_PROGRESS_SHOWS_IN = frozenset({State.CONNECTING, State.RECONNECTING})


def needs_user(notice: Notice) -> bool:
    """Whether the user has to do something about ``notice`` (so it is worth an alert)."""
    return bool(getattr(notice, "needs_user", False)) or notice.level == "error"


class StateDisplay:
    """Mixin for a widget or controller that shows the state; subclasses implement ``_show_state``.

    Class-level defaults rather than an ``__init__``: the mixin sits beside a Qt base class, whose
    constructor does not chain to it.
    """

    state: State = State.IDLE
    muted: bool = False
    error_detail: str = ""
    progress: str = ""

    @property
    def label(self) -> str:
        return state_label(self.state, self.muted, self.error_detail)

    def on_state(self, event: StateChanged) -> None:
        if event.state is not State.ERROR:
            self.error_detail = ""
        if event.state not in _PROGRESS_SHOWS_IN:
            self.progress = ""
        self.state, self.muted = event.state, event.muted
        self._show_state()

    def on_notice(self, notice: Notice) -> None:
        """An error's message becomes the error detail; one the user must act on is an alert."""
        if notice.level == "error":
            self.set_error_detail(notice.message)
        if needs_user(notice):
            self.alert(notice.message)

    def alert(self, message: str) -> None:
        """Draw the user's attention to ``message``; surfaces that can, override this."""

    def set_error_detail(self, detail: str) -> None:
        """The short reason shown after "Error:" while the state is error."""
        self.error_detail = detail
        self._show_state()

    def set_progress(self, line: str) -> None:
        """A start-up step shown while connecting; an empty line hides it."""
        self.progress = line
        self._show_state()

    @property
    def shows_progress(self) -> bool:
        return bool(self.progress) and self.state in _PROGRESS_SHOWS_IN

    def _show_state(self) -> None:
        raise NotImplementedError
