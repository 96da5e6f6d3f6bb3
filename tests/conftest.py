"""Shared fixtures: the PulseAudio virtual devices, synthetic speech, a real Request Tracker, a
real Kerberos realm.

The virtual devices start once per test session. Where PulseAudio cannot start, tests that need
it skip with the reason, unless HELPDESK_VOICE_REQUIRE_DEVICES=1 (CI sets it), where they fail.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path

import keyring
import numpy as np
import pytest

from app.audio.devices import find_device
from app.audio.probe import TimedRecorder, espeak_speech
from app.audio.resample import FloatArray, StreamResampler
from app.audio.streams import open_stream
from app.sealed_files import DataKeyring
from app.testkit.rig import RigUnavailable, VirtualAudioRig, reinitialise_portaudio
from app.tools.delivery import DeliveryWorker
from app.tools.tickets import TicketOutbox
from tests.file_keyring import FileKeyring
from tests.kerberos_realm import USERS, Realm, RealmUnavailable, running_realm
from tests.memory_ticket_system import MemorySystem
from tests.rt_server import RtInstance, RtUnavailable, running_rt


@pytest.fixture(scope="session", autouse=True)
def isolated_app_dirs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The app (and the servers it starts) sees none of this machine's own settings, data or cache.

    One cache for the whole session: the offline server embeds the articles once, not per test.
    """
    root = tmp_path_factory.mktemp("app-dirs")
    names = {
        "HELPDESK_VOICE_CONFIG_DIR": root / "config",
        "HELPDESK_VOICE_POLICY": root / "policy.toml",
        "HELPDESK_VOICE_DATA_DIR": root / "data",
        "HELPDESK_VOICE_CACHE_DIR": root / "cache",
    }
    saved = {name: os.environ.get(name) for name in names}
    for name, path in names.items():
        os.environ[name] = str(path)
    try:
        yield root
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """An environment for app.config whose policy and user files live in ``tmp_path``, and nothing else."""
    (tmp_path / "user").mkdir()
    (tmp_path / "policy").mkdir()
    return {
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "user"),
        "HELPDESK_VOICE_POLICY": str(tmp_path / "policy" / "policy.toml"),
    }


@pytest.fixture(scope="session")
def virtual_audio() -> Iterator[VirtualAudioRig]:
    rig = VirtualAudioRig()
    try:
        rig.start()
    except RigUnavailable as exc:
        if os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") == "1":
            pytest.fail(f"virtual audio devices are required here but could not start: {exc}")
        pytest.skip(f"virtual audio devices unavailable: {exc}")
    if "sounddevice" in sys.modules:
        reinitialise_portaudio()
    try:
        yield rig
    finally:
        rig.stop()


@pytest.fixture
def file_keyring(tmp_path: Path) -> Iterator[FileKeyring]:
    """The OS keyring replaced by a file in ``tmp_path`` for the test."""
    original = keyring.get_keyring()
    backend = FileKeyring(tmp_path / "keyring.json")
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(original)


@pytest.fixture
def monitor(virtual_audio: VirtualAudioRig) -> Iterator[TimedRecorder]:
    """A recording of the virtual speaker, running for the test."""
    device = find_device(virtual_audio.speaker_monitor, "input")
    recorder = TimedRecorder(device.default_samplerate)
    with open_stream("input", device, recorder.callback):
        yield recorder


@cache
def _speech(text: str) -> tuple[FloatArray, int]:
    return espeak_speech(text)


@pytest.fixture(scope="session")
def speech() -> Callable[[str, int], FloatArray]:
    """``speech(text, rate)``: espeak-ng speech resampled to ``rate``."""

    def make(text: str, rate: int) -> FloatArray:
        try:
            samples, source_rate = _speech(text)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))
        if source_rate == rate:
            return samples.copy()
        return StreamResampler(source_rate, rate, "HQ").process(samples, last=True)

    return make


def sine(freq: float, rate: float, seconds: float, amplitude: float = 0.5) -> FloatArray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture(scope="session")
def rt(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RtInstance]:
    with contextlib.ExitStack() as stack:
        try:
            instance = stack.enter_context(running_rt(tmp_path_factory.mktemp("rt")))
        except RtUnavailable as exc:
            if exc.missing and os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") != "1":
                pytest.skip(str(exc))
            pytest.fail(f"Request Tracker is required here but could not start: {exc}")
        yield instance


@pytest.fixture
def system() -> MemorySystem:
    """A ticket system in memory, for the ticket tools' tests."""
    return MemorySystem()


@pytest.fixture
def worker(tmp_path: Path, file_keyring: FileKeyring, system: MemorySystem) -> Iterator[DeliveryWorker]:
    """The delivery worker over a fresh outbox in ``tmp_path``, delivering to ``system``."""
    running = DeliveryWorker(TicketOutbox(tmp_path / "outbox", keys=DataKeyring()), lambda: system)
    running.start()
    yield running
    running.stop()


@pytest.fixture(scope="session")
def kerberos_realm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Realm]:
    """A private MIT Kerberos realm with its KDC running, for company sign-in."""
    try:
        with running_realm(tmp_path_factory.mktemp("realm"), USERS) as started:
            yield started
    except RealmUnavailable as exc:
        if exc.missing and os.environ.get("HELPDESK_VOICE_REQUIRE_DEVICES") != "1":
            pytest.skip(str(exc))
        pytest.fail(f"the Kerberos realm is required here but could not start: {exc}")
