"""Sealed files: the data key in a real keyring backend, AES-GCM round trips, private atomic writes.

The keyring is a real backend keeping its entries in a file (``tests/file_keyring.py``), or one of
keyring's own backends for a machine without one; never the developer's keyring.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.backends.fail
import keyring.backends.null
import pytest

from app.fileio import ensure_private_dir, remove_stale_temp_files, write_atomically
from app.sealed_files import (
    KEYRING_SERVICE,
    KEYRING_USERNAME,
    DataKey,
    DataKeyring,
    DataKeyUnavailable,
    NoDataKey,
    UnreadableFile,
    is_sealed,
    read_file,
    seal,
    seal_in_place,
    unseal,
    write_sealed,
)
from tests.file_keyring import FileKeyring

SECRET_WORDS = b"my password is Tr0ub4dor&3 and my badge is 40-1172"


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[FileKeyring]:
    original = keyring.get_keyring()
    store = FileKeyring(tmp_path / "keyring.json")
    keyring.set_keyring(store)
    try:
        yield store
    finally:
        keyring.set_keyring(original)


@pytest.fixture
def keys(backend: FileKeyring) -> DataKeyring:
    return DataKeyring()


# ---------------------------------------------------------------------------------------------------
# The data key
# ---------------------------------------------------------------------------------------------------


def test_the_key_is_made_once_and_kept_in_the_keyring(backend: FileKeyring, keys: DataKeyring) -> None:
    with pytest.raises(NoDataKey):
        keys.get(create=False)  # only looking never makes one
    key = keys.get(create=True)
    stored = backend.get_password(KEYRING_SERVICE, KEYRING_USERNAME)
    assert (KEYRING_SERVICE, KEYRING_USERNAME) == ("helpdesk-voice", "data-key")
    assert stored is not None and base64.b64decode(stored) == key.secret
    assert len(key.secret) == 32
    assert keys.get(create=True) is key  # held in memory
    assert DataKeyring().get(create=False).secret == key.secret  # another process finds the same
    assert repr(key) == "DataKey(***)" and stored not in repr(key) and stored not in str(key)


def test_a_new_keyring_backend_is_asked_afresh(tmp_path: Path, keys: DataKeyring) -> None:
    first = keys.get()
    keyring.set_keyring(FileKeyring(tmp_path / "other.json"))
    with pytest.raises(NoDataKey):
        keys.get(create=False)
    assert keys.get().secret != first.secret


def test_no_keyring_says_why_in_the_apps_words(keys: DataKeyring) -> None:
    keyring.set_keyring(keyring.backends.fail.Keyring())
    with pytest.raises(DataKeyUnavailable, match="no keyring service such as GNOME Keyring or KWallet"):
        keys.get()


def test_a_keyring_that_keeps_nothing_is_no_keyring(keys: DataKeyring) -> None:
    keyring.set_keyring(keyring.backends.null.Keyring())  # accepts a password, then has none
    with pytest.raises(DataKeyUnavailable, match="did not keep"):
        keys.get()


def test_a_bad_entry_is_reported_and_never_overwritten(backend: FileKeyring, keys: DataKeyring) -> None:
    backend.set_password(KEYRING_SERVICE, KEYRING_USERNAME, "not base64 at all!")
    with pytest.raises(DataKeyUnavailable, match="not a data key this app made") as caught:
        keys.get()
    assert "not base64" not in str(caught.value)
    assert backend.get_password(KEYRING_SERVICE, KEYRING_USERNAME) == "not base64 at all!"


# ---------------------------------------------------------------------------------------------------
# Sealing
# ---------------------------------------------------------------------------------------------------


def test_seal_round_trips_and_hides_the_words() -> None:
    key = DataKey.generate()
    blob = seal(key, "HD-1001.json", SECRET_WORDS)
    assert is_sealed(blob) and SECRET_WORDS not in blob and b"Tr0ub4dor" not in blob
    assert unseal(key, "HD-1001.json", blob) == SECRET_WORDS
    assert seal(key, "HD-1001.json", SECRET_WORDS) != blob  # a fresh nonce every time


def test_what_cannot_be_unsealed_says_why() -> None:
    key = DataKey.generate()
    blob = seal(key, "HD-1001.json", SECRET_WORDS)
    with pytest.raises(UnreadableFile, match="no longer holds"):
        unseal(DataKey.generate(), "HD-1001.json", blob)
    with pytest.raises(UnreadableFile, match="renamed"):
        unseal(key, "HD-1002.json", blob)  # the name is sealed in
    tampered = bytearray(blob)
    tampered[-20] ^= 0x40
    with pytest.raises(UnreadableFile, match="damaged"):
        unseal(key, "HD-1001.json", bytes(tampered))
    with pytest.raises(UnreadableFile, match="cut short"):
        unseal(key, "HD-1001.json", blob[:30])
    newer = blob[:7] + bytes((9,)) + blob[8:]
    with pytest.raises(UnreadableFile, match="format"):
        unseal(key, "HD-1001.json", newer)
    assert issubclass(UnreadableFile, ValueError)  # every reader already handles ValueError per file


def test_a_sealed_file_is_private_and_read_back(tmp_path: Path, keys: DataKeyring) -> None:
    path = tmp_path / "data" / "outbox" / "HD-1001.json"
    write_sealed(path, SECRET_WORDS, keys.get())
    assert SECRET_WORDS not in path.read_bytes()
    assert mode(path) == 0o600 and mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert read_file(path, keys) == SECRET_WORDS
    assert [p.name for p in path.parent.iterdir()] == ["HD-1001.json"]


def test_read_file_without_the_key_keeps_the_file(tmp_path: Path, keys: DataKeyring) -> None:
    path = tmp_path / "2024-05-06_09-08-07.json"
    write_sealed(path, SECRET_WORDS, keys.get())
    blob = path.read_bytes()
    keyring.set_keyring(FileKeyring(tmp_path / "reset.json"))
    with pytest.raises(UnreadableFile, match=r"no longer holds.*kept"):
        read_file(path, keys)
    keyring.set_keyring(keyring.backends.fail.Keyring())
    with pytest.raises(UnreadableFile, match=r"cannot be had.*keyring is unavailable"):
        read_file(path, keys)
    assert path.read_bytes() == blob


def test_seal_in_place_keeps_the_times_and_skips_what_is_sealed(tmp_path: Path, keys: DataKeyring) -> None:
    path = tmp_path / "HD-1001.json"
    path.write_bytes(b'{"summary": "Printer jam"}')
    old = time.time() - 5 * 86400
    os.utime(path, (old, old))
    assert seal_in_place(path, keys.get(), check=json.loads)
    assert b"Printer" not in path.read_bytes()
    assert abs(path.stat().st_mtime - old) < 1e-3
    assert read_file(path, keys) == b'{"summary": "Printer jam"}'
    assert not seal_in_place(path, keys.get())
    corrupt = tmp_path / "HD-1002.json"
    corrupt.write_bytes(b"{not json")
    with pytest.raises(ValueError):
        seal_in_place(corrupt, keys.get(), check=json.loads)
    assert corrupt.read_bytes() == b"{not json"


# ---------------------------------------------------------------------------------------------------
# Private folders and crash leftovers
# ---------------------------------------------------------------------------------------------------


def test_private_folders_are_made_or_narrowed(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    os.chmod(old, 0o755)
    write_atomically(old / "file.json", "{}", private=True)
    assert mode(old) == 0o700 and mode(old / "file.json") == 0o600
    ensure_private_dir(tmp_path / "a" / "b" / "c")
    for folder in (tmp_path / "a", tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        assert mode(folder) == 0o700
    (tmp_path / "file").write_text("", encoding="utf-8")
    with pytest.raises(NotADirectoryError):
        ensure_private_dir(tmp_path / "file")
    with pytest.raises(OSError):
        ensure_private_dir(tmp_path / "file" / "below")


def test_plain_atomic_writes_keep_their_folders_as_they_were(tmp_path: Path) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    os.chmod(folder, 0o755)
    write_atomically(folder / "settings.toml", "x = 1\n")
    assert mode(folder) == 0o755  # only private writes narrow a folder


def test_only_old_temporary_files_are_removed(tmp_path: Path) -> None:
    now = time.time()
    stale = tmp_path / ".HD-1001.json.abc.tmp"
    fresh = tmp_path / ".HD-1002.json.def.tmp"
    ticket = tmp_path / "HD-1000.json"
    not_ours = tmp_path / "notes.tmp"
    for path in (stale, fresh, ticket, not_ours):
        path.write_bytes(b"x")
        os.utime(path, (now - 7200, now - 7200))
    os.utime(fresh, (now - 60, now - 60))
    assert remove_stale_temp_files(tmp_path, now=now) == [stale]
    assert fresh.exists() and ticket.exists() and not_ours.exists()
    assert remove_stale_temp_files(tmp_path / "missing") == []
