"""What crosses Ray: plain columns (numbers, strings, bytes), to and from the pipeline's
objects.

Each Ray Data row is one whole batch: a table of plain columns packed as Arrow IPC bytes
(:func:`pack`, :func:`unpack`), so that a block is one batch and Ray's per-block cost is
paid once per batch rather than once per image (with one row per image, Ray Data cuts
model inputs into blocks of one image each). The driver turns each item into a *job row*
(:func:`job_row`): a path the workers read, a URI they fetch (DICOMweb), the bytes the
driver read (archive members, files the workers cannot see), or a refusal already known.
The decode stage answers with one *image row* per image, or one row with the reason
there is none (:func:`result_rows`); the encoder stage replaces the pixels with the
embedding. On the driver, :func:`prepared_items` rebuilds the same
:class:`~indexer.pipeline.preparer.Prepared` objects that the local engine hands to the
:class:`~indexer.pipeline.writer.Writer`, so both engines commit the same rows.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa  # type: ignore[import-untyped,import-not-found,unused-ignore]

from indexer.imaging.guard import DecodeJob
from indexer.imaging.types import DecodedImage, DecodeResult, FileInfo, ImageMetadata, Reason
from indexer.pipeline.items import ReadItem
from indexer.pipeline.preparer import Prepared

BATCH = "batch"  # the one column of the Ray Data rows: a packed table
Columns = dict[str, list[Any]]

JOB_COLUMNS = ("seq", "kind", "uri", "path", "data", "reason", "detail", "size")
IMAGE_COLUMNS = (
    "seq", "uri", "count", "sha256", "size", "reason", "detail", "meta", "grey", "recipe",
    "pixels", "height", "width", "channels", "prepare_s",
)  # fmt: skip
PATH, DATA, URI, REFUSED = "path", "data", "uri", "refused"
_NO_PIXELS: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)


def pack(columns: Columns) -> Any:
    """``columns`` as Arrow IPC bytes (a ``pyarrow.Buffer``). A column of arrays (the
    pixels) is copied once, into one buffer (from ``bytes`` objects, Arrow copies each
    again: 20 ms for 32 images of 480 x 480, against 3 ms)."""
    table = pa.table({name: _arrays(values) for name, values in columns.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def _arrays(values: list[Any]) -> Any:
    return _binary(values) if values and isinstance(values[0], np.ndarray) else values


def _binary(parts: list[Any]) -> Any:
    """Byte-likes (arrays, buffers, ``bytes``) as one Arrow ``large_binary`` array over one
    data buffer: copied once, or not at all when there is one part."""
    flat = [
        np.ascontiguousarray(p).reshape(-1).view(np.uint8)
        if isinstance(p, np.ndarray)
        else np.frombuffer(p, dtype=np.uint8)
        for p in parts
    ]
    offsets = np.cumsum([0, *(v.size for v in flat)], dtype=np.int64)
    data = pa.py_buffer(flat[0] if len(flat) == 1 else np.concatenate(flat))
    return pa.Array.from_buffers(pa.large_binary(), len(flat), [None, pa.py_buffer(offsets), data])


def unpack(blob: Any) -> Columns:
    """The columns of a packed batch (``bytes`` or a ``pyarrow.Buffer``); binary values
    as ``pyarrow.Buffer`` views of ``blob``, not copies."""
    buffer = blob if isinstance(blob, pa.Buffer) else pa.py_buffer(blob)
    table = pa.ipc.open_stream(buffer).read_all()
    return {name: _values(table.column(name)) for name in table.column_names}


def _values(column: Any) -> list[Any]:
    if pa.types.is_binary(column.type) or pa.types.is_large_binary(column.type):
        return [value.as_buffer() for value in column]
    values: list[Any] = column.to_pylist()
    return values


def to_block(blobs: list[Any]) -> Any:
    """Packed batches as a Ray Data block (an Arrow table of one binary column): returned
    as Arrow, Ray does not convert it (from a list of ``bytes`` it spends ~5 ms an image)."""
    return pa.table({BATCH: _binary(blobs)})


def from_block(block: Any) -> list[Any]:
    """The packed batches of a block, without copying them."""
    return [value.as_buffer() for value in block.column(BATCH)]


def empty(names: tuple[str, ...]) -> Columns:
    return {name: [] for name in names}


def job_row(seq: int, read: ReadItem, job: DecodeJob | DecodeResult | None) -> dict[str, Any]:
    """``job``: what the driver fetched (as the local engine's reader does), or ``None``
    for an item the workers read by its URI."""
    row: dict[str, Any] = {
        "seq": seq, "kind": URI, "uri": read.item.uri, "path": "", "data": b"",
        "reason": "", "detail": "", "size": read.item.size or 0,
    }  # fmt: skip
    if isinstance(job, DecodeResult):
        reason = job.reason or Reason.INTERNAL
        row.update(kind=REFUSED, reason=reason.value, detail=job.detail, size=job.file.size)
    elif job is not None and job.path is not None:
        row.update(kind=PATH, path=job.path)
    elif job is not None:
        row.update(kind=DATA, data=job.data or b"")
    return row


def refusal(reason: Reason, detail: str, size: int = 0) -> DecodeResult:
    return DecodeResult(file=FileInfo("", size), reason=reason, detail=detail)


def result_rows(out: Columns, seq: int, uri: str, result: DecodeResult, seconds: float) -> None:
    """Append ``result``'s image rows (or its one refusal row) to ``out``."""
    images = result.images if result.ok else []
    common = {
        "seq": seq, "uri": uri, "count": len(images), "sha256": result.file.sha256,
        "size": result.file.size, "detail": result.detail,
        "reason": "" if result.ok else (result.reason or Reason.NO_IMAGE).value,
    }  # fmt: skip
    for index, image in enumerate(images or [None]):
        row = dict(common, prepare_s=seconds if index == 0 else 0.0)
        if image is None:
            row.update(
                meta="", grey=False, recipe="", pixels=_NO_PIXELS, height=0, width=0, channels=0
            )
        else:
            pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
            row.update(
                meta=image.metadata.model_dump_json(),
                grey=image.grey,
                recipe=image.recipe or "",
                pixels=pixels,
                height=pixels.shape[0],
                width=pixels.shape[1],
                channels=pixels.shape[2] if pixels.ndim == 3 else 0,  # 0: grey, one channel
            )
        for name in IMAGE_COLUMNS:
            out[name].append(row[name])


def pixels_of(rows: Columns, i: int) -> npt.NDArray[np.uint8]:
    shape = (int(rows["height"][i]), int(rows["width"][i]), int(rows["channels"][i]))
    pixels = np.frombuffer(rows["pixels"][i], dtype=np.uint8)
    return pixels.reshape(shape if shape[2] else shape[:2])


def image_of(rows: Columns, i: int, pixels: npt.NDArray[np.uint8]) -> DecodedImage:
    return DecodedImage(
        pixels=pixels,
        metadata=ImageMetadata.model_validate_json(rows["meta"][i]),
        grey=bool(rows["grey"][i]),
        recipe=str(rows["recipe"][i]) or None,
    )


def result_of(rows: Columns, i: int, images: list[DecodedImage]) -> DecodeResult:
    reason = str(rows["reason"][i])
    return DecodeResult(
        file=FileInfo(str(rows["sha256"][i]), int(rows["size"][i])),
        images=images,
        reason=Reason(reason) if reason else None,
        detail=str(rows["detail"][i]),
    )


def prepared_items(
    rows: Columns, reads: dict[int, ReadItem], dim: int
) -> tuple[list[Prepared], npt.NDArray[np.float32]]:
    """The encoder's rows back to items, on the driver, with their embeddings in order.

    An item's rows are contiguous and never split between two encoder batches (a decoded
    batch is encoded whole). ``reads`` maps each job's ``seq`` to its item; entries are
    taken out here.
    """
    done: list[Prepared] = []
    vectors: list[npt.NDArray[np.float32]] = []
    i, n = 0, len(rows["seq"])
    while i < n:
        seq, count = int(rows["seq"][i]), int(rows["count"][i])
        span = range(i, i + max(count, 1))
        images = [image_of(rows, j, _NO_PIXELS) for j in span] if count else []
        done.append(Prepared(reads.pop(seq), result_of(rows, i, images)))
        vectors += [np.frombuffer(rows["embedding"][j], dtype="<f4") for j in span if count]
        i = span.stop
    stacked = np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), np.float32)
    return done, stacked
