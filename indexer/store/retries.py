"""Which failed source URIs a run tries again.

A failure whose reason may not be the file's fault (:data:`TRANSIENT_REASONS`: a crashed
or timed-out decoder, the memory limit, a source that did not answer, a bug) is retried
by the next runs until it has been tried :data:`MAX_ATTEMPTS` times in all. A failure
that is the file's own (``no image``, ``unsupported format``, ``corrupt``, ``too large``,
...) is not retried, and neither is a ``duplicate`` (its image is indexed from another
file). ``index build --retry-failed [REASON]`` retries on demand: every failure, or those
with the given reasons, whatever their attempts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from indexer.imaging.types import TRANSIENT_REASONS, Reason

MAX_ATTEMPTS = 3
DUPLICATE = "duplicate"
ALL = "all"


@dataclass(frozen=True)
class RetryPolicy:
    """``forced``: reasons retried whatever their attempts (``{"all"}`` for every one)."""

    max_attempts: int = MAX_ATTEMPTS
    forced: frozenset[str] = frozenset()

    @classmethod
    def forcing(cls, reasons: Iterable[str]) -> RetryPolicy:
        """The policy of ``--retry-failed REASON...``; unknown reasons are refused."""
        chosen = frozenset(reasons)
        known = {reason.value for reason in Reason} | {ALL}
        unknown = sorted(chosen - known)
        if unknown:
            raise ValueError(
                f"unknown failure reason(s): {', '.join(unknown)}; known: "
                + ", ".join(sorted(known))
            )
        return cls(forced=chosen)

    def retries(self, reason: str, attempts: int) -> bool:
        """Whether a source that failed ``attempts`` times with ``reason`` is tried again."""
        if reason == DUPLICATE:
            return False
        if ALL in self.forced or reason in self.forced:
            return True
        return reason in TRANSIENT_REASONS and attempts < self.max_attempts
