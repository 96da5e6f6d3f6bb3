"""``helpdesk-voice drive`` as a tester runs it: ``rig up``, then example scenarios spoken to the
whole app (started by the driver, or already running with --events) through the rig, judged from
outside, with JUnit XML and exit codes a CI reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.app_driver import HeadlessApp
from tests.rig_support import Rig, exports, rig

__all__ = ["rig"]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"
DRIVE_TIMEOUT_S = 420


def drive(rig: Rig, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        **rig.env,
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "config"),
    }
    return subprocess.run(
        [sys.executable, "-m", "app", "drive", *args, "--prefix", rig.prefix],
        env=env,
        capture_output=True,
        text=True,
        timeout=DRIVE_TIMEOUT_S,
    )


@pytest.mark.devices
def test_the_vpn_scenario_passes_and_an_impossible_one_fails_readably(rig: Rig, tmp_path: Path) -> None:
    assert rig("up").returncode == 0
    junit = tmp_path / "out.xml"
    report = tmp_path / "report.json"
    done = drive(rig, tmp_path, str(EXAMPLES / "vpn.toml"), "--junit", str(junit), "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "VPN troubleshooting with a barge-in: 2 of 2 turns passed"
    suite = ET.parse(junit).getroot()
    assert (suite.get("tests"), suite.get("failures"), suite.get("errors")) == ("2", "0", "0")
    turns = json.loads(report.read_text())["turns"]
    # Measured from outside: the user's speech, the answer's first sound, the halt on the barge-in.
    assert turns[0]["measured"]["first_sound_ms"] > 0 and not turns[0]["measured"]["cut_off"]
    assert turns[1]["measured"]["talked_over"] and turns[1]["measured"]["halt_ms"] <= 600
    assert turns[0]["app_reported"]["answers"] and turns[1]["app_reported"]["heard"]

    impossible = tmp_path / "impossible.toml"
    impossible.write_text(
        'name = "Impossible"\n[[turn]]\nsay = "I forgot my password"\n'
        'expect = { first_sound_ms = 1, answer = ["banana"] }\n',
        encoding="utf-8",
    )
    kept = tmp_path / "kept"
    failed = drive(rig, tmp_path, str(impossible), "--junit", str(junit), "--keep-audio", str(kept))
    assert failed.returncode == 1, failed.stdout + failed.stderr[-3000:]
    assert "FAIL turn 1: I forgot my password" in failed.stdout
    assert "first_sound_ms: expected within 1 ms of the end of speech, got " in failed.stdout
    assert "answer: expected 'banana' in the answer" in failed.stdout
    (case,) = ET.parse(junit).getroot().findall("testcase")
    failure = case.find("failure")
    assert failure is not None and "banana" in failure.get("message", "")
    (recording,) = kept.glob("*.wav")
    assert recording.stat().st_size > 48000 * 2 * 2  # a second or more of microphone and speaker


@pytest.mark.devices
def test_scenarios_against_an_app_that_is_already_running(rig: Rig, tmp_path: Path) -> None:
    up = rig("up")
    assert up.returncode == 0, up.stderr
    shell = exports(up.stdout)
    events = tmp_path / "events.jsonl"
    app_env: dict[str, str | None] = {
        **shell,
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path / "config"),
    }
    app = HeadlessApp(
        [
            "--input-device",
            f"{rig.prefix}_mic",
            "--output-device",
            f"{rig.prefix}_speaker",
            "--events",
            str(events),
        ],
        {**{key: None for key in os.environ if key.startswith("PULSE_")}, **app_env},
    )
    try:
        app.wait_for(lambda line: line.startswith("listening on"), 180)
        for name in ("password", "ticket", "pause"):
            junit = tmp_path / f"{name}.xml"
            done = drive(
                rig, tmp_path, str(EXAMPLES / f"{name}.toml"), "--attach", str(events), "--junit", str(junit)
            )
            assert done.returncode == 0, (name, done.stdout, done.stderr[-3000:])
            assert ET.parse(junit).getroot().get("failures") == "0"
    finally:
        app.stop()


def test_a_wrong_scenario_or_no_devices_is_one_line_and_its_own_exit_code(rig: Rig, tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[[turn]]\nsay = 'hi'\nwhen = 'soon'\n", encoding="utf-8")
    done = drive(rig, tmp_path, str(broken))
    assert done.returncode == 2
    assert (
        done.stderr.strip()
        == f"helpdesk-voice: {broken}: turn 1: when is one of after_answer, barge_in, at, not 'soon'"
    )
    nothing_up = drive(rig, tmp_path, str(EXAMPLES / "vpn.toml"))
    assert nothing_up.returncode == 3
    assert (
        "no virtual devices with prefix" in nothing_up.stderr and "helpdesk-voice rig up" in nothing_up.stderr
    )
    assert nothing_up.stdout == ""


@pytest.mark.devices
def test_ctrl_c_stops_the_app_it_started_and_is_not_a_pass(rig: Rig, tmp_path: Path) -> None:
    assert rig("up").returncode == 0
    env = {
        **rig.env,
        "HELPDESK_VOICE_DATA_DIR": str(tmp_path / "data"),
        "HELPDESK_VOICE_CONFIG_DIR": str(tmp_path),
    }
    drive = subprocess.Popen(
        [sys.executable, "-m", "app", "drive", str(EXAMPLES / "vpn.toml"), "--prefix", rig.prefix],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert drive.stderr is not None
    said = ""
    for line in drive.stderr:  # until the first turn is being said: the app is up by then
        said += line
        if "turn 1:" in line:
            break
    assert "turn 1:" in said, said
    drive.send_signal(signal.SIGINT)
    out, err = drive.communicate(timeout=60)
    assert drive.returncode == 3, out + err
    assert "stopped before the conversation ended" in err and "passed" not in out
    app_left = subprocess.run(
        ["pgrep", "-f", f"--input-device {rig.prefix}_mic"], capture_output=True, text=True
    )
    assert app_left.stdout == "", "the app the driver started is still running"


@pytest.mark.devices
def test_with_laptop_speaker_echo_the_answer_plays_without_interrupting_itself(
    rig: Rig, tmp_path: Path
) -> None:
    """The speaker looped into the microphone 10 dB down: the app must not take its own voice for
    the user (no_self_interruption is on by default), and a short reply still moves it on."""
    up = rig("up", "--echo-level", "-10", "--echo-delay", "20")
    assert up.returncode == 0 and "looped into the microphone at -10 dB" in up.stderr, up.stderr
    report = tmp_path / "report.json"
    done = drive(rig, tmp_path, str(EXAMPLES / "password.toml"), "--report", str(report))
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    turns = json.loads(report.read_text())["turns"]
    checked = {e["name"]: e["passed"] for turn in turns for e in turn["expectations"]}
    assert checked["no_self_interruption"] and checked["answer"]
    assert all(turn["app_reported"]["false_interruptions"] == 0 for turn in turns)
