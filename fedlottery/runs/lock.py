"""One run per output directory: an advisory `fcntl.flock` on DIR/.lock, held for the life of the process.

Two runs writing one directory interleave rows in rounds.csv and overwrite each other's checkpoint and client
state: results silently wrong. So a run takes DIR/.lock before it writes anything there, and a second run on
the same directory is refused with one line naming the first (pid, host, since when). The OS releases a flock
when its process dies, however it dies (SIGKILL included), so the lock file a killed run leaves behind is
stale, never blocking: `--resume` (or any later run) simply takes it again. The file is never deleted:
unlinking a lock file lets a third process lock a new inode while a second still holds the old one.

`flock` (not `lockf`/F_SETLK): its lock belongs to the open file, so peeking at the lock from another file
descriptor of the same process cannot release it.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
from pathlib import Path

from fedlottery.errors import UserError

LOCK_FILE = ".lock"


class RunLocked(UserError):
    """Another live fedlottery process holds the output directory's lock."""


def _holder(path: Path) -> str:
    """'pid P on HOST, since TIME' from the lock file, as far as it can be read."""
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        info = {}
    return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, since {info.get('since', '?')}"
            + (f": {info['command']}" if info.get("command") else ""))


def _refusal(out: Path) -> RunLocked:
    return RunLocked(f"--out {out}: another fedlottery run is using this directory ({_holder(out / LOCK_FILE)}); "
                     "wait for it to finish or stop it, or give another --out")


def check_unlocked(out: Path) -> None:
    """Refuse when a live process holds out's lock; writes nothing (the directory may not even exist)."""
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: take_lock decides)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(Path(out)) from None
    finally:
        os.close(fd)  # closing this descriptor drops only the shared lock taken through it


class RunLock:
    """The held lock; `release()` (or the process's end) lets the next run in."""

    def __init__(self, out: Path, fd: int):
        self.out, self.fd = out, fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # drops the flock; the file stays (see the module docstring)
            self.fd = None


def take_lock(out: Path, command: str = "") -> RunLock:
    """Create out if needed and lock out/.lock for this process, recording pid, host and start time in it.
    Raises RunLocked when another live process holds it, OSError when the directory cannot be written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's line stays
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _refusal(out) from None
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    info = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "command": command}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    os.fsync(fd)
    return RunLock(out, fd)
