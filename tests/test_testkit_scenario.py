"""Scenario files: what a tester writes, and a readable message for what cannot be run."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.testkit.scenario import ScenarioError, load_scenario, parse_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "scenarios"


def parse(text: str) -> object:
    return parse_scenario(text, Path("/x/s.toml"))


def test_a_scenario_with_every_kind_of_turn(tmp_path: Path) -> None:
    wav = tmp_path / "hello.wav"
    wav.write_bytes(b"")
    path = tmp_path / "s.toml"
    path.write_text(
        """
name = "Everything"
voice = "espeak:en-gb"
speed = 150
[settings]
turn_detection = "semantic_vad"
"audio.echo_cancellation" = false

[[turn]]
say = "my laptop |600| will not start"
expect = { heard = ["laptop"], answer_any = ["restart", "power"], first_sound_ms = 900 }

[[turn]]
say = "stop"
when = "barge_in"
after_ms = 800
voice = "piper"
expect = { halt_ms = 300, no_self_interruption = false }

[[turn]]
audio = "hello.wav"
when = "at"
at_ms = 20000
timeout_s = 5
expect = { answered = false, tools = "create_ticket", ticket = false }
""",
        encoding="utf-8",
    )
    scenario = load_scenario(path)
    first, second, third = scenario.turns
    assert scenario.name == "Everything" and scenario.settings == {
        "turn_detection": "semantic_vad",
        "audio.echo_cancellation": "false",
    }
    assert first.plain_text == "my laptop will not start" and first.pauses_ms == (600,)
    assert (first.voice, first.speed, first.when) == ("espeak:en-gb", 150.0, "after_answer")
    assert first.expect.names() == [
        "heard",
        "answer_any",
        "answered",
        "no_cut_off",
        "first_sound_ms",
        "no_self_interruption",
    ]
    assert (second.voice, second.when, second.after_ms, second.expect.halt_ms) == (
        "piper",
        "barge_in",
        800.0,
        300.0,
    )
    assert "no_self_interruption" not in second.expect.names()
    assert third.audio == wav and third.after_ms == 20000.0 and third.timeout_s == 5.0
    assert third.expect.tools == ("create_ticket",) and third.expect.ticket is False
    assert third.label == "turn 3: [hello.wav]"


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.stem)
def test_the_examples_load(example: Path) -> None:
    assert load_scenario(example).turns


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name = 1\n[[turn]]\nsay='x'", "name is text"),
        ("[[turn]]\nsay = 'hi'\nwhn = 'at'", "turn 1: unknown key whn"),
        ("[[turn]]\nsay = 'hi'\nexpect = { answr = ['x'] }", "turn 1: expect: unknown key answr"),
        ("name = 'x'", "no turns"),
        ("[[turn]]\nsay = 'hi'\nwhen = 'barge_in'", "turn 1: when = 'barge_in' needs an answer before it"),
        ("[[turn]]\nsay = 'a'\n[[turn]]\nsay = 'b'\nwhen = 'later'", "turn 2: when is one of"),
        ("[[turn]]\nsay = 'a'\nwhen = 'at'", "turn 1: when = 'at' needs at_ms"),
        ("[[turn]]\nsay = 'a'\nat_ms = 5", "turn 1: at_ms needs when = 'at'"),
        ("[[turn]]\nsay = 'a'\naudio = 'b.wav'", "either say"),
        ("[[turn]]\nsay = ' |300| '", "say is the text to speak, and it is empty"),
        ("[[turn]]\nsay = 'a |300| b'\nvoice = 'piper'", "only espeak-ng voices render"),
        ("[[turn]]\nsay = 'a |9000| b'", "at most 5000 ms"),
        ("[[turn]]\nsay = 'a'\nvoice = 'festival'", "voice is espeak:VOICE"),
        ("[[turn]]\nsay = 'a'\nexpect = { halt_ms = 100 }", "halt_ms is for a turn that talks over"),
        ("[[turn]]\nsay = 'a'\nexpect = { first_sound_ms = 0 }", "first_sound_ms is a time in ms"),
        ("[[turn]]\nsay = 'a'\nexpect = { answer = 'x', ticket = 'yes' }", "ticket is true or false"),
        ("[[turn]]\nsay = 'a'\nexpect = { answer = [1] }", "answer is a list of words"),
        ("[[turn]]\nsay = 'a'\naudio_ms = 1", "unknown key audio_ms"),
        ("[[turn]\nsay = 'a'", "not valid TOML"),
        ("[[turn]]\naudio = 'missing.wav'", "no audio file at /x/missing.wav"),
    ],
)
def test_a_wrong_scenario_says_where_and_why(text: str, message: str) -> None:
    with pytest.raises(ScenarioError, match=None) as caught:
        parse(text)
    assert message in str(caught.value), str(caught.value)
    assert str(caught.value).startswith("/x/s.toml")


def test_a_missing_or_unreadable_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="no such scenario file"):
        load_scenario(tmp_path / "nope.toml")
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ScenarioError, match="cannot read it"):
        load_scenario(tmp_path / "bin.toml")
