"""Starts a built executable's offline server the way the app does and checks that it gets ready.

    python packaging/smoke_serve.py build/dist/helpdesk-voice/helpdesk-voice[.exe]

The tray app runs ``<its own executable> serve --watch-stdin`` with its standard streams as pipes
and waits for ``url: ...`` and ``ready`` on stdout (app/localmodel/launcher.py). On Windows that
executable is the windowed (no console) one, which only works if a windowed program started with
pipes writes to them; this is the check that proves it on each system, and that the server ends
when its stdin closes. Exit code 0 when all of that happened.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

START_TIMEOUT = 600.0  # a first start loads the speech and voice models from a cold disk
STOP_TIMEOUT = 60.0


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python packaging/smoke_serve.py EXECUTABLE", file=sys.stderr)
        return 2
    executable = Path(argv[0]).resolve()
    env = {**os.environ, "HELPDESK_VOICE_SERVER_TOKEN": secrets.token_urlsafe(24), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [str(executable), "serve", "--port", "0", "--watch-stdin"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stderr_lines: list[str] = []
    threading.Thread(target=lambda: stderr_lines.extend(process.stderr or ()), daemon=True).start()
    seen: list[str] = []
    ready = threading.Event()

    def read() -> None:
        for line in process.stdout or ():
            seen.append(line.rstrip("\n"))
            print(f"server: {seen[-1]}", flush=True)
            if line.strip() == "ready":
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    started = time.monotonic()
    while not ready.wait(0.5):
        if process.poll() is not None or time.monotonic() - started > START_TIMEOUT:
            break
    if not ready.is_set():
        if process.poll() is None:
            process.kill()
        process.wait()
        print(f"the server did not get ready (exit code {process.returncode})", file=sys.stderr)
        print("".join(stderr_lines[-20:]), file=sys.stderr)
        return 1
    print(f"ready after {time.monotonic() - started:.1f} s", flush=True)
    if not any(line.startswith("url: ") for line in seen):
        print("the server said ready without its url", file=sys.stderr)
        process.kill()
        return 1
    # The app never writes to this pipe; closing it is how the server learns the app is gone.
    assert process.stdin is not None
    process.stdin.close()
    try:
        code = process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        print(f"the server still ran {STOP_TIMEOUT:.0f} s after its stdin closed", file=sys.stderr)
        return 1
    print(f"the server ended when its stdin closed (exit code {code})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
