"""Atomic file writes: readers see the old file or the new one, never a part.

The temporary file is `.<name>.<pid>.<random>.tmp` next to the target. A save killed before
its rename leaves one behind; the next save to the same path removes those of our naming
whose process is gone (and, from versions before the pid was in the name, those untouched
for an hour). The new file gets the mode a plain `open` would give it (0666 less the umask),
or the mode of the file it replaces.
"""

from __future__ import annotations

import os
import re
import stat
import tempfile
import time
from pathlib import Path

#: Temporary files without a pid (written by earlier versions) older than this are stale.
_LEGACY_STALE_SECONDS = 3600


def write_bytes_atomically(path, payload: bytes) -> Path:
    """Write `payload` to `path` through a temporary file in the same directory, fsynced and
    renamed over the target: readers see the old file or the new one, never a part."""
    path = Path(path)
    directory = path.resolve().parent
    if not directory.is_dir():
        raise FileNotFoundError(f"cannot save to {path}: directory {directory} does not exist")
    try:
        existing = os.stat(path)
    except FileNotFoundError:
        existing = None
    except OSError as err:
        raise OSError(err.errno, f"cannot save to {path}: {err.strerror}") from None
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        what = "a directory" if stat.S_ISDIR(existing.st_mode) else "not a regular file"
        raise ValueError(f"cannot save to {path}: it is {what}")
    remove_stale_temporaries(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.",
                                         suffix=".tmp", dir=directory)
    try:
        _set_mode(handle, existing)
        with os.fdopen(handle, "wb") as out:
            out.write(payload)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return path


def remove_stale_temporaries(path) -> list[Path]:
    """Remove the temporary files of earlier saves to `path` that were killed before their
    rename (ours by name, their process gone); returns the removed paths."""
    path = Path(path)
    directory = path.resolve().parent
    ours = re.compile(rf"\.{re.escape(path.name)}\.(?:(\d+)\.)?[A-Za-z0-9_]{{8}}\.tmp")
    removed = []
    try:
        candidates = list(os.scandir(directory))
    except OSError:
        return removed
    for entry in candidates:
        match = ours.fullmatch(entry.name)
        if match is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            if match.group(1) is None:
                stale = time.time() - entry.stat().st_mtime > _LEGACY_STALE_SECONDS
            else:
                stale = not _process_alive(int(match.group(1)))
            if stale:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone already, or not ours to remove
            continue
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a save of this process in another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process: leave its file alone
    return True


def _set_mode(handle: int, existing: os.stat_result | None) -> None:
    """The mode (and, where allowed, the owner) of the file being replaced, else 0666 less
    the umask: mkstemp's 0600 would otherwise end up on every saved file."""
    if existing is not None:
        os.fchmod(handle, stat.S_IMODE(existing.st_mode))
        if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
            try:
                os.fchown(handle, existing.st_uid, existing.st_gid)
            except OSError:
                pass
        return
    os.fchmod(handle, 0o666 & ~_umask())


def _umask() -> int:
    """The process umask, read without changing it where /proc allows (thread-safe)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)
