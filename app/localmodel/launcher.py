"""Starting the embedded server as a child process, and making sure it never outlives the app.

The server runs in its own process: its models load without blocking the app, and the GPL parts
(the Piper runtime, espeak-ng) stay out of the Apache-2.0 app process. The child reports its
loading steps on stdout; the launcher passes them on as progress and returns once the child says
``ready``. The guard against orphans: the child exits when its stdin (a pipe from the app that
is never written) closes, which happens however the app ends, a crash or a kill included.

:class:`ServerSupervisor` keeps the offline assistant alive: when the child exits unexpectedly it
starts a new one, with backoff, on the same port and with the same token, so the app's connection
simply reconnects and replays the conversation to it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO
from urllib.parse import urlsplit

from app.core.actions import Notice
from app.localmodel.server import new_token
from app.realtime import Endpoint
from app.realtime.transport import BackoffPolicy
from app.tools.kb_sources import KB_FOLDERS_ENV, folders_to_env

TOKEN_ENV = "HELPDESK_VOICE_SERVER_TOKEN"
server_log = logging.getLogger("app.localmodel.child")
READY_LINE = "ready"
URL_PREFIX = "url: "


class ServerStartError(RuntimeError):
    """The embedded server could not start; the message says why."""


def self_command() -> list[str]:
    """How to run this app's own command line again: ``python -m app`` from a Python installation,
    the executable itself from a frozen bundle (an installer's), which has no ``-m``."""
    if getattr(sys, "frozen", False):
        return [sys.executable]
    return [sys.executable, "-m", "app"]


class EmbeddedServerProcess:
    """The child process running ``helpdesk-voice serve``.

    ``kb_folders``: the company's article folders (the ``kb.folders`` setting), handed to the child in
    ``HELPDESK_VOICE_SERVER_KB_FOLDERS`` (a JSON list); None leaves that to the child, which then
    reads the setting itself.
    """

    def __init__(
        self,
        progress: Callable[[str], None] | None = None,
        start_timeout: float = 180.0,
        kb_folders: Sequence[str] | None = None,
    ) -> None:
        self._progress = progress or (lambda line: None)
        self.kb_folders = None if kb_folders is None else tuple(kb_folders)
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

    @property
    def port(self) -> int | None:
        return None if self.url is None else urlsplit(self.url).port

    def wait(self, timeout: float | None = None) -> int | None:
        """The child's exit code once it has exited (None: still running after ``timeout``)."""
        process = self._process
        if process is None:
            return None
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def start(self, port: int = 0) -> Endpoint:
        """Starts the child and returns once it is ready; ``port`` 0 lets the system pick one."""
        self.stop()  # what is left of an earlier child (its pipes)
        env = {**os.environ, TOKEN_ENV: self.token, "PYTHONUNBUFFERED": "1"}
        if self.kb_folders is not None:
            # The app's own view of the setting (command-line overrides included) wins over the
            # child reading the settings files again; the child reads the folders at each start.
            env[KB_FOLDERS_ENV] = folders_to_env(self.kb_folders)
        # A local name from here on: stop() may run on another thread at any moment.
        process = self._process = subprocess.Popen(
            [*self_command(), "serve", "--port", str(port), "--watch-stdin"],
            stdin=subprocess.PIPE,  # kept open and never written: its closing tells the child we are gone
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            # Its own session: Ctrl-C in the terminal reaches the app alone, which then stops the
            # server in order, instead of the server closing first and the app trying to reconnect.
            start_new_session=True,
        )
        self.url = None
        threading.Thread(
            target=self._collect_stderr, args=(process.stderr,), daemon=True, name="embedded-server-stderr"
        ).start()
        lines: deque[str] = deque()
        done = threading.Event()

        def read_stdout() -> None:
            with contextlib.suppress(ValueError, OSError):  # closed by stop() on another thread
                for line in process.stdout or ():
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
        if self.url is None or process.poll() is not None:
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

    def _collect_stderr(self, stream: IO[str] | None) -> None:
        with contextlib.suppress(ValueError, OSError):  # closed by stop() on another thread
            for line in stream or ():
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


class ServerSupervisor:
    """Starts the embedded server and brings it back whenever it exits while it is wanted.

    A restart uses the same port and token, so the endpoint the app holds stays valid: its transport
    sees a refused connection, retries, and replays the conversation to the new server. ``notify``
    hears, from the watcher thread, that the assistant stopped, came back, or keeps failing.
    """

    # After this many failed restarts in a row the user is told that it needs them.
    FAILURES_BEFORE_ALARM = 3

    def __init__(
        self,
        server: EmbeddedServerProcess,
        notify: Callable[[Notice], None],
        backoff: BackoffPolicy | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.server = server
        self._notify = notify
        self._backoff = backoff or BackoffPolicy(initial=1.0, maximum=30.0, reset_after=60.0)
        self._rng = rng or random.Random()
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> Endpoint:
        endpoint = self.server.start()
        self._watcher = threading.Thread(target=self._watch, daemon=True, name="embedded-server-watch")
        self._watcher.start()
        return endpoint

    def stop(self, timeout: float = 3.0) -> None:
        self._stopping.set()
        self.server.stop(timeout)
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout)

    def _watch(self) -> None:
        port = self.server.port or 0
        while not self._stopping.is_set():
            # Blocks until the child exits (stopping ends it): a timed wait polls all day.
            code = self.server.wait()
            if code is None:  # no child right now
                self._stopping.wait(0.5)
                continue
            if self._stopping.is_set():
                continue
            server_log.warning("the embedded server exited with code %s; restarting it", code)
            self._notify(Notice("warning", "The offline assistant stopped unexpectedly; restarting it."))
            if not self._restart(port):
                return

    def _restart(self, port: int) -> bool:
        """Starts a new child on ``port`` with backoff; False when stopped meanwhile."""
        failures = 0
        while not self._stopping.wait(self._backoff.delay(failures, self._rng)):
            try:
                self.server.start(port)
            except ServerStartError as exc:
                failures += 1
                server_log.warning("restarting the embedded server failed: %s", exc)
                if failures == self.FAILURES_BEFORE_ALARM:
                    self._notify(
                        Notice(
                            "error",
                            f"The offline assistant cannot restart ({exc}); still trying.",
                            needs_user=True,
                        )
                    )
                continue
            if self._stopping.is_set():
                self.server.stop()
                return False
            self.restarts += 1
            self._notify(Notice("info", "The offline assistant is back."))
            return True
        return False
