"""The offline server process (rows R1, R2): its crash does not end the conversation; the app's takes it.

The offline assistant is the default backend and runs as the app's child process, so both ways a
process can die are tried for real with ``kill -9``, which allows no clean-up: the server child
under its supervisor, and under the whole headless app on the virtual audio devices (where the app
must say what happened and connect again on its own), and the app itself, whose server child must
not be left behind. The real models load in each server child: allow minutes, not seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.localmodel.launcher import EmbeddedServerProcess
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, alive, children, speak
from tests.file_keyring import KEYRING_FILE_ENV

MODEL_LOAD_S = 120.0


@pytest.mark.fault("R1")
def test_a_dead_server_comes_back_on_the_same_address() -> None:
    """The offline assistant is the default backend: a crash of its process must not end the app."""
    import threading

    from app.core.actions import Notice
    from app.localmodel.launcher import ServerSupervisor
    from app.realtime.transport import BackoffPolicy

    notices: list[Notice] = []
    came_back = threading.Event()

    def notify(notice: Notice) -> None:
        notices.append(notice)
        if notice.level == "info":
            came_back.set()

    supervisor = ServerSupervisor(EmbeddedServerProcess(), notify, BackoffPolicy(initial=0.1, maximum=1.0))
    endpoint = supervisor.start()
    try:
        first = supervisor.server.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert came_back.wait(120), f"the server did not come back: {notices}"
        second = supervisor.server.pid
        assert second is not None and second != first and alive(second)
        assert supervisor.restarts == 1
        assert [n.level for n in notices] == ["warning", "info"]
        assert "stopped unexpectedly" in notices[0].message

        async def session_created() -> str:
            # The address and the token the app already holds still work.
            async with connect(endpoint.url, additional_headers=endpoint.headers) as ws:
                return str(await ws.recv())

        assert '"session.created"' in asyncio.run(session_created())
    finally:
        supervisor.stop()
    assert not alive(second)
    time.sleep(1.0)
    assert supervisor.restarts == 1  # a stop is not a crash: nothing is restarted


@pytest.mark.fault("R2")
@pytest.mark.devices
def test_killing_the_app_takes_the_server_with_it(virtual_audio: VirtualAudioRig, tmp_path: Path) -> None:
    app = HeadlessApp(
        ["--input-device", virtual_audio.mic, "--output-device", virtual_audio.speaker],
        env={"HELPDESK_VOICE_DATA_DIR": str(tmp_path)},
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 120)
        assert any("loading speech recognition" in line for line in app.errors), app.errors
        servers = children(app.process.pid)
        assert servers, "the app started no child process"
        app.process.send_signal(signal.SIGKILL)  # no chance to clean up
        app.process.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(alive(pid) for pid in servers):
            time.sleep(0.05)
        assert not any(alive(pid) for pid in servers), "the embedded server outlived the app"
    finally:
        app.stop()


def _server_child(app_pid: int) -> int:
    """The app's offline server child: the one child that runs ``serve``."""
    servers = [pid for pid in children(app_pid) if b"serve" in Path(f"/proc/{pid}/cmdline").read_bytes()]
    assert len(servers) == 1, f"expected one offline server child, found {servers}"
    return servers[0]


@pytest.mark.fault("R1")
@pytest.mark.devices
def test_the_app_says_its_killed_server_restarted_and_carries_on_the_conversation(
    virtual_audio: VirtualAudioRig, speech: Callable[[str, int], FloatArray], tmp_path: Path
) -> None:
    app = HeadlessApp(
        ["--input-device", virtual_audio.mic, "--output-device", virtual_audio.speaker],
        env={
            "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
            "PYTHON_KEYRING_BACKEND": "tests.file_keyring.FileKeyring",
            KEYRING_FILE_ENV: str(tmp_path / "keyring.json"),
        },
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), MODEL_LOAD_S)
        first = _server_child(app.process.pid)
        os.kill(first, signal.SIGKILL)

        app.wait_for(lambda line: "stopped unexpectedly" in line, 30, stderr=True)
        app.wait_for(lambda line: "offline assistant is back" in line, MODEL_LOAD_S, stderr=True)
        app.wait_for(lambda line: "Reconnected" in line, 60, stderr=True)
        assert app.process.poll() is None, "the app ended with its server"
        second = _server_child(app.process.pid)
        assert second != first and alive(second)

        # The conversation goes on with the new server: what the user says now is heard.
        feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
        speak(virtual_audio, speech("my printer is broken", feed_rate))
        heard = app.wait_for(lambda line: line.startswith("you:"), MODEL_LOAD_S)
        assert "printer" in heard.lower()
        assert not any("Traceback" in line for line in app.errors), app.errors
    finally:
        app.stop()
    assert not alive(second), "the restarted server outlived the app"
