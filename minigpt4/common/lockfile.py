"""Lock files that say who holds them.

A :class:`LockFile` is an ``flock`` on a small file: exclusive (one holder) or shared (many holders,
no exclusive one). The kernel drops the lock when its holder exits, however it exits, so a killed
run leaves no stale lock behind (at most the file, which the next holder takes over); a holder that
releases the lock removes the file when it is the last one. An exclusive holder
writes who it is into the file (process id, host, what it does, since when), so a process refused
the lock can say which process holds it. On NFS, Linux maps ``flock`` to POSIX byte-range locks,
which work between machines when the server supports locking (NFSv4, or NFSv3 with lockd).
"""

from __future__ import annotations

import datetime
import fcntl
import os
import socket
from pathlib import Path


def holder_description(what: str) -> str:
    """``pid 123 on host, <what>, since 2024-05-01 10:00:00`` for this process."""
    since = datetime.datetime.now().isoformat(sep=" ", timespec="seconds")
    return f"pid {os.getpid()} on {socket.gethostname()}, {what}, since {since}"


class LockFile:
    """A non-blocking ``flock`` on ``path`` (created when missing)."""

    def __init__(self, path):
        self.path = Path(path)
        self._fd: int | None = None
        self.shared = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, what: str, shared: bool = False) -> bool:
        """Take the lock now or return False (someone else holds it); an exclusive holder records
        :func:`holder_description` of ``what`` in the file."""
        assert self._fd is None, f"{self.path} is already held"
        for _ in range(100):  # the file may be removed by its last holder between our open and our lock
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                here, there = os.fstat(fd), os.stat(self.path)
                same = (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        else:
            raise OSError(f"{self.path} keeps being replaced; cannot lock it")
        self._fd, self.shared = fd, shared
        os.ftruncate(fd, 0)  # shared holders clear what a dead exclusive holder left there
        if not shared:
            os.write(fd, (holder_description(what) + "\n").encode("utf-8", "replace"))
        return True

    def release(self) -> None:
        """Give the lock up; the last holder removes the file."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            if self.shared:  # the last shared holder gets the exclusive lock, and removes the file
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            self.path.unlink(missing_ok=True)
        except BlockingIOError:
            pass
        finally:
            os.close(fd)

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it (or a plain statement when it wrote nothing)."""
        try:
            text = self.path.read_text(encoding="utf-8", errors="replace").strip()
        except OSError:
            text = ""
        return text or "another process (it did not record which)"

    def __enter__(self) -> "LockFile":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(path) -> str | None:
    """Who holds the lock ``path`` now (None if nobody: a lock file left by a dead holder is removed)."""
    lock = LockFile(path)
    if not lock.path.exists():
        return None
    if lock.acquire("checking the lock"):
        lock.release()
        return None
    return lock.holder()
