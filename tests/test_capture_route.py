"""Noticing a microphone the sound server replaced: the readings, the decisions, and a real server."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.audio.capture_route import (
    RouteChange,
    Routes,
    RouteWatch,
    RouteWatcher,
    Source,
    query_routes,
    read_routes,
    route_notice,
    subscribe,
)
from app.audio.devices import find_device
from app.audio.streams import open_stream
from app.testkit.rig import VirtualAudioRig

MIC = Source("usb_mic", "USB headset", is_monitor=False)
BUILTIN = Source("builtin", "Built-in microphone", is_monitor=False)
MONITOR = Source("speakers.monitor", "Monitor of Speakers", is_monitor=True)


def _sources(*sources: Source) -> list[dict[str, object]]:
    return [
        {
            "index": n,
            "name": s.name,
            "description": s.description,
            "properties": {"device.class": "monitor" if s.is_monitor else "sound"},
        }
        for n, s in enumerate(sources)
    ]


def _outputs(*pairs: tuple[int, int]) -> list[dict[str, object]]:
    """(source index, process id) per recording stream, as pactl lists them."""
    return [
        {"index": 10 + n, "source": i, "properties": {"application.process.id": str(pid)}}
        for n, (i, pid) in enumerate(pairs)
    ]


def test_the_reading_keeps_this_processes_streams_and_every_source() -> None:
    routes = read_routes(_outputs((1, 42), (2, 7)), _sources(BUILTIN, MIC, MONITOR), pid=42)
    assert routes.recorded == (MIC,)
    assert routes.available == {"builtin", "usb_mic", "speakers.monitor"}


@pytest.mark.parametrize("junk", [None, "text", [1, "x", {"index": "1"}], {"index": 1}])
def test_a_reading_of_junk_is_empty_not_an_error(junk: object) -> None:
    assert read_routes(junk, junk, pid=1) == Routes((), frozenset())


def test_a_vanished_microphone_is_news_once_and_its_return_too() -> None:
    watch = RouteWatch()
    assert watch.observe(Routes((), frozenset({"usb_mic"}))) is None  # not attached yet
    assert watch.observe(Routes((MIC,), frozenset({"usb_mic", "builtin"}))) is None  # the baseline
    assert watch.observe(Routes((MIC,), frozenset({"usb_mic", "builtin"}))) is None
    moved = watch.observe(Routes((MONITOR,), frozenset({"builtin", "speakers.monitor"})))
    assert moved == RouteChange(MIC, MONITOR)
    assert watch.observe(Routes((MONITOR,), frozenset({"builtin", "speakers.monitor"}))) is None
    back = watch.observe(Routes((MONITOR,), frozenset({"usb_mic", "speakers.monitor"})))
    assert back is not None and back.back


def test_other_streams_of_the_process_coming_and_going_are_no_news() -> None:
    watch = RouteWatch()
    watch.observe(Routes((MIC,), frozenset({"usb_mic", "builtin"})))
    assert watch.observe(Routes((MIC, BUILTIN), frozenset({"usb_mic", "builtin"}))) is None
    assert watch.observe(Routes((BUILTIN,), frozenset({"usb_mic", "builtin"}))) is None


def test_the_notice_says_what_the_app_hears_now() -> None:
    monitor = route_notice(RouteChange(MIC, MONITOR), "hv_mic")
    assert monitor.level == "error" and monitor.needs_user
    assert "hv_mic" in monitor.message and "Monitor of Speakers" in monitor.message
    assert "not a microphone" in monitor.message
    other = route_notice(RouteChange(MIC, BUILTIN), "hv_mic")
    assert other.level == "warning" and not other.needs_user and "Built-in microphone" in other.message
    nothing = route_notice(RouteChange(MIC, None), "hv_mic")
    assert nothing.needs_user and "Settings" in nothing.message
    assert route_notice(RouteChange(MIC, MIC), "hv_mic").level == "info"


def test_without_a_sound_server_the_watcher_stops_by_itself() -> None:
    asked: list[int] = []

    def nobody() -> Routes | None:
        asked.append(1)
        return None

    watcher = RouteWatcher(nobody)
    watcher.start()
    watcher._thread.join(5)
    assert not watcher._thread.is_alive() and asked == [1] and not watcher.changes


@pytest.mark.devices
def test_a_real_sound_server_reports_the_microphone_unplugged_and_back(
    virtual_audio: VirtualAudioRig,
) -> None:
    mic = find_device(virtual_audio.mic, "input")
    with open_stream("input", mic, lambda *args: None):
        deadline = time.monotonic() + 5
        routes = query_routes()
        while (routes is None or not routes.recorded) and time.monotonic() < deadline:
            time.sleep(0.1)
            routes = query_routes()
        assert routes is not None and [s.name for s in routes.recorded] == [virtual_audio.mic]
        watch = RouteWatch()
        watch.observe(routes)
        virtual_audio.unplug_mic()
        try:
            moved = watch.observe(query_routes() or Routes((), frozenset()))
            assert moved is not None and moved.before.name == virtual_audio.mic
            assert moved.after is not None and moved.after.is_monitor  # where PulseAudio put the stream
        finally:
            virtual_audio.plug_mic()
        back = watch.observe(query_routes() or Routes((), frozenset()))
        assert back is not None and back.back


def test_the_watcher_asks_again_when_the_sound_server_tells_of_a_recording_change() -> None:
    asked: list[float] = []

    def routes() -> Routes | None:
        asked.append(time.monotonic())
        return Routes((), frozenset())

    # Stands in for `pactl subscribe`: a playback change (not asked about), then a recording one;
    # like the real one it ends when its standard input closes.
    script = (
        "import sys, time\n"
        "print(\"Event 'change' on sink-input #7\", flush=True)\n"
        "time.sleep(0.6)\n"
        "print(\"Event 'new' on source-output #12\", flush=True)\n"
        "sys.stdin.read()\n"
    )

    def events() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    watcher = RouteWatcher(routes, events)
    watcher.start()
    try:
        deadline = time.monotonic() + 10
        while len(asked) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        assert len(asked) == 2  # once at the start, once for the recording stream only
        assert asked[1] - asked[0] >= 0.5
    finally:
        watcher.stop()
        watcher._thread.join(5)
    assert not watcher._thread.is_alive()  # stopping ends the subscription and the thread


@pytest.mark.devices
def test_the_subscription_ends_when_its_input_closes(virtual_audio: VirtualAudioRig) -> None:
    subscription = subscribe()
    assert subscription is not None and subscription.stdin is not None
    time.sleep(0.3)
    assert subscription.poll() is None  # running, waiting for events
    shell = child_pids(subscription.pid)
    subscription.stdin.close()  # what the app dying does too
    assert subscription.wait(5) is not None
    deadline = time.monotonic() + 5
    while any(Path(f"/proc/{pid}").exists() for pid in shell) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(Path(f"/proc/{pid}").exists() for pid in shell), "pactl outlived its shell"


def child_pids(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(text) for text in found.stdout.split()]
