"""The engine without sound devices: the audio side is a stand-in (tests/fake_audio.py), the server
the scripted realtime peer on loopback. What the engine decides and sends is tested here; the
end-to-end tests with the virtual devices are in test_engine.py."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.audio.devices import AudioDevice
from app.core.actions import Notice, StateChanged, ToolActivity, Transcript, TurnCompleted
from app.defaults import session_config
from app.engine import Engine, EngineConfig
from app.realtime import custom_endpoint
from tests.engine_support import Recorder, answering_peer, slow_tool_registry, wait_ready
from tests.fake_audio import FakeAudio
from tests.scripted_peer import ScriptedPeer
from tests.server_events import pcm

NO_DEVICE = AudioDevice(0, "no device", "none", 1, 1, 48000.0)


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with answering_peer() as running:
        yield running


@pytest.fixture
def audio() -> FakeAudio:
    return FakeAudio()


def _engine(peer: ScriptedPeer, listener: Recorder, audio: FakeAudio | None = None, **options: Any) -> Engine:
    tools = slow_tool_registry()
    config = EngineConfig(
        endpoint=custom_endpoint(peer.url, None),
        session=session_config(tuple(tools.specs())),
        input_device=NO_DEVICE,
        output_device=NO_DEVICE,
        tools=tools,
        **options,
    )
    return Engine(config, listener, audio if audio is not None else FakeAudio())


def test_the_engine_plays_the_answer_through_the_audio_it_was_given(
    peer: ScriptedPeer, audio: FakeAudio
) -> None:
    listener = Recorder()
    engine = _engine(peer, listener, audio)
    engine.start()
    try:
        assert audio.started
        wait_ready(listener)
        engine.send_text("my vpn keeps dropping")
        listener.wait_for(lambda: bool(listener.of(TurnCompleted)), 10, "the answer played out")
        assert engine.input_level_dbfs == audio.input_level_dbfs  # what the UI's meter reads
        engine.set_muted(True)
        listener.wait_for(lambda: not audio.listening, 2, "the detector muted")
    finally:
        engine.stop()
    assert audio.closed
    (turn,) = listener.of(TurnCompleted)
    played = sum(size for item, size in audio.played if not item.startswith("cue"))
    assert played == len(pcm(1500))  # every byte of the answer went to the audio side
    assert turn.metrics.first_audio_out is not None and turn.metrics.played_ms == pytest.approx(1500, abs=1)
    states = [s.state.value for s in listener.of(StateChanged)]
    spoke = len(states) - 1 - states[::-1].index("assistant_speaking")
    assert "listening" in states[spoke:]  # back to listening once the answer had played
    assert audio.paces > 0  # told every pump whether a conversation is under way


def test_a_local_barge_in_halts_the_answer_and_tells_the_server_what_was_heard(
    peer: ScriptedPeer, audio: FakeAudio
) -> None:
    peer.realtime_factor = 1.0
    listener = Recorder()
    engine = _engine(peer, listener, audio)
    engine.start()
    try:
        wait_ready(listener)
        engine.send_text("my vpn keeps dropping")
        listener.wait_for(lambda: bool(audio.items_playing()), 10, "the answer playing")
        time.sleep(0.4)
        audio.user_speaks("barge_in")
        listener.wait_for(lambda: bool(peer.of_type("conversation.item.truncate")), 5, "the truncate")
    finally:
        engine.stop()
    assert audio.halts, "the answer was not halted"
    (truncate,) = peer.of_type("conversation.item.truncate")
    assert 300 <= truncate["audio_end_ms"] <= 1500  # what the listener heard, not what arrived
    assert "response.cancel" in peer.types()
    assert not listener.of(TurnCompleted) or listener.of(TurnCompleted)[0].metrics.barge_in


def test_slow_tool_reports_status_while_audio_keeps_flowing(peer: ScriptedPeer) -> None:
    listener = Recorder()
    engine = _engine(peer, listener)
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


def test_drop_mid_answer_reconnects_restores_the_session_and_carries_on(peer: ScriptedPeer) -> None:
    peer.realtime_factor = 1.0  # the answer is still arriving when the connection drops
    listener = Recorder()
    engine = _engine(peer, listener)
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


def test_planned_rollover_opens_a_fresh_session_when_idle(peer: ScriptedPeer) -> None:
    peer.close_after_s = 4.0  # the server's cap, which the planned rollover comes before
    listener = Recorder()
    engine = _engine(peer, listener, rollover_after_s=1.0)
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
