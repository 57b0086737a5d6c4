"""One writing process per index: an exclusive ``flock`` on ``<index>/writer.lock``.

Two builds into one index at once (a second `index build` started by hand, cron next to
`index watch`) each read "not seen yet" for the same sources and then both wrote them:
items recorded twice, once as duplicates of themselves, a crash on the unique source
constraint. Every command that writes an index (build, add, remove, prune, rebuild,
reembed into it, watch, label) opens its catalog for writing, and that takes this lock
for as long as the catalog is open; a second process is refused at once, naming the
holder's process id. Readers (`stats`, `verify`, `search`, the service) take no lock.

Within one process the lock is shared (``index watch`` runs one build after another on
the catalog it holds). The kernel releases it when the holder dies, SIGKILL included, so
a killed build leaves nothing to clean up. ``flock`` holds on a local file system; on NFS
it depends on the server, and a catalog on a database server shared by indexes on several
hosts is not covered.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable
from pathlib import Path

from indexer.errors import CatalogError

LOCK_FILE = "writer.lock"

_held: dict[Path, tuple[int, int]] = {}  # index directory -> (descriptor, holders)
_guard = threading.Lock()


def _holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        text = os.pread(fd, 32, 0).decode().strip()
        return f"process {int(text)}"
    return "another process"


def lock_index(index_dir: Path) -> Callable[[], None]:
    """Take the index's writer lock (refused with :class:`CatalogError` while another
    process holds it); returns the function that lets it go."""
    key = index_dir.resolve()
    with _guard:
        if key in _held:
            fd, holders = _held[key]
            _held[key] = (fd, holders + 1)
            return _releaser(key)
        fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise CatalogError(
                f"{index_dir} is being written by {holder} (another build, add, remove, "
                "rebuild or watch): wait for it to finish, or stop it, then run this again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        _held[key] = (fd, 1)
    return _releaser(key)


def _releaser(key: Path) -> Callable[[], None]:
    released = False

    def release() -> None:  # once per lock_index(), however often it is called
        nonlocal released
        if not released:
            released = True
            _release(key)

    return release


def _release(key: Path) -> None:
    with _guard:
        fd, holders = _held[key]
        if holders > 1:
            _held[key] = (fd, holders - 1)
            return
        del _held[key]
        os.close(fd)  # the lock goes with the descriptor; the file stays, empty of meaning
