"""Preparer stage: decode + render + preprocess one item in a guarded worker process.

The worker hands back the model's input for the index's recipe (480x480 ``uint8``, grey
kept as one channel), so the main process neither resizes nor holds full-resolution
pixels. One :class:`Preparer` owns one worker process; the engine runs as many as it has
decoder processes, each from its own thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace

from indexer.encoders.preprocess import Recipe
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.imaging.types import DecodeResult
from indexer.pipeline.items import ReadItem
from indexer.settings import ImagingSettings


@dataclass
class Prepared:
    """An item with its decode result: the model's inputs, or the reason there are none."""

    read: ReadItem
    result: DecodeResult


class Preparer:
    def __init__(self, imaging: ImagingSettings, recipe: Recipe) -> None:
        self.recipe = recipe
        self._worker = DecoderWorker(imaging)
        self._worker.start()  # spawning takes a second: overlap it with model loading
        self.busy_s = 0.0

    def __call__(self, read: ReadItem, job: DecodeJob | DecodeResult) -> Prepared:
        """``job`` comes from the reader: a file or bytes to decode, or a refusal already."""
        if isinstance(job, DecodeResult):
            return Prepared(read, job)
        started = time.perf_counter()
        result = self._worker.decode(replace(job, recipe=self.recipe))
        self.busy_s += time.perf_counter() - started
        return Prepared(read, result)

    def wait_started(self) -> None:
        """Return once the decoder process answers (it has imported its codecs): an empty
        job, refused at once. The stages' clock then starts with every decoder ready."""
        self._worker.decode(DecodeJob(data=b""))

    @property
    def restarts(self) -> int:
        return self._worker.restarts

    def close(self) -> None:
        self._worker.close()
