"""Where the app's shipped files live."""

from __future__ import annotations

import os
from pathlib import Path


def assets_dir() -> Path:
    """The ``assets/`` folder: ``HELPDESK_VOICE_ASSETS`` if set, else the one beside the package."""
    override = os.environ.get("HELPDESK_VOICE_ASSETS")
    if override:
        return Path(override)
    return Path(__file__).resolve().parent.parent / "assets"
