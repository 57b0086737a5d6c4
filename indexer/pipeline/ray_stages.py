"""The pipeline's stages as Ray Data callables: ``__init__`` sets up once per actor,
``__call__(batch) -> batch`` on packed batches of plain columns (see
:mod:`indexer.pipeline.ray_rows`; :meth:`DecodeStage.decode` and
:meth:`EncodeStage.encode` work on the unpacked columns).

- :class:`DecodeStage`: decode + render + preprocess, one item after another, in a
  guarded decoder process that the actor owns (the same
  :class:`~indexer.imaging.guard.DecoderWorker` and job as the local engine's
  :class:`~indexer.pipeline.preparer.Preparer`). A codec that crashes, hangs or balloons
  kills that process, not the Ray worker: the item fails with its reason (``decoder
  crashed``, ``decode timeout``, ``decode memory limit``) and the batch goes on. Spawning
  a guarded process costs about a second, so it lives as long as the actor rather than
  one task: this is why decoding runs on an actor pool of ``--decode-cpus`` actors (one
  CPU each) and not as stateless tasks.
- :class:`EncodeStage`: loads the model once per actor, verified (file hashes, self-test,
  the driver's fingerprint), and refuses a CPU fallback when CUDA was asked for; then the
  local engine's :class:`~indexer.pipeline.embedder.Embedder` on each batch.

Neither imports Ray: they are plain callables, run by the Ray engine's wiring.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from indexer.encoders.preprocess import Recipe
from indexer.errors import MedsearchError, ModelMismatchError, ProviderError
from indexer.imaging.guard import DecodeJob, DecoderWorker
from indexer.imaging.types import DecodeResult, Reason
from indexer.pipeline.items import ReadItem, fetch
from indexer.pipeline.preparer import Prepared
from indexer.pipeline.ray_rows import (
    DATA,
    IMAGE_COLUMNS,
    PATH,
    REFUSED,
    Columns,
    empty,
    from_block,
    image_of,
    pack,
    pixels_of,
    refusal,
    result_of,
    result_rows,
    to_block,
    unpack,
)
from indexer.settings import EncoderSettings, ImagingSettings
from indexer.sources import SourceItem

if TYPE_CHECKING:  # the encoder actors import ONNX Runtime, the decode actors do not
    from indexer.encoders.encoder import Encoder

logger = logging.getLogger(__name__)

DecoderFactory = Callable[[ImagingSettings], DecoderWorker]
EncoderLoader = Callable[[Path, EncoderSettings], "Encoder"]


def worker_imaging(public_json: str, expected_salt_check: str) -> ImagingSettings:
    """The driver's imaging settings (sent without the salt) with this worker's own salt,
    from its environment (``MEDSEARCH_PATIENT_HASH_SALT``), checked to be the driver's."""
    settings = ImagingSettings(**json.loads(public_json))
    if settings.salt_check() != expected_salt_check:
        raise MedsearchError(
            "the Ray workers' MEDSEARCH_PATIENT_HASH_SALT is not the driver's: set the same "
            "value in the environment of every `ray start` (it is never sent over Ray)"
        )
    return settings


def _open_uri(uri: str) -> BinaryIO:
    from indexer.sources.open import open_uri  # httpx: only where an item is read

    return open_uri(uri)


def _uri_item(uri: str, size: int) -> ReadItem:
    item = SourceItem(
        uri=uri, relpath="", size=size or None, open=functools.partial(_open_uri, uri)
    )
    return ReadItem(item, None)


class DecodeStage:
    """Items (job rows) to image rows: the model's inputs, or the reason there are none."""

    def __init__(
        self,
        imaging_json: str,
        salt: str,
        recipe: Recipe,
        decoder: DecoderFactory | None = None,
    ) -> None:
        self.settings = worker_imaging(imaging_json, salt)
        self.recipe = recipe
        self._worker = (decoder or DecoderWorker)(self.settings)
        self._worker.start()

    def _job(self, jobs: Columns, i: int) -> DecodeJob | DecodeResult:
        kind, uri = str(jobs["kind"][i]), str(jobs["uri"][i])
        if kind == REFUSED:
            return refusal(Reason(jobs["reason"][i]), str(jobs["detail"][i]), jobs["size"][i])
        if kind == PATH:
            return DecodeJob(path=str(jobs["path"][i]))
        if kind == DATA:
            return DecodeJob(data=bytes(jobs["data"][i]))
        # read here (DICOMweb): a PACS that is down stops the run, as in the local engine
        return fetch(_uri_item(uri, int(jobs["size"][i])), self.settings.max_file_bytes)

    def decode(self, jobs: Columns) -> Columns:
        out = empty(IMAGE_COLUMNS)
        for i in range(len(jobs["seq"])):
            started = time.perf_counter()
            job = self._job(jobs, i)
            if isinstance(job, DecodeJob):
                job = self._worker.decode(replace(job, recipe=self.recipe))
            seconds = time.perf_counter() - started
            result_rows(out, int(jobs["seq"][i]), str(jobs["uri"][i]), job, seconds)
        return out

    def __call__(self, block: Any) -> Any:  # an Arrow table in and out
        return to_block([pack(self.decode(unpack(blob))) for blob in from_block(block)])

    def __del__(self) -> None:  # Ray Data deletes the callable when the pool shuts down
        worker = getattr(self, "_worker", None)
        if worker is not None:
            worker.close()


class EncodeStage:
    """Image rows to embedding rows (the pixels stay behind: only vectors go back)."""

    def __init__(
        self,
        model_dir: str,
        settings: EncoderSettings,
        recipe: str,
        fingerprint: str,
        load: EncoderLoader | None = None,
    ) -> None:
        from indexer.encoders.encoder import Encoder
        from indexer.encoders.sessions import CUDA
        from indexer.pipeline.embedder import Embedder

        encoder = (load or Encoder.load)(Path(model_dir), settings)  # hashes + self-test
        if encoder.fingerprint != fingerprint:
            raise ModelMismatchError(
                f"the model in {model_dir} on this Ray node is {encoder.fingerprint[:16]}, the "
                f"driver's is {fingerprint[:16]}: every node needs the same model directory"
            )
        if settings.provider == "cuda" and encoder.provider != CUDA:
            raise ProviderError(f"CUDA was asked for, ONNX Runtime runs on {encoder.provider}")
        self.embedder = Embedder(encoder, recipe)

    def encode(self, rows: Columns) -> Columns:
        """Image rows to embedding rows: the pixels stay here, only vectors go back."""
        ok = [i for i, count in enumerate(rows["count"]) if count]
        prepared = [
            Prepared(
                _uri_item(str(rows["uri"][i]), 0),
                result_of(rows, i, [image_of(rows, i, pixels_of(rows, i))]),
            )
            for i in ok
        ]
        busy = self.embedder.busy_s
        embedding = [b""] * len(rows["seq"])  # none for a refusal row
        if prepared:
            vectors = self.embedder(prepared)
            for row, i in enumerate(ok):
                embedding[i] = np.ascontiguousarray(vectors[row], dtype="<f4").tobytes()
        embed_s = [0.0] * len(rows["seq"])
        embed_s[0] = self.embedder.busy_s - busy
        kept = [n for n in IMAGE_COLUMNS if n not in ("pixels", "height", "width", "channels")]
        return {**{n: rows[n] for n in kept}, "embedding": embedding, "embed_s": embed_s}

    def __call__(self, block: Any) -> Any:  # an Arrow table in and out
        rows = empty(IMAGE_COLUMNS)
        for blob in from_block(block):  # the decoded batches of one encoder run
            for name, values in unpack(blob).items():
                rows[name] += values
        return to_block([pack(self.encode(rows))])
