"""Atomic file writes: readers see the old file or the whole new one, never half of one."""
from __future__ import annotations

import errno
import os
import socket
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def temporary_name(path: str | os.PathLike[str]) -> Path:
    """The dot-prefixed, .tmp-suffixed name beside ``path`` that a writer fills before renaming
    it into place (unique per process and call; remove_temporaries knows the pattern)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


@contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that needs a file name (tarfile, Parquet):
    once the block has filled it, it is fsynced and renamed into place; on an error it is
    removed and ``path`` is left as it was (the old complete file, or none)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> Path:
    """Write through a dot-prefixed temporary name in the same directory, fsync, rename.

    The dot prefix and .tmp suffix keep result loaders and resume scans from ever reading
    a half-written file; a crash leaves at most such a temporary behind, never a short file.
    """
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def read_json(path: str | os.PathLike[str]) -> dict | None:
    """A JSON object file's contents, or None where there is none, it is unreadable, or it holds
    something else: for records a later run rebuilds (fits, calibrations, failure notes), which
    never stop a run by being missing or torn."""
    import json

    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def safe_name(text: str) -> str:
    """``text`` as one file name: every run of characters outside [A-Za-z0-9._-] becomes '_'."""
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in 1 MiB chunks (checkpoints are gigabytes)."""
    import hashlib

    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- locks

#: Locks this process holds: (path, thread) → depth, so a function may re-enter a lock its caller took.
_HELD: dict[tuple[str, int], int] = {}
#: Errors of a file system without flock (some NFS mounts, Lustre without -o flock).
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


@contextmanager
def file_lock(path: str | os.PathLike[str], wait: bool = True) -> Iterator[str]:
    """An exclusive ``fcntl.flock`` on ``path`` (created if absent), held for the ``with`` block.

    Yields "held" (this process holds it; re-entrant within a thread), "busy" (``wait=False``
    and another process holds it) or "unlocked" (the file system has no flock: the block runs
    unprotected and must not remove other writers' temporaries). The kernel releases the lock
    when the holder dies, even by SIGKILL, so a lock file is never stale; it is left in place.
    The holder's pid and host are written into the file for messages (:func:`lock_holder`)."""
    import fcntl

    key = (os.path.abspath(path), threading.get_ident())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield "held"
        finally:
            _HELD[key] -= 1
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            state = "busy"
        except OSError as exc:
            if exc.errno not in _NO_LOCKS:
                raise
            state = "unlocked"
        else:
            state = "held"
            try:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
            except OSError:  # the pid is only for messages
                pass
        if state != "held":
            yield state
            return
        _HELD[key] = 1
        try:
            yield state
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the flock


def lock_holder(path: str | os.PathLike[str]) -> str:
    """"pid <n> on <host>" from a lock file's last holder, for messages; "" if unknown."""
    try:
        pid, host = Path(path).read_text().split()[:2]
        return f"pid {pid} on {host}"
    except (OSError, ValueError):
        return ""


def remove_temporaries(directory: str | os.PathLike[str], *names: str) -> int:
    """Delete the temporaries :func:`atomic_write` leaves for ``names`` in ``directory`` when
    killed (``.<name>.<pid>[-<id>].tmp``). Call only while holding the lock every writer of
    those names holds (else a live writer's temporary could go); returns how many went."""
    d = Path(directory)
    if not d.is_dir():
        return 0
    stale = [f for n in names for f in d.glob(f".{n}.*.tmp")]
    for f in stale:
        f.unlink(missing_ok=True)
    return len(stale)
