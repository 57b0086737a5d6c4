"""What crosses the pipeline's stages for each source item (:class:`ReadItem`), and what a
decoder gets for it (:func:`fetch`).

Kept apart from the reader (which needs the catalog, hence SQLAlchemy) so that the Ray
engine's workers import only what decoding needs.
"""

from __future__ import annotations

from dataclasses import dataclass

from indexer.errors import ImageRefused, SourceError, SourceUnavailableError
from indexer.imaging.guard import DecodeJob
from indexer.imaging.types import DecodeResult, FileInfo, Reason
from indexer.sources import SourceItem


@dataclass
class ReadItem:
    item: SourceItem
    labels: dict[str, str] | None


def fetch(read: ReadItem, max_bytes: int) -> DecodeJob | DecodeResult:
    """What a decoder worker gets: a file on disk by its path; an archive member or PACS
    instance as its bytes (read here, size-capped); or a refusal. An item the source
    refused (a link, a device, an unsafe name, an archive member over its cap) and a member
    that refuses while it inflates become failures with that reason."""
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
