"""What the third-party client scripts share: their arguments, the speech they send and their report.

The scripts run in ``.venv-clients`` (their packages would clash with the app's), as
``python -m tests.third_party.<client>_client URL WAV [WAV...]`` from the repository root, with the
token in ``HELPDESK_VOICE_SERVER_TOKEN``. Each prints one JSON report on stdout; the tests in
tests/test_third_party_clients.py judge it. This module uses the standard library only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
import wave
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

RATE = 24000
TOKEN_ENV = "HELPDESK_VOICE_SERVER_TOKEN"


@dataclass(frozen=True)
class Args:
    url: str  # the server's realtime endpoint, ws://host:port/v1/realtime
    token: str
    speech: list[bytes]  # 24 kHz mono PCM16, one utterance per WAV given

    @property
    def http_base(self) -> str:
        """The REST base URL the SDKs want (``http://host:port/v1``); they add ``/realtime`` themselves."""
        base = self.url.removesuffix("/realtime")
        return base.replace("wss://", "https://", 1).replace("ws://", "http://", 1)

    @property
    def ws_base(self) -> str:
        return self.url.removesuffix("/realtime")


def parse_args() -> Args:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("url")
    parser.add_argument("wav", nargs="+")
    ns = parser.parse_args()
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        parser.error(f"set {TOKEN_ENV}")
    return Args(ns.url, token, [read_wav(path) for path in ns.wav])


def read_wav(path: str) -> bytes:
    with wave.open(path) as wav:
        shape = (wav.getframerate(), wav.getnchannels(), wav.getsampwidth())
        if shape != (RATE, 1, 2):
            raise SystemExit(f"{path}: want {RATE} Hz mono 16-bit, got {shape}")
        frames: bytes = wav.readframes(wav.getnframes())
        return frames


def silence(seconds: float) -> bytes:
    return bytes(int(RATE * seconds) * 2)


def chunks(pcm: bytes, chunk_ms: int = 100) -> list[bytes]:
    step = RATE * chunk_ms // 1000 * 2
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def audio_ms(pcm_bytes: int) -> float:
    return pcm_bytes / 2 / RATE * 1000.0


@dataclass
class Report:
    """What a client saw, printed as JSON: the scenario's findings, the events and the errors."""

    client: str
    started: float = field(default_factory=time.monotonic)
    events: dict[str, int] = field(default_factory=dict)  # server event type -> count
    errors: list[Any] = field(default_factory=list)  # error events, and exceptions of the script
    steps: dict[str, Any] = field(default_factory=dict)  # one entry per scenario step
    timings: dict[str, float] = field(default_factory=dict)  # seconds since start, per milestone
    step: str = "connect"  # the scenario step running, named in each error

    def error(self, detail: Any) -> None:
        self.errors.append({"step": self.step, "detail": detail})

    def saw(self, kind: str) -> None:
        self.events[kind] = self.events.get(kind, 0) + 1

    def begin(self, step: str) -> None:
        self.step = step

    def mark(self, name: str) -> None:
        self.timings[name] = round(time.monotonic() - self.started, 3)

    def as_json(self) -> str:
        body = {
            "client": self.client,
            "events": self.events,
            "errors": self.errors,
            "steps": self.steps,
            "timings": self.timings,
            "seconds": round(time.monotonic() - self.started, 3),
        }
        return json.dumps(body, indent=1, default=str)


async def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``check``; a timeout raises with ``what``, which the report then names."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


def run(report: Report, scenario: Callable[[], Awaitable[None]], limit_s: float = 100.0) -> None:
    """Runs the scenario, records what ended it, prints the report and exits 0 (the report judges)."""

    async def bounded() -> None:
        async with asyncio.timeout(limit_s):
            await scenario()

    try:
        asyncio.run(bounded())
    except BaseException as exc:  # every failure belongs in the report, a timeout included
        report.error({"exception": repr(exc), "traceback": traceback.format_exc(limit=8)})
    report.mark("end")
    sys.stdout.write(report.as_json() + "\n")
    sys.stdout.flush()
