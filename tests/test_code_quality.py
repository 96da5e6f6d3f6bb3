"""The project's own checks run with the tests, so a lint or type error fails CI like a bug does.

They run through `scripts/check`, the same command developers run alone (README, "For developers"),
with the interpreter running the suite, so the suite and the everyday loop cannot disagree.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_code_is_clean() -> None:
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "check")],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
