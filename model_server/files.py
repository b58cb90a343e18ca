"""Writing a file so that readers see the old one or the new one, never half of either.

Used for the routing file and its kept copy, the workers' reports and the admin command
line's routing files and manifests. On NFSv4 and local filesystems a rename within one
directory is atomic; `durable` also makes it survive a power loss.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

# A new file's mode when none is given: readable by a server run as another user
# (mkstemp's own 0600 would hide it).
NEW_FILE_MODE = 0o644


def write_atomically(path: Path, text: str, mode: int | None = None, durable: bool = True) -> None:
    """Replace `path` with `text` in one rename. The file keeps the mode of the one it
    replaces unless `mode` is given (a new file: NEW_FILE_MODE). With `durable`, the data
    and the rename are on disk when this returns."""
    if mode is None:
        try:
            mode = path.stat().st_mode & 0o777
        except FileNotFoundError:
            mode = NEW_FILE_MODE
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(descriptor, mode)
        with os.fdopen(descriptor, "w") as out:
            out.write(text)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """Make a rename in `directory` durable (it survives a power loss once this returns)."""
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
