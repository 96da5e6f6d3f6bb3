"""One tray app per user session: a second launch shows the first one's transcript and ends.

Two tray icons would answer the same microphone twice and talk over each other. The first app
listens on a local socket (a Unix socket on Linux and macOS, a named pipe on Windows: Qt's
``QLocalServer``) named for the user and their settings folder; a later launch connects to it, asks
it to show itself and exits. Settings folders differ per test run and per portable setup, so two
separately configured copies do not block each other.

A socket file left by a crashed app answers nobody: when connecting fails, the name is freed and
taken over.
"""

from __future__ import annotations

import getpass
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Final

from PySide6.QtNetwork import QLocalServer, QLocalSocket

__all__ = ["SHOW", "SingleInstance", "instance_name"]

SHOW: Final = b"show\n"
CONNECT_TIMEOUT_MS: Final = 500


def instance_name(settings_folder: Path) -> str:
    """The socket's name: the same for every launch by this user with these settings."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no login name (a container's bare uid): the folder still tells
        user = ""
    digest = hashlib.sha256(f"{user}\0{settings_folder.resolve()}".encode()).hexdigest()[:16]
    return f"helpdesk-voice-{digest}"


class SingleInstance:
    """Claims ``name`` for this app, or tells the app that already holds it to show itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._server: QLocalServer | None = None

    def ask_running_app_to_show(self) -> bool:
        """True when an app already runs under this name and was asked to show itself."""
        socket = QLocalSocket()
        socket.connectToServer(self.name)
        if not socket.waitForConnected(CONNECT_TIMEOUT_MS):
            return False
        socket.write(SHOW)
        socket.waitForBytesWritten(CONNECT_TIMEOUT_MS)
        socket.disconnectFromServer()
        return True

    def claim(self, on_show: Callable[[], None]) -> bool:
        """Listens under the name; ``on_show`` runs on the GUI thread for each later launch. False
        when the name cannot be taken (the app then runs without this guard rather than not at all)."""
        server = QLocalServer()
        if not server.listen(self.name):
            # Nobody answered on it (ask_running_app_to_show failed first): a crashed app's leftover.
            QLocalServer.removeServer(self.name)
            if not server.listen(self.name):
                return False

        def accept() -> None:
            while server.hasPendingConnections():
                connection = server.nextPendingConnection()
                connection.readyRead.connect(lambda c=connection: self._read(c, on_show))
                connection.disconnected.connect(connection.deleteLater)

        server.newConnection.connect(accept)
        self._server = server
        return True

    @staticmethod
    def _read(connection: QLocalSocket, on_show: Callable[[], None]) -> None:
        if bytes(connection.readAll().data()).startswith(SHOW.strip()):
            on_show()

    def release(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
