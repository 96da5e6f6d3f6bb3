"""Data at rest (rows D1-D8): what a reader of the disk finds, and what a crash or a lost key leaves.

Every test runs the app's real storage parts (the transcript store and the ticket outbox) in child
processes of their own, against real files under a throwaway data folder and a real keyring backend
(``tests.file_keyring.FileKeyring``, loaded by the child through ``PYTHON_KEYRING_BACKEND``), and then
reads what they left on disk with nothing but the file system: the bytes, the modes, the names.
A child process, not this one, because each fault is about a fresh start of the app: a key held in
this process's memory, or a tidy that already ran here, would hide it.

The headless app keeps no transcripts (only the tray app's ``TranscriptStore`` writes them), so D1
is proved once through the whole tray app (offscreen Qt, the offline assistant, speech into the
virtual microphone) and once through that store alone; the other transcript rows drive the store in
a child as the tray app does: one store per session, the text handed to ``save``, ``flush`` at quit.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from app.audio.devices import find_device
from app.audio.resample import FloatArray
from app.testkit.rig import VirtualAudioRig
from tests.app_driver import HeadlessApp, speak
from tests.file_keyring import KEYRING_FILE_ENV

ROOT = Path(__file__).resolve().parents[2]
# Words a user might say that must never be readable on disk.
SPOKEN = ("swordfish", "Margarethe", "VPN", "laptop", "password")
HOUR = 3600.0
CHILD_TIMEOUT_S = 60.0


def _child_env(home: Path, keyring_file: Path | None) -> dict[str, str]:
    """A child's own data folder and keyring: never this session's, never the developer's."""
    env = dict(os.environ)
    env["HELPDESK_VOICE_DATA_DIR"] = str(home / "data")
    env["HELPDESK_VOICE_CONFIG_DIR"] = str(home / "config")
    env["HELPDESK_VOICE_POLICY"] = str(home / "policy.toml")
    env["PYTHONPATH"] = str(ROOT)
    if keyring_file is None:
        # keyring's own backend for "there is no keyring": every call fails as on a machine without one.
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.fail.Keyring"
        env.pop(KEYRING_FILE_ENV, None)
    else:
        env["PYTHON_KEYRING_BACKEND"] = "tests.file_keyring.FileKeyring"
        env[KEYRING_FILE_ENV] = str(keyring_file)
    return env


def _child(code: str, home: Path, keyring_file: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs ``code`` in a fresh interpreter with ``args``, which must succeed."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=_child_env(home, keyring_file),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 0, f"child failed ({done.returncode}): {done.stderr[-3000:]}"
    return done


def _run(code: str, home: Path, keyring_file: Path | None, *args: str) -> dict[str, object]:
    """Runs ``code`` in a fresh interpreter with ``args``; its last stdout line is JSON, returned."""
    done = _child(code, home, keyring_file, *args)
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


# One session of the tray app's transcript store: start (tidy, prune), save the texts, flush, close.
STORE_SESSION = """
    import json, sys
    from app.ui.transcript_store import TranscriptStore
    retention, texts = int(sys.argv[1]), json.loads(sys.argv[2])
    told = []
    store = TranscriptStore(retention, on_error=told.append)
    assert store.flush(30), "the transcript store did not start in time"
    for text in texts:
        store.save(text)
        assert store.flush(30), "the transcript store did not write in time"
    store.close()
    print(json.dumps({"path": str(store.path), "told": told}))
"""

READ_TRANSCRIPT = """
    import json, sys
    from pathlib import Path
    from app.ui.transcript_store import read_transcript
    print(json.dumps({"text": read_transcript(Path(sys.argv[1]))}))
"""

# Files tickets the way the create_ticket tool does (the real tool, its start tidy included), one
# per argument, and prints each id as soon as the tool has answered with it.
FILE_TICKETS = """
    import asyncio, json, sys
    from app.tools.tickets import TicketOutbox, create_ticket_tool
    tool = create_ticket_tool(TicketOutbox(), contact="margarethe@example.com")
    for description in json.loads(sys.argv[1]):
        answer = asyncio.run(tool.handler(
            {"summary": "VPN drops", "description": description, "category": "network"}
        ))
        print(json.dumps(answer), flush=True)
    print(json.dumps({"done": True}))
"""

# A fresh start of the outbox: the tidy the tool runs at start, then what a reader lists.
OUTBOX_START = """
    import json
    from app.tools.tickets import TicketOutbox
    outbox = TicketOutbox()
    problems = outbox.tidy()
    listing = outbox.list()
    print(json.dumps({
        "tidy": list(problems),
        "ids": [t.id for t in listing.tickets],
        "descriptions": {t.id: t.description for t in listing.tickets},
        "problems": list(listing.problems),
    }))
"""


def _store_session(
    home: Path, keyring_file: Path | None, texts: list[str], retention: int = 30
) -> tuple[Path, list[str]]:
    result = _run(STORE_SESSION, home, keyring_file, str(retention), json.dumps(texts))
    told = result["told"]
    assert isinstance(told, list)
    return Path(str(result["path"])), [str(line) for line in told]


def _file_tickets(home: Path, keyring_file: Path | None, descriptions: list[str]) -> list[dict[str, object]]:
    done = _child(FILE_TICKETS, home, keyring_file, json.dumps(descriptions))
    answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert answers[-1] == {"done": True}
    return answers[:-1]


def _outbox_start(home: Path, keyring_file: Path | None) -> dict[str, object]:
    return _run(OUTBOX_START, home, keyring_file)


def _transcript(words: tuple[str, ...] = SPOKEN) -> str:
    """A session's transcript as the tray app hands it to the store (TranscriptModel.to_json's shape)."""
    said = f"My {words[4]} is {words[0]}, I am {words[1]} and the {words[2]} on my {words[3]} keeps dropping."
    return json.dumps({"entries": [{"role": "user", "text": said}, {"role": "assistant", "text": "I see."}]})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _assert_no_words(blob: bytes, words: tuple[str, ...] = SPOKEN) -> None:
    lowered = blob.lower()
    for word in words:
        # Also as UTF-16, so a change of encoding does not pass for sealing.
        for encoded in (word.lower().encode("utf-8"), word.lower().encode("utf-16-le")):
            assert encoded not in lowered, f"{word!r} can be read on disk"


def _temp_files(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir() if path.name.startswith(".") and path.name.endswith(".tmp")
    )


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


# ---------------------------------------------------------------------------------------------------
# D1, D2: sealed at rest
# ---------------------------------------------------------------------------------------------------


@pytest.mark.fault("D1")
def test_a_saved_transcript_holds_none_of_the_words_and_only_its_owner_may_open_it(tmp_path: Path) -> None:
    keyring_file = tmp_path / "keyring.json"
    text = _transcript()
    path, told = _store_session(tmp_path, keyring_file, [text])

    assert told == []
    assert path.parent == tmp_path / "data" / "transcripts"
    blob = path.read_bytes()
    assert blob.startswith(b"HDVSEAL")
    _assert_no_words(blob)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    assert [p.name for p in path.parent.iterdir()] == [path.name], "something besides the sealed file"
    # The key is in the keyring, not next to the files.
    assert "data-key" in keyring_file.read_text("utf-8")
    # Sealed, not garbled: a later start of the app with the same keyring reads every word back.
    assert _run(READ_TRANSCRIPT, tmp_path, keyring_file, str(path))["text"] == text + "\n"


def _words(value: object) -> set[str]:
    """Every word (four letters or more) in the strings of a JSON value."""
    if isinstance(value, str):
        return {word.lower() for word in re.findall(r"[A-Za-z]{4,}", value)}
    if isinstance(value, dict):
        return set().union(*(_words(v) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(_words(v) for v in value)) if value else set()
    return set()


@pytest.mark.fault("D1")
@pytest.mark.devices
def test_a_spoken_conversation_in_the_tray_app_leaves_a_transcript_with_none_of_its_words(
    virtual_audio: VirtualAudioRig, speech: Callable[[str, int], FloatArray], tmp_path: Path
) -> None:
    keyring_file = tmp_path / "keyring.json"
    env: dict[str, str | None] = {
        **_child_env(tmp_path, keyring_file),
        # The tray app on the offline assistant: offscreen Qt opens its window, -v logs when it listens.
        "QT_QPA_PLATFORM": "offscreen",
        "HELPDESK_VOICE_INPUT_DEVICE": virtual_audio.mic,
        "HELPDESK_VOICE_OUTPUT_DEVICE": virtual_audio.speaker,
    }
    transcripts = tmp_path / "data" / "transcripts"
    app = HeadlessApp(["-v"], env, headless=False)
    try:
        app.wait_for(lambda line: "listening on" in line, 120, stderr=True)
        feed_rate = int(find_device(virtual_audio.mic_feed, "output").default_samplerate)
        # Said again if no transcript follows: the virtual microphone is shared with whatever else
        # runs on this PulseAudio server, and a turn lost there is not this row's fault.
        for _attempt in range(3):
            speak(virtual_audio, speech("I forgot my password for the printer", feed_rate))
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline and not list(transcripts.glob("*.json")):
                time.sleep(0.2)
            if list(transcripts.glob("*.json")):
                break
        app.process.terminate()  # quitting writes the last version of the transcript
        assert app.process.wait(30) == 0, app.errors[-10:]
    finally:
        app.stop()

    saved = list(transcripts.glob("*.json"))
    assert len(saved) == 1, f"no transcript saved; stderr: {app.errors}"
    path = saved[0]
    # What the app itself reads back is what was said: those are the words that must not show.
    said = json.loads(str(_run(READ_TRANSCRIPT, tmp_path, keyring_file, str(path))["text"]))
    words = _words(said)
    assert {"password", "printer"} & words, f"the speech was not heard: {said}"
    blob = path.read_bytes()
    assert blob.startswith(b"HDVSEAL")
    _assert_no_words(blob, tuple(sorted(words)))
    assert _mode(path) == 0o600
    assert _mode(transcripts) == 0o700


@pytest.mark.fault("D2")
def test_a_queued_ticket_holds_none_of_the_words_and_only_its_owner_may_open_it(tmp_path: Path) -> None:
    keyring_file = tmp_path / "keyring.json"
    description = _transcript()
    answers = _file_tickets(tmp_path, keyring_file, [description])

    assert [a["ticket_id"] for a in answers] == ["HD-1001"]
    assert "warning" not in answers[0]
    outbox = tmp_path / "data" / "outbox"
    ticket = outbox / "HD-1001.json"
    blob = ticket.read_bytes()
    assert blob.startswith(b"HDVSEAL")
    _assert_no_words(blob, (*SPOKEN, "margarethe@example.com", "VPN drops"))
    assert _mode(ticket) == 0o600
    assert _mode(outbox) == 0o700
    assert _mode(outbox / ".reserved") == 0o700
    assert _mode(tmp_path / "data") == 0o700
    started = _outbox_start(tmp_path, keyring_file)
    assert started["ids"] == ["HD-1001"] and started["problems"] == []
    assert started["descriptions"] == {"HD-1001": description}


# ---------------------------------------------------------------------------------------------------
# D3, D4: crashes
# ---------------------------------------------------------------------------------------------------

ROUNDS = 10
WRITERS = 3


def _reported_ids(output: str) -> list[str]:
    """The ids a killed child had printed: only whole lines count (the last one may be cut)."""
    ids: list[str] = []
    for line in output.splitlines():
        try:
            answer = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(answer, dict) and "ticket_id" in answer:
            ids.append(str(answer["ticket_id"]))
    return ids


@pytest.mark.fault("D3")
def test_tickets_filed_by_apps_killed_at_random_moments_are_all_kept_once_and_none_is_half_written(
    tmp_path: Path,
) -> None:
    keyring_file = tmp_path / "keyring.json"
    # The app has run before and made its data key: the keyring test backend itself does not write
    # atomically, and the first key's race between processes is a documented window, not this row.
    first = _file_tickets(tmp_path, keyring_file, ["before the crashes"])
    reported = [str(a["ticket_id"]) for a in first]
    rng = random.Random(20261204)
    env = _child_env(tmp_path, keyring_file)
    # More than any writer can file before it is killed (short: all of them travel in one argument).
    descriptions = json.dumps([f"t{n}" for n in range(5000)])
    for _ in range(ROUNDS):
        writers = [
            subprocess.Popen(
                [sys.executable, "-c", textwrap.dedent(FILE_TICKETS), descriptions],
                env=env,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(WRITERS)
        ]
        # Each writer dies at its own moment: some while importing, most in the middle of filing.
        for writer in sorted(writers, key=lambda _: rng.random()):
            time.sleep(rng.uniform(0.2, 1.2))
            writer.send_signal(signal.SIGKILL)
        for writer in writers:
            out, _err = writer.communicate(timeout=CHILD_TIMEOUT_S)
            assert writer.returncode == -signal.SIGKILL, "a writer finished before it was killed"
            reported += _reported_ids(out)

    assert len(reported) > ROUNDS, "the writers were killed before filing anything: the test proves nothing"
    assert len(reported) == len(set(reported)), "an id was given to two tickets"
    outbox = tmp_path / "data" / "outbox"
    # Leftovers of the killed writes are young; age them so that the next start may take them.
    for leftover in _temp_files(outbox):
        _age(leftover, 2 * HOUR)
    started = _outbox_start(tmp_path, keyring_file)

    listed = started["ids"]
    assert isinstance(listed, list)
    assert started["problems"] == [], "a ticket file is partial or unreadable"
    assert started["tidy"] == []
    assert len(listed) == len(set(listed))
    missing = sorted(set(reported) - set(listed))
    assert missing == [], f"tickets whose ids were read to the user are gone: {missing}"
    # Nothing on disk that is neither a whole ticket nor a reservation marker.
    assert _temp_files(outbox) == []
    on_disk = sorted(path.name for path in outbox.iterdir() if not path.name.startswith("."))
    assert on_disk == sorted(f"{ticket_id}.json" for ticket_id in listed)
    # A ticket filed after all this takes an id none of them had.
    after = _file_tickets(tmp_path, keyring_file, ["after the crashes"])
    assert str(after[0]["ticket_id"]) not in set(listed)


@pytest.mark.fault("D4")
def test_temporary_files_left_by_a_crash_are_removed_at_the_next_start(tmp_path: Path) -> None:
    keyring_file = tmp_path / "keyring.json"
    _file_tickets(tmp_path, keyring_file, ["the first ticket"])
    _store_session(tmp_path, keyring_file, [_transcript()])
    outbox = tmp_path / "data" / "outbox"
    transcripts = tmp_path / "data" / "transcripts"
    # What a write killed between mkstemp and the rename leaves: write_atomically's own names.
    stale = [
        outbox / ".HD-1002.json.k3j2l1a9.tmp",
        outbox / ".HD-1003.json.x0q8w7e6.tmp",
        transcripts / ".2026-01-01_10-00-00.json.p9o8i7u6.tmp",
    ]
    young = [outbox / ".HD-1004.json.y1y1y1y1.tmp", transcripts / ".2026-01-02_10-00-00.json.y2y2y2y2.tmp"]
    for path in [*stale, *young]:
        path.write_bytes(b'{"summary": "half a tick')
    for path in stale:
        _age(path, 2 * HOUR)

    started = _outbox_start(tmp_path, keyring_file)
    assert started["tidy"] == [] and started["problems"] == [] and started["ids"] == ["HD-1001"]
    _path, told = _store_session(tmp_path, keyring_file, [])
    assert told == []

    assert [path for path in stale if path.exists()] == [], "crash leftovers survived the start"
    # A younger one may be another running instance's write in progress: it is left to its writer.
    assert all(path.exists() for path in young)


# ---------------------------------------------------------------------------------------------------
# D5, D6: the keyring
# ---------------------------------------------------------------------------------------------------


@pytest.mark.fault("D5")
def test_files_sealed_with_a_key_the_keyring_lost_are_kept_untouched_and_reported_once(
    tmp_path: Path,
) -> None:
    keyring_file = tmp_path / "keyring.json"
    _file_tickets(tmp_path, keyring_file, [_transcript()])
    old_transcript, _told = _store_session(tmp_path, keyring_file, [_transcript()])
    old_ticket = tmp_path / "data" / "outbox" / "HD-1001.json"
    sealed = {path: path.read_bytes() for path in (old_ticket, old_transcript)}
    keyring_file.write_text("{}", "utf-8")  # the keyring was reset: the data key is gone
    time.sleep(1.1)  # the next session's transcript gets a name of its own (one per second)

    new_transcript, told = _store_session(tmp_path, keyring_file, ["first save", "second save"])
    started = _outbox_start(tmp_path, keyring_file)
    answers = _file_tickets(tmp_path, keyring_file, ["after the reset"])

    assert len(told) == 1, f"the lost key was not reported exactly once: {told}"
    assert "no longer holds" in told[0] and "kept" in told[0]
    problems = started["problems"]
    assert isinstance(problems, list) and len(problems) == 1
    assert str(problems[0]).startswith("HD-1001.json:") and "no longer holds" in str(problems[0])
    assert started["tidy"] == []
    for path, blob in sealed.items():
        assert path.read_bytes() == blob, f"{path.name} was changed"
    # New data goes to new files, never over the old ones.
    assert new_transcript != old_transcript and new_transcript.exists()
    assert answers[0]["ticket_id"] == "HD-1002"


@pytest.mark.fault("D6")
def test_without_a_keyring_tickets_are_kept_and_said_so_and_transcripts_are_not_written(
    tmp_path: Path,
) -> None:
    answers = _file_tickets(tmp_path, None, ["the VPN drops", "the printer jams"])
    _path, told = _store_session(tmp_path, None, ["first save", "second save", "third save"])

    assert [a["ticket_id"] for a in answers] == ["HD-1001", "HD-1002"]
    for answer in answers:
        # What the tool answers is what the model reads out and the transcript shows.
        assert "without encryption" in str(answer["warning"]) and "keyring" in str(answer["warning"])
    outbox = tmp_path / "data" / "outbox"
    for ticket_id in ("HD-1001", "HD-1002"):
        assert _mode(outbox / f"{ticket_id}.json") == 0o600
    assert _mode(outbox) == 0o700
    transcripts = tmp_path / "data" / "transcripts"
    assert not transcripts.exists() or list(transcripts.iterdir()) == [], "a transcript was written unsealed"
    assert len(told) == 1, f"the missing keyring was not told exactly once: {told}"
    assert "memory only" in told[0] and "keyring" in told[0]
    # Once a keyring can be had, the next start seals what had to be written plain.
    started = _outbox_start(tmp_path, tmp_path / "keyring.json")
    assert started["ids"] == ["HD-1002", "HD-1001"] and started["problems"] == []
    assert all((outbox / f"{i}.json").read_bytes().startswith(b"HDVSEAL") for i in ("HD-1001", "HD-1002"))


# ---------------------------------------------------------------------------------------------------
# D7, D8
# ---------------------------------------------------------------------------------------------------


@pytest.mark.fault("D7")
def test_a_corrupt_ticket_is_reported_and_kept_and_the_others_are_read(tmp_path: Path) -> None:
    keyring_file = tmp_path / "keyring.json"
    _file_tickets(tmp_path, keyring_file, ["one", "two", "three"])
    outbox = tmp_path / "data" / "outbox"
    damaged = outbox / "HD-1002.json"
    blob = bytearray(damaged.read_bytes())
    blob[-5] ^= 0xFF  # a flipped bit in the sealed text, as a bad sector or a careless editor leaves
    damaged.write_bytes(bytes(blob))
    garbage = outbox / "HD-1004.json"
    garbage.write_bytes(b"{not a ticket")  # a plain file that is not JSON at all

    started = _outbox_start(tmp_path, keyring_file)
    after = _file_tickets(tmp_path, keyring_file, ["four"])

    assert started["ids"] == ["HD-1003", "HD-1001"]
    assert started["descriptions"] == {"HD-1003": "three", "HD-1001": "one"}
    problems = [str(problem) for problem in started["problems"]]  # type: ignore[attr-defined]
    assert len(problems) == 2
    assert problems[0].startswith("HD-1002.json:") and "damaged" in problems[0]
    assert problems[1].startswith("HD-1004.json:")
    assert damaged.read_bytes() == bytes(blob) and garbage.read_bytes() == b"{not a ticket"
    assert after[0]["ticket_id"] == "HD-1005", "a corrupt ticket's id was given again"


@pytest.mark.fault("D8")
def test_transcripts_past_the_retention_are_deleted_at_start_and_retention_zero_keeps_nothing(
    tmp_path: Path,
) -> None:
    keyring_file = tmp_path / "keyring.json"
    expired, _ = _store_session(tmp_path, keyring_file, ["forty days ago"])
    _age(expired, 40 * 24 * HOUR)
    time.sleep(1.1)  # one file per session, named by the second it began
    recent, _ = _store_session(tmp_path, keyring_file, ["twenty-nine days ago"])
    _age(recent, 29 * 24 * HOUR)

    _path, told = _store_session(tmp_path, keyring_file, [], retention=30)  # a start, nothing said yet
    assert told == []
    assert not expired.exists(), "a transcript past the retention survived the start"
    assert recent.exists()

    time.sleep(1.1)
    unwritten, told = _store_session(tmp_path, keyring_file, ["not to be kept"], retention=0)
    assert told == []
    assert not recent.exists() and not unwritten.exists()
    assert list((tmp_path / "data" / "transcripts").iterdir()) == []
