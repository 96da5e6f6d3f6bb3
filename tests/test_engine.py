"""The engine against a scripted realtime peer through the virtual devices: tools, drops, rollover."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.audio.devices import find_device
from app.core.actions import Notice, TurnCompleted
from app.defaults import session_config
from app.engine import Engine, EngineConfig
from app.realtime import custom_endpoint
from tests.app_driver import HeadlessApp
from tests.engine_support import Recorder, answering_peer, slow_tool_registry, wait_ready
from tests.scripted_peer import Answer, ScriptedPeer
from tests.server_events import pcm

pytestmark = pytest.mark.devices


@pytest.fixture
def peer() -> Iterator[ScriptedPeer]:
    with answering_peer() as running:
        yield running


def _engine(rig: Any, peer: ScriptedPeer, listener: Recorder, **options: Any) -> Engine:
    tools = slow_tool_registry()
    config = EngineConfig(
        endpoint=custom_endpoint(peer.url, None),
        session=session_config(tuple(tools.specs())),
        input_device=find_device(rig.mic, "input"),
        output_device=find_device(rig.speaker, "output"),
        tools=tools,
        **options,
    )
    return Engine(config, listener)


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
    # About five messages a second of 200 ms each (24 kHz PCM16: 9,600 bytes), not fifty of 20 ms.
    assert len(sizes) < 8 * elapsed
    assert sorted(sizes)[len(sizes) // 2] >= 9600
    # Every sample still goes out: two seconds of audio in two seconds, give or take what is held.
    assert abs(sum(sizes) / 48000 - elapsed) < 0.35
