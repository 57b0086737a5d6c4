"""Encoder stage: the model inputs of a batch (prepared by the decoder workers) to embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from indexer.encoders.encoder import Encoder
from indexer.imaging.types import DecodedImage


def embed_batch(
    encoder: Encoder, images: Sequence[DecodedImage], recipe: str
) -> npt.NDArray[np.float32]:
    if not images:
        return np.zeros((0, encoder.manifest.embedding_dim), dtype=np.float32)
    if any(im.recipe != recipe for im in images):
        raise ValueError(f"images were not prepared for recipe {recipe!r}")
    return encoder.embed_inputs([im.pixels for im in images], recipe)
