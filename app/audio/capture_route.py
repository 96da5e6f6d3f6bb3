"""Where PulseAudio records this process from: to notice a microphone that went away.

When a microphone disappears, PulseAudio (and PipeWire's PulseAudio server) moves the streams that
recorded from it to another source, often the monitor of a speaker, and PortAudio sees nothing: its
callbacks go on delivering other audio, so the app's own check for a stopped stream never fires.
What the sound server did is visible only to its own clients, so this module asks ``pactl`` which
source this process's recording streams are attached to and reports when that changes.

:class:`RouteWatch` is the pure part (routes in, changes out); :func:`query_routes` runs ``pactl``
(well under a second; from a background thread, never the audio callbacks or the event loop).
Where ``pactl`` is missing or no PulseAudio server answers (Windows, macOS, plain ALSA), it returns
None and the app relies on the stopped-stream check alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.actions import Notice

CHECK_INTERVAL_S = 2.0


@dataclass(frozen=True)
class Source:
    name: str
    description: str
    is_monitor: bool  # what a speaker plays, not a microphone


@dataclass(frozen=True)
class RouteChange:
    """The recording moved from ``before`` to ``after`` (None: nothing records any more)."""

    before: Source
    after: Source | None

    @property
    def back(self) -> bool:
        return self.after == self.before


@dataclass(frozen=True)
class Routes:
    """What the sound server says now: the sources this process records from, and every source there is."""

    recorded: tuple[Source, ...]
    available: frozenset[str]


def read_routes(source_outputs: Any, sources: Any, pid: int) -> Routes:
    """From ``pactl -f json list source-outputs`` and ``pactl -f json list sources``."""
    by_index: dict[int, Source] = {}
    for entry in sources if isinstance(sources, list) else []:
        if not isinstance(entry, dict) or not isinstance(entry.get("index"), int):
            continue
        properties = entry.get("properties")
        properties = properties if isinstance(properties, dict) else {}
        name = str(entry.get("name", "?"))
        by_index[entry["index"]] = Source(
            name=name,
            description=str(entry.get("description") or name),
            is_monitor=properties.get("device.class") == "monitor" or name.endswith(".monitor"),
        )
    recorded: list[Source] = []
    for output in source_outputs if isinstance(source_outputs, list) else []:
        if not isinstance(output, dict) or not isinstance(output.get("properties"), dict):
            continue
        if output["properties"].get("application.process.id") != str(pid):
            continue
        source = by_index.get(output.get("source"))  # type: ignore[arg-type]
        if source is not None and source not in recorded:
            recorded.append(source)
    return Routes(tuple(recorded), frozenset(s.name for s in by_index.values()))


class RouteWatch:
    """The sources recorded from at the start are the ones meant; one of them vanishing is the news.

    Only a source that disappears from the server counts, so other streams of the same process
    (a test's recorders) opening and closing are no news.
    """

    def __init__(self) -> None:
        self._meant: tuple[Source, ...] = ()
        self._gone: Source | None = None

    def rebaseline(self) -> None:
        """The app opened a device on purpose (a reopen, a new choice): what it records now is meant."""
        self._meant = ()
        self._gone = None

    def observe(self, routes: Routes) -> RouteChange | None:
        if not self._meant:
            self._meant = routes.recorded  # empty until the stream is attached
            return None
        if self._gone is not None:
            if self._gone.name in routes.available:
                back, self._gone = self._gone, None
                return RouteChange(back, back)
            return None
        for source in self._meant:
            if source.name not in routes.available:
                self._gone = source
                instead = [r for r in routes.recorded if r not in self._meant]
                return RouteChange(source, instead[0] if instead else None)
        return None


def query_routes(
    pid: int | None = None, run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run
) -> Routes | None:
    """Where this process records now; None when no PulseAudio server can be asked."""
    pactl = shutil.which("pactl")
    if pactl is None:
        return None
    listings = []
    for what in ("source-outputs", "sources"):
        try:
            result = run([pactl, "-f", "json", "list", what], capture_output=True, text=True, timeout=3)
            listings.append(json.loads(result.stdout) if result.returncode == 0 else None)
        except (OSError, subprocess.SubprocessError, json.JSONDecodeError):
            return None
    if listings[0] is None or listings[1] is None:
        return None
    return read_routes(listings[0], listings[1], os.getpid() if pid is None else pid)


class RouteWatcher:
    """Asks where this process records every few seconds in a daemon thread; changes wait in ``changes``.

    Stops by itself when no PulseAudio server answers the first time: nothing to watch there.
    """

    def __init__(self, query: Callable[[], Routes | None] = query_routes) -> None:
        self.changes: deque[RouteChange] = deque(maxlen=16)
        self._query = query
        self._watch = RouteWatch()
        self._stop = threading.Event()
        self._rebaseline = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture-route", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def rebaseline(self) -> None:
        self._rebaseline.set()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        delay, answered = 0.0, False
        while not self._stop.wait(delay):
            delay = CHECK_INTERVAL_S
            routes = self._query()
            if routes is None:
                if not answered:
                    return
                continue
            answered = True
            if self._rebaseline.is_set():
                self._rebaseline.clear()
                self._watch.rebaseline()
            change = self._watch.observe(routes)
            if change is not None:
                self.changes.append(change)


def route_notice(change: RouteChange, device: str) -> Notice:
    """What to tell the user about a move: a speaker's monitor is no microphone and needs them."""
    if change.back:
        return Notice("info", f"The microphone ({device}) is back.")
    gone = f"The microphone ({device}) went away"
    after = change.after
    if after is None:
        return Notice("error", f"{gone}. Plug it back in or choose another in Settings.", needs_user=True)
    if after.is_monitor:
        return Notice(
            "error",
            f"{gone}, and the system now records '{after.description}', which is what a speaker plays, "
            "not a microphone. Plug the microphone back in or choose another in Settings.",
            needs_user=True,
        )
    return Notice("warning", f"{gone}; the system switched to '{after.description}', now heard instead.")
