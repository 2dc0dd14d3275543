"""The single-writer guard of a state file: an exclusive lock on `<resolved path>.lock`.

The lock is taken on the resolved path, so a symlink to a state file shares its lock. A lock
only guards the file it was taken for: once the state file or its lock file is removed or
replaced under a running exporter, a second exporter could lock the new ones and count
everything again. `verify()` (called before every write) notices that and fences this
process off instead.
"""

from __future__ import annotations

import fcntl
import os
from typing import IO

from exporter.state.store import FencedError, StateError

FileId = tuple[int, int]
"""(st_dev, st_ino): which file a path names right now."""


class FileLock:
    def __init__(self, path: str, handle: IO[str]) -> None:
        self._path = path
        self._handle = handle
        self._state_id: FileId | None = None

    @classmethod
    def acquire(cls, path: str) -> FileLock:
        resolved = os.path.realpath(path)
        if os.path.isdir(resolved):
            raise StateError(f"BEM_STATE_PATH: {path!r} is a directory; give a file path inside it")
        lock_path = resolved + ".lock"
        try:
            handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the process's life
        except OSError as error:
            raise StateError(f"BEM_STATE_PATH: cannot create {lock_path!r}: {error.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise StateError(
                f"BEM_STATE_PATH: {path!r} is in use by another bem-exporter process; "
                "give each exporter its own state file"
            ) from None
        return cls(resolved, handle)

    @property
    def path(self) -> str:
        """The resolved state path the lock guards."""
        return self._path

    def verify(self) -> None:
        """The first call (the engine's, right after opening the state) remembers which file
        the state is; later ones check that it still is."""
        if self._state_id is None:
            self._state_id = _file_id(self._path)
        lock_id = _file_id(self._path + ".lock")
        held = os.fstat(self._handle.fileno())
        if lock_id != (held.st_dev, held.st_ino) or (
            self._state_id is not None and _file_id(self._path) != self._state_id
        ):
            raise FencedError(
                f"BEM_STATE_PATH: the state file {self._path!r} or its lock was removed or replaced "
                "under the running exporter; writing stopped (restart to use the new file)"
            )

    def release(self) -> None:
        self._handle.close()


def _file_id(path: str) -> FileId | None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_dev, info.st_ino)
