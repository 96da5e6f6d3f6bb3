"""The installed package, not the checkout: its command, its selftest and one spoken turn.

Runs when ``HELPDESK_VOICE_INSTALLED`` names an installed ``helpdesk-voice`` (``.ci/run`` builds the
.deb, installs it and sets it to ``/usr/bin/helpdesk-voice``); otherwise it skips, unless
``HELPDESK_VOICE_REQUIRE_INSTALLED=1`` asks for it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import pytest

from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, speak
from tests.kerberos_realm import REALM, SERVICE_HOST, Realm
from tests.rig_support import RIG_KEYS, Rig, rig

__all__ = ["rig"]  # the testers' rig fixture


@pytest.fixture(scope="module")
def installed() -> Path:
    named = os.environ.get("HELPDESK_VOICE_INSTALLED", "")
    found = shutil.which(named) if named else None
    if found is None:
        if os.environ.get("HELPDESK_VOICE_REQUIRE_INSTALLED") == "1":
            pytest.fail(f"the installed package is required here, but {named or 'nothing'} is installed")
        pytest.skip("no installed package to test (HELPDESK_VOICE_INSTALLED is not set)")
    executable = Path(found).resolve()
    # The installed copy, not this checkout's Python: a frozen bundle beside its own libraries.
    assert not executable.is_relative_to(Path(__file__).resolve().parent.parent), executable
    return executable


def _isolated(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "config"),
        "HELPDESK_VOICE_CACHE_DIR": str(tmp_path / "cache"),
    }


def test_the_installed_command_says_its_version(installed: Path) -> None:
    from importlib.metadata import version

    done = subprocess.run([str(installed), "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"helpdesk-voice {version('helpdesk-voice')}"


@pytest.mark.devices
def test_the_installed_selftest_passes_on_the_virtual_devices(
    installed: Path, virtual_audio: VirtualAudioRig, tmp_path: Path
) -> None:
    done = subprocess.run(
        [
            str(installed),
            "selftest",
            "--input-device",
            virtual_audio.mic,
            "--output-device",
            virtual_audio.speaker,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=_isolated(tmp_path),
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the offline assistant starts and answers" in done.stdout + done.stderr


def test_the_installed_app_signs_in_to_the_token_service_with_the_users_kerberos_ticket(
    installed: Path, kerberos_realm: Realm, tmp_path: Path
) -> None:
    # The bundle brings its own GSSAPI bindings; the ticket is the one ``kinit`` put in the cache.
    kerberos_realm.sign_in("alice")
    env = {
        **_isolated(tmp_path),
        **kerberos_realm.environment("alice"),
        "HELPDESK_VOICE_BACKEND": "openai",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_URL": f"https://{SERVICE_HOST}/v1/realtime/client_secrets",
        "HELPDESK_VOICE_ENDPOINT_TOKEN_AUTH": "integrated",
    }
    done = subprocess.run([str(installed), "selftest"], capture_output=True, text=True, timeout=120, env=env)
    said = done.stdout + done.stderr
    assert (
        f"API key: ok: not used: a token service gives short-lived secrets (company sign-in as alice@{REALM}"
        in said
    )


@pytest.mark.devices
def test_the_installed_app_answers_a_spoken_request(
    installed: Path,
    virtual_audio: VirtualAudioRig,
    speech: Callable[[str, int], FloatArray],
    tmp_path: Path,
) -> None:
    feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
    env: dict[str, str | None] = dict(_isolated(tmp_path))
    app = HeadlessApp(
        ["--input-device", virtual_audio.mic, "--output-device", virtual_audio.speaker, "--duration", "150"],
        env=env,
        command=[str(installed)],
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 180)
        time.sleep(0.8)
        speak(virtual_audio, speech("I forgot my password", feed_rate))
        heard = app.wait_for(lambda line: line.startswith("you:"), 60)
        answer = app.wait_for(lambda line: line.startswith("assistant:"), 60)
    finally:
        app.stop()
    assert "password" in heard.lower() and "password" in answer.lower()
    # The bundle carries the end-of-turn model: the turn was judged by it, not by its pause alone.
    assert any("end-of-turn model (Smart Turn v3): done" in line for line in app.errors), app.errors[-20:]


@pytest.mark.devices
def test_the_installed_testers_kit_drives_the_vpn_scenario_to_a_green_junit_report(
    installed: Path, rig: Rig, tmp_path: Path
) -> None:
    """The issue's own acceptance: ``rig up``, then ``drive examples/scenarios/vpn.toml --junit``."""
    env = {**rig.env, **_isolated(tmp_path)}
    env = {key: value for key, value in env.items() if key not in RIG_KEYS}

    def command(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        argv = [str(installed), *args, "--prefix", rig.prefix]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)

    up = command("rig", "up")
    assert up.returncode == 0, up.stderr
    junit = tmp_path / "out.xml"
    scenario = Path(__file__).resolve().parent.parent / "examples" / "scenarios" / "vpn.toml"
    done = command("drive", str(scenario), "--junit", str(junit), timeout=420)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    down = command("rig", "down")
    assert down.returncode == 0, down.stderr
