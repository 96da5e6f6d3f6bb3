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

:class:`RouteWatcher` asks when the sound server says a source or a recording stream changed
(``pactl subscribe``), not on a timer: starting two ``pactl`` processes every few seconds all day
cost an idle app more than its audio did.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.core.actions import Notice

CHECK_INTERVAL_S = 2.0  # where the sound server cannot tell of changes
# Even with the sound server telling of changes, ask now and then: an event can be missed.
SAFETY_INTERVAL_S = 60.0
# Events come in bursts (a device and its streams): ask once they settle.
SETTLE_S = 0.2


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


# `pactl subscribe` runs until it fails to write, so it would outlive an app that crashed. A shell
# holds it and ends it when its standard input, a pipe only the app holds, closes: when the watcher
# stops or the app dies, however it dies.
_SUBSCRIBE_WITH_PARENT = '"$0" subscribe & read -r _; kill "$!" 2>/dev/null'


def subscribe() -> subprocess.Popen[bytes] | None:
    """``pactl subscribe``: one line per change on the sound server; None where it cannot run.

    Close its standard input to end it (see ``_SUBSCRIBE_WITH_PARENT``).
    """
    pactl, shell = shutil.which("pactl"), shutil.which("sh")
    if pactl is None or shell is None:
        return None
    try:
        return subprocess.Popen(
            [shell, "-c", _SUBSCRIBE_WITH_PARENT, pactl],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    except OSError:
        return None


def _end(subscription: subprocess.Popen[bytes]) -> None:
    if subscription.stdin is not None:
        with contextlib.suppress(OSError):
            subscription.stdin.close()


def _finish(subscription: subprocess.Popen[bytes]) -> None:
    """Ends the subscription and waits (briefly) for it to go."""
    _end(subscription)
    with contextlib.suppress(subprocess.SubprocessError):
        subscription.wait(2)


def _about_recording(events: bytes) -> bool:
    """Whether ``pactl subscribe`` lines tell of a source or a recording stream (or a new server)."""
    return any(word in events for word in (b" source", b" source-output", b" server"))


class RouteWatcher:
    """Asks where this process records, in a daemon thread, whenever the sound server reports a
    change to sources or recording streams (every few seconds where it cannot); changes wait in
    ``changes``.

    Stops by itself when no PulseAudio server answers the first time: nothing to watch there.
    """

    def __init__(
        self,
        query: Callable[[], Routes | None] = query_routes,
        events: Callable[[], subprocess.Popen[bytes] | None] = subscribe,
    ) -> None:
        self.changes: deque[RouteChange] = deque(maxlen=16)
        self.queries = 0
        self._query = query
        self._events = events
        self._watch = RouteWatch()
        self._stop = threading.Event()
        self._rebaseline = threading.Event()
        self._subscription: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._run, name="capture-route", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def rebaseline(self) -> None:
        self._rebaseline.set()

    def stop(self) -> None:
        self._stop.set()
        subscription = self._subscription
        if subscription is not None:  # ends its output, which wakes the thread
            _end(subscription)

    def _run(self) -> None:
        if not self._check():
            return  # no sound server answered: nothing to watch
        self._subscription = self._events() if not self._stop.is_set() else None
        try:
            while not self._stop.is_set():
                if self._wait_for_change():
                    self._check()
        finally:
            if self._subscription is not None:
                _finish(self._subscription)

    def _wait_for_change(self) -> bool:
        """Waits for the sound server to tell of a change; True when it is time to ask again."""
        subscription = self._subscription
        if subscription is None or subscription.stdout is None:
            return not self._stop.wait(CHECK_INTERVAL_S)
        stream = subscription.stdout.fileno()
        readable, _, _ = select.select([stream], [], [], SAFETY_INTERVAL_S)
        if not readable:
            return True
        events = os.read(stream, 65536)
        if not events:  # the sound server went away: ask on a timer until the app restarts it
            _finish(subscription)
            self._subscription = None
            return True
        while select.select([stream], [], [], SETTLE_S)[0]:
            more = os.read(stream, 65536)
            if not more:
                break
            events += more
        return _about_recording(events)

    def _check(self) -> bool:
        """Asks once and notes any change; False when no sound server answered."""
        routes = self._query()
        self.queries += 1
        if routes is None:
            return False
        if self._rebaseline.is_set():
            self._rebaseline.clear()
            self._watch.rebaseline()
        change = self._watch.observe(routes)
        if change is not None:
            self.changes.append(change)
        return True


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
