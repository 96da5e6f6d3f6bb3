"""Audio devices that go away under the app: the whole app on the PulseAudio virtual devices."""

from __future__ import annotations

import time

import pytest

from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp
from tests.scripted_peer import ScriptedPeer

pytestmark = pytest.mark.devices


@pytest.mark.fault("A1")
def test_an_unplugged_microphone_is_reported_and_so_is_its_return(virtual_audio: VirtualAudioRig) -> None:
    """PulseAudio moves the recording to a speaker's monitor without a word to PortAudio."""
    devices = ["--input-device", virtual_audio.mic, "--output-device", virtual_audio.speaker]
    with ScriptedPeer([]) as peer:
        app = HeadlessApp(["--url", peer.url, *devices])
        gone, back = _unplug_and_replug(app, virtual_audio)
    assert virtual_audio.mic in gone and "not a microphone" in gone and "Settings" in gone
    assert virtual_audio.mic in back
    assert not any("Traceback" in line for line in app.errors)


def _unplug_and_replug(app: HeadlessApp, virtual_audio: VirtualAudioRig) -> tuple[str, str]:
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 60)
        time.sleep(3)  # the watcher has seen where the app records
        virtual_audio.unplug_mic()
        try:
            gone = app.wait_for(lambda line: "went away" in line, 20, stderr=True)
        finally:
            virtual_audio.plug_mic()
        back = app.wait_for(lambda line: "is back" in line, 20, stderr=True)
    finally:
        app.stop()
    return gone, back
