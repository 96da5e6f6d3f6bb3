"""Whether the audio devices and the connection are well, and what the user hears of it.

Pure decisions, fed with what the engine observed and when: a stream that stopped is reported once
and reopened every few seconds until it delivers again, which is reported too; connection failures
in a row make the endpoint count as unreachable at the third. The engine carries them out.
"""

from __future__ import annotations

from enum import Enum

from app.core.actions import Notice

DEVICE_RETRY_INTERVAL_S = 3.0
# After this many failed connection attempts in a row the endpoint counts as unreachable, and the
# user hears of it (a desktop notification) rather than only a status line; one blip is not worth it.
UNREACHABLE_AFTER_FAILURES = 3


class DeviceStep(Enum):
    NOTHING = "nothing"
    LOST = "lost"  # tell the user, once
    REOPEN = "reopen"  # try to open it again now
    BACK = "back"  # it delivers again: tell the user


class DeviceHealth:
    """One role at a time ("microphone", "speaker"): what to do about its stream now."""

    def __init__(self, retry_s: float = DEVICE_RETRY_INTERVAL_S) -> None:
        self.retry_s = retry_s
        self._lost_since: dict[str, float] = {}  # role -> when it was lost or last retried

    def lost_roles(self) -> frozenset[str]:
        return frozenset(self._lost_since)

    def check(self, role: str, *, lost: bool, delivering: bool, now: float) -> DeviceStep:
        """``lost``: the stream stopped by itself or its callbacks stopped coming; ``delivering``:
        it has called back lately (only asked of a stream that was lost)."""
        retried_at = self._lost_since.get(role)
        if retried_at is None:
            if lost:
                self._lost_since[role] = now
                return DeviceStep.LOST
            return DeviceStep.NOTHING
        if delivering:
            del self._lost_since[role]
            return DeviceStep.BACK
        if now - retried_at >= self.retry_s:
            self._lost_since[role] = now
            return DeviceStep.REOPEN
        return DeviceStep.NOTHING


def device_lost_notice(role: str, device: str) -> Notice:
    return Notice(
        "error",
        f"The {role} ({device}) stopped working; was it unplugged? "
        f"Plug it back in or choose another {role} in Settings.",
        needs_user=True,
    )


def device_back_notice(role: str, device: str) -> Notice:
    return Notice("info", f"The {role} ({device}) works again.")


class ConnectionFailures:
    """Failed connection attempts in a row; a connection that opens starts the count again."""

    def __init__(self, unreachable_after: int = UNREACHABLE_AFTER_FAILURES) -> None:
        self.unreachable_after = unreachable_after
        self.in_a_row = 0

    def connected(self) -> None:
        self.in_a_row = 0

    def failed(self) -> bool:
        """Counts one failure; True exactly when this one makes the endpoint unreachable."""
        self.in_a_row += 1
        return self.in_a_row == self.unreachable_after
