"""Keeping transcripts: atomic JSON that round-trips, retention by age, retention 0, disk failures."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from app.core.actions import Notice, ToolActivity, Transcript
from app.ui.transcript_model import TranscriptModel
from app.ui.transcript_store import TranscriptStore, default_transcripts_dir, prune_transcripts

NOW = datetime(2024, 5, 6, 9, 8, 7)
FLUSH_S = 5.0


def fixed_clock() -> datetime:
    return NOW


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
    data = json.loads(store.path.read_text(encoding="utf-8"))
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
    other = make_file(tmp_path, "notes.txt", days_old=400)  # not a transcript: not ours to delete
    (tmp_path / "folder.json").mkdir()
    age(tmp_path / "folder.json", 400)

    deleted = prune_transcripts(tmp_path, 30, NOW)
    assert sorted(deleted) == sorted([old, stale_temp])
    assert kept.exists() and other.exists() and (tmp_path / "folder.json").is_dir()
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
    assert len(json.loads(store.path.read_text(encoding="utf-8"))["entries"]) == 4
