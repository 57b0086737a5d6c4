"""Embedder stage: the model inputs of a batch of prepared items to embeddings, in one
encoder run (``EncoderSettings.batch_size``, ``--batch-size``)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from indexer.encoders.encoder import Encoder
from indexer.pipeline.preparer import Prepared

Embeddings = npt.NDArray[np.float32]


class Embedder:
    def __init__(self, encoder: Encoder, recipe: str) -> None:
        self.encoder = encoder
        self.recipe = recipe
        self.busy_s = 0.0
        self.cpu_s = 0.0  # this stage's thread CPU time (normalisation, encoder calls)

    @property
    def batch_size(self) -> int:
        return self.encoder.batch_size

    def __call__(self, batch: Sequence[Prepared]) -> Embeddings:
        """One row per image of the batch's successful items, in order."""
        inputs = [im.pixels for p in batch if p.result.ok for im in p.result.images]
        if not inputs:
            return np.zeros((0, self.encoder.manifest.embedding_dim), dtype=np.float32)
        for p in batch:
            if any(im.recipe != self.recipe for im in p.result.images):
                raise ValueError(f"{p.read.item.uri}: not prepared for recipe {self.recipe!r}")
        started, cpu = time.perf_counter(), time.thread_time()
        out = self.encoder.embed_inputs(inputs, self.recipe)
        self.busy_s += time.perf_counter() - started
        self.cpu_s += time.thread_time() - cpu
        return out
