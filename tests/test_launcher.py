"""The embedded server as the app's child process: progress, readiness, token, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.audio.virtual_rig import VirtualAudioRig
from app.localmodel.launcher import EmbeddedServerProcess
from tests.app_driver import HeadlessApp


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs /proc to find child processes")
    return [int(p) for p in path.read_text().split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def test_server_process_reports_progress_and_refuses_strangers() -> None:
    progress: list[str] = []
    server = EmbeddedServerProcess(progress=progress.append)
    endpoint = server.start()
    try:
        assert any("speech recognition" in line for line in progress)
        assert any("voice" in line for line in progress)
        assert endpoint.url.startswith("ws://127.0.0.1:")
        assert endpoint.kind == "embedded"
        assert server.token not in repr(endpoint)

        async def probe() -> tuple[int | None, str]:
            try:
                async with connect(endpoint.url):
                    return None, ""
            except InvalidStatus as exc:
                refused = exc.response.status_code
            async with connect(endpoint.url, additional_headers=endpoint.headers) as ws:
                return refused, str(await ws.recv())

        refused, first = asyncio.run(probe())
        assert refused == 401
        assert '"session.created"' in first
        pid = server.pid
    finally:
        server.stop()
    assert pid is not None and not _alive(pid)


def test_the_server_outlives_the_thread_that_started_it() -> None:
    """A GUI starts the server on a worker thread that ends long before the app does."""
    import threading

    server = EmbeddedServerProcess()
    started = threading.Thread(target=server.start)
    started.start()
    started.join(120)
    try:
        assert server.pid is not None
        time.sleep(1.0)
        assert _alive(server.pid), "the server died with the thread that started it"

        async def session_created() -> str:
            async with connect(server.endpoint.url, additional_headers=server.endpoint.headers) as ws:
                return str(await ws.recv())

        assert '"session.created"' in asyncio.run(session_created())
    finally:
        server.stop()


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
        assert second is not None and second != first and _alive(second)
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
    assert not _alive(second)
    time.sleep(1.0)
    assert supervisor.restarts == 1  # a stop is not a crash: nothing is restarted


@pytest.mark.devices
def test_killing_the_app_takes_the_server_with_it(virtual_audio: VirtualAudioRig, tmp_path: Path) -> None:
    app = HeadlessApp(
        ["--input-device", virtual_audio.mic, "--output-device", virtual_audio.speaker],
        env={"HELPDESK_VOICE_DATA_DIR": str(tmp_path)},
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 120)
        assert any("loading speech recognition" in line for line in app.errors), app.errors
        servers = _children(app.process.pid)
        assert servers, "the app started no child process"
        app.process.send_signal(signal.SIGKILL)  # no chance to clean up
        app.process.wait(5)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in servers):
            time.sleep(0.05)
        assert not any(_alive(pid) for pid in servers), "the embedded server outlived the app"
    finally:
        app.stop()


def test_serve_command_prints_its_url_and_token() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HELPDESK_VOICE_SERVER_TOKEN": "abc123"},  # never argv: ps shows it
    )
    try:
        assert process.stdout is not None
        lines = []
        while not lines or lines[-1] != "ready":
            line = process.stdout.readline()
            assert line, f"serve ended early: {lines}"
            lines.append(line.strip())
        assert any(line.startswith("url: ws://127.0.0.1:") for line in lines)
        assert "token: from HELPDESK_VOICE_SERVER_TOKEN" in lines
        assert not any("abc123" in line for line in lines)
        process.send_signal(signal.SIGINT)
        assert process.wait(5) == 0
    finally:
        if process.poll() is None:
            process.kill()
