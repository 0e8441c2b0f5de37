"""Files that hold prompts or the namespace secret: readable by their owner only.

The database directory (0700), its LMDB files and lock (0600) and exports
(0600) hold every prompt and reply butter has seen, and the secret every
namespace is hashed with. Modes are set explicitly after creation, so a
permissive umask (or files an older butter created 0644) never leaves them
readable by other users. Nothing here touches LMDB itself.
"""
from __future__ import annotations

import os
from pathlib import Path

DIR_MODE = 0o700
FILE_MODE = 0o600


def private_dir(path: str | os.PathLike[str]) -> None:
    """Create `path` (and its parents) if needed and make it owner-only."""
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    _chmod(path, DIR_MODE)


def private_files(folder: str | os.PathLike[str]) -> None:
    """Make every regular file directly in `folder` owner-only (data.mdb, lock.mdb, ...)."""
    for entry in Path(folder).iterdir():
        if entry.is_file() and not entry.is_symlink():
            _chmod(entry, FILE_MODE)


def open_private(path: str | os.PathLike[str], flags: int = os.O_WRONLY | os.O_CREAT | os.O_TRUNC) -> int:
    """os.open for a file only its owner may read, whatever the umask or an existing file's mode."""
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except OSError:
        pass  # not ours to change (another user's file we may write): leave it as it is
    return fd


def _chmod(path: str | os.PathLike[str], mode: int) -> None:
    try:
        os.chmod(path, mode)
    except OSError:
        pass  # a folder or file owned by someone else: theirs to protect
