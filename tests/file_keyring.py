"""A real keyring backend for tests, keeping passwords in a JSON file: never the developer's keyring."""

from __future__ import annotations

import json
import os
from pathlib import Path

import keyring.errors
from keyring.backend import KeyringBackend
from keyring.compat import properties

KEYRING_FILE_ENV = "HELPDESK_VOICE_TEST_KEYRING_FILE"


class FileKeyring(KeyringBackend):
    """A real keyring backend keeping passwords in a JSON file (path given or from the environment).

    The subprocess test loads it with ``PYTHON_KEYRING_BACKEND=tests.file_keyring.FileKeyring``. It is
    not viable (so keyring never picks it by itself) unless that test's environment variable is set.
    """

    @properties.classproperty
    def priority(cls) -> float:
        if KEYRING_FILE_ENV not in os.environ:
            raise RuntimeError("a test keyring, only for tests that name its file")
        return 1

    def __init__(self, path: Path | None = None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.path = path if path is not None else Path(os.environ[KEYRING_FILE_ENV])

    def _load(self) -> dict[str, str]:
        if not self.path.exists():
            return {}
        data: dict[str, str] = json.loads(self.path.read_text("utf-8"))
        return data

    def get_password(self, service: str, username: str) -> str | None:
        return self._load().get(f"{service}\0{username}")

    def set_password(self, service: str, username: str, password: str) -> None:
        data = self._load()
        data[f"{service}\0{username}"] = password
        self.path.write_text(json.dumps(data), "utf-8")

    def delete_password(self, service: str, username: str) -> None:
        data = self._load()
        if data.pop(f"{service}\0{username}", None) is None:
            raise keyring.errors.PasswordDeleteError(username)
        self.path.write_text(json.dumps(data), "utf-8")
