"""The embedded server as the app's child process: progress, readiness, token, the serve command.

Its crash and the app's are fault rows R1 and R2: tests/faults/test_process_faults.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from app.localmodel.launcher import EmbeddedServerProcess
from tests.app_driver import alive


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
    assert pid is not None and not alive(pid)


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
        assert alive(server.pid), "the server died with the thread that started it"

        async def session_created() -> str:
            async with connect(server.endpoint.url, additional_headers=server.endpoint.headers) as ws:
                return str(await ws.recv())

        assert '"session.created"' in asyncio.run(session_created())
    finally:
        server.stop()


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
        lines: list[str] = []
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


def test_the_server_is_started_the_way_this_app_was(monkeypatch: pytest.MonkeyPatch) -> None:
    from app.localmodel.launcher import self_command

    assert self_command() == [sys.executable, "-m", "app"]
    # A frozen bundle (the installers') is its own command line: it has no "-m".
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    assert self_command() == [sys.executable]
