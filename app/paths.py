"""Where the app's shipped files live."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

APP_NAME = "helpdesk-voice"
DATA_DIR_ENV = "HELPDESK_VOICE_DATA_DIR"
CACHE_DIR_ENV = "HELPDESK_VOICE_CACHE_DIR"


def assets_dir() -> Path:
    """The ``assets/`` folder: ``HELPDESK_VOICE_ASSETS`` if set, else the shipped one.

    A wheel or a frozen bundle carries it inside the package (``app/assets``, the package
    ``app.assets``); a checkout keeps it at the project's top level, beside ``app/``.
    """
    override = os.environ.get("HELPDESK_VOICE_ASSETS")
    if override:
        return Path(override)
    package = Path(__file__).resolve().parent
    inside = package / "assets"
    return inside if inside.is_dir() else package.parent / "assets"


def default_data_dir() -> Path:
    """Where the app keeps its data; ``HELPDESK_VOICE_DATA_DIR`` overrides it (tests, testers)."""
    override = os.environ.get(DATA_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    # appauthor=False: no extra "helpdesk-voice/helpdesk-voice" nesting on Windows.
    return platformdirs.user_data_path(APP_NAME, appauthor=False)


def default_cache_dir() -> Path:
    """Where the app keeps what it can always compute again; ``HELPDESK_VOICE_CACHE_DIR`` overrides it."""
    override = os.environ.get(CACHE_DIR_ENV, "").strip()
    if override:
        return Path(override).expanduser()
    return platformdirs.user_cache_path(APP_NAME, appauthor=False)
