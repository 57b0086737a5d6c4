"""Zero-shot classification with the two towers: ``softmax(exp(logit_scale) * cosine)``.

The service's ``/v1/classify`` (one image, the labels as texts) and ``medsearch index
label`` (every indexed item, labels described by prompts) compute the same thing here.
A label described by several prompts gets the mean of its prompts' embeddings,
L2-normalised again (CLIP's prompt ensembling), so each label has one vector however many
prompts describe it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from indexer.encoders.encoder import Encoder
    from indexer.store.catalog import ModelBinding

Vectors = npt.NDArray[np.float32]
Probabilities = npt.NDArray[np.float64]


def probabilities(
    cosine: npt.NDArray[np.floating], logit_scale: float, *, multilabel: bool = False
) -> Probabilities:
    """Label probabilities from cosines of shape ``(..., labels)``: a softmax over the last
    axis, or with ``multilabel`` an independent sigmoid per label."""
    logits = math.exp(logit_scale) * np.asarray(cosine, dtype=np.float64)
    if multilabel:
        out: Probabilities = 1.0 / (1.0 + np.exp(-logits))
        return out
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    out = shifted / shifted.sum(axis=-1, keepdims=True)
    return out


def label_vectors(prompt_vectors: Vectors, prompt_labels: Sequence[int], labels: int) -> Vectors:
    """One unit vector per label: the mean of its prompts' embeddings (row ``i`` of
    ``prompt_vectors`` belongs to label ``prompt_labels[i]``), renormalised."""
    owner = np.asarray(prompt_labels, dtype=np.int64)
    if owner.shape != (len(prompt_vectors),) or (owner.size and owner.max() >= labels):
        raise ValueError("every prompt must belong to one of the labels")
    dim = prompt_vectors.shape[1]
    sums = np.zeros((labels, dim), np.float64)
    np.add.at(sums, owner, prompt_vectors.astype(np.float64))
    norms = np.linalg.norm(sums, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError("every label needs at least one prompt (with a non-zero mean)")
    out: Vectors = (sums / norms).astype(np.float32)
    return out


def index_encoder(model_dir: Path, binding: ModelBinding) -> Encoder:
    """The encoder in ``model_dir``, refused unless it is the model the index holds."""
    from indexer.encoders.encoder import Encoder
    from indexer.errors import ModelMismatchError
    from indexer.settings import EncoderSettings

    encoder = Encoder.load(model_dir, EncoderSettings())
    if encoder.fingerprint != binding.model_fingerprint:
        raise ModelMismatchError(
            f"the index holds embeddings of model {binding.model_fingerprint[:16]}, not "
            f"{encoder.fingerprint[:16]}: use the index's model"
        )
    return encoder


def prompt_label_vectors(
    encoder: Encoder, prompts: Mapping[str, Sequence[str]]
) -> tuple[list[str], Vectors]:
    """The labels (in the prompts' order) and one vector each (:func:`label_vectors`)."""
    names = list(prompts)
    texts = [text for name in names for text in prompts[name]]
    owners = [i for i, name in enumerate(names) for _ in prompts[name]]
    return names, label_vectors(encoder.embed_texts(texts), owners, len(names))
