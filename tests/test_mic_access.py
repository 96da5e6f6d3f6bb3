"""A microphone the OS keeps from the app: digital silence, and the Windows privacy switches."""

from __future__ import annotations

from app.audio.mic_access import (
    MACOS_SETTINGS_LINK,
    WINDOWS_SETTINGS_LINK,
    SilentMicWatch,
    windows_privacy_block,
)

ZEROS = bytes(480)  # 10 ms at 24 kHz, PCM16
QUIET_ROOM = b"\x01\x00\xff\xff" * 120  # a real microphone's own noise: never exact zeros


def _feed(watch: SilentMicWatch, frame: bytes, seconds: float, start: float = 0.0) -> list[str]:
    said = []
    for step in range(int(seconds * 100)):
        message = watch.feed(frame, start + step / 100)
        if message is not None:
            said.append(message)
    return said


def test_three_seconds_of_exact_zeros_on_macos_say_where_to_allow_the_microphone() -> None:
    watch = SilentMicWatch("darwin")
    said = _feed(watch, ZEROS, 5.0)
    assert len(said) == 1 and MACOS_SETTINGS_LINK in said[0] and "Privacy & Security > Microphone" in said[0]


def test_a_quiet_room_is_not_a_blocked_microphone() -> None:
    watch = SilentMicWatch("darwin")
    assert _feed(watch, QUIET_ROOM, 10.0) == []
    # Zeros broken by a moment of sound start counting again.
    assert _feed(watch, ZEROS, 2.5) == [] and _feed(watch, QUIET_ROOM, 0.1, 2.5) == []
    assert _feed(watch, ZEROS, 2.5, 2.6) == []


def test_linux_virtual_devices_are_silent_without_a_warning() -> None:
    assert _feed(SilentMicWatch("linux"), ZEROS, 10.0) == []


def test_a_reopened_stream_is_judged_afresh_on_windows() -> None:
    watch = SilentMicWatch("win32")
    assert (
        len(_feed(watch, ZEROS, 4.0)) == 1
        and WINDOWS_SETTINGS_LINK in _feed(SilentMicWatch("win32"), ZEROS, 4.0)[0]
    )
    assert _feed(watch, ZEROS, 4.0, 4.0) == []  # said once
    watch.restart()
    assert len(_feed(watch, ZEROS, 4.0, 8.0)) == 1


def test_the_windows_privacy_switches_are_read_before_the_stream_opens() -> None:
    def registry(values: dict[tuple[int, str], str]):  # type: ignore[no-untyped-def]
        return lambda hive, key: next(
            (v for (h, k), v in values.items() if h == hive and k == key.rsplit("\\", 1)[-1]), None
        )

    assert windows_privacy_block(registry({})) is None
    assert windows_privacy_block(registry({(1, "microphone"): "Allow", (1, "NonPackaged"): "Allow"})) is None
    machine = windows_privacy_block(registry({(0, "microphone"): "Deny"}))
    assert machine is not None and "administrator" in machine
    desktop = windows_privacy_block(registry({(1, "NonPackaged"): "Deny"}))
    assert (
        desktop is not None
        and "Let desktop apps access your microphone" in desktop
        and WINDOWS_SETTINGS_LINK in desktop
    )
    assert windows_privacy_block() is None  # not Windows: nothing to read
