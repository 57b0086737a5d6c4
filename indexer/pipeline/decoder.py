"""Decoder stage: source items through the guarded decoder pool (time and memory budget)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from indexer.encoders.preprocess import Recipe
from indexer.errors import ImageRefused, SourceError, SourceUnavailableError
from indexer.imaging.guard import DecodeJob, DecoderPool
from indexer.imaging.types import DecodeResult, FileInfo, Reason
from indexer.pipeline.reader import ReadItem


def job_for(read: ReadItem, max_bytes: int) -> DecodeJob | DecodeResult:
    """A file on disk goes by path; an archive member by its bytes (size-capped).

    An item the source refused (a link, a device, an unsafe name, an archive member over
    its cap) and a member that refuses while it inflates become failures with that reason.
    """
    item = read.item
    if item.refusal is not None:
        reason, detail = item.refusal.reason, item.refusal.detail
        return DecodeResult(file=FileInfo("", item.size or 0), reason=reason, detail=detail)
    if item.local_path is not None:
        return DecodeJob(path=item.local_path)
    if item.size is not None and item.size > max_bytes:
        return DecodeResult(file=FileInfo("", item.size), reason=Reason.TOO_LARGE)
    try:
        with item.open() as fp:
            data = fp.read(max_bytes + 1)
    except SourceUnavailableError:
        raise  # a PACS that is down stops the run; rerunning resumes it
    except ImageRefused as exc:  # a zip member inflating past its cap, or damaged
        file = FileInfo("", item.size or 0)
        return DecodeResult(file=file, reason=Reason(exc.reason), detail=exc.detail)
    except (SourceError, OSError) as exc:
        detail = str(exc)[:200] if isinstance(exc, SourceError) else type(exc).__name__
        return DecodeResult(file=FileInfo("", 0), reason=Reason.UNREADABLE, detail=detail)
    if len(data) > max_bytes:
        return DecodeResult(file=FileInfo("", len(data)), reason=Reason.TOO_LARGE)
    return DecodeJob(data=data)


def decode_batch(
    pool: DecoderPool, batch: Sequence[ReadItem], max_bytes: int, recipe: Recipe
) -> list[DecodeResult]:
    """Decode a batch; the workers hand back the model's input for ``recipe``."""
    jobs = [job_for(read, max_bytes) for read in batch]
    todo = [replace(job, recipe=recipe) for job in jobs if isinstance(job, DecodeJob)]
    decoded = iter(pool.map(todo))
    return [next(decoded) if isinstance(job, DecodeJob) else job for job in jobs]
