"""Keeping transcripts: sealed JSON that round-trips, retention by age, retention 0, disk failures.

A real keyring backend (a file outside ``tmp_path``) holds the data key; tests that need another
keyring, or none, swap it for their own.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path

import keyring
import keyring.backends.fail
import pytest

from app.core.actions import Notice, ToolActivity, Transcript
from app.sealed_files import UnreadableFile
from app.ui.transcript_model import TranscriptModel
from app.ui.transcript_store import (
    TranscriptStore,
    default_transcripts_dir,
    prune_transcripts,
    read_transcript,
)
from tests.file_keyring import FileKeyring

NOW = datetime(2024, 5, 6, 9, 8, 7)
FLUSH_S = 5.0


def fixed_clock() -> datetime:
    return NOW


@pytest.fixture(autouse=True)
def sealing_keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileKeyring]:
    original = keyring.get_keyring()
    backend = FileKeyring(tmp_path_factory.mktemp("keyring") / "keyring.json")
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(original)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HELPDESK_VOICE_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def conversation() -> TranscriptModel:
    model = TranscriptModel(clock=fixed_clock)
    model.apply_transcript(Transcript("user", "u1", "My VPN is down.", final=True))
    model.apply_transcript(Transcript("assistant", "a1", "Let me open ", final=False))
    model.apply_tool(ToolActivity("c1", "create_ticket", "done", "Ticket HD-1042 created"))
    model.apply_notice(Notice("warning", "Connection lost, reconnecting"))
    return model


def age(path: Path, days: float) -> Path:
    """Set ``path``'s modification time ``days`` before ``NOW``."""
    when = (NOW - timedelta(days=days)).timestamp()
    os.utime(path, (when, when))
    return path


def make_file(directory: Path, name: str, days_old: float) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text('{"entries": []}\n', encoding="utf-8")
    return age(path, days_old)


def test_save_writes_json_that_round_trips_the_entries(data_dir: Path) -> None:
    model = conversation()
    store = TranscriptStore(30, clock=fixed_clock)
    assert store.directory == default_transcripts_dir() == data_dir / "transcripts"
    assert store.path.name == "2024-05-06_09-08-07.json"  # local start time, no colons
    store.save(TranscriptModel(clock=fixed_clock).to_json())  # an earlier version, replaced
    store.save(model.to_json())
    assert store.flush(FLUSH_S)
    data = json.loads(read_transcript(store.path))
    assert data == {"entries": [entry.as_dict() for entry in model.entries]}
    assert [e["text"] for e in data["entries"]] == [
        "My VPN is down.",
        "Let me open ",
        "Ticket HD-1042 created",
        "Connection lost, reconnecting",
    ]
    assert data["entries"][1]["final"] is False
    assert [p.name for p in store.directory.iterdir()] == [store.path.name]  # no temporary file left
    store.close()


def test_prune_deletes_only_transcripts_older_than_the_retention(tmp_path: Path) -> None:
    old = make_file(tmp_path, "2024-03-01_10-00-00.json", days_old=31)
    kept = make_file(tmp_path, "2024-04-10_10-00-00.json", days_old=29)
    stale_temp = make_file(tmp_path, ".2024-03-02_10-00-00.json.abcd.tmp", days_old=40)
    live_temp = make_file(tmp_path, ".2024-05-06_09-00-00.json.efgh.tmp", days_old=0.01)  # a write under way
    other = make_file(tmp_path, "notes.txt", days_old=400)  # not a transcript: not ours to delete
    (tmp_path / "folder.json").mkdir()
    age(tmp_path / "folder.json", 400)

    deleted = prune_transcripts(tmp_path, 30, NOW)
    assert sorted(deleted) == sorted([old, stale_temp])
    assert kept.exists() and other.exists() and live_temp.exists() and (tmp_path / "folder.json").is_dir()
    assert not old.exists() and not stale_temp.exists()
    assert prune_transcripts(tmp_path / "missing", 30, NOW) == []


def test_the_store_prunes_when_it_starts(data_dir: Path) -> None:
    directory = data_dir / "transcripts"
    old = make_file(directory, "2023-01-01_10-00-00.json", days_old=8)
    recent = make_file(directory, "2024-05-01_10-00-00.json", days_old=6)
    store = TranscriptStore(7, clock=fixed_clock)
    assert store.flush(FLUSH_S)
    assert not old.exists() and recent.exists()
    store.close()


def test_retention_zero_keeps_nothing(data_dir: Path) -> None:
    directory = data_dir / "transcripts"
    make_file(directory, "2024-05-06_09-00-00.json", days_old=0)
    store = TranscriptStore(0, clock=fixed_clock)
    assert not store.enabled
    store.save(conversation().to_json())
    assert store.flush(FLUSH_S)
    assert list(directory.iterdir()) == []
    store.close()


def test_retention_set_to_zero_deletes_this_sessions_file(data_dir: Path) -> None:
    store = TranscriptStore(30, clock=fixed_clock)
    store.save(conversation().to_json())
    assert store.flush(FLUSH_S) and store.path.exists()
    store.set_retention(0)
    store.save(conversation().to_json())  # refused from now on
    assert store.flush(FLUSH_S)
    assert not store.path.exists()
    store.set_retention(30)
    store.save(conversation().to_json())
    assert store.flush(FLUSH_S) and store.path.exists()
    store.close()


def test_an_unwritable_folder_is_reported_once_and_never_raises(data_dir: Path) -> None:
    # A file where the folder should be: unwritable even for root, unlike a chmod.
    data_dir.mkdir(parents=True)
    (data_dir / "transcripts").write_text("", encoding="utf-8")
    errors: list[str] = []
    store = TranscriptStore(30, on_error=errors.append, clock=fixed_clock)
    for _ in range(3):
        store.save(conversation().to_json())
        assert store.flush(FLUSH_S)
    store.set_retention(10)
    assert store.flush(FLUSH_S)
    assert len(errors) == 1, errors
    assert "transcripts" in errors[0]
    store.close()


def test_close_writes_what_is_pending_then_ends_the_thread(data_dir: Path) -> None:
    store = TranscriptStore(30, clock=fixed_clock)
    store.save(conversation().to_json())
    store.close()
    store.save("{}")  # after close: ignored
    assert store.flush(FLUSH_S)
    store._thread.join(FLUSH_S)
    assert not store._thread.is_alive()
    assert len(json.loads(read_transcript(store.path))["entries"]) == 4


# ----------------------------------------------------------------------------------------------
# At rest: sealed, private, tidied at start
# ----------------------------------------------------------------------------------------------
USER_WORDS = ("My VPN is down.", "VPN", "Let me open", "HD-1042", "reconnecting")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_saved_transcript_holds_none_of_the_words_and_is_private(data_dir: Path) -> None:
    model = conversation()
    store = TranscriptStore(7, clock=fixed_clock)
    store.save(model.to_json())
    assert store.flush(FLUSH_S)
    store.close()
    raw = store.path.read_bytes()
    for words in USER_WORDS:
        for encoding in ("utf-8", "utf-16-le"):
            assert words.encode(encoding) not in raw, words
    assert b"entries" not in raw and not raw.lstrip().startswith(b"{")
    assert mode(store.path) == 0o600
    assert mode(store.directory) == 0o700
    assert mode(data_dir) == 0o700  # made by the store, so private from the start
    assert json.loads(read_transcript(store.path))["entries"][0]["text"] == "My VPN is down."


def test_crash_leftovers_go_at_start_but_a_write_under_way_stays(data_dir: Path) -> None:
    directory = data_dir / "transcripts"
    directory.mkdir(parents=True)
    now = time.time()
    leftover = directory / ".2024-05-06_08-00-00.json.k3j2.tmp"
    leftover.write_text('{"entries": [{"text": "my password is hunter2"}]}', encoding="utf-8")
    os.utime(leftover, (now - 7200, now - 7200))  # two hours: no live writer takes that long
    under_way = directory / ".2024-05-06_09-00-00.json.x9z8.tmp"
    under_way.write_bytes(b"partial")
    store = TranscriptStore(7)  # the real clock: the age of a leftover is measured against it
    assert store.flush(FLUSH_S)
    store.close()
    assert not leftover.exists()
    assert under_way.exists()


def test_plain_transcripts_from_before_are_sealed_at_start_keeping_their_age(data_dir: Path) -> None:
    directory = data_dir / "transcripts"
    directory.mkdir(parents=True)
    os.chmod(directory, 0o755)  # as earlier versions left it
    plain_text = '{"entries": [{"text": "My printer in room 4.12 is jammed"}]}\n'
    earlier = directory / "2024-05-03_10-00-00.json"
    earlier.write_text(plain_text, encoding="utf-8")
    age(earlier, 3)
    expired = make_file(directory, "2024-04-20_10-00-00.json", days_old=16)
    written_before = earlier.stat().st_mtime_ns

    store = TranscriptStore(7, clock=fixed_clock)
    assert store.flush(FLUSH_S)
    store.close()
    assert not expired.exists()  # deleted by retention, not sealed first
    raw = earlier.read_bytes()
    assert b"printer" not in raw and b"jammed" not in raw
    assert read_transcript(earlier) == plain_text
    assert earlier.stat().st_mtime_ns == written_before  # retention still counts from its last write
    assert mode(earlier) == 0o600 and mode(directory) == 0o700
    assert [p.name for p in directory.iterdir()] == [earlier.name]  # no temporary file left


def test_a_plain_transcript_is_still_read_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "2024-05-06_09-08-07.json"
    path.write_text('{"entries": []}\n', encoding="utf-8")
    assert read_transcript(path) == '{"entries": []}\n'


def test_a_lost_key_is_reported_once_and_the_files_are_kept(
    data_dir: Path, tmp_path: Path, sealing_keyring: FileKeyring
) -> None:
    first = TranscriptStore(7, clock=fixed_clock)
    first.save(conversation().to_json())
    assert first.flush(FLUSH_S)
    first.close()
    sealed = first.path.read_bytes()

    # The keyring is reset: a fresh one holds no data key.
    keyring.set_keyring(FileKeyring(tmp_path / "reset-keyring.json"))
    with pytest.raises(UnreadableFile, match=r"no longer holds.*kept"):
        read_transcript(first.path)

    errors: list[str] = []
    later = datetime(2024, 5, 7, 9, 0, 0)
    second = TranscriptStore(7, on_error=errors.append, clock=lambda: later)
    second.save(conversation().to_json())  # a new key is made for the new file
    assert second.flush(FLUSH_S)
    second.set_retention(7)
    assert second.flush(FLUSH_S)
    second.close()
    assert len(errors) == 1, errors
    assert "1 saved transcript" in errors[0] and "no longer holds" in errors[0] and "kept" in errors[0]
    assert first.path.read_bytes() == sealed  # kept exactly as it was
    assert json.loads(read_transcript(second.path))["entries"][0]["text"] == "My VPN is down."
    with pytest.raises(UnreadableFile, match="no longer holds"):
        read_transcript(first.path)

    # The same key, a damaged file: told apart from a lost key.
    keyring.set_keyring(sealing_keyring)
    damaged = bytearray(sealed)
    damaged[-1] ^= 0x01
    first.path.write_bytes(bytes(damaged))
    with pytest.raises(UnreadableFile, match="damaged"):
        read_transcript(first.path)
    # A sealed file copied over another one's name does not open as that one.
    first.path.write_bytes(sealed)
    copy = data_dir / "transcripts" / "2024-05-01_10-00-00.json"
    copy.write_bytes(sealed)
    with pytest.raises(UnreadableFile, match="renamed"):
        read_transcript(copy)
    assert json.loads(read_transcript(first.path))["entries"][0]["text"] == "My VPN is down."


def test_without_a_keyring_nothing_is_written_and_the_user_is_told_once(data_dir: Path) -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())
    errors: list[str] = []
    store = TranscriptStore(7, on_error=errors.append, clock=fixed_clock)
    for _ in range(3):
        store.save(conversation().to_json())
        assert store.flush(FLUSH_S)
    store.close()
    assert not store.path.exists()
    assert not any(p.name.endswith(".tmp") for p in store.directory.glob(".*"))
    assert len(errors) == 1, errors
    assert "memory only" in errors[0] and "keyring" in errors[0]
