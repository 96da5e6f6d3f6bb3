"""The settings dialog, the level meter and the device probe: real widgets offscreen, real files,
a file-backed keyring, and the PulseAudio virtual devices for the microphone and speaker checks."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")

import math
import re
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import keyring
import keyring.backends.fail
import keyring.errors
import numpy as np
import pytest
from PySide6.QtCore import Qt, QTimer
from PySide6.QtGui import QColor, QPalette
from PySide6.QtWidgets import QAbstractButton, QDialog, QLabel, QMessageBox, QPushButton, QWidget
from pytestqt.qtbot import QtBot

from app import config
from app.audio.devices import AudioDevice, DeviceError, find_device
from app.audio.level_probe import (
    SILENCE_DBFS,
    DeviceUnavailable,
    InputLevelProbe,
    chime,
    peak_dbfs,
    play_test_sound,
)
from app.audio.probe import SignalPlayer, TimedRecorder
from app.audio.resample import FloatArray
from app.audio.streams import open_stream
from app.config import load_settings, secrets
from app.launch import LaunchError, plan_from_settings
from app.testkit.rig import VirtualAudioRig
from app.ui.level_meter import FLOOR_DBFS, LevelMeter, describe_level
from app.ui.settings_dialog import (
    API_KEY_FIELD,
    LOCKED_NOTE,
    SYSTEM_DEFAULT_LABEL,
    TICKET_SECRET_FIELD,
    SettingsDialog,
)
from tests.file_keyring import FileKeyring
from tests.rt_server import RtInstance

KEY = "sk-test-settings-dialog-0123456789SECRET"
UTTERANCE = "Hello, can you hear me?"


def user_file(env: dict[str, str]) -> Path:
    return Path(env[config.CONFIG_DIR_ENV]) / "settings.toml"


def write_policy(env: dict[str, str], text: str) -> None:
    path = Path(env[config.POLICY_ENV])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, "utf-8")


@pytest.fixture
def make_dialog(
    qtbot: QtBot, env: dict[str, str], file_keyring: FileKeyring
) -> Callable[..., SettingsDialog]:
    def make(environ: dict[str, str] | None = None) -> SettingsDialog:
        dialog = SettingsDialog(environ=environ if environ is not None else env)
        qtbot.addWidget(dialog)
        return dialog

    return make


def show_page(qtbot: QtBot, dialog: SettingsDialog, page: QWidget) -> None:
    """Shows the dialog on ``page``; any page but Audio keeps the microphone closed."""
    dialog.tabs.setCurrentWidget(page)
    dialog.show()
    qtbot.waitExposed(dialog)


def shown(label: QLabel, dialog: SettingsDialog) -> bool:
    return label.isVisibleTo(dialog) and bool(label.text())


# ----------------------------------------------------------------------------------------------
# LevelMeter
# ----------------------------------------------------------------------------------------------
def test_level_meter_clamps_and_speaks_the_level_in_words(qtbot: QtBot) -> None:
    meter = LevelMeter()
    qtbot.addWidget(meter)
    assert meter.level() == FLOOR_DBFS
    assert "silent" in meter.accessibleName()

    meter.set_level(-20.0)
    assert meter.level() == -20.0
    assert meter.accessibleName().endswith(": good")
    assert "about -20 dB" in meter.accessibleDescription()

    meter.set_level(3.0)  # above full scale
    assert meter.level() == 0.0
    assert "too loud" in meter.accessibleName()

    for reading in (-math.inf, math.nan, -200.0):
        meter.set_level(reading)
        assert meter.level() == FLOOR_DBFS
        assert "silent" in meter.accessibleName()

    meter.set_label("Speaker level")
    meter.set_level(-40.0)
    assert meter.accessibleName() == "Speaker level: quiet"
    assert [describe_level(x) for x in (-1, -8, -25, -40, -50, -70)] == [
        "too loud",
        "loud",
        "good",
        "quiet",
        "very quiet",
        "silent",
    ]


def test_level_meter_peak_holds_then_falls(qtbot: QtBot) -> None:
    meter = LevelMeter()
    qtbot.addWidget(meter)
    meter.set_level(-6.0)
    meter.set_level(-25.0)
    assert meter.level() == -25.0
    assert meter.peak() == -6.0  # held for a moment after the level drops
    start = time.monotonic()
    qtbot.waitUntil(lambda: meter.peak() < -10.0, timeout=3000)
    assert time.monotonic() - start > 0.8  # it held before it fell
    qtbot.waitUntil(lambda: meter.peak() == -25.0, timeout=3000)  # falls to the level, not below
    meter.set_level(-12.0)
    assert meter.peak() == -12.0  # a new peak is caught at once


def test_level_meter_paints_in_the_palette_colours(qtbot: QtBot) -> None:
    meter = LevelMeter()
    qtbot.addWidget(meter)
    meter.resize(200, 16)
    meter.set_level(-30.0)  # half way

    def colours(highlight: QColor, base: QColor) -> tuple[QColor, QColor]:
        palette = meter.palette()
        palette.setColor(QPalette.ColorRole.Highlight, highlight)
        palette.setColor(QPalette.ColorRole.Base, base)
        meter.setPalette(palette)
        image = meter.grab().toImage()
        return image.pixelColor(40, 8), image.pixelColor(170, 8)

    filled, empty = colours(QColor("#ff0000"), QColor("#ffffff"))
    assert filled == QColor("#ff0000") and empty == QColor("#ffffff")
    filled, empty = colours(QColor("#00aa00"), QColor("#101010"))  # a dark theme
    assert filled == QColor("#00aa00") and empty == QColor("#101010")


# ----------------------------------------------------------------------------------------------
# InputLevelProbe and the test sound, alone
# ----------------------------------------------------------------------------------------------
def test_peak_dbfs_reads_the_loudest_sample() -> None:
    assert peak_dbfs(np.zeros((480, 1), np.float32)) == SILENCE_DBFS
    assert peak_dbfs(np.zeros((0, 2), np.float32)) == SILENCE_DBFS
    assert peak_dbfs(np.full((480, 2), np.nan, np.float32)) == SILENCE_DBFS
    assert peak_dbfs(np.array([[0.1], [-0.05]], np.float32)) == pytest.approx(-20.0, abs=0.01)
    assert peak_dbfs(np.array([[0.2, -0.5]], np.float32)) == pytest.approx(-6.02, abs=0.01)
    assert peak_dbfs(np.ones((4, 1), np.float32)) == pytest.approx(0.0)


def ghost(inputs: int = 1, outputs: int = 1) -> AudioDevice:
    return AudioDevice(9999, "Ghost headset", "ALSA", inputs, outputs, 48000.0)


def test_unopenable_devices_raise_a_clear_device_error() -> None:
    probe = InputLevelProbe(ghost())
    with pytest.raises(DeviceError, match="cannot open the input device 'Ghost headset'"):
        probe.start()
    assert not probe.running
    assert probe.level_dbfs == SILENCE_DBFS
    probe.stop()  # harmless when nothing is open

    with pytest.raises(DeviceUnavailable, match="'Ghost headset' is not an input device"):
        InputLevelProbe(ghost(inputs=0)).start()
    with pytest.raises(DeviceError, match="cannot open the output device 'Ghost headset'"):
        play_test_sound(ghost())
    with pytest.raises(DeviceUnavailable, match="not an output device"):
        play_test_sound(ghost(outputs=0))


@contextmanager
def play_into_mic(rig: VirtualAudioRig, signal: FloatArray) -> Iterator[SignalPlayer]:
    """Plays ``signal`` (at the feed's rate) into the virtual microphone while the block runs."""
    feed = find_device(rig.mic_feed, "output")
    player = SignalPlayer(signal, feed.default_samplerate)
    with open_stream("output", feed, player.callback):
        yield player


@pytest.mark.devices
def test_probe_follows_speech_on_the_virtual_mic(
    virtual_audio: VirtualAudioRig, speech: Callable[[str, int], FloatArray]
) -> None:
    mic = find_device(virtual_audio.mic, "input")
    feed = find_device(virtual_audio.mic_feed, "output")
    with InputLevelProbe(mic) as probe:
        assert probe.running
        time.sleep(0.3)
        quiet = probe.level_dbfs
        loudest = SILENCE_DBFS
        with play_into_mic(virtual_audio, speech(UTTERANCE, int(feed.default_samplerate))) as player:
            deadline = time.monotonic() + 10
            while not player.finished.is_set() and time.monotonic() < deadline:
                loudest = max(loudest, probe.level_dbfs)
                time.sleep(0.01)
    assert quiet < -60
    assert loudest > -30, f"the probe never heard the speech (loudest {loudest:.1f} dBFS)"
    assert not probe.running and probe.level_dbfs == SILENCE_DBFS


def dominant_hz(samples: FloatArray, rate: float) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.fft.rfftfreq(len(samples), 1 / rate)[int(np.argmax(spectrum))])


def assert_chime_heard(recording: FloatArray, rate: float) -> None:
    loud = np.flatnonzero(np.abs(recording) > 0.01)
    assert len(loud), "nothing reached the speaker"
    peak = 20 * math.log10(float(np.max(np.abs(recording))))
    assert -21 < peak < -15, f"the test sound peaked at {peak:.1f} dBFS, not the earcon's -18"
    tone = dominant_hz(recording[loud[0] : loud[-1] + 1], rate)
    assert min(abs(tone - 659.25), abs(tone - 880.0)) < 15, f"heard {tone:.0f} Hz, not the chime"
    heard_s = (loud[-1] - loud[0]) / rate
    expected_s = len(chime(rate)) / rate
    assert expected_s - 0.15 < heard_s < expected_s + 0.1  # played whole, once


@pytest.mark.devices
def test_test_sound_is_heard_on_the_speaker_and_returns_at_once(
    virtual_audio: VirtualAudioRig, monitor: TimedRecorder
) -> None:
    speaker = find_device(virtual_audio.speaker, "output")
    time.sleep(0.2)
    started = time.monotonic()
    play_test_sound(speaker)
    assert time.monotonic() - started < 0.3  # shorter than the sound: it did not wait for it
    time.sleep(len(chime(speaker.default_samplerate)) / speaker.default_samplerate + 0.8)
    assert_chime_heard(monitor.recording(), monitor.rate)


# ----------------------------------------------------------------------------------------------
# The dialog: values, notes, locks
# ----------------------------------------------------------------------------------------------
def test_shows_effective_values_with_override_notes(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    user_file(env).write_text('voice = "cedar"\n[transcript]\nretention_days = 90\n', "utf-8")
    dialog = make_dialog(
        env | {"HELPDESK_VOICE_EAGERNESS": "high", "HELPDESK_VOICE_TURN_DETECTION": "semantic_vad"}
    )
    assert dialog.voice_combo.currentText() == "cedar"
    assert dialog.retention_edit.text() == "90"
    assert dialog.backend_combo.currentText() == "Embedded (offline)"
    assert dialog.eagerness_combo.currentData() == "high"
    note = dialog.field("eagerness").note
    assert "Overridden for this run" in note.text() and "HELPDESK_VOICE_EAGERNESS" in note.text()
    assert not dialog.field("voice").note.text()  # from the user's own file: no note
    assert dialog.problems_label.isHidden()


def test_locked_settings_are_disabled_noted_and_never_saved(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    write_policy(
        env,
        '[locked]\nbackend = "custom"\nvoice = "alloy"\n[locked.endpoint]\nurl = "wss://voice.corp.example/rt"\n',
    )
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.connection_page)
    for key, widget in (
        ("backend", dialog.backend_combo),
        ("endpoint.url", dialog.url_edit),
        ("voice", dialog.voice_combo),
    ):
        field = dialog.field(key)
        assert not widget.isEnabled(), key
        assert field.note.text() == LOCKED_NOTE
        assert "policy" in widget.toolTip() and "policy" in field.note.toolTip()
    assert dialog.field("endpoint.url").note.isVisible()
    assert dialog.url_edit.text() == "wss://voice.corp.example/rt"
    assert dialog.instructions_edit.isEnabled()  # unlocked keys stay editable

    # Poke the disabled widgets from code, as a buggy caller or an accessibility tool might.
    dialog.url_edit.setText("wss://attacker.example/rt")
    dialog.voice_combo.setCurrentText("echo")
    dialog.backend_combo.setCurrentIndex(dialog.backend_combo.findData("openai"))
    dialog.push_to_talk_check.setChecked(True)
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    assert dialog.errors() == {}
    text = user_file(env).read_text("utf-8")
    assert "push_to_talk = true" in text
    for secret in ("attacker", "echo", "openai", "backend", "voice"):
        assert secret not in text
    reloaded = load_settings(environ=env)
    assert reloaded.value("voice") == "alloy" and reloaded.value("backend") == "custom"
    assert reloaded.value("push_to_talk") is True


# ----------------------------------------------------------------------------------------------
# Checking: invalid input is refused, with the field marked and a message naming it
# ----------------------------------------------------------------------------------------------
def set_backend(dialog: SettingsDialog, backend: str) -> None:
    dialog.backend_combo.setCurrentIndex(dialog.backend_combo.findData(backend))


def bad_custom_url(dialog: SettingsDialog) -> None:
    set_backend(dialog, "custom")
    dialog.url_edit.setText("https://voice.example.com/rt")


def azure_without_deployment(dialog: SettingsDialog) -> None:
    set_backend(dialog, "azure")
    dialog.azure_resource_edit.setText("contoso-voice")
    dialog.api_key_edit.setText(KEY)


def retention_out_of_range(dialog: SettingsDialog) -> None:
    dialog.retention_edit.setText("5000")


def retention_not_a_number(dialog: SettingsDialog) -> None:
    dialog.retention_edit.setText("a month")


def blank_instructions(dialog: SettingsDialog) -> None:
    dialog.instructions_edit.setPlainText("  \n\t\n")


def custom_without_url(dialog: SettingsDialog) -> None:
    set_backend(dialog, "custom")


def openai_without_key(dialog: SettingsDialog) -> None:
    set_backend(dialog, "openai")


@pytest.mark.parametrize(
    ("spoil", "key", "message", "fix"),
    [
        (
            bad_custom_url,
            "endpoint.url",
            "Custom URL: must start with ws:// or wss://, not 'https://voice.example.com/rt'",
            lambda d: d.url_edit.setText("wss://voice.example.com/rt"),
        ),
        (
            custom_without_url,
            "endpoint.url",
            "Custom URL: the Custom URL backend needs the server's address (ws:// or wss://)",
            lambda d: d.url_edit.setText("ws://localhost:8765/rt"),
        ),
        (
            azure_without_deployment,
            "endpoint.azure_deployment",
            "Azure deployment: the Azure OpenAI backend needs the name of the realtime model's deployment",
            lambda d: d.azure_deployment_edit.setText("gpt-realtime"),
        ),
        (
            retention_out_of_range,
            "transcript.retention_days",
            "Keep transcripts for: must be a whole number from 0 to 3650, not 5000",
            lambda d: d.retention_edit.setText("365"),
        ),
        (
            retention_not_a_number,
            "transcript.retention_days",
            "Keep transcripts for: must be a whole number, not 'a month'",
            lambda d: d.retention_edit.setText("0"),
        ),
        (
            blank_instructions,
            "instructions",
            "Instructions: must not be empty",
            lambda d: d.instructions_edit.setPlainText("Be brief."),
        ),
        (
            openai_without_key,
            API_KEY_FIELD,
            "API key: no API key for OpenAI is stored; type one in Settings",
            lambda d: d.api_key_edit.setText(KEY),
        ),
    ],
    ids=[
        "bad-url",
        "custom-no-url",
        "azure-no-deployment",
        "retention-range",
        "retention-text",
        "blank-instructions",
        "openai-no-key",
    ],
)
def test_invalid_input_is_refused_with_the_field_marked(
    qtbot: QtBot,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    spoil: Callable[[SettingsDialog], None],
    key: str,
    message: str,
    fix: Callable[[SettingsDialog], None],
) -> None:
    dialog = make_dialog()
    show_page(
        qtbot, dialog, dialog.privacy_page if key != "transcript.retention_days" else dialog.connection_page
    )
    dialog.voice_combo.setCurrentText("sage")  # a valid change, which must wait for the invalid one
    spoil(dialog)
    with qtbot.assertNotEmitted(dialog.settings_saved):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert dialog.isVisible() and dialog.result() != QDialog.DialogCode.Accepted
    assert list(dialog.errors()) == [key]
    assert dialog.errors()[key].startswith(message)
    field = dialog.field(key)
    assert field.error.isVisible() and message in field.error.text()
    assert field.widget.property("invalid") is True
    assert message in field.widget.accessibleDescription()
    assert dialog.message_label.isVisible() and message in dialog.message_label.text()
    assert "Nothing was saved" in dialog.message_label.text()
    assert dialog.tabs.currentWidget().isAncestorOf(field.widget)  # the page with the problem is shown
    assert not user_file(env).exists()
    assert secrets.read_api_key(env) is None  # not even a typed key is stored

    fix(dialog)
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        qtbot.mouseClick(dialog.save_button, Qt.MouseButton.LeftButton)
    assert dialog.result() == QDialog.DialogCode.Accepted and not dialog.isVisible()
    assert dialog.errors() == {} and field.widget.property("invalid") is False
    assert load_settings(environ=env).value("voice") == "sage"


@pytest.mark.parametrize(
    ("user_settings", "key"),
    [
        ('backend = "custom"\n', "endpoint.url"),
        ('backend = "openai"\n[endpoint]\nmodel = ""\n', "endpoint.model"),
        ('backend = "azure"\n', "endpoint.azure_resource"),
        ('backend = "openai"\n', API_KEY_FIELD),
    ],
)
def test_the_dialog_and_the_launcher_say_the_same_sentence(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str], user_settings: str, key: str
) -> None:
    """The same settings file, opened in the dialog and started: the same words for the same field."""
    user_file(env).write_text(user_settings, "utf-8")
    with pytest.raises(LaunchError) as caught:
        plan_from_settings(load_settings(None, env), env)
    dialog = make_dialog()
    assert not dialog.save()
    field = dialog.field(key)
    assert dialog.errors()[key] == f"{field.name}: {caught.value}"


def test_the_choice_boxes_list_the_schemas_choices(make_dialog: Callable[..., SettingsDialog]) -> None:
    dialog = make_dialog()
    boxes = {
        "backend": dialog.backend_combo,
        "turn_detection": dialog.turn_detection_combo,
        "eagerness": dialog.eagerness_combo,
        "barge_in.sensitivity": dialog.sensitivity_combo,
    }
    for key, box in boxes.items():
        shown = [(box.itemData(i), box.itemText(i)) for i in range(box.count())]
        assert shown == list(config.SETTINGS[key].choices), key
        assert box.currentData() == config.SETTINGS[key].default


# ----------------------------------------------------------------------------------------------
# Saving
# ----------------------------------------------------------------------------------------------
def test_valid_save_writes_only_changes_and_a_reload_shows_them(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    user_file(env).write_text('[audio]\noutput_device = "Conference Speakerphone"\n', "utf-8")
    dialog = make_dialog()
    assert dialog.changed_values() == {}
    set_backend(dialog, "openai")
    dialog.model_edit.setText("  gpt-realtime-mini ")
    dialog.api_key_edit.setText(KEY)
    dialog.voice_combo.setCurrentText("echo")
    instructions = "You are a helpdesk agent.\nAnswer in one sentence."
    dialog.instructions_edit.setPlainText(instructions)
    dialog.turn_detection_combo.setCurrentIndex(dialog.turn_detection_combo.findData("semantic_vad"))
    dialog.eagerness_combo.setCurrentIndex(dialog.eagerness_combo.findData("low"))
    dialog.sensitivity_combo.setCurrentIndex(dialog.sensitivity_combo.findData("high"))
    dialog.push_to_talk_check.setChecked(True)
    assert dialog.echo_check.isChecked()  # on by default
    dialog.echo_check.setChecked(False)
    dialog.retention_edit.setText("14")
    expected = {
        "backend": "openai",
        "endpoint.model": "gpt-realtime-mini",
        "voice": "echo",
        "instructions": instructions,
        "turn_detection": "semantic_vad",
        "eagerness": "low",
        "barge_in.sensitivity": "high",
        "push_to_talk": True,
        "audio.echo_cancellation": False,
        "transcript.retention_days": 14,
    }
    assert dialog.changed_values() == expected
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        dialog.accept()
    assert dialog.result() == QDialog.DialogCode.Accepted

    reloaded = load_settings(environ=env)
    assert reloaded.problems == []
    for key, value in expected.items():
        assert (reloaded.value(key), reloaded.origin(key)) == (value, "user"), key
    # Untouched settings stay out of the file; the user's earlier device survives.
    assert reloaded.value("audio.output_device") == "Conference Speakerphone"
    for key in ("endpoint.url", "endpoint.azure_resource", "audio.input_device", "silence_ms"):
        assert reloaded.origin(key) == "default", key

    again = make_dialog()
    assert again.backend_combo.currentData() == "openai"
    assert again.model_edit.text() == "gpt-realtime-mini"
    assert again.instructions_edit.toPlainText() == instructions
    assert again.eagerness_combo.currentData() == "low" and again.eagerness_combo.isEnabled()
    assert again.push_to_talk_check.isChecked() and not again.echo_check.isChecked()
    assert again.retention_edit.text() == "14"
    assert again.output_combo.currentText() == "Conference Speakerphone (not connected)"
    assert again.changed_values() == {}


def test_nothing_changed_saves_nothing_and_signals_nothing(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    with qtbot.assertNotEmitted(dialog.settings_saved):
        assert dialog.save()
    assert not user_file(env).exists()


def test_api_key_goes_to_the_keyring_and_never_to_a_file(
    qtbot: QtBot,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    file_keyring: FileKeyring,
    tmp_path: Path,
) -> None:
    dialog = make_dialog()
    assert "not set" in dialog.key_status_label.text()
    assert not dialog.remove_key_button.isEnabled()
    set_backend(dialog, "azure")
    dialog.azure_resource_edit.setText("contoso-voice")
    dialog.azure_deployment_edit.setText("realtime")
    dialog.api_key_edit.setText(f" {KEY} ")
    assert dialog.api_key_edit.echoMode() == dialog.api_key_edit.EchoMode.Password
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    assert secrets.read_api_key(env) == KEY
    assert file_keyring.get_password("helpdesk-voice", "api-key") == KEY
    assert dialog.api_key_edit.text() == ""
    assert "set (keyring)" in dialog.key_status_label.text()
    config_files = [p for p in Path(env[config.CONFIG_DIR_ENV]).rglob("*") if p.is_file()]
    assert [p.name for p in config_files] == ["settings.toml"]
    for path in config_files:
        assert KEY.encode() not in path.read_bytes()
        assert b"api_key" not in path.read_bytes()

    # An empty field leaves the stored key alone.
    second = make_dialog()
    assert second.remove_key_button.isEnabled()
    second.retention_edit.setText("10")
    assert second.save()
    assert secrets.read_api_key(env) == KEY

    # Remove key: gone from the keyring at once, and a cloud backend then asks for one.
    qtbot.mouseClick(second.remove_key_button, Qt.MouseButton.LeftButton)
    assert secrets.read_api_key(env) is None
    assert "not set" in second.key_status_label.text()
    assert not second.remove_key_button.isEnabled()
    assert not second.save()
    assert list(second.errors()) == [API_KEY_FIELD]


def test_key_is_refused_cleanly_without_a_keyring(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())  # the file_keyring fixture restores it
    dialog = make_dialog()
    set_backend(dialog, "openai")
    dialog.api_key_edit.setText(KEY)
    dialog.voice_combo.setCurrentText("ballad")
    assert not dialog.save()
    assert list(dialog.errors()) == [API_KEY_FIELD]
    assert "no OS keyring is available" in dialog.errors()[API_KEY_FIELD]
    assert KEY not in dialog.message_label.text()
    assert not user_file(env).exists()  # the settings wait for the key


def test_key_from_the_environment_is_reported_and_satisfies_the_check(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog(env | {"HELPDESK_VOICE_API_KEY": KEY})
    assert "HELPDESK_VOICE_API_KEY" in dialog.key_status_label.text()
    assert KEY not in dialog.key_status_label.text()
    set_backend(dialog, "openai")
    assert dialog.save()
    assert secrets.read_api_key(env) is None  # nothing copied from the environment to the keyring


def test_backend_choice_enables_only_the_fields_it_uses(make_dialog: Callable[..., SettingsDialog]) -> None:
    dialog = make_dialog()
    connection = {
        "model": dialog.model_edit,
        "resource": dialog.azure_resource_edit,
        "deployment": dialog.azure_deployment_edit,
        "url": dialog.url_edit,
        "key": dialog.api_key_edit,
    }
    expected = {
        "embedded": set(),
        "openai": {"model", "key"},
        "azure": {"resource", "deployment", "key"},
        "custom": {"url", "key"},
    }
    for backend, enabled in expected.items():
        set_backend(dialog, backend)
        assert {name for name, widget in connection.items() if widget.isEnabled()} == enabled, backend
        assert dialog.field("endpoint.url").label.isEnabled() == ("url" in enabled)

    assert not dialog.eagerness_combo.isEnabled()  # server VAD has no eagerness
    dialog.turn_detection_combo.setCurrentIndex(dialog.turn_detection_combo.findData("semantic_vad"))
    assert dialog.eagerness_combo.isEnabled()


def test_edits_left_in_another_backends_fields_are_not_checked_or_saved(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    set_backend(dialog, "custom")
    dialog.url_edit.setText("not a url")
    set_backend(dialog, "embedded")
    dialog.voice_combo.setCurrentText("verse")
    assert dialog.save()
    reloaded = load_settings(environ=env)
    assert reloaded.value("voice") == "verse"
    assert reloaded.origin("endpoint.url") == "default"


def test_missing_device_is_kept_and_shown_not_connected(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    user_file(env).write_text('[audio]\ninput_device = "Imaginary USB Headset"\n', "utf-8")
    dialog = make_dialog()
    combo = dialog.input_combo
    assert combo.itemText(0) == SYSTEM_DEFAULT_LABEL and combo.itemData(0) == ""
    assert combo.currentText() == "Imaginary USB Headset (not connected)"
    assert dialog.output_combo.currentText() == SYSTEM_DEFAULT_LABEL
    show_page(qtbot, dialog, dialog.audio_page)
    assert dialog.probe is None
    assert dialog.level_status.text() == "Imaginary USB Headset is not connected"
    dialog.retention_edit.setText("1")
    assert dialog.save()
    assert load_settings(environ=env).value("audio.input_device") == "Imaginary USB Headset"

    combo.setCurrentIndex(0)  # back to the system default
    assert dialog.changed_values() == {"audio.input_device": ""}
    assert dialog.save()
    reloaded = load_settings(environ=env)
    assert (reloaded.value("audio.input_device"), reloaded.origin("audio.input_device")) == ("", "user")


# ----------------------------------------------------------------------------------------------
# Keyboard and accessibility
# ----------------------------------------------------------------------------------------------
def mnemonic(text: str) -> str:
    found = re.search(r"&(\w)", text)
    assert found is not None, f"{text!r} has no mnemonic"
    return found.group(1).lower()


def test_every_field_has_a_name_a_mnemonic_and_a_buddy(make_dialog: Callable[..., SettingsDialog]) -> None:
    dialog = make_dialog()
    tab_keys = {mnemonic(dialog.tabs.tabText(i)) for i in range(dialog.tabs.count())}
    assert len(tab_keys) == dialog.tabs.count()
    global_keys = tab_keys | {"s", "c"}  # Save, Cancel
    for index in range(dialog.tabs.count()):
        page = dialog.tabs.widget(index)
        assert page is not None
        page_keys: list[str] = []
        for field in dialog.fields():
            if not page.isAncestorOf(field.widget):
                continue
            assert field.widget.accessibleName(), field.key
            assert field.label.buddy() is field.widget, field.key
            texts = [field.label.text()]
            if isinstance(field.widget, QAbstractButton):
                texts.append(field.widget.text())
            for text in texts:
                found = re.search(r"&(\w)", text)
                if found:
                    page_keys.append(found.group(1).lower())
        for button in page.findChildren(QPushButton):
            assert button.accessibleName()
            found = re.search(r"&(\w)", button.text())
            if found:
                page_keys.append(found.group(1).lower())
        assert page_keys, dialog.tabs.tabText(index)
        assert len(page_keys) == len(set(page_keys)), f"mnemonics clash on {dialog.tabs.tabText(index)}"
        assert not set(page_keys) & global_keys, f"a mnemonic on {dialog.tabs.tabText(index)} clashes"


def test_tab_moves_through_the_enabled_fields_in_order(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog]
) -> None:
    dialog = make_dialog()
    set_backend(dialog, "custom")
    show_page(qtbot, dialog, dialog.connection_page)
    dialog.activateWindow()
    dialog.backend_combo.setFocus()
    qtbot.waitUntil(dialog.backend_combo.hasFocus, timeout=1000)
    visited = []
    for _ in range(5):
        qtbot.keyClick(dialog.focusWidget(), Qt.Key.Key_Tab)
        visited.append(dialog.focusWidget())
    # Model and the Azure fields are disabled for a custom URL, and Remove key with no key stored.
    assert visited == [
        dialog.url_edit,
        dialog.session_minutes_edit,
        dialog.token_url_edit,
        dialog.api_key_edit,
        dialog.save_button,
    ]
    qtbot.keyClick(dialog, Qt.Key.Key_U, Qt.KeyboardModifier.AltModifier)
    assert dialog.focusWidget() is dialog.url_edit


# ----------------------------------------------------------------------------------------------
# The Audio page on the virtual devices
# ----------------------------------------------------------------------------------------------
@pytest.mark.devices
def test_level_meter_moves_when_someone_speaks_into_the_selected_mic(
    qtbot: QtBot,
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
) -> None:
    user_file(env).write_text(f'[audio]\ninput_device = "{virtual_audio.mic}"\n', "utf-8")
    dialog = make_dialog()
    assert dialog.input_combo.currentText() == virtual_audio.mic
    assert dialog.probe is None  # nothing listens before the dialog is shown
    show_page(qtbot, dialog, dialog.audio_page)
    probe = dialog.probe
    assert probe is not None and probe.running and probe.device.name == virtual_audio.mic
    assert dialog.level_status.text() == f"Listening to {virtual_audio.mic}"
    qtbot.wait(300)
    assert dialog.level_meter.level() < -55

    feed = find_device(virtual_audio.mic_feed, "output")
    with play_into_mic(virtual_audio, speech(UTTERANCE, int(feed.default_samplerate))):
        qtbot.waitUntil(lambda: dialog.level_meter.level() > -30, timeout=5000)
        assert "Microphone level" in dialog.level_meter.accessibleName()

    # Another page, another device, or closing: the microphone is let go.
    dialog.tabs.setCurrentWidget(dialog.privacy_page)
    assert dialog.probe is None and not probe.running
    dialog.tabs.setCurrentWidget(dialog.audio_page)
    assert dialog.probe is not None
    dialog.input_combo.setCurrentIndex(dialog.input_combo.findData(virtual_audio.speaker_monitor))
    assert dialog.probe is not None and dialog.probe.device.name == virtual_audio.speaker_monitor
    last = dialog.probe
    dialog.reject()
    assert dialog.probe is None and not last.running
    assert dialog.level_meter.level() == FLOOR_DBFS


@pytest.mark.devices
def test_play_test_sound_button_is_heard_on_the_chosen_speaker(
    qtbot: QtBot,
    virtual_audio: VirtualAudioRig,
    monitor: TimedRecorder,
    make_dialog: Callable[..., SettingsDialog],
) -> None:
    dialog = make_dialog()
    dialog.output_combo.setCurrentIndex(dialog.output_combo.findData(virtual_audio.speaker))
    assert dialog.output_combo.currentText() == virtual_audio.speaker
    show_page(qtbot, dialog, dialog.conversation_page)
    dialog.tabs.setCurrentWidget(dialog.audio_page)
    qtbot.wait(200)
    qtbot.mouseClick(dialog.test_sound_button, Qt.MouseButton.LeftButton)
    assert dialog.test_sound_status.text() == f"Playing the test sound on {virtual_audio.speaker}"
    qtbot.wait(1400)
    assert_chime_heard(monitor.recording(), monitor.rate)
    assert dialog.changed_values() == {"audio.output_device": virtual_audio.speaker}  # tried, not saved yet


@pytest.mark.devices
def test_a_device_that_will_not_open_is_reported_not_fatal(
    qtbot: QtBot,
    virtual_audio: VirtualAudioRig,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_file(env).write_text(
        f'[audio]\ninput_device = "{virtual_audio.mic}"\noutput_device = "{virtual_audio.speaker}"\n', "utf-8"
    )

    def refuse(self: InputLevelProbe) -> None:
        raise DeviceUnavailable(f"cannot open the input device {self.device.name!r}: Device unavailable")

    def refuse_output(device: AudioDevice) -> None:
        raise DeviceUnavailable(f"cannot open the output device {device.name!r}: Device busy")

    # As when the device is unplugged or taken between listing and opening.
    monkeypatch.setattr(InputLevelProbe, "start", refuse)
    monkeypatch.setattr("app.ui.settings_dialog.play_test_sound", refuse_output)
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.audio_page)
    assert dialog.probe is None
    assert dialog.level_status.text() == (
        f"Cannot listen: cannot open the input device '{virtual_audio.mic}': Device unavailable"
    )
    qtbot.mouseClick(dialog.test_sound_button, Qt.MouseButton.LeftButton)
    assert dialog.test_sound_status.text() == (
        f"Cannot play: cannot open the output device '{virtual_audio.speaker}': Device busy"
    )
    dialog.retention_edit.setText("3")
    assert dialog.save()  # the rest of the dialog still works


# ----------------------------------------------------------------------------------------------
# The Tickets page
# ----------------------------------------------------------------------------------------------
TICKET_TOKEN = "1-23-0123456789abcdefTICKETSECRET"


def set_ticket_system(dialog: SettingsDialog, system: str) -> None:
    dialog.ticket_system_combo.setCurrentIndex(dialog.ticket_system_combo.findData(system))


def ticket_rows(dialog: SettingsDialog) -> dict[str, QWidget]:
    return {
        "url": dialog.ticket_url_edit,
        "queue": dialog.ticket_queue_edit,
        "user": dialog.ticket_user_edit,
        "group": dialog.ticket_group_edit,
        "desk": dialog.ticket_desk_edit,
        "request_type": dialog.ticket_request_type_edit,
        "secret": dialog.ticket_secret_edit,
        "contact": dialog.ticket_contact_edit,
    }


def test_the_ticket_system_shows_only_the_fields_it_uses(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog]
) -> None:
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    assert dialog.ticket_system_combo.currentData() == "none"  # the default: tickets stay here
    expected = {
        "none": ({"contact"}, None),
        "rt": ({"url", "queue", "secret", "contact"}, "Auth token"),
        "servicenow": ({"url", "user", "group", "secret", "contact"}, "Password"),
        "jsm": ({"url", "user", "desk", "request_type", "secret", "contact"}, "API token"),
        "webhook": ({"url", "secret", "contact"}, "Signing secret"),
    }
    for system, (visible, credential) in expected.items():
        set_ticket_system(dialog, system)
        rows = ticket_rows(dialog)
        assert {name for name, widget in rows.items() if widget.isVisible()} == visible, system
        assert all(rows[name].isEnabled() for name in visible), system
        assert dialog.test_connection_button.isEnabled() == (system != "none")
        if credential is not None:
            field = dialog.field(TICKET_SECRET_FIELD)
            assert field.label.text().replace("&", "") == credential + ":"
            assert dialog.ticket_secret_edit.accessibleName() == credential
            assert dialog.ticket_secret_edit.echoMode() == dialog.ticket_secret_edit.EchoMode.Password
            assert "none stored" in dialog.ticket_secret_status.text()
    set_ticket_system(dialog, "jsm")
    assert dialog.field("tickets.user").label.text().replace("&", "") == "API user's e-mail:"
    # The settings' own help, for the fields and for screen readers.
    assert dialog.ticket_queue_edit.toolTip() == config.SETTINGS["tickets.queue"].help
    assert dialog.ticket_url_edit.accessibleDescription() == config.SETTINGS["tickets.url"].help


def test_ticket_fields_are_checked_with_the_settings_checks(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    set_ticket_system(dialog, "rt")
    dialog.ticket_url_edit.setText("rt.example.com")
    assert not dialog.save()
    assert list(dialog.errors()) == ["tickets.url"]
    assert "Address: must start with https:// or http://" in dialog.errors()["tickets.url"]
    assert dialog.tabs.currentWidget() is dialog.tickets_page
    assert not user_file(env).exists()

    # A field the chosen system does not use is neither checked nor saved.
    dialog.ticket_desk_edit.setText("has spaces")  # hidden for RT
    dialog.ticket_url_edit.setText("https://rt.example.com")
    assert dialog.save()
    assert "service_desk_id" not in user_file(env).read_text("utf-8")


def test_tickets_go_to_the_settings_file_and_the_credential_to_the_keyring(
    qtbot: QtBot,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    file_keyring: FileKeyring,
) -> None:
    dialog = make_dialog()
    set_ticket_system(dialog, "rt")
    dialog.ticket_url_edit.setText(" https://rt.example.com/rt ")
    dialog.ticket_queue_edit.setText("Helpdesk")
    dialog.ticket_contact_edit.setText("jane.doe@example.com")
    dialog.ticket_secret_edit.setText(f" {TICKET_TOKEN} ")
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") == TICKET_TOKEN
    assert dialog.ticket_secret_edit.text() == ""
    assert "stored in the system keyring" in dialog.ticket_secret_status.text()
    assert TICKET_TOKEN not in dialog.ticket_secret_status.text()
    reloaded = load_settings(environ=env)
    assert reloaded.typed.tickets == config.TicketSettings(
        system="rt",
        url="https://rt.example.com/rt",
        queue="Helpdesk",
        user="",
        service_desk_id="",
        request_type_id="",
        assignment_group="",
        contact="jane.doe@example.com",
    )
    config_files = [p for p in Path(env[config.CONFIG_DIR_ENV]).rglob("*") if p.is_file()]
    assert [p.name for p in config_files] == ["settings.toml"]
    text = config_files[0].read_bytes()
    assert TICKET_TOKEN.encode() not in text and b"secret" not in text and b"token" not in text

    # A second dialog says a credential is stored, and an empty field leaves it alone.
    second = make_dialog()
    assert "Auth token: stored in the system keyring" in second.ticket_secret_status.text()
    second.ticket_queue_edit.setText("Hardware")
    assert second.save()
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") == TICKET_TOKEN
    assert load_settings(environ=env).value("tickets.queue") == "Hardware"


def test_a_ticket_credential_is_refused_cleanly_without_a_keyring(
    make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())  # the file_keyring fixture restores it
    dialog = make_dialog()
    set_ticket_system(dialog, "servicenow")
    dialog.ticket_url_edit.setText("https://corp.service-now.com")
    dialog.ticket_user_edit.setText("helpdesk.voice")
    dialog.ticket_secret_edit.setText(TICKET_TOKEN)
    assert not dialog.save()
    assert list(dialog.errors()) == [TICKET_SECRET_FIELD]
    assert dialog.errors()[TICKET_SECRET_FIELD].startswith("Password: the system keyring could not store it")
    assert TICKET_TOKEN not in dialog.message_label.text()
    assert not user_file(env).exists()  # the settings wait for the credential


def test_a_locked_ticket_url_is_read_only_and_never_saved(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    write_policy(env, '[locked.tickets]\nsystem = "rt"\nurl = "https://rt.corp.example/rt"\n')
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    field = dialog.field("tickets.url")
    assert dialog.ticket_url_edit.text() == "https://rt.corp.example/rt"
    assert not dialog.ticket_url_edit.isEnabled() and not dialog.ticket_system_combo.isEnabled()
    assert field.note.isVisible() and field.note.text() == LOCKED_NOTE
    assert "policy" in field.note.toolTip() and "policy" in dialog.ticket_url_edit.toolTip()
    assert dialog.ticket_queue_edit.isVisible() and dialog.ticket_queue_edit.isEnabled()  # RT, by policy

    dialog.ticket_url_edit.setText("https://attacker.example")  # poked from code
    dialog.ticket_queue_edit.setText("Helpdesk")
    assert dialog.save()
    text = user_file(env).read_text("utf-8")
    assert "attacker" not in text and "url" not in text and 'queue = "Helpdesk"' in text


ARTICLES = "kb.ticket_system_articles"


def test_the_articles_box_is_on_only_for_a_ticket_system_with_a_knowledge_base(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    box, field = dialog.ticket_articles_check, dialog.field(ARTICLES)
    assert box.accessibleName() == "Knowledge articles" and field.label.buddy() is box
    assert "knowledge base" in box.toolTip()
    expected = {
        "none": "Choose Request Tracker or ServiceNow as the ticket system",
        "rt": "",
        "servicenow": "",
        "jsm": "Jira Service Management has no knowledge base this app can read",
        "webhook": "Webhook has no knowledge base this app can read",
    }
    for system, hint in expected.items():
        set_ticket_system(dialog, system)
        assert box.isVisible(), system  # never hidden, so its absence is explained
        assert box.isEnabled() == (not hint) and field.label.isEnabled() == (not hint), system
        assert shown(dialog.ticket_articles_hint, dialog) == bool(hint), system
        assert dialog.ticket_articles_hint.text().startswith(hint), system
        # A screen reader cannot focus a disabled box: the reason is in its description too.
        assert box.accessibleDescription().startswith(config.SETTINGS[ARTICLES].help), system
        assert box.accessibleDescription().endswith(dialog.ticket_articles_hint.text()), system
        assert not field.note.text(), system  # the note is for locks and overrides

    # Ticked while Request Tracker was chosen, then left behind for Jira: neither checked nor saved,
    # like another system's fields, and checking the fields keeps the reason in the description.
    set_ticket_system(dialog, "rt")
    box.setChecked(True)
    set_ticket_system(dialog, "jsm")
    assert dialog.changed_values() == {"tickets.system": "jsm"}
    assert dialog.save()
    assert box.accessibleDescription().endswith("only Request Tracker and ServiceNow have one.")
    assert "ticket_system_articles" not in user_file(env).read_text("utf-8")
    assert load_settings(environ=env).value(ARTICLES) is False


def test_the_ticket_systems_articles_go_to_the_settings_file(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    user_file(env).write_text('[tickets]\nsystem = "servicenow"\n', "utf-8")
    dialog = make_dialog()
    assert dialog.ticket_articles_check.isEnabled() and not dialog.ticket_articles_check.isChecked()
    dialog.ticket_articles_check.setChecked(True)
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    # Not a delivery-only change: the app restarts the conversation, whose plan syncs the articles.
    assert dialog.last_saved == {ARTICLES}
    assert "ticket_system_articles = true" in user_file(env).read_text("utf-8")
    assert load_settings(environ=env).typed.kb.ticket_system_articles is True

    second = make_dialog()
    assert second.ticket_articles_check.isChecked()
    second.ticket_articles_check.setChecked(False)
    assert second.save()
    assert load_settings(environ=env).typed.kb.ticket_system_articles is False


def test_locked_ticket_system_articles_are_read_only_and_never_saved(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    user_file(env).write_text('[tickets]\nsystem = "rt"\n', "utf-8")
    write_policy(env, "[locked.kb]\nticket_system_articles = true\n")
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    box, field = dialog.ticket_articles_check, dialog.field(ARTICLES)
    assert box.isChecked()  # the policy's value, not the built-in one
    assert not box.isEnabled() and not field.label.isEnabled()
    assert field.note.isVisible() and field.note.text() == LOCKED_NOTE
    assert "policy" in field.note.toolTip() and "policy" in box.toolTip()
    assert box.accessibleDescription().startswith(LOCKED_NOTE)
    assert not shown(dialog.ticket_articles_hint, dialog)  # RT has articles: the lock is the reason
    assert dialog.ticket_system_combo.isEnabled()  # only the articles are locked

    set_ticket_system(dialog, "webhook")  # a system without them adds its reason to the lock's
    assert shown(dialog.ticket_articles_hint, dialog) and field.note.text() == LOCKED_NOTE
    assert box.accessibleDescription().startswith(LOCKED_NOTE)
    assert box.accessibleDescription().endswith(dialog.ticket_articles_hint.text())
    set_ticket_system(dialog, "rt")
    assert not box.isEnabled()

    box.setChecked(False)  # poked from code
    dialog.ticket_queue_edit.setText("Helpdesk")
    assert dialog.changed_values() == {"tickets.queue": "Helpdesk"}
    assert dialog.save()
    text = user_file(env).read_text("utf-8")
    assert "ticket_system_articles" not in text and 'queue = "Helpdesk"' in text
    assert load_settings(environ=env).value(ARTICLES) is True


def wait_for_test(qtbot: QtBot, dialog: SettingsDialog) -> list[int]:
    """Clicks Test connection and waits for its result while counting event-loop timer ticks."""
    ticks: list[int] = []
    timer = QTimer(dialog)
    timer.setInterval(0)  # ticks on every pass of the event loop, however quickly RT answers
    timer.timeout.connect(lambda: ticks.append(1))
    timer.start()
    qtbot.mouseClick(dialog.test_connection_button, Qt.MouseButton.LeftButton)
    busy = (
        not dialog.test_connection_button.isEnabled(),
        dialog.test_connection_button.text(),
        dialog.connection_status.text(),
    )
    assert busy == (True, "Testing…", "Connecting to Request Tracker…")
    qtbot.waitUntil(lambda: dialog.test_connection_button.isEnabled(), timeout=30_000)
    timer.stop()
    return ticks


def fill_rt(dialog: SettingsDialog, rt: RtInstance) -> None:
    set_ticket_system(dialog, "rt")
    dialog.ticket_url_edit.setText(rt.base_url)
    dialog.ticket_queue_edit.setText(rt.queue)


def test_test_connection_reaches_the_real_request_tracker_off_the_gui_thread(
    qtbot: QtBot,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    file_keyring: FileKeyring,
    rt: RtInstance,
) -> None:
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    fill_rt(dialog, rt)
    dialog.ticket_secret_edit.setText(rt.token)  # typed, not saved
    started = time.monotonic()
    ticks = wait_for_test(qtbot, dialog)
    assert dialog.connection_status.text() == "Connected to Request Tracker at 127.0.0.1"
    assert dialog.test_connection_button.text() == "Test c&onnection"
    # The GUI thread kept serving its timers while RT answered: it was never blocked for the test.
    assert len(ticks) >= 1 and time.monotonic() - started < 30
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") is None  # testing stores nothing
    assert not user_file(env).exists()

    # A stored credential is used when the field is empty.
    dialog.ticket_secret_edit.setText(rt.token)
    assert dialog.save()
    dialog.connection_status.clear()
    wait_for_test(qtbot, dialog)
    assert dialog.connection_status.text() == "Connected to Request Tracker at 127.0.0.1"


def test_test_connection_with_a_wrong_token_shows_the_auth_error(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], rt: RtInstance
) -> None:
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    fill_rt(dialog, rt)
    dialog.ticket_secret_edit.setText("1-99-00000000000000000000000000000000")
    wait_for_test(qtbot, dialog)
    text = dialog.connection_status.text()
    assert text.startswith("⚠ Request Tracker at 127.0.0.1") and "refused the auth token" in text, text
    assert "00000000000000000000000000000000" not in text


def test_test_connection_says_what_is_missing_without_trying(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog]
) -> None:
    dialog = make_dialog()
    set_ticket_system(dialog, "rt")
    dialog.ticket_queue_edit.setText("")
    qtbot.mouseClick(dialog.test_connection_button, Qt.MouseButton.LeftButton)
    assert not dialog.connection_test.running
    assert dialog.connection_status.text() == "Not tested: please correct the fields marked."
    assert set(dialog.errors()) == {"tickets.url", "tickets.queue"}
    assert dialog.errors()["tickets.queue"] == "Queue: Request Tracker needs it"

    # The fields are filled, but no credential is stored or typed: the connector's own sentence.
    dialog.ticket_url_edit.setText("https://rt.example.com")
    dialog.ticket_queue_edit.setText("General")
    qtbot.mouseClick(dialog.test_connection_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: not dialog.connection_test.running, timeout=5000)
    assert "no credential for Request Tracker is stored" in dialog.connection_status.text()


def test_a_ticket_system_that_does_not_answer_leaves_the_dialog_usable(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog]
) -> None:
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    # Connections are queued by the kernel but never answered: the connector waits for its timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        set_ticket_system(dialog, "rt")
        dialog.ticket_url_edit.setText(f"http://127.0.0.1:{silent.getsockname()[1]}")
        dialog.ticket_secret_edit.setText(TICKET_TOKEN)
        qtbot.mouseClick(dialog.test_connection_button, Qt.MouseButton.LeftButton)
        assert dialog.connection_test.running and not dialog.test_connection_button.isEnabled()
        qtbot.wait(300)
        # Still waiting, and the dialog takes input meanwhile.
        assert dialog.connection_test.running and dialog.test_connection_button.text() == "Testing…"
        qtbot.keyClicks(dialog.ticket_contact_edit, "jane@example.com")
        assert dialog.ticket_contact_edit.text() == "jane@example.com"
        # Choosing another system drops the pending answer: it would describe the old fields.
        set_ticket_system(dialog, "webhook")
        assert not dialog.connection_test.running and dialog.test_connection_button.isEnabled()
        assert dialog.connection_status.text() == ""
    dialog.close()


def test_remove_credential_asks_first_and_deletes_only_the_chosen_systems(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], file_keyring: FileKeyring
) -> None:
    file_keyring.set_password("helpdesk-voice", "tickets.rt", TICKET_TOKEN)
    file_keyring.set_password("helpdesk-voice", "tickets.webhook", "whsec-other")
    dialog = make_dialog()
    show_page(qtbot, dialog, dialog.tickets_page)
    assert not dialog.remove_credential_button.isVisible()  # no system chosen: no credential row
    set_ticket_system(dialog, "servicenow")
    assert not dialog.remove_credential_button.isEnabled()  # none stored for ServiceNow
    set_ticket_system(dialog, "rt")
    assert dialog.remove_credential_button.isVisible() and dialog.remove_credential_button.isEnabled()
    assert dialog.remove_credential_button.accessibleName()

    # Cancel (also the default button, so Enter cannot delete it) keeps the credential.
    qtbot.mouseClick(dialog.remove_credential_button, Qt.MouseButton.LeftButton)
    box = dialog.remove_credential_box
    assert box is not None and box.isVisible()
    assert "Request Tracker" in box.text() and "auth token" in box.text()
    assert box.defaultButton() is box.button(QMessageBox.StandardButton.Cancel)
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Cancel), Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: dialog.remove_credential_box is None, timeout=2000)
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") == TICKET_TOKEN

    # Remove: gone from the keyring at once, and the app hears of it as a save of the credential.
    qtbot.mouseClick(dialog.remove_credential_button, Qt.MouseButton.LeftButton)
    box = dialog.remove_credential_box
    assert box is not None
    with qtbot.waitSignal(dialog.settings_saved, timeout=2000):
        qtbot.mouseClick(box.button(QMessageBox.StandardButton.Yes), Qt.MouseButton.LeftButton)
    assert dialog.last_saved == {TICKET_SECRET_FIELD}
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") is None
    assert file_keyring.get_password("helpdesk-voice", "tickets.webhook") == "whsec-other"
    assert dialog.ticket_secret_status.text() == "Auth token: none stored"
    assert not dialog.remove_credential_button.isEnabled()

    # A later save says what it saved.
    dialog.ticket_url_edit.setText("https://rt.example.com")
    dialog.ticket_queue_edit.setText("Helpdesk")
    with qtbot.waitSignal(dialog.settings_saved, timeout=2000):
        assert dialog.save()
    assert dialog.last_saved == {"tickets.system", "tickets.url", "tickets.queue"}


def test_remove_credential_is_off_for_the_environments_credential_and_under_a_policy(
    qtbot: QtBot,
    make_dialog: Callable[..., SettingsDialog],
    env: dict[str, str],
    file_keyring: FileKeyring,
) -> None:
    # Only in the environment: nothing in the keyring to remove.
    dialog = make_dialog({**env, "HELPDESK_VOICE_TICKETS_SECRET": TICKET_TOKEN})
    set_ticket_system(dialog, "rt")
    assert "set by HELPDESK_VOICE_TICKETS_SECRET" in dialog.ticket_secret_status.text()
    assert not dialog.remove_credential_button.isEnabled()

    # The administrator set the ticket system up: the user's stored credential stays.
    file_keyring.set_password("helpdesk-voice", "tickets.rt", TICKET_TOKEN)
    write_policy(env, '[locked.tickets]\nsystem = "rt"\nurl = "https://rt.corp.example/rt"\n')
    locked = make_dialog()
    show_page(qtbot, locked, locked.tickets_page)
    assert "Auth token: stored in the system keyring" in locked.ticket_secret_status.text()
    assert locked.remove_credential_button.isVisible() and not locked.remove_credential_button.isEnabled()
    locked.ask_remove_ticket_secret()  # poked from code: still asks nothing and removes nothing
    assert locked.remove_credential_box is None
    assert file_keyring.get_password("helpdesk-voice", "tickets.rt") == TICKET_TOKEN


class _UndeletableKeyring(FileKeyring):
    def delete_password(self, service: str, username: str) -> None:
        raise keyring.errors.KeyringLocked("the keyring is locked")


def test_a_credential_the_keyring_will_not_delete_is_said_and_kept(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], tmp_path: Path
) -> None:
    backend = _UndeletableKeyring(tmp_path / "locked-keyring.json")
    backend.set_password("helpdesk-voice", "tickets.jsm", TICKET_TOKEN)
    keyring.set_keyring(backend)  # the file_keyring fixture restores the original
    dialog = make_dialog()
    set_ticket_system(dialog, "jsm")
    saved: list[bool] = []
    dialog.settings_saved.connect(lambda: saved.append(True))
    qtbot.mouseClick(dialog.remove_credential_button, Qt.MouseButton.LeftButton)
    box = dialog.remove_credential_box
    assert box is not None
    qtbot.mouseClick(box.button(QMessageBox.StandardButton.Yes), Qt.MouseButton.LeftButton)
    assert dialog.errors() == {
        TICKET_SECRET_FIELD: "API token: the system keyring could not remove it (the keyring is locked)"
    }
    assert backend.get_password("helpdesk-voice", "tickets.jsm") == TICKET_TOKEN
    assert saved == [] and dialog.remove_credential_button.isEnabled()


def test_start_at_login_is_a_box_saved_to_the_settings_file(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    assert not dialog.start_at_login_check.isChecked()
    dialog.start_at_login_check.setChecked(True)
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()
    assert load_settings(environ=env).typed.start_at_login is True
    assert "start_at_login" in dialog.last_saved


def test_a_token_service_replaces_the_api_key_and_is_saved(
    qtbot: QtBot, make_dialog: Callable[..., SettingsDialog], env: dict[str, str]
) -> None:
    dialog = make_dialog()
    set_backend(dialog, "openai")
    assert dialog.api_key_edit.isEnabled() and dialog.token_url_edit.isEnabled()
    assert not dialog.token_auth_combo.isEnabled()  # how to sign in to no service: nothing to choose
    dialog.token_url_edit.setText("https://tokens.example.com/v1/realtime/client_secrets")
    assert not dialog.api_key_edit.isEnabled()  # the laptop holds no key with a token service
    assert dialog.token_auth_combo.isEnabled()
    dialog.token_auth_combo.setCurrentIndex(dialog.token_auth_combo.findData("integrated"))
    assert "company sign-in" in dialog.token_auth_combo.currentText()
    with qtbot.waitSignal(dialog.settings_saved, timeout=1000):
        assert dialog.save()  # no key stored, and none needed
    saved = load_settings(environ=env).typed.endpoint
    assert saved.token_url.startswith("https://tokens.example.com/") and saved.token_auth == "integrated"
    set_backend(dialog, "embedded")
    assert not dialog.token_url_edit.isEnabled()  # the offline assistant needs neither
