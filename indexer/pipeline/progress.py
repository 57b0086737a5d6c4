"""A progress bar on stderr with rate and ETA (rich), and the item count it needs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress

from indexer.sources import open_source
from indexer.sources.dicomweb import is_dicomweb
from indexer.store.catalog import Catalog
from indexer.store.retries import RetryPolicy


def count_items(
    specs: Sequence[str],
    catalog: Catalog,
    retry: RetryPolicy | None = None,
    *,
    budget_s: float = 30.0,
) -> int | None:
    """How many items this run will read (the sources' items less those the catalog makes
    it skip), if that is cheap to know (no tar, no PACS, within budget): a resumed run's
    bar starts at 0 of what is left and ends at 100%."""
    deadline = time.monotonic() + budget_s
    total = 0
    pending: list[str] = []

    def flush() -> int:
        todo = len(pending) - len(catalog.seen_sources(pending, retry))
        pending.clear()
        return todo

    for spec in specs:
        if any(spec.lower().endswith(s) for s in (".tar", ".gz", ".tgz", ".bz2", ".xz", ".txz")):
            return None
        if is_dicomweb(spec):  # counting would query the whole PACS twice
            return None
        source = open_source(spec)
        try:
            for item in source:
                pending.append(item.uri)
                if len(pending) >= 500:
                    total += flush()
                if time.monotonic() > deadline:
                    return None
        finally:
            source.close()
    return total + flush()


class Progress:
    def __init__(self, total: int | None, *, enabled: bool = True) -> None:
        self._enabled = enabled
        self._bar = RichProgress(
            TextColumn("indexing"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[rate]} images/s"),
            TextColumn("indexed {task.fields[indexed]} failed {task.fields[failed]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            disable=not enabled,
        )
        self._task = self._bar.add_task("index", total=total, rate="-", indexed=0, failed=0)
        self._start = time.perf_counter()
        self._done = 0

    def __enter__(self) -> Progress:
        self._bar.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bar.stop()

    def advance(self, n: int, *, indexed: int, failed: int) -> None:
        """``n`` more items done; the rate is the whole build's images indexed per second."""
        self._done += n
        rate = indexed / max(time.perf_counter() - self._start, 1e-9)
        self._bar.update(self._task, advance=n, rate=f"{rate:.1f}", indexed=indexed, failed=failed)
