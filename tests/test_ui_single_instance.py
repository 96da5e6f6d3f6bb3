"""One tray app per user session (app/ui/single_instance.py), with real Qt local sockets."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from pathlib import Path

import pytest
from pytestqt.qtbot import QtBot

from app.ui.single_instance import SingleInstance, instance_name

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _unique() -> str:
    return f"helpdesk-voice-test-{uuid.uuid4().hex[:12]}"


def test_a_second_launch_asks_the_first_to_show_itself(qtbot: QtBot) -> None:
    name = _unique()
    first = SingleInstance(name)
    shown: list[int] = []
    assert not first.ask_running_app_to_show()  # nobody runs yet
    assert first.claim(lambda: shown.append(1))
    try:
        assert SingleInstance(name).ask_running_app_to_show()
        qtbot.waitUntil(lambda: shown == [1], timeout=5000)
        assert SingleInstance(name).ask_running_app_to_show()
        qtbot.waitUntil(lambda: shown == [1, 1], timeout=5000)
    finally:
        first.release()
    assert not SingleInstance(name).ask_running_app_to_show()  # gone with the app


@pytest.mark.skipif(os.name != "posix", reason="a crashed app leaves a socket file only on Unix")
def test_the_socket_a_crashed_app_left_is_taken_over(qtbot: QtBot) -> None:
    name = _unique()
    leftover = Path(tempfile.gettempdir()) / name  # where Qt puts a relative name's socket
    dead = socket.socket(socket.AF_UNIX)
    dead.bind(str(leftover))  # bound but never listening: what a killed process leaves
    dead.close()
    try:
        assert not SingleInstance(name).ask_running_app_to_show()
        again = SingleInstance(name)
        shown: list[int] = []
        assert again.claim(lambda: shown.append(1))
        assert SingleInstance(name).ask_running_app_to_show()
        qtbot.waitUntil(lambda: shown == [1], timeout=5000)
        again.release()
    finally:
        leftover.unlink(missing_ok=True)


def test_the_name_is_per_user_and_settings_folder(tmp_path: Path) -> None:
    one, other = tmp_path / "one", tmp_path / "other"
    assert instance_name(one) == instance_name(one)
    assert instance_name(one) != instance_name(other)
    assert instance_name(one).startswith("helpdesk-voice-")
