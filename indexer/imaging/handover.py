"""What a decoder worker hands back, and how it crosses to the parent process.

A job asks for the full rendering, the model's input for a recipe, or a thumbnail
(:func:`hand_over`). Model inputs (480x480 ``uint8``, 225 KB grey or 675 KB RGB) cross
through a shared-memory slot that each worker owns (:class:`SharedSlot`): the worker
writes the pixels there and sends only the metadata through its pipe, and the parent
copies them out. Sending them through the pipe cost the parent about 0.4 ms of CPU per
image in socket wake-ups and copies; the slot costs one ``memcpy``. What does not fit the
slot (every frame of a multi-frame object) goes through the pipe as before.

The slot is a memory file with no name (``memfd_create``; an unlinked temporary file where
that does not exist) that the worker gets as a descriptor when it is spawned
(:class:`HandedFd`). Named blocks (``/dev/shm/psm_*``) outlived every parent whose
resource tracker died with it, as Ray's workers do when Ray stops them: 84 of them, 58 MB
of memory that only a reboot returned, were found on a test machine. A memory file is
freed when the last process holding it exits, however it exits.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from multiprocessing import reduction
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from indexer.encoders.preprocess import Recipe, prepare
from indexer.errors import ImageInputError
from indexer.imaging.burned_in import Region, apply_mask
from indexer.imaging.phash import phash
from indexer.imaging.types import DecodedImage, DecodeResult, Reason

Layout = list[tuple[int, tuple[int, ...]] | None]  # per image: (offset, shape) in the slot


def _thumbnail(pixels: npt.NDArray[np.uint8], size: int) -> npt.NDArray[np.uint8]:
    img = Image.fromarray(pixels)
    img.thumbnail((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def hand_over(
    result: DecodeResult,
    recipe: Recipe | None,
    thumbnail: int | None,
    mask: Sequence[Region] = (),
) -> DecodeResult:
    """What of ``result`` a job asked for: the model's inputs for ``recipe``, thumbnails
    of at most ``thumbnail`` pixels a side (``mask`` blacked out at full resolution before
    shrinking: burned-in text), or (neither) the full rendering."""
    if not result.ok or (recipe is None and thumbnail is None):
        return result
    images: list[DecodedImage] = []
    try:
        for image in result.images:
            if recipe is not None:  # the model's input, and the rendering's hash beside it
                pixels = prepare(image.pixels, recipe, grey=image.grey)
                meta = image.metadata.model_copy(update={"phash": phash(pixels)})
                images.append(replace(image, pixels=pixels, recipe=recipe.name, metadata=meta))
            elif thumbnail is not None:
                shown = apply_mask(image.pixels, mask) if mask else image.pixels
                images.append(replace(image, pixels=_thumbnail(shown, thumbnail)))
    except ImageInputError as exc:
        return DecodeResult(file=result.file, reason=Reason.UNDECODABLE, detail=str(exc))
    return replace(result, images=images)


def slot_bytes(recipe: Recipe) -> int:
    """Room for one RGB model input of ``recipe``."""
    height, width = recipe.size
    return height * width * 3


def unnamed_file(name: str) -> int:
    """A descriptor of a new, empty file that no directory names (nothing to clean up after
    a kill): a memory file on Linux, an unlinked temporary file elsewhere."""
    if hasattr(os, "memfd_create"):
        return os.memfd_create(name, os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix=f"{name}-")
    os.unlink(path)
    return fd


class HandedFd:
    """A descriptor handed to a spawned process among its arguments, the way
    multiprocessing hands it a ``Connection``: kept open across the spawn; the child gets
    an ``int``."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return _detach, (reduction.DupFd(self.fd),)


def _detach(handed: Any) -> int:
    return int(handed.detach())


class _Mapping:
    """A memory map of a slot file, remapped when the file has grown."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None

    def view(self) -> memoryview | None:
        size = os.fstat(self.fd).st_size
        if size == 0:
            return None
        if self._map is None or len(self._map) != size:
            if self._map is not None:
                self._map.close()
            self._map = mmap.mmap(self.fd, size)
        return memoryview(self._map)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


class SharedSlot:
    """The parent's side: a memory file that one worker (and the workers that replace it)
    writes results into; hand :attr:`fd` to each worker process."""

    def __init__(self) -> None:
        self.fd = unnamed_file("medsearch-slot")
        self.size = 0
        self._mapping = _Mapping(self.fd)

    def reserve(self, size: int) -> None:
        """Room for ``size`` bytes (it only grows: a worker's mapping never outruns it)."""
        if size > self.size:
            os.ftruncate(self.fd, size)
            self.size = size

    def take(self, result: DecodeResult, layout: Layout | None) -> DecodeResult:
        """``result`` with the pixels that crossed through the slot copied back in."""
        if not layout:
            return result
        buf = self._mapping.view()
        images = []
        for image, place in zip(result.images, layout, strict=True):
            if place is not None:
                offset, shape = place
                view = np.ndarray(shape, dtype=np.uint8, buffer=buf, offset=offset)
                image = replace(image, pixels=view.copy())
            images.append(image)
        return replace(result, images=images)

    def close(self) -> None:
        self._mapping.close()
        os.close(self.fd)


class WorkerSlot:
    """The worker's side of its :class:`SharedSlot`, from the descriptor it was handed."""

    def __init__(self, fd: int) -> None:
        self._mapping = _Mapping(fd)

    def put(self, result: DecodeResult, use: bool) -> tuple[DecodeResult, Layout | None]:
        """Move what fits of ``result``'s pixels into the slot (when the job ``use``s it);
        the rest (and the metadata) stays in the message."""
        buf = self._mapping.view() if use and result.ok else None
        if buf is None:
            return result, None
        layout: Layout = []
        images: list[DecodedImage] = []
        offset = 0
        for image in result.images:
            pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
            if offset + pixels.nbytes > len(buf):
                layout.append(None)
                images.append(image)
                continue
            target = np.ndarray(pixels.shape, dtype=np.uint8, buffer=buf, offset=offset)
            target[...] = pixels
            layout.append((offset, pixels.shape))
            images.append(replace(image, pixels=_EMPTY))
            offset += pixels.nbytes
        return replace(result, images=images), layout


_EMPTY: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
