"""Personal data on disk, sealed: the data key in the OS keyring, AES-GCM per file, atomic writes.

What the user said (transcripts) and what they reported (queued tickets) is written only sealed, so
a copied disk, a backup or another local account reads nothing. The cipher is AES-256-GCM from the
``cryptography`` package; nothing here is home-made but the file layout:

    b"HDVSEAL" | format (1 byte, 1) | key id (8 bytes) | nonce (12 random bytes) | ciphertext + tag

The associated data is everything before the nonce plus the file's name, so a sealed file copied
over another (yesterday's transcript over today's, ticket HD-1001 over HD-1002) fails to open
rather than passing for it. The key id (a hash of the key, not the key) tells "sealed with a key
this keyring no longer holds" apart from "damaged". Plain files (earlier versions, or a ticket
written while no keyring could be had) are recognised by the missing prefix and still read; their
owners seal them at start (:func:`seal_in_place`).

The data key is 32 random bytes kept in the OS keyring (service ``helpdesk-voice``, user
``data-key``, base64), made the first time something is sealed, and held in memory for the rest of
the process once fetched: the keyring can block on D-Bus or an unlock prompt, so it is asked once,
from a worker thread. Losing that entry (a reset keyring, another computer) makes the sealed files
unreadable for good; readers report them and keep them. Two processes making the first key at the
same instant could each seal a file with a key only one of them stored; both read the key back
after storing it, which narrows that window to the time between one's read-back and the other's
write.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.fileio import write_atomically
from app.paths import APP_NAME

__all__ = [
    "KEYRING_SERVICE",
    "KEYRING_USERNAME",
    "DataKey",
    "DataKeyUnavailable",
    "DataKeyring",
    "NoDataKey",
    "UnreadableFile",
    "data_keys",
    "is_sealed",
    "read_file",
    "seal",
    "seal_in_place",
    "sealed_key_id",
    "unseal",
    "write_sealed",
]

# The same keyring service as the API key's, so the user finds the app's secrets in one place.
KEYRING_SERVICE: Final = APP_NAME
KEYRING_USERNAME: Final = "data-key"

MAGIC: Final = b"HDVSEAL"
FORMAT: Final = 1
KEY_BYTES: Final = 32  # AES-256
KEY_ID_BYTES: Final = 8
NONCE_BYTES: Final = 12  # GCM's own size; random per write, never reused in practice at this rate
_PREFIX_BYTES: Final = len(MAGIC) + 1 + KEY_ID_BYTES
_HEADER_BYTES: Final = _PREFIX_BYTES + NONCE_BYTES
_TAG_BYTES: Final = 16

KEY_GONE: Final = (
    "sealed with a data key the keyring no longer holds (the keyring was reset, or the file comes "
    "from another account or computer), so it cannot be opened; the file is kept"
)


class DataKeyUnavailable(Exception):
    """No data key can be had from the OS keyring; the message says why, for the user."""


class NoDataKey(DataKeyUnavailable):
    """The keyring works but holds no data key (and none was to be made)."""


class UnreadableFile(ValueError):
    """A sealed file that cannot be opened here; the message says why and that the file is kept."""


@dataclass(frozen=True, slots=True, repr=False)
class DataKey:
    """The data key's bytes and their id; never printed."""

    secret: bytes

    def __post_init__(self) -> None:
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"a data key is {KEY_BYTES} bytes, not {len(self.secret)}")

    @property
    def key_id(self) -> bytes:
        # A hash, so the id in every file's header tells nothing about the key.
        return hashlib.sha256(b"helpdesk-voice data key id\0" + self.secret).digest()[:KEY_ID_BYTES]

    @classmethod
    def generate(cls) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=KEY_BYTES * 8))

    def to_text(self) -> str:
        return base64.b64encode(self.secret).decode("ascii")

    @classmethod
    def from_text(cls, text: str) -> DataKey:
        """The key as stored in the keyring; ValueError when the entry is not one this app made."""
        try:
            return cls(base64.b64decode(text.strip(), validate=True))
        except (binascii.Error, ValueError):
            raise ValueError("not a data key this app made") from None

    def __repr__(self) -> str:
        return "DataKey(***)"

    __str__ = __repr__


def _keyring_problem(exc: BaseException) -> str:
    name = type(exc).__name__
    if name == "NoKeyringError":  # keyring's own text goes on about packages, which helps nobody here
        return "the system keyring is unavailable: no keyring service such as GNOME Keyring or KWallet runs"
    # keyring's first sentence names the locked collection or the failing service; a backend's
    # exception for a failed read carries no secret.
    detail = str(exc).strip().split(". ")[0].rstrip(".")
    return f"the system keyring is unavailable ({name}: {detail})" if detail else f"keyring error ({name})"


class DataKeyring:
    """The data key in the OS keyring: fetched, or made, once per keyring backend, then kept in memory.

    Blocking (D-Bus, maybe an unlock prompt): call it from a worker thread. Safe from several threads.
    """

    def __init__(self, service: str = KEYRING_SERVICE, username: str = KEYRING_USERNAME) -> None:
        self.service = service
        self.username = username
        self._lock = threading.Lock()
        # Keyed by the backend object, so a keyring swapped in (tests, a backend chosen late) is asked
        # afresh rather than answered from another keyring's key.
        self._cached: tuple[Any, DataKey] | None = None

    def get(self, *, create: bool = True) -> DataKey:
        """The data key; with ``create``, a new random one is stored when the keyring has none.

        Raises :class:`NoDataKey` when there is none and ``create`` is False, and
        :class:`DataKeyUnavailable` when the keyring cannot be used or holds a bad entry.
        """
        import keyring  # imported late: picking a backend can talk to D-Bus, which costs time

        try:
            backend = keyring.get_keyring()
        except Exception as exc:
            raise DataKeyUnavailable(_keyring_problem(exc)) from None
        cached = self._cached  # read without the lock: a key in memory never waits on a slow keyring
        if cached is not None and cached[0] is backend:
            return cached[1]
        with self._lock:
            if self._cached is not None and self._cached[0] is backend:
                return self._cached[1]  # fetched by another thread while this one waited
            stored = self._read(backend)
            if stored is None:
                if not create:
                    raise NoDataKey(f"the keyring holds no data key ({self.service}, {self.username})")
                self._store(backend, DataKey.generate())
                # Read back: if another process stored its key at the same moment, both use that one.
                stored = self._read(backend)
                if stored is None:
                    raise DataKeyUnavailable("the system keyring did not keep the data key it was given")
            try:
                key = DataKey.from_text(stored)
            except ValueError:
                raise DataKeyUnavailable(
                    f"the keyring's entry {self.service}/{self.username} is not a data key this app made; "
                    "delete it to start with a new key (files sealed with the old one stay unreadable)"
                ) from None
            self._cached = (backend, key)
            return key

    def _read(self, backend: Any) -> str | None:
        try:
            stored = backend.get_password(self.service, self.username)
        except Exception as exc:  # any backend failure (none, locked, D-Bus) means "no key here"
            raise DataKeyUnavailable(_keyring_problem(exc)) from None
        return stored if isinstance(stored, str) and stored.strip() else None

    def _store(self, backend: Any, key: DataKey) -> None:
        try:
            backend.set_password(self.service, self.username, key.to_text())
        except Exception as exc:
            # Only the type: a backend's message about a failed write might quote what it was given.
            raise DataKeyUnavailable(
                f"the system keyring could not store the data key ({type(exc).__name__})"
            ) from None


# The process's one data key holder: the transcript store's thread fetches the key at start, so a
# later read on the GUI thread (a ticket link) finds it in memory.
data_keys: Final = DataKeyring()


# ---------------------------------------------------------------------------------------------------
# Sealing bytes
# ---------------------------------------------------------------------------------------------------


def is_sealed(blob: bytes) -> bool:
    return blob.startswith(MAGIC)


def sealed_key_id(blob: bytes) -> bytes | None:
    """The id of the key ``blob`` was sealed with; None when it is not a sealed file of this format."""
    if not is_sealed(blob) or len(blob) < _PREFIX_BYTES or blob[len(MAGIC)] != FORMAT:
        return None
    return blob[len(MAGIC) + 1 : _PREFIX_BYTES]


def _associated_data(prefix: bytes, name: str) -> bytes:
    return prefix + name.encode("utf-8")


def seal(key: DataKey, name: str, data: bytes) -> bytes:
    """``data`` sealed for the file called ``name`` (its name is part of what the tag protects)."""
    prefix = MAGIC + bytes((FORMAT,)) + key.key_id
    nonce = os.urandom(NONCE_BYTES)
    return prefix + nonce + AESGCM(key.secret).encrypt(nonce, data, _associated_data(prefix, name))


def unseal(key: DataKey, name: str, blob: bytes) -> bytes:
    """What :func:`seal` sealed for ``name``; :class:`UnreadableFile` says why it cannot be had."""
    if not is_sealed(blob):
        raise UnreadableFile("not a sealed file")
    if len(blob) <= len(MAGIC) or blob[len(MAGIC)] != FORMAT:
        raise UnreadableFile("sealed in a format this version does not know (a newer app?); the file is kept")
    if len(blob) < _HEADER_BYTES + _TAG_BYTES:
        raise UnreadableFile("sealed, but cut short; the file is kept")
    if sealed_key_id(blob) != key.key_id:
        raise UnreadableFile(KEY_GONE)
    prefix, nonce = blob[:_PREFIX_BYTES], blob[_PREFIX_BYTES:_HEADER_BYTES]
    try:
        return AESGCM(key.secret).decrypt(nonce, blob[_HEADER_BYTES:], _associated_data(prefix, name))
    except InvalidTag:
        raise UnreadableFile(
            "sealed, but damaged, altered or renamed (it does not match its seal); the file is kept"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Sealed files
# ---------------------------------------------------------------------------------------------------


def write_sealed(path: Path, data: bytes, key: DataKey) -> None:
    """``data`` sealed into ``path`` atomically: a 0600 file in a 0700 folder."""
    write_atomically(path, seal(key, path.name, data), private=True)


def read_file(path: Path, keys: DataKeyring = data_keys) -> bytes:
    """``path``'s content, unsealed if it is sealed (plain files from earlier versions are read as is).

    Blocking when the key is not in memory yet. OSError when the file cannot be read;
    :class:`UnreadableFile` (a ValueError) when it is sealed and cannot be opened.
    """
    blob = path.read_bytes()
    if not is_sealed(blob):
        return blob
    try:
        key = keys.get(create=False)
    except NoDataKey:
        raise UnreadableFile(KEY_GONE) from None
    except DataKeyUnavailable as exc:
        raise UnreadableFile(f"sealed, and its key cannot be had ({exc}); the file is kept") from None
    return unseal(key, path.name, blob)


def seal_in_place(path: Path, key: DataKey, *, check: Callable[[bytes], object] | None = None) -> bool:
    """Seal a plain ``path`` atomically, keeping its times; False when it was sealed already.

    ``check(data)`` may raise ValueError to leave a file plain (a corrupt one stays as found, for
    whoever looks into it). The modification time is kept because retention counts from it.
    """
    before = path.stat()
    data = path.read_bytes()
    if is_sealed(data):
        return False
    if check is not None:
        check(data)
    write_sealed(path, data, key)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return True
