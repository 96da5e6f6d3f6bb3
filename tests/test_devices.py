from __future__ import annotations

import subprocess
import sys

import pytest

from app.audio.devices import AudioDevice, DeviceError, format_device_table, list_devices, match_device
from app.testkit.rig import VirtualAudioRig


def _dev(index: int, name: str, ins: int = 0, outs: int = 0, **flags: bool) -> AudioDevice:
    return AudioDevice(index, name, "ALSA", ins, outs, 48000.0, **flags)


DEVICES = [
    _dev(0, "vmic", ins=2),
    _dev(1, "vmic_feed", outs=2),
    _dev(2, "vmic_feed_capture", ins=1),
    _dev(3, "Built-in Microphone", ins=1, is_default_input=True),
    _dev(4, "Built-in Speakers", outs=2, is_default_output=True),
    _dev(5, "USB Headset", ins=1, outs=2),
]


def test_exact_name_wins_over_longer_names_containing_it() -> None:
    assert match_device(DEVICES, "vmic", "input").index == 0
    assert match_device(DEVICES, "vmic_feed", "output").index == 1


def test_exact_name_ignoring_case_wins_over_substring() -> None:
    assert match_device(DEVICES, "VMIC", "input").index == 0


def test_unique_substring_case_insensitive() -> None:
    assert match_device(DEVICES, "headset", "input").index == 5
    assert match_device(DEVICES, "speak", "output").index == 4


def test_ambiguous_substring_names_every_candidate() -> None:
    with pytest.raises(DeviceError) as err:
        match_device(DEVICES, "mic", "input")
    message = str(err.value)
    assert "ambiguous" in message
    for candidate in ("[0] vmic", "[2] vmic_feed_capture", "[3] Built-in Microphone"):
        assert candidate in message
    # Only input devices are candidates for an input.
    assert "[1]" not in message


def test_no_match_lists_devices_of_that_direction() -> None:
    with pytest.raises(DeviceError) as err:
        match_device(DEVICES, "bluetooth", "output")
    message = str(err.value)
    assert "no output device matches 'bluetooth'" in message
    assert "[4] Built-in Speakers" in message and "vmic_feed_capture" not in message


def test_index_as_int_or_text() -> None:
    assert match_device(DEVICES, 5, "output").name == "USB Headset"
    assert match_device(DEVICES, " 3 ", "input").name == "Built-in Microphone"


def test_index_of_wrong_direction_or_missing() -> None:
    with pytest.raises(DeviceError, match="no input channels"):
        match_device(DEVICES, 4, "input")
    with pytest.raises(DeviceError, match="no output device has index 42"):
        match_device(DEVICES, 42, "output")


def test_default_device_when_nothing_asked() -> None:
    assert match_device(DEVICES, None, "input").index == 3
    assert match_device(DEVICES, None, "output").index == 4
    with pytest.raises(DeviceError, match="no input device is available"):
        match_device([_dev(0, "out only", outs=2)], None, "input")


def test_table_marks_defaults() -> None:
    table = format_device_table(DEVICES).splitlines()
    line_for = {name: next(line for line in table if name in line) for name in ("Microphone", "Speakers")}
    assert line_for["Microphone"].startswith("<")
    assert line_for["Speakers"].startswith(" >")
    assert "48000" in line_for["Speakers"]


@pytest.mark.devices
def test_virtual_devices_are_listed_and_resolved(virtual_audio: VirtualAudioRig) -> None:
    devices = list_devices()
    names = {d.name for d in devices}
    assert {virtual_audio.mic, virtual_audio.mic_feed, virtual_audio.speaker} <= names
    mic = match_device(devices, virtual_audio.mic, "input")
    assert mic.name == virtual_audio.mic  # not hv_mic_feed, which also contains "hv_mic"


@pytest.mark.devices
def test_devices_command_prints_the_table(virtual_audio: VirtualAudioRig) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app", "devices"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if virtual_audio.speaker in line]
    assert rows and "ALSA" in rows[0]
    assert "default input" in result.stdout
