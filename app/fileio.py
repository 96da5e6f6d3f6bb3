"""Writing files so that a crash never leaves a half-written one behind, and tidying up after one.

``write_atomically`` writes a temporary file next to the target (``.<name>.<random>.tmp``), syncs it,
renames it over the target and syncs the folder. A process killed in between leaves only that
temporary file; ``remove_stale_temp_files`` deletes such leftovers once they are old enough that no
live writer can still own them. ``private=True`` keeps personal data to its owner: the folder is
made (or narrowed to) 0700, and the file is 0600 as every file written here is.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

__all__ = [
    "STALE_TEMP_AGE_S",
    "delete_files_where",
    "ensure_private_dir",
    "fsync_dir",
    "is_temp_name",
    "remove_stale_temp_files",
    "write_atomically",
]

log = logging.getLogger(__name__)

# A live writer renames its temporary file within seconds (the fsync of a slow disk included); an
# hour is far beyond that, so a temporary file this old was left by a process that died.
STALE_TEMP_AGE_S: Final = 3600.0

_PRIVATE_DIR_MODE: Final = 0o700
# Windows has no mode bits to narrow (chmod only toggles read-only); a profile's folders are private
# to their user by their ACL already.
_HAS_MODES: Final = sys.platform != "win32"


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is a temporary file of an atomic write (this module's, or an older writer's)."""
    return name.startswith(".") and name.endswith(".tmp")


def fsync_dir(directory: Path) -> None:
    """Make a new name or a rename in ``directory`` durable, where the OS allows it.

    Windows cannot open a folder this way, and its file systems journal the metadata anyway, so a
    failure here is not an error.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def ensure_private_dir(directory: Path) -> None:
    """``directory`` exists and only its owner may enter it: 0700, where the OS has modes.

    Folders this creates are 0700 from the start (parents too: ``mkdir -p`` would give them the
    umask's 0755); an existing one from an earlier version is narrowed. Raises OSError only when the
    folder cannot be created; failing to narrow an existing folder is logged, since the files in it
    are 0600 anyway and refusing to write would lose the data instead.
    """
    missing: list[Path] = []
    current = directory
    while not current.exists() and current.parent != current:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=_PRIVATE_DIR_MODE)
        except FileExistsError:
            continue  # made by another thread or process meanwhile; narrowed below if it is the target
        if _HAS_MODES:
            os.chmod(folder, _PRIVATE_DIR_MODE)  # the umask may have taken bits mkdir asked for
    if not directory.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(directory))
    if _HAS_MODES:
        try:
            if directory.stat().st_mode & 0o777 != _PRIVATE_DIR_MODE:
                os.chmod(directory, _PRIVATE_DIR_MODE)
        except OSError as exc:
            log.warning("could not make %s private to its owner: %s", directory, exc.strerror or exc)


def write_atomically(path: Path, text: str | bytes, *, private: bool = False) -> None:
    """``path`` holds either its old content or all of ``text``, never a mix, even after a crash.

    The file is 0600 (``mkstemp`` creates it so, and the rename keeps it). ``private``: the folder is
    also made, or narrowed to, 0700 (:func:`ensure_private_dir`).
    """
    if private:
        ensure_private_dir(path.parent)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        data = text.encode("utf-8") if isinstance(text, str) else text
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    fsync_dir(path.parent)  # make the rename itself durable


def delete_files_where(
    directory: Path, candidate: Callable[[str], bool], expired: Callable[[str, float], bool]
) -> list[Path]:
    """Delete the regular files of ``directory`` whose name is a ``candidate`` and which have
    ``expired(name, mtime)``.

    Only candidates are looked at (a stat each), so a folder of thousands of tickets costs little.
    Returns what was deleted; OSError when the folder cannot be read or a file cannot be deleted
    (after trying the rest). A missing folder has nothing to delete.
    """
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return []
    deleted: list[Path] = []
    failure: OSError | None = None
    for entry in entries:
        if not candidate(entry.name):
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if expired(entry.name, entry.stat(follow_symlinks=False).st_mtime):
                os.unlink(entry.path)
                deleted.append(Path(entry.path))
        except FileNotFoundError:
            continue  # renamed by its writer or deleted by another instance meanwhile
        except OSError as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
    return deleted


def remove_stale_temp_files(
    directory: Path, older_than_s: float = STALE_TEMP_AGE_S, now: float | None = None
) -> list[Path]:
    """Delete the temporary files a crashed writer left in ``directory``, once ``older_than_s`` old.

    Younger ones may belong to a writer that is still running (this or another process) and are
    left alone. Errors as :func:`delete_files_where`.
    """
    cutoff = (time.time() if now is None else now) - older_than_s
    return delete_files_where(directory, is_temp_name, lambda name, mtime: mtime < cutoff)
