"""The ticket outbox: unique increasing ids across threads and processes, durable files, bad files skipped.

Every test writes under ``tmp_path``; the real user data folder is never touched. A real keyring
backend (a file outside ``tmp_path``) holds the data key that seals the tickets; tests that need
another keyring, or none, swap it for their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import keyring
import keyring.backends.fail
import platformdirs
import pytest

from app.sealed_files import data_keys, read_file
from app.tools import default_registry
from app.tools.tickets import (
    CATEGORIES,
    DATA_DIR_ENV,
    URGENCIES,
    Ticket,
    TicketOutbox,
    default_data_dir,
    default_outbox_dir,
)
from tests.file_keyring import KEYRING_FILE_ENV, FileKeyring

ROOT = Path(__file__).resolve().parent.parent
FIELDS = {"id", "created_at", "summary", "description", "category", "urgency", "contact", "status"}


@pytest.fixture(autouse=True)
def sealing_keyring(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FileKeyring]:
    original = keyring.get_keyring()
    backend = FileKeyring(tmp_path_factory.mktemp("keyring") / "keyring.json")
    keyring.set_keyring(backend)
    try:
        yield backend
    finally:
        keyring.set_keyring(original)


def stored(path: Path) -> Any:
    """A ticket file's JSON, through the app's own reader (it unseals)."""
    return json.loads(read_file(path).decode("utf-8"))


def create(outbox: TicketOutbox, summary: str = "VPN drops", **changes: Any) -> Ticket:
    fields: dict[str, Any] = {
        "summary": summary,
        "description": "The VPN disconnects every few minutes at home.",
        "category": "network",
        "urgency": "normal",
    }
    fields.update(changes)
    return outbox.create(**fields)


def ticket_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("HD-*.json"))


def test_ids_increase_from_hd_1001(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path / "outbox")
    ids = [create(outbox, f"problem {n}").id for n in range(3)]
    assert ids == ["HD-1001", "HD-1002", "HD-1003"]


def test_ticket_file_is_json_with_every_field(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    before = datetime.now().astimezone()
    ticket = create(outbox, "Printer jam", category="hardware", urgency="high", contact="ada@example.com")
    path = tmp_path / f"{ticket.id}.json"
    data = stored(path)
    assert set(data) >= FIELDS
    assert data["id"] == ticket.id == "HD-1001"
    assert data["summary"] == "Printer jam"
    assert data["category"] == "hardware"
    assert data["urgency"] == "high"
    assert data["contact"] == "ada@example.com"
    assert data["status"] == "queued"
    created = datetime.fromisoformat(data["created_at"])
    assert created.utcoffset() == timedelta(0)  # UTC
    assert before - timedelta(seconds=2) <= created <= datetime.now().astimezone() + timedelta(seconds=2)
    assert Ticket.from_dict(data) == ticket
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def test_tickets_survive_reopening_and_list_newest_first(tmp_path: Path) -> None:
    created = [create(TicketOutbox(tmp_path), f"problem {n}") for n in range(4)]
    reopened = TicketOutbox(tmp_path)
    listing = reopened.list()
    assert listing.problems == ()
    assert list(listing.tickets) == created[::-1]
    assert create(reopened).id == "HD-1005"  # numbering continues after a restart


def test_ids_are_not_reused_after_a_sync_removes_tickets(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    for _ in range(3):
        create(outbox)
    for path in ticket_files(tmp_path):
        path.unlink()  # what a sync does after handing the tickets over
    assert create(outbox).id == "HD-1004"


def test_list_of_missing_folder_is_empty(tmp_path: Path) -> None:
    listing = TicketOutbox(tmp_path / "never-created").list()
    assert listing.tickets == () and listing.problems == ()
    assert not (tmp_path / "never-created").exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"summary": "   "}, "summary must not be empty"),
        ({"summary": "x" * 201}, "summary must be at most 200"),
        ({"description": "x" * 4001}, "description must be at most 4000"),
        ({"category": "coffee"}, "category must be one of"),
        ({"urgency": "urgent"}, "urgency must be one of"),
    ],
)
def test_bad_fields_are_refused_and_nothing_is_written(
    tmp_path: Path, changes: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        create(TicketOutbox(tmp_path), **changes)
    assert ticket_files(tmp_path) == []


def test_failed_write_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    outbox = TicketOutbox(tmp_path)

    def fail(source: object, target: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="No space left"):
        create(outbox)
    monkeypatch.undo()
    assert ticket_files(tmp_path) == []
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == []  # the temp file was removed
    assert create(outbox).id == "HD-1002"  # the failed ticket's id stays burnt, never handed out twice


def test_corrupt_files_are_reported_and_skipped(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    good = [create(outbox, "first"), create(outbox, "second")]
    (tmp_path / "HD-1003.json").write_text("{not json", encoding="utf-8")
    (tmp_path / "HD-1004.json").write_text('["a list"]', encoding="utf-8")
    (tmp_path / "HD-1005.json").write_text('{"id": "HD-1005"}', encoding="utf-8")
    (tmp_path / "HD-1006.json").write_bytes(b"\xff\xfe\x00garbage")
    moved = stored(tmp_path / "HD-1001.json")
    (tmp_path / "HD-1007.json").write_text(json.dumps(moved), encoding="utf-8")  # id does not match name
    bad_urgency = dict(moved, id="HD-1008", urgency="whenever")
    (tmp_path / "HD-1008.json").write_text(json.dumps(bad_urgency), encoding="utf-8")
    (tmp_path / "notes.json").write_text("{}", encoding="utf-8")
    (tmp_path / "README.txt").write_text("not a ticket", encoding="utf-8")

    listing = outbox.list()
    assert list(listing.tickets) == good[::-1]
    problems = "\n".join(listing.problems)
    assert len(listing.problems) == 7, problems
    for name in ("HD-1003", "HD-1004", "HD-1005", "HD-1006", "HD-1007", "HD-1008", "notes.json"):
        assert name in problems
    assert "missing fields" in problems and "whenever" in problems
    # A corrupt file is never overwritten: the next id is past it.
    assert create(outbox).id == "HD-1009"
    assert (tmp_path / "HD-1003.json").read_text(encoding="utf-8") == "{not json"


def test_fifty_threads_get_unique_consecutive_ids(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    barrier = threading.Barrier(50)

    def one(n: int) -> str:
        barrier.wait()  # all at once, to make the id race as likely as possible
        return create(outbox, f"thread {n}").id

    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = list(pool.map(one, range(50)))
    assert len(set(ids)) == 50
    assert sorted(ids) == [f"HD-{n}" for n in range(1001, 1051)]
    listing = outbox.list()
    assert listing.problems == ()
    assert len(listing.tickets) == 50
    assert sorted(ticket.summary for ticket in listing) == sorted(f"thread {n}" for n in range(50))


_CHILD = """
import sys, time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from app.tools.tickets import TicketOutbox

directory, go, label = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
outbox = TicketOutbox(directory)
while not go.exists():
    time.sleep(0.001)

def one(n):
    return outbox.create(f"{label} {n}", "from a subprocess", "software", "low").id

with ThreadPoolExecutor(max_workers=5) as pool:
    print("\\n".join(pool.map(one, range(25))))
"""


def test_two_processes_never_share_an_id(tmp_path: Path, sealing_keyring: FileKeyring) -> None:
    directory, go = tmp_path / "outbox", tmp_path / "go"
    data_keys.get(create=True)  # made here once: both children seal with the key they find
    env = dict(
        os.environ,
        PYTHONPATH=str(ROOT),
        PYTHON_KEYRING_BACKEND="tests.file_keyring.FileKeyring",
        **{KEYRING_FILE_ENV: str(sealing_keyring.path)},
    )
    children = [
        subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(directory), str(go), label],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for label in ("first", "second")
    ]
    time.sleep(0.5)  # let both import and reach the starting line
    go.touch()
    outputs = [child.communicate(timeout=60) for child in children]
    for child, (_, stderr) in zip(children, outputs, strict=True):
        assert child.returncode == 0, stderr
    ids = [line for stdout, _ in outputs for line in stdout.split()]
    assert len(ids) == 50
    assert sorted(ids) == [f"HD-{n}" for n in range(1001, 1051)]
    assert all(len(stdout.split()) == 25 for stdout, _ in outputs)
    listing = TicketOutbox(directory).list()
    assert listing.problems == ()
    assert {ticket.id for ticket in listing} == set(ids)
    assert sum(ticket.summary.startswith("first") for ticket in listing) == 25
    assert not any(b"subprocess" in path.read_bytes() for path in ticket_files(directory))  # sealed


def test_default_outbox_dir_honours_the_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "data"))
    assert default_data_dir() == tmp_path / "data"
    assert default_outbox_dir() == tmp_path / "data" / "outbox"
    assert TicketOutbox().directory == tmp_path / "data" / "outbox"


def test_default_outbox_dir_without_override_is_the_user_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    expected = platformdirs.user_data_path("helpdesk-voice", appauthor=False) / "outbox"
    assert default_outbox_dir() == expected  # only computed; nothing is created there


# ---------------------------------------------------------------------------------------------------
# The create_ticket tool
# ---------------------------------------------------------------------------------------------------


async def test_create_ticket_tool_writes_and_answers(tmp_path: Path) -> None:
    registry = default_registry(outbox_dir=tmp_path)
    arguments = {
        "summary": "Outlook not syncing",
        "description": "No new mail since 9am.",
        "category": "email",
    }
    result = await registry.run("create_ticket", json.dumps(arguments))
    assert result.ok, result.output
    assert result.output == {"ticket_id": "HD-1001", "status": "queued", "message": "Ticket HD-1001 created"}
    (ticket,) = TicketOutbox(tmp_path).list().tickets
    assert ticket.urgency == "normal"  # the schema default
    assert (ticket.summary, ticket.category, ticket.contact) == ("Outlook not syncing", "email", None)
    second = await registry.run("create_ticket", json.dumps(dict(arguments, urgency="critical")))
    assert second.output["ticket_id"] == "HD-1002"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"summary": "x", "description": "y"}, "category is required"),
        ({"summary": "x", "description": "y", "category": "coffee"}, "category must be one of"),
        ({"summary": "x", "description": "y", "category": "email", "urgency": "asap"}, "urgency must be"),
        ({"summary": "x" * 201, "description": "y", "category": "email"}, "at most 200 characters"),
        ({"summary": "x", "description": "y" * 4001, "category": "email"}, "at most 4000 characters"),
        ({"summary": "x", "description": "y", "category": "email", "contact": "me"}, "not a known parameter"),
        ({"summary": "   ", "description": "y", "category": "email"}, "summary must not be empty"),
    ],
)
async def test_create_ticket_tool_refuses_bad_arguments(
    tmp_path: Path, arguments: dict[str, Any], expected: str
) -> None:
    result = await default_registry(outbox_dir=tmp_path).run("create_ticket", json.dumps(arguments))
    assert not result.ok
    assert result.output["error"]["type"] == "invalid_arguments"
    assert expected in result.output["error"]["message"]
    assert ticket_files(tmp_path) == []


async def test_create_ticket_tool_reports_an_unwritable_outbox(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("", encoding="utf-8")
    arguments = {"summary": "x", "description": "y", "category": "other"}
    result = await default_registry(outbox_dir=blocker / "outbox").run("create_ticket", json.dumps(arguments))
    assert not result.ok
    assert result.output["error"]["type"] == "ticket_not_saved"
    assert "could not be saved" in result.output["error"]["message"]


def test_schema_enums_match_the_outbox(tmp_path: Path) -> None:
    registry = default_registry(outbox_dir=tmp_path)
    (spec,) = [spec for spec in registry.specs() if spec.name == "create_ticket"]
    properties = spec.parameters["properties"]
    assert properties["category"]["enum"] == list(CATEGORIES)
    assert properties["urgency"]["enum"] == list(URGENCIES)
    assert properties["summary"]["maxLength"] == 200
    assert properties["description"]["maxLength"] == 4000
    assert spec.parameters["required"] == ["summary", "description", "category"]


def test_find_reads_one_ticket_without_changing_the_outbox(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    first = create(outbox, "Printer jam", category="hardware", contact="ada@example.com")
    second = create(outbox, "VPN drops")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert outbox.find(first.id) == first
    assert outbox.find(second.id) == second
    assert outbox.find("HD-9999") is None  # never queued here, or synced away
    assert outbox.find("../HD-1001") is None  # not an id: never a path out of the folder
    assert TicketOutbox(tmp_path / "missing").find("HD-1001") is None
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


def test_find_refuses_a_bad_ticket_file(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path)
    (tmp_path / "HD-1001.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError):
        outbox.find("HD-1001")
    stored = create(outbox, "moved").to_dict()  # HD-1002
    (tmp_path / "HD-1003.json").write_text(json.dumps(stored), encoding="utf-8")
    with pytest.raises(ValueError, match="holds ticket HD-1002"):
        outbox.find("HD-1003")


# ---------------------------------------------------------------------------------------------------
# At rest: sealed, private, tidied at start
# ---------------------------------------------------------------------------------------------------

USER_WORDS = ("Printer jam", "jams after one sheet", "room 4.12", "ada@example.com", "hardware")


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def plain_ticket(number: int, summary: str) -> dict[str, Any]:
    """A ticket as an earlier version wrote it: plain JSON."""
    return {
        "schema_version": 1,
        "id": f"HD-{number}",
        "created_at": "2024-05-06T09:08:07Z",
        "summary": summary,
        "description": "Written before tickets were sealed.",
        "category": "hardware",
        "urgency": "normal",
        "contact": None,
        "status": "queued",
    }


def wait_for(condition: Any, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return bool(condition())


def wait_for_tidies(timeout: float = 20.0) -> None:
    """Wait for the outbox tidies that making the tool started, so they cannot race the test."""
    for thread in threading.enumerate():
        if thread.name == "helpdesk-outbox-tidy":
            thread.join(timeout)
            assert not thread.is_alive()


def test_the_ticket_file_holds_none_of_the_words_and_is_private(tmp_path: Path) -> None:
    outbox = TicketOutbox(tmp_path / "data" / "outbox")
    ticket = create(
        outbox,
        "Printer jam",
        description="The printer in room 4.12 jams after one sheet.",
        category="hardware",
        contact="ada@example.com",
    )
    path = outbox.directory / f"{ticket.id}.json"
    raw = path.read_bytes()
    for words in USER_WORDS:
        for encoding in ("utf-8", "utf-16-le"):
            assert words.encode(encoding) not in raw, words
    assert not raw.lstrip().startswith(b"{")
    assert mode(path) == 0o600
    for folder in (outbox.directory, outbox.directory / ".reserved", tmp_path / "data"):
        assert mode(folder) == 0o700, folder
    assert mode(outbox.directory / ".reserved" / ticket.id) == 0o600
    assert outbox.find(ticket.id) == ticket
    assert list(TicketOutbox(outbox.directory).list()) == [ticket]
    assert stored(path)["description"] == "The printer in room 4.12 jams after one sheet."


async def test_without_a_keyring_the_ticket_is_still_durable_and_the_user_is_warned(tmp_path: Path) -> None:
    outbox_dir = tmp_path / "outbox"
    keyring.set_keyring(keyring.backends.fail.Keyring())
    arguments = {"summary": "VPN drops", "description": "Every few minutes at home.", "category": "network"}
    registry = default_registry(outbox_dir=outbox_dir)
    wait_for_tidies()
    result = await registry.run("create_ticket", json.dumps(arguments))
    assert result.ok, result.output
    assert result.output["ticket_id"] == "HD-1001"
    for text in (result.output["warning"], result.output["message"]):
        assert "HD-1001" in text and "without encryption" in text and "keyring" in text
    assert result.output["message"].startswith("Ticket HD-1001 created")
    path = outbox_dir / "HD-1001.json"
    assert json.loads(path.read_text(encoding="utf-8"))["summary"] == "VPN drops"  # plain, but there
    assert mode(path) == 0o600 and mode(outbox_dir) == 0o700
    (ticket,) = TicketOutbox(outbox_dir).list().tickets
    assert ticket.summary == "VPN drops"

    # A keyring again: the next start seals it, and it reads the same.
    keyring.set_keyring(FileKeyring(tmp_path / "keyring-back.json"))
    assert TicketOutbox(outbox_dir).tidy() == ()
    assert b"VPN" not in path.read_bytes()
    assert list(TicketOutbox(outbox_dir).list()) == [ticket]


def test_plain_tickets_from_before_are_sealed_at_start(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    (directory / ".reserved").mkdir(parents=True)
    for number, summary in ((1001, "Printer jam"), (1002, "Screen flickers")):
        (directory / ".reserved" / f"HD-{number}").touch()
        path = directory / f"HD-{number}.json"
        path.write_text(json.dumps(plain_ticket(number, summary), indent=2), encoding="utf-8")
        os.chmod(path, 0o644)  # as earlier versions left them
    (directory / "HD-1003.json").write_text("{not json", encoding="utf-8")
    os.chmod(directory, 0o755)
    os.chmod(directory / ".reserved", 0o755)

    outbox = TicketOutbox(directory)
    assert outbox.tidy() == ()
    for number in (1001, 1002):
        path = directory / f"HD-{number}.json"
        assert b"Printer" not in path.read_bytes() and b"Screen" not in path.read_bytes()
        assert mode(path) == 0o600
    assert (directory / "HD-1003.json").read_text(encoding="utf-8") == "{not json"  # left as found
    assert mode(directory / "HD-1003.json") == 0o600
    assert mode(directory) == 0o700 and mode(directory / ".reserved") == 0o700
    listing = outbox.list()
    assert [t.summary for t in listing] == ["Screen flickers", "Printer jam"]
    assert len(listing.problems) == 1 and "HD-1003.json" in listing.problems[0]
    assert create(outbox).id == "HD-1004"
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    assert outbox.tidy() == ()  # a second start has nothing left to do


def test_crash_leftovers_are_cleaned_when_the_tool_starts(tmp_path: Path) -> None:
    directory = tmp_path / "outbox"
    directory.mkdir()
    now = time.time()
    leftover = directory / ".HD-1001.json.4242.ab12cd34.tmp"  # an earlier version's temporary name
    leftover.write_text(json.dumps(plain_ticket(1001, "Printer jam")), encoding="utf-8")
    os.utime(leftover, (now - 7200, now - 7200))
    under_way = directory / ".HD-1002.json.k2j4h5.tmp"  # a live writer's, seconds old
    under_way.write_bytes(b"sealed bytes being written")
    default_registry(outbox_dir=directory)  # making the tool is the outbox's start
    assert wait_for(lambda: not leftover.exists())
    assert under_way.exists()
    assert TicketOutbox(directory).list().tickets == ()  # a leftover's id was never spoken


def test_a_lost_key_is_a_problem_and_the_ticket_is_kept(tmp_path: Path, sealing_keyring: FileKeyring) -> None:
    outbox = TicketOutbox(tmp_path)
    first = create(outbox, "Printer jam")
    sealed = (tmp_path / "HD-1001.json").read_bytes()

    keyring.set_keyring(FileKeyring(tmp_path.parent / f"{tmp_path.name}-reset-keyring.json"))  # a reset
    listing = outbox.list()
    assert listing.tickets == ()
    (problem,) = listing.problems
    assert problem.startswith("HD-1001.json: ") and "no longer holds" in problem and "kept" in problem
    with pytest.raises(ValueError, match="no longer holds"):
        outbox.find("HD-1001")
    assert outbox.tidy() == ()
    second = create(outbox, "VPN drops")  # a new key for new tickets; the old id is never reused
    assert second.id == "HD-1002"
    listing = outbox.list()
    assert list(listing) == [second] and len(listing.problems) == 1
    assert (tmp_path / "HD-1001.json").read_bytes() == sealed  # kept exactly as it was

    keyring.set_keyring(sealing_keyring)  # the old keyring back: the old ticket opens again
    assert outbox.find("HD-1001") == first
    damaged = bytearray(sealed)
    damaged[len(damaged) // 2] ^= 0x01
    (tmp_path / "HD-1001.json").write_bytes(bytes(damaged))
    problems = "\n".join(outbox.list().problems)
    assert "HD-1001.json" in problems and "damaged" in problems
