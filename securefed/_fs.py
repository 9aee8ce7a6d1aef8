"""Files that must not tear or be shared: atomic writes, and one daemon per state folder.

:func:`atomic_write`: write to a temporary file, fsync, rename, fsync the folder. A reader (or a
process restarted after kill -9) sees either the old file or the new one, never a torn mixture.

:class:`StateLock`: a daemon holds an exclusive ``flock`` on ``<state_dir>/daemon.lock`` for its
whole life, with its PID written in the file. A second daemon on the same folder (systemd plus a
manual start) fails at once, naming the holder, instead of interleaving writes to the same audit
log and stores. The kernel drops the lock when the holder exits, however it exits (kill -9
included), so a stale file never blocks a restart; :func:`lock_holder` tells a reader such as
``securefed status`` whether a live process holds it, without taking it.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

from securefed.errors import StorageError

__all__ = ["LOCK_FILE", "StateLock", "atomic_write", "lock_holder"]

#: the lock file in a daemon's state folder
LOCK_FILE = "daemon.lock"


def atomic_write(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically; the file gets permission ``mode``."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by umask; make it exact
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


class StateLock:
    """An exclusive lock on a daemon's state folder, held until :meth:`release` (or the process ends)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, state_dir: str | os.PathLike[str], what: str) -> StateLock:
        """Lock ``state_dir`` for this process, or raise :class:`StorageError` naming the holder's PID."""
        import fcntl

        folder = Path(state_dir)
        path = folder / LOCK_FILE
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create the lock file {path} of the {what} state folder: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                for _ in range(20):  # the holder writes its PID just after it locks
                    holder = _read_pid(fd)
                    if holder is not None:
                        break
                    time.sleep(0.025)
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StorageError(f"cannot lock {path} ({exc.strerror}); keep state folders on a local file system") from None
            who = f"PID {holder}" if holder is not None else "a process that is just starting"
            raise StorageError(
                f"the {what} state folder {folder} is in use by another {what} ({who}, which holds {path}); "
                f"only one daemon may use a state folder. Stop that one first"
                + (f" (e.g. kill {holder}, or stop its systemd unit)" if holder is not None else "")
                + ", or give this one its own state_dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot write {path}: {exc.strerror}") from None
        return cls(path, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Unlock (emptying the PID first, while still holding the lock); a second call does nothing."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        os.close(fd)  # closing the last descriptor drops the flock

    def __enter__(self) -> StateLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _flock_held(path: Path) -> tuple[bool, int | None] | None:
    """Whether some process holds a flock on ``path`` per /proc/locks (and its PID), or None if unknown."""
    try:
        inode = os.stat(path).st_ino
        with open("/proc/locks", encoding="ascii", errors="replace") as handle:
            lines = handle.read().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 fe:00:2148023 0 EOF" (a blocked waiter has "->" after the number)
        if "FLOCK" not in fields or "->" in fields:
            continue
        position = fields.index("FLOCK")
        try:
            pid, device = int(fields[position + 3]), fields[position + 4]
        except (IndexError, ValueError):
            continue
        if device.rsplit(":", 1)[-1] == str(inode):
            return True, (pid if pid > 0 else None)
    return False, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, under another user
        return True
    return True


def lock_holder(state_dir: str | os.PathLike[str]) -> int | None:
    """The PID of the live process holding ``state_dir``'s lock, or None if no daemon holds it.

    Never takes the lock (a daemon starting at that moment must not fail because of a reader):
    it reads the PID in the file and checks, in /proc/locks where there is one, that a lock on that
    very file is held, else that the PID is alive.
    """
    path = Path(state_dir) / LOCK_FILE
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    recorded = int(text) if text.isdigit() else None
    held = _flock_held(path)
    if held is not None:
        locked, pid = held
        if not locked:
            return None
        return recorded if recorded is not None else pid
    return recorded if recorded is not None and _alive(recorded) else None
