"""Folder locks: one process at a time changes a run, an evaluation, an analysis or a report folder.

A lock is flock(2) on a file in the folder it guards or in the folder above it (`<run>/.lock`; what
runner/locking.py names the others). The
kernel releases it when its process ends, however it ends (SIGKILL, the OOM killer, a lost node whose
processes are gone), so a dead holder never blocks a rerun and there is no stale-lock clean-up to get
wrong. Writers hold a folder exclusively; readers that must not see it change under them hold it
shared (evaluate reads a run's checkpoint, which `train --overwrite` would delete), so several
evaluations of one run go on side by side while a second `train` of it is refused.

Who holds a lock: each holder writes `<lock file>.<host>.<pid>` beside it (process id, host, since
when, command line) and removes it on release; a refused process names them. A holder killed with
SIGKILL leaves its file behind, but the lock itself is gone: a later holder removes the files of this
host's processes that no longer exist (an exclusive holder removes every other one).

Within one process a lock is reentrant: a sweep holds a cell's run while `train` and `evaluate` take it
again. Asking for an exclusive lock on a folder this process holds shared is a programming error.

Network file systems: on Linux, flock on NFS is emulated with POSIX byte-range locks, which NFSv4 (and
NFSv3 with a running lockd) enforce across machines; a mount with `nolock` or `local_lock=flock`, and
some cluster or FUSE file systems (Lustre without `flock`, sshfs), lock only within one machine. There,
two machines can still work on one folder at once: give each machine its own `sweep --shard I/N` or its
own `--runs-dir`. A file system without locks at all (ENOLCK) gets a warning, and runs unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import sys
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

from oodbench.atomic import write_text
from oodbench.errors import OodbenchError

RUN = "lock"  # a folder's own lock: `<folder>/.lock`
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems that do not lock at all
_READ_ONLY = (errno.EACCES, errno.EPERM, errno.EROFS)


@dataclass(frozen=True)
class Holder:
    pid: int
    host: str
    since: str  # UTC, to the second
    command: str

    def __str__(self) -> str:
        return f"`{self.command}` (process {self.pid} on {self.host}, since {self.since})"


class FolderBusy(OodbenchError):
    """Another live process holds the lock asked for (exit code 2, like any bad input)."""

    def __init__(self, folder: Path, label: str, holders: list[Holder], *, name: str, shared: bool) -> None:
        self.folder, self.label, self.holders, self.name, self.shared = folder, label, holders, name, shared
        super().__init__(f"{self.in_use}: wait for it to finish (or stop it) and rerun this command")

    @property
    def in_use(self) -> str:
        return f"{self.label} is in use by {'; '.join(map(str, self.holders)) or 'another process'}"


@dataclass(frozen=True)
class _Held:
    fd: int
    shared: bool


_held: dict[Path, _Held] = {}  # lock file -> this process's hold on it


def _lock_path(folder: Path, name: str) -> Path:
    return Path(folder).resolve() / f".{name}"  # resolved: one lock per file however the path is spelt


def _host() -> str:
    return socket.gethostname() or "localhost"


def _command() -> str:
    """This process's command line as a user typed it (`python -m oodbench` is `oodbench`), shortened."""
    program = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "python"
    program = "oodbench" if program in ("__main__.py", "oodbench") else program
    text = " ".join(shlex.quote(a) for a in [program, *sys.argv[1:]])
    return text if len(text) <= 200 else text[:197] + "..."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def _notes(lock: Path) -> list[Path]:
    return sorted(lock.parent.glob(f"{lock.name}.*"))


def holders(folder: str | Path, name: str = RUN) -> list[Holder]:
    """Who holds `folder`'s lock (from their holder files; this host's dead processes left out)."""
    found, host = [], _host()
    for note in _notes(_lock_path(Path(folder), name)):
        try:
            holder = Holder(**json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            continue  # half-written by a process just starting, or not ours
        if holder.host != host or (holder.pid != os.getpid() and _alive(holder.pid)):
            found.append(holder)
    return found


def _clear_dead_notes(lock: Path, everyone_else: bool) -> None:
    """Remove holder files of processes that no longer hold the lock: this host's dead ones, or, for an
    exclusive holder, every other one."""
    host, me = _host(), os.getpid()
    for note in _notes(lock):
        try:
            holder = Holder(**json.loads(note.read_text()))
        except (OSError, ValueError, TypeError):
            holder = None
        if holder is None or (holder.pid, holder.host) == (me, host):
            continue
        if everyone_else or (holder.host == host and not _alive(holder.pid)):
            note.unlink(missing_ok=True)


def _acquire(lock: Path, shared: bool, wait: bool) -> int | None:
    """An fd holding the flock; None where it cannot be had and need not be (a file system without
    locks, or a shared hold on a folder this user cannot write); BlockingIOError when busy."""
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)  # not inherited by child processes (PEP 446)
    except OSError as exc:
        if exc.errno not in _READ_ONLY:
            raise
        if shared:  # a folder we may read but not write: nothing writes it through us either
            return None
        raise OodbenchError(f"cannot write to {lock.parent} ({os.strerror(exc.errno)}); pass a folder you can "
                            "write") from None
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except OSError as exc:
        os.close(fd)
        if exc.errno not in _NO_LOCKS:
            raise  # BlockingIOError: held by another process
        warnings.warn(f"the file system of {lock.parent} does not support locks ({os.strerror(exc.errno)}): "
                      "nothing stops a second process from working on it at the same time", stacklevel=4)
        return None
    return fd


@contextlib.contextmanager
def hold(folder: str | Path, *, name: str = RUN, label: str | None = None, shared: bool = False, wait: bool = False,
         on_wait: Callable[[FolderBusy], None] | None = None, enabled: bool = True) -> Iterator[None]:
    """Hold the lock `folder/.<name>` (exclusive, or `shared`) for the body. Held by another process: raise
    FolderBusy naming the holders, or with `wait`, call `on_wait` with it and block until it is free.
    `label` says what is locked in messages (default "folder <folder>"); `enabled=False` holds nothing (a
    DDP process that is not the first: the first holds the lock for the whole job)."""
    lock = _lock_path(Path(folder), name)
    mine = _held.get(lock)
    if not enabled or mine is not None:
        if mine is not None and mine.shared and not shared:
            raise RuntimeError(f"{lock} is held shared by this process; it cannot be made exclusive")
        yield  # reentrant: the outer hold releases it
        return
    try:
        fd = _acquire(lock, shared, wait=False)
    except BlockingIOError:
        refused = FolderBusy(Path(folder), label or f"folder {folder}", holders(folder, name), name=name,
                             shared=shared)
        if not wait:
            raise refused from None
        if on_wait is not None:
            on_wait(refused)
        fd = _acquire(lock, shared, wait=True)
    if fd is None:
        yield
        return
    note = lock.with_name(f"{lock.name}.{_host()}.{os.getpid()}")
    _held[lock] = _Held(fd=fd, shared=shared)
    try:
        _clear_dead_notes(lock, everyone_else=not shared)
        write_text(note, json.dumps({
            "pid": os.getpid(), "host": _host(), "since": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "command": _command()}))
        yield
    finally:
        del _held[lock]
        note.unlink(missing_ok=True)
        os.close(fd)  # releases the flock


def busy(folder: str | Path, *, name: str = RUN, label: str | None = None, shared: bool = False) -> FolderBusy | None:
    """The FolderBusy that holding `folder`'s lock would raise now, or None (the lock is taken and
    released at once: a probe, not a promise). A folder that does not exist is free (and is not made)."""
    if not Path(folder).is_dir():
        return None
    try:
        with hold(folder, name=name, label=label, shared=shared):
            return None
    except FolderBusy as found:
        return found


def wait_until_free(refused: FolderBusy, on_wait: Callable[[FolderBusy], None] | None = None) -> None:
    """Block until the lock `refused` was refused is free (taken and released at once); `on_wait` is told
    who holds it, if anyone still does."""
    with hold(refused.folder, name=refused.name, label=refused.label, shared=refused.shared, wait=True,
              on_wait=on_wait):
        pass
