"""Encoder stage: rendered images of a batch to embeddings, in the encoder's batch size."""

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
    return encoder.embed_images([im.pixels for im in images], recipe)
