"""The engine against a scripted realtime peer through the virtual devices: tools, drops, rollover."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.audio.devices import find_device
from app.core.actions import Notice, StateChanged, ToolActivity, Transcript, TurnCompleted
from app.defaults import session_config
from app.engine import Engine, EngineConfig
from app.realtime import custom_endpoint
from app.tools.registry import Tool, ToolRegistry
from tests.app_driver import HeadlessApp
from tests.scripted_peer import Answer, ScriptedPeer
from tests.server_events import pcm

pytestmark = pytest.mark.devices


class Recorder:
    """An EngineListener that keeps everything, with a way to wait for a condition."""

    def __init__(self) -> None:
        self.events: list[Any] = []
        self._changed = threading.Condition()

    def _add(self, event: Any) -> None:
        with self._changed:
            self.events.append(event)
            self._changed.notify_all()

    on_state = on_transcript = on_tool = on_turn = on_notice = _add

    def of(self, cls: type[Any]) -> list[Any]:
        return [e for e in list(self.events) if isinstance(e, cls)]

    def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out waiting for {what}; events: {self.events[-15:]}")
                self._changed.wait(min(left, 0.1))


def wait_ready(listener: Recorder) -> None:
    listener.wait_for(
        lambda: any(e.state.value == "listening" for e in listener.of(StateChanged)), 10, "ready"
    )


async def _slow_lookup(args: dict[str, Any]) -> dict[str, Any]:
    await asyncio.sleep(2.0)
    return {"message": f"Found the article about {args.get('topic', 'that')}"}


def _registry() -> ToolRegistry:
    registry = ToolRegistry()
    registry.register(
        Tool(
            name="slow_lookup",
            description="A lookup that takes two seconds.",
            parameters={"type": "object", "properties": {"topic": {"type": "string"}}},
            handler=_slow_lookup,
        )
    )
    return registry


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    answers = [Answer("Here is what I found about your VPN.", pcm(1500)), Answer("Anything else?", pcm(800))]
    with ScriptedPeer(answers, realtime_factor=2.0) as running:
        yield running


def _engine(rig: Any, peer: ScriptedPeer, listener: Recorder, **options: Any) -> Engine:
    tools = _registry()
    config = EngineConfig(
        endpoint=custom_endpoint(peer.url, None),
        session=session_config(tuple(tools.specs())),
        input_device=find_device(rig.mic, "input"),
        output_device=find_device(rig.speaker, "output"),
        tools=tools,
        **options,
    )
    return Engine(config, listener)


def test_slow_tool_reports_status_while_audio_keeps_flowing(virtual_audio: Any, peer: ScriptedPeer) -> None:
    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener)
    engine.start()
    try:
        wait_ready(listener)
        peer.tool_calls = [("slow_lookup", '{"topic": "VPN"}')]
        engine.send_text("my vpn keeps dropping")
        listener.wait_for(
            lambda: any(t.status == "started" for t in listener.of(ToolActivity)), 5, "tool start"
        )
        started = time.monotonic()
        appends_before = len(peer.of_type("input_audio_buffer.append"))
        listener.wait_for(
            lambda: any(t.status == "slow" for t in listener.of(ToolActivity)), 5, "slow status"
        )
        slow_after = time.monotonic() - started
        listener.wait_for(lambda: any(t.status == "done" for t in listener.of(ToolActivity)), 5, "tool done")
        # The microphone kept streaming while the tool ran: the loop was never blocked.
        appends_during = len(peer.of_type("input_audio_buffer.append")) - appends_before
        assert appends_during >= 50, f"only {appends_during} audio frames sent during a 2 s tool"
        assert 1.2 < slow_after < 2.0
        done = next(t for t in listener.of(ToolActivity) if t.status == "done")
        assert done.message == "Found the article about VPN"
        listener.wait_for(lambda: bool(listener.of(TurnCompleted)), 10, "the answer after the tool")
    finally:
        engine.stop()
    outputs = [
        e for e in peer.of_type("conversation.item.create") if e["item"]["type"] == "function_call_output"
    ]
    assert len(outputs) == 1 and "VPN" in outputs[0]["item"]["output"]
    types = peer.types()
    assert types.index("response.create", types.index("conversation.item.create") + 2) > 0
    (turn,) = listener.of(TurnCompleted)
    assert turn.user_text == "my vpn keeps dropping"
    assert turn.assistant_text == "Here is what I found about your VPN."


def test_drop_mid_answer_reconnects_restores_the_session_and_carries_on(
    virtual_audio: Any, peer: ScriptedPeer
) -> None:
    peer.realtime_factor = 1.0  # the answer is still arriving when the connection drops
    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener)
    engine.start()
    try:
        wait_ready(listener)
        engine.send_text("my vpn keeps dropping")
        listener.wait_for(
            lambda: any(e.role == "assistant" for e in listener.of(Transcript)), 10, "the answer to start"
        )
        dropped_at = time.monotonic()
        peer.drop_connection()
        listener.wait_for(
            lambda: peer.connections >= 2 and len(peer.of_type("session.update")) >= 2, 5, "reconnect"
        )
        restored_after = peer.connected_at[1] - dropped_at
        listener.wait_for(lambda: bool(listener.of(TurnCompleted)), 15, "the answer after the reconnect")
    finally:
        engine.stop()
    assert restored_after < 2.0, f"reconnected after {restored_after:.2f} s"
    notices = [n.message.lower() for n in listener.of(Notice)]
    assert any("reconnect" in n for n in notices)
    # On the new connection: session.update, the conversation so far, then a new response.
    second = peer.received[[i for i, e in enumerate(peer.received) if e["type"] == "session.update"][1] :]
    replayed = [e["item"] for e in second if e["type"] == "conversation.item.create"]
    assert replayed and replayed[0]["role"] == "user"
    assert replayed[0]["content"][0]["text"] == "my vpn keeps dropping"
    assert "response.create" in [e["type"] for e in second]
    turns = listener.of(TurnCompleted)
    assert turns[-1].metrics.reconnects == 1


def test_planned_rollover_opens_a_fresh_session_when_idle(virtual_audio: Any, peer: ScriptedPeer) -> None:
    peer.close_after_s = 4.0  # the server's cap, which the planned rollover comes before
    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener, rollover_after_s=1.0)
    engine.start()
    try:
        # The second session counts once the peer has its session.update, not at the TCP accept.
        listener.wait_for(
            lambda: peer.connections >= 2 and len(peer.of_type("session.update")) >= 2, 6, "a rollover"
        )
    finally:
        engine.stop()
    assert peer.close_codes[0] == 1000 and not peer.closed_by_peer[0]  # the client's own normal close
    assert not [n for n in listener.of(Notice) if n.level == "error"]


def test_the_app_rolls_over_before_a_custom_servers_session_cap(virtual_audio: Any, tmp_path: Path) -> None:
    """endpoint.session_minutes is the server's cap: the app ends the session itself, normally, before."""
    cap_s = 12.0  # session_minutes = 0.2: the app rolls over 2 s (a sixth) before, after 10 s
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "settings.toml").write_text(f"[endpoint]\nsession_minutes = {cap_s / 60:g}\n")
    with ScriptedPeer([Answer("Anything else?", pcm(800))], close_after_s=cap_s) as peer:
        app = HeadlessApp(
            [
                "--url",
                peer.url,
                "--input-device",
                virtual_audio.mic,
                "--output-device",
                virtual_audio.speaker,
            ],
            {"HELPDESK_VOICE_CONFIG_DIR": str(config_dir)},
        )
        try:
            app.wait_for(lambda line: line.startswith("listening on"), 30)
            deadline = time.monotonic() + cap_s + 30
            while not (peer.closed_at and peer.connections >= 2 and len(peer.of_type("session.update")) >= 2):
                assert time.monotonic() < deadline, (
                    f"no second session; stdout={app.lines} stderr={app.errors[-10:]}"
                )
                assert app.process.poll() is None, f"the app ended; stderr={app.errors[-10:]}"
                time.sleep(0.05)
        finally:
            app.stop()
    lasted = peer.closed_at[0] - peer.connected_at[0]
    assert not peer.closed_by_peer[0], f"the server's cap ended the first session after {lasted:.1f} s"
    assert not any("session_minutes" in line for line in app.errors), app.errors  # the setting is known
    assert peer.close_codes[0] == 1000, peer.close_codes  # the client's normal close, not the cap's 1001
    assert cap_s - 2.0 - 0.5 < lasted < cap_s, f"rolled over after {lasted:.1f} s"
    assert peer.connected_at[1] - peer.closed_at[0] < 5.0  # and the next session followed at once


def test_ctrl_c_exits_cleanly_within_a_second(virtual_audio: Any, peer: ScriptedPeer) -> None:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "app",
            "--headless",
            "--url",
            peer.url,
            "--input-device",
            virtual_audio.mic,
            "--output-device",
            virtual_audio.speaker,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening on"), line
        sent = time.monotonic()
        process.send_signal(signal.SIGINT)
        code = process.wait(5)
        took = time.monotonic() - sent
    finally:
        if process.poll() is None:
            process.kill()
    assert code == 0
    assert took < 1.5, f"took {took:.2f} s to exit"
    assert "Traceback" not in (process.stderr.read() if process.stderr else "")


def test_slow_answer_gets_the_earcon_then_the_answer_replaces_it(
    virtual_audio: Any, peer: ScriptedPeer, monitor: Any
) -> None:
    peer.answer_delay_s = 1.6
    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener)
    engine.start()
    try:
        wait_ready(listener)
        asked = time.monotonic()
        engine.send_text("my vpn keeps dropping")
        listener.wait_for(lambda: bool(listener.of(TurnCompleted)), 10, "the answer")
    finally:
        engine.stop()
    (turn,) = listener.of(TurnCompleted)
    assert turn.metrics.cue_played
    times, samples = monitor.timeline()
    cue = np.abs(samples[(times > asked + 0.75) & (times < asked + 1.3)])
    assert len(cue) and 0.03 < cue.max() < 0.2, "no soft earcon while waiting"
    before = np.abs(samples[(times > asked) & (times < asked + 0.7)])
    assert len(before) and before.max() < 0.01, "the earcon came too early"


def _pactl(rig: Any, *args: str) -> str:
    done = subprocess.run(
        ["pactl", *args],
        env={**os.environ, **rig.env},
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    )
    return done.stdout


def test_a_stalled_microphone_is_reported_once_and_works_again_when_it_returns(
    virtual_audio: Any, peer: ScriptedPeer
) -> None:
    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener)
    engine.start()
    try:
        wait_ready(listener)
        # A suspended source stops delivering, as a device that is pulled out does on many systems.
        _pactl(virtual_audio, "suspend-source", virtual_audio.mic, "1")

        def lost() -> list[Notice]:
            return [n for n in listener.of(Notice) if n.needs_user and "microphone" in n.message]

        listener.wait_for(lambda: bool(lost()), 5, "the lost-microphone notice")
        assert "unplugged" in lost()[0].message and virtual_audio.mic in lost()[0].message
        time.sleep(3.5)  # long enough for at least one attempt to reopen it while it is still gone
        _pactl(virtual_audio, "suspend-source", virtual_audio.mic, "0")
        listener.wait_for(
            lambda: any("works again" in n.message for n in listener.of(Notice)), 10, "the microphone back"
        )
        assert len(lost()) == 1, "the loss was reported more than once"

        def sent_s() -> float:  # seconds of microphone audio the peer has had (24 kHz PCM16)
            return (
                sum(int(event["audio_bytes"]) for event in peer.of_type("input_audio_buffer.append")) / 48000
            )

        before = sent_s()
        time.sleep(1.0)
        # An idle app sends 100 ms at a time: count the audio, not the messages.
        assert sent_s() - before > 0.6, "no audio after reopening"
    finally:
        engine.stop()


def test_a_microphone_giving_only_digital_silence_is_reported_on_a_system_that_can_block_it(
    virtual_audio: Any, peer: ScriptedPeer
) -> None:
    from app.audio.mic_access import MACOS_SETTINGS_LINK, SilentMicWatch

    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener)
    # The rig's microphone is exact zeros while nothing speaks into it: what macOS hands an app it
    # does not allow to listen. Judged as on a Mac, with a shorter wait.
    engine._silent_mic = SilentMicWatch("darwin", silent_for_s=1.0)
    engine.start()
    try:
        wait_ready(listener)

        def blocked() -> list[Notice]:
            return [n for n in listener.of(Notice) if MACOS_SETTINGS_LINK in n.message]

        listener.wait_for(lambda: bool(blocked()), 10, "the blocked-microphone notice")
        time.sleep(1.5)
        assert len(blocked()) == 1 and blocked()[0].needs_user
    finally:
        engine.stop()


def test_an_idle_engine_sends_the_microphone_in_fewer_larger_messages_and_loses_none(
    virtual_audio: Any, peer: ScriptedPeer
) -> None:
    from app.audio.pipeline import AudioSettings

    listener = Recorder()
    engine = _engine(virtual_audio, peer, listener, audio=AudioSettings(idle_after_s=0.5))
    engine.start()
    try:
        wait_ready(listener)
        deadline = time.monotonic() + 5
        while not engine.audio.idle and time.monotonic() < deadline:
            time.sleep(0.05)
        assert engine.audio.idle
        before = len(peer.of_type("input_audio_buffer.append"))
        started = time.monotonic()
        time.sleep(2.0)
        appends = peer.of_type("input_audio_buffer.append")[before:]
        elapsed = time.monotonic() - started
    finally:
        engine.stop()
    sizes = [event["audio_bytes"] for event in appends]
    # About ten messages a second of 100 ms each (24 kHz PCM16: 4,800 bytes), not fifty of 20 ms.
    assert len(sizes) < 15 * elapsed
    assert sorted(sizes)[len(sizes) // 2] >= 4800
    # Every sample still goes out: two seconds of audio in two seconds, give or take a block.
    assert abs(sum(sizes) / 48000 - elapsed) < 0.25
