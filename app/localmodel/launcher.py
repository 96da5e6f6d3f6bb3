"""Starting the embedded server as a child process, and making sure it never outlives the app.

The server runs in its own process: its models load without blocking the app, and the GPL parts
(the Piper runtime, espeak-ng) stay out of the Apache-2.0 app process. The child reports its
loading steps on stdout; the launcher passes them on as progress and returns once the child says
``ready``. The guard against orphans: the child exits when its stdin (a pipe from the app that
is never written) closes, which happens however the app ends, a crash or a kill included.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable

from app.localmodel.server import new_token
from app.realtime import Endpoint

TOKEN_ENV = "HELPDESK_VOICE_SERVER_TOKEN"
server_log = logging.getLogger("app.localmodel.child")
READY_LINE = "ready"
URL_PREFIX = "url: "


class ServerStartError(RuntimeError):
    """The embedded server could not start; the message says why."""


class EmbeddedServerProcess:
    def __init__(self, progress: Callable[[str], None] | None = None, start_timeout: float = 180.0) -> None:
        self._progress = progress or (lambda line: None)
        self._timeout = start_timeout
        self._process: subprocess.Popen[str] | None = None
        self._stderr: deque[str] = deque(maxlen=20)
        self.token = new_token()
        self.url: str | None = None

    @property
    def endpoint(self) -> Endpoint:
        if self.url is None:
            raise ServerStartError("the embedded server is not running")
        return Endpoint(url=self.url, headers={"Authorization": f"Bearer {self.token}"}, kind="embedded")

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def start(self) -> Endpoint:
        env = {**os.environ, TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            [sys.executable, "-m", "app", "serve", "--port", "0", "--watch-stdin"],
            stdin=subprocess.PIPE,  # kept open and never written: its closing tells the child we are gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        threading.Thread(target=self._collect_stderr, daemon=True, name="embedded-server-stderr").start()
        lines: deque[str] = deque()
        done = threading.Event()

        def read_stdout() -> None:
            assert self._process is not None and self._process.stdout is not None
            for line in self._process.stdout:
                lines.append(line.rstrip("\n"))
                if line.strip() == READY_LINE:
                    done.set()
            done.set()

        threading.Thread(target=read_stdout, daemon=True, name="embedded-server-stdout").start()
        deadline = time.monotonic() + self._timeout
        while not done.wait(0.05) or lines:
            while lines:
                line = lines.popleft()
                if line.startswith(URL_PREFIX):
                    self.url = line[len(URL_PREFIX) :].strip()
                elif line.startswith("loading"):
                    self._progress(line)
            if done.is_set():
                break
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(f"the embedded server did not get ready within {self._timeout:.0f} s")
        if self.url is None or self._process.poll() is not None:
            detail = self._stderr[-1] if self._stderr else "no error output"
            self.stop()
            raise ServerStartError(f"the embedded server failed to start: {detail}")
        return self.endpoint

    def stop(self, timeout: float = 3.0) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                stream.close()
        self._process = None

    def _collect_stderr(self) -> None:
        assert self._process is not None and self._process.stderr is not None
        for line in self._process.stderr:
            if line.strip():
                self._stderr.append(line.rstrip("\n"))
                server_log.info("%s", line.rstrip("\n"))  # shown with --verbose


def die_with_parent(watch_stdin: bool) -> None:
    """In the child: exit when the parent goes, however it goes.

    The parent holds the write end of our stdin and never writes: the kernel closes it when the
    parent process ends, a crash or SIGKILL included. (Linux's PR_SET_PDEATHSIG would fire when the
    *thread* that started us ends, which a GUI's worker thread does long before the app quits.)
    """
    if watch_stdin:

        def watch() -> None:
            try:
                while sys.stdin.read(4096):
                    pass
            except (OSError, ValueError):
                pass
            os._exit(0)  # the app is gone: nothing here is worth a graceful shutdown

        threading.Thread(target=watch, daemon=True, name="parent-watch").start()
