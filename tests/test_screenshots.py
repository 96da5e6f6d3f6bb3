"""The README's screenshots, rendered from the real windows on a real (virtual) X server.

Starts Xvfb on a display it picks itself and trayer as the system tray, then runs
``tests/screenshot_scene.py`` there in a child process (Qt's platform cannot change inside this
process), and checks the PNGs it writes to ``docs/screenshots/``. Skips where Xvfb or trayer is not
installed, unless HELPDESK_VOICE_REQUIRE_DEVICES=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from PySide6.QtGui import QColor, QImage

ROOT = Path(__file__).resolve().parents[1]
SHOTS = ROOT / "docs" / "screenshots"
TRAY_BAR_PX = 28
SCENE_TIMEOUT_S = 90


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        reason = f"{program} is not installed (Debian: apt-get install xvfb trayer)"
        if os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


@pytest.fixture(scope="module")
def x_display() -> Iterator[str]:
    """A private Xvfb with trayer docked along its top edge; yields the DISPLAY value."""
    xvfb_bin, trayer_bin = need("Xvfb"), need("trayer")
    read_end, write_end = os.pipe()
    # -displayfd: Xvfb takes the first free display number and writes it here once it is ready.
    xvfb = subprocess.Popen(
        [xvfb_bin, "-displayfd", str(write_end), "-screen", "0", "1024x640x24", "-nolisten", "tcp"],
        pass_fds=(write_end,),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    trayer: subprocess.Popen[bytes] | None = None
    try:
        with os.fdopen(read_end, "rb") as ready:
            number = ready.readline().strip().decode()
        if not number:
            error = xvfb.stderr.read().decode(errors="replace")[-500:] if xvfb.stderr else ""
            pytest.fail(f"Xvfb did not start: {error}")
        display = f":{number}"
        trayer = subprocess.Popen(
            [
                trayer_bin,
                *("--edge", "top", "--align", "right", "--widthtype", "percent", "--width", "100"),
                *("--heighttype", "pixel", "--height", str(TRAY_BAR_PX), "--SetDockType", "true"),
                *("--transparent", "true", "--alpha", "0", "--tint", "0x2b2f36", "--iconspacing", "4"),
            ],
            env={**os.environ, "DISPLAY": display},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        assert trayer.poll() is None, "trayer exited at once"
        yield display
    finally:
        for process in (trayer, xvfb):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def pixel_stats(image: QImage, step: int = 3) -> tuple[float, int]:
    """Spread of lightness (0-255) and the number of distinct colours, on a sample grid."""
    values: list[int] = []
    colours: set[int] = set()
    for y in range(0, image.height(), step):
        for x in range(0, image.width(), step):
            colour = image.pixelColor(x, y)
            values.append(colour.lightness())
            colours.add(colour.rgb())
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
    return spread, len(colours)


def has_colour_near(image: QImage, target: QColor, rows: range, tolerance: int = 40) -> bool:
    for y in rows:
        for x in range(image.width()):
            colour = image.pixelColor(x, y)
            if (
                abs(colour.red() - target.red())
                + abs(colour.green() - target.green())
                + abs(colour.blue() - target.blue())
                < tolerance
            ):
                return True
    return False


def test_screenshots_of_the_real_windows(x_display: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DISPLAY": x_display,
        "QT_QPA_PLATFORM": "xcb",
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "config"),
        "HELPDESK_VOICE_POLICY": str(tmp_path / "no-policy.toml"),
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
    }
    env.pop("WAYLAND_DISPLAY", None)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "tests.screenshot_scene", str(SHOTS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=SCENE_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["platform"] == "xcb"
    assert report["tray_available"] is True, "trayer runs, so Qt must find a system tray"

    expected = {
        "transcript.png": ((600, 1000), (400, 800)),
        "settings.png": ((400, 1100), (300, 900)),
        "tray.png": ((300, 600), (200, 400)),
    }
    assert sorted(Path(f).name for f in report["files"]) == sorted(expected)
    for name, ((min_w, max_w), (min_h, max_h)) in expected.items():
        path = SHOTS / name
        assert path.stat().st_mtime >= started - 1, f"{name} was not written by this run"
        image = QImage(str(path))
        assert not image.isNull(), name
        assert min_w <= image.width() <= max_w and min_h <= image.height() <= max_h, (name, image.size())
        spread, colours = pixel_stats(image)
        assert spread > 10 and colours > 20, (name, spread, colours)  # not a blank or flat image

    # The tray icon sits in trayer's bar (the scene ends with the assistant speaking: blue).
    tray = QImage(str(SHOTS / "tray.png"))
    assert has_colour_near(tray, QColor("#1d4ed8"), range(TRAY_BAR_PX))
