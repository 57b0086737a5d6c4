"""What a decoder worker hands back, and how it crosses to the parent process.

A job asks for the full rendering, the model's input for a recipe, or a thumbnail
(:func:`hand_over`). Model inputs (480x480 ``uint8``, 225 KB grey or 675 KB RGB) cross
through a shared-memory slot that each worker owns (:class:`SharedSlot`): the worker
writes the pixels there and sends only the metadata through its pipe, and the parent
copies them out. Sending them through the pipe cost the parent about 0.4 ms of CPU per
image in socket wake-ups and copies; the slot costs one ``memcpy``. What does not fit the
slot (every frame of a multi-frame object) goes through the pipe as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from multiprocessing import shared_memory

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


class SharedSlot:
    """The parent's side: a shared-memory block that one worker writes results into."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._shm = shared_memory.SharedMemory(create=True, size=size)
        self.name = self._shm.name

    def take(self, result: DecodeResult, layout: Layout | None) -> DecodeResult:
        """``result`` with the pixels that crossed through the slot copied back in."""
        if not layout:
            return result
        images = []
        for image, place in zip(result.images, layout, strict=True):
            if place is not None:
                offset, shape = place
                view = np.ndarray(shape, dtype=np.uint8, buffer=self._shm.buf, offset=offset)
                image = replace(image, pixels=view.copy())
            images.append(image)
        return replace(result, images=images)

    def close(self) -> None:
        self._shm.close()
        self._shm.unlink()


class WorkerSlots:
    """The worker's side: the parents' slots, attached once each by name."""

    def __init__(self) -> None:
        self._attached: dict[str, shared_memory.SharedMemory] = {}

    def put(self, result: DecodeResult, name: str | None) -> tuple[DecodeResult, Layout | None]:
        """Move what fits of ``result``'s pixels into the slot ``name``; the rest (and the
        metadata) stays in the message."""
        if name is None or not result.ok:
            return result, None
        shm = self._attach(name)
        layout: Layout = []
        images: list[DecodedImage] = []
        offset = 0
        for image in result.images:
            pixels = np.ascontiguousarray(image.pixels, dtype=np.uint8)
            if offset + pixels.nbytes > shm.size:
                layout.append(None)
                images.append(image)
                continue
            target = np.ndarray(pixels.shape, dtype=np.uint8, buffer=shm.buf, offset=offset)
            target[...] = pixels
            layout.append((offset, pixels.shape))
            images.append(replace(image, pixels=_EMPTY))
            offset += pixels.nbytes
        return replace(result, images=images), layout

    def _attach(self, name: str) -> shared_memory.SharedMemory:
        if name not in self._attached:
            # Python < 3.13 registers an attached block with the resource tracker as if
            # created here; spawned workers share the parent's tracker, where the name is
            # already registered, and the parent's unlink unregisters it once for both
            self._attached[name] = shared_memory.SharedMemory(name=name)
        return self._attached[name]


_EMPTY: npt.NDArray[np.uint8] = np.zeros(0, dtype=np.uint8)
