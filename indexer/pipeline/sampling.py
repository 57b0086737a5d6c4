"""Slice sampling for bulk builds (``index build --series-sample N``).

For archives where embedding every slice costs too much, a build can index ``N`` slices
per DICOM series, evenly spaced along the slice order: the slices' positions along the
normal of their plane (``ImagePositionPatient`` projected on the cross product of the
``ImageOrientationPatient`` row and column directions) when every slice of the series has
them, else their ``InstanceNumber``, else the order the source lists them in. Picks are
``round(linspace(0, count - 1, N))``: both ends and evenly between.

The pass reads each file's header (up to the pixel data) before any decoding, on
``io_threads`` threads, and holds the listing's DICOM items until the sources are listed
(a series' slices may be anywhere in them). Items that are not DICOM, or whose header does
not parse, or that carry no Series Instance UID, go on unsampled (decoding says what they
are); so do DICOMweb instances, which are not sampled. The choice is made over everything
the sources list, before the catalog drops what it has seen, so a rerun picks the same
slices. The sample size is recorded in the catalog: later runs keep it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from indexer.sources import SourceItem
from indexer.sources.dicomweb import is_dicomweb

logger = logging.getLogger(__name__)

SAMPLING_SKIPPED = "skipped: series sampling"
HEADER_TAGS = [
    "SeriesInstanceUID",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "InstanceNumber",
]
CHUNK = 256  # headers read per round of the thread pool


@dataclass(frozen=True)
class SliceKey:
    series_uid: str
    position: float | None  # along the plane's normal (mm)
    number: int | None  # InstanceNumber


def slice_key(item: SourceItem) -> SliceKey | None:
    """The series and place of a DICOM slice, from its header; ``None`` if it has none."""
    if item.refusal is not None or is_dicomweb(item.uri):
        return None
    try:
        with item.open() as fp:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, specific_tags=HEADER_TAGS)
        uid = ds.get("SeriesInstanceUID")
        if not uid:
            return None
        position = None
        ipp, iop = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
        if ipp is not None and iop is not None and len(ipp) == 3 and len(iop) == 6:
            cosines = np.asarray([float(v) for v in iop])
            normal = np.cross(cosines[:3], cosines[3:])
            position = float(np.dot(normal, [float(v) for v in ipp]))
        number = ds.get("InstanceNumber")
        return SliceKey(str(uid), position, int(number) if number is not None else None)
    except (InvalidDicomError, OSError, ValueError, TypeError, AttributeError, EOFError):
        return None


def evenly_spaced(count: int, n: int) -> list[int]:
    """``n`` indices of ``range(count)``, both ends and evenly between (all if fewer)."""
    if count <= n:
        return list(range(count))
    return sorted({int(i) for i in np.rint(np.linspace(0, count - 1, n))})


def _ordered(members: list[tuple[SliceKey, int, SourceItem]]) -> list[SourceItem]:
    if all(key.position is not None for key, _, _ in members):
        members = sorted(members, key=lambda m: (m[0].position, m[1]))
    elif all(key.number is not None for key, _, _ in members):
        members = sorted(members, key=lambda m: (m[0].number, m[1]))
    return [item for _, _, item in members]


def sample_series(
    items: Iterable[SourceItem],
    n: int,
    *,
    io_threads: int = 4,
    counts: dict[str, int] | None = None,
) -> Iterator[SourceItem]:
    """``items`` with only ``n`` slices of each DICOM series (the others are counted in
    ``counts`` under :data:`SAMPLING_SKIPPED`)."""
    if n < 1:
        raise ValueError("a series sample is at least 1 slice")
    groups: dict[str, list[tuple[SliceKey, int, SourceItem]]] = {}
    listed = iter(items)
    seq = 0
    with ThreadPoolExecutor(io_threads, thread_name_prefix="medsearch-headers") as pool:
        while chunk := list(islice(listed, CHUNK)):
            for item, key in zip(chunk, pool.map(slice_key, chunk), strict=True):
                seq += 1
                if key is None:
                    yield item
                else:
                    groups.setdefault(key.series_uid, []).append((key, seq, item))
    skipped = 0
    for members in groups.values():  # in the order their first slice was listed
        ordered = _ordered(members)
        picks = evenly_spaced(len(ordered), n)
        skipped += len(ordered) - len(picks)
        yield from (ordered[i] for i in picks)
    if counts is not None and skipped:
        counts[SAMPLING_SKIPPED] = counts.get(SAMPLING_SKIPPED, 0) + skipped
    logger.info("series sampling: %d series, %d slices left out", len(groups), skipped)
