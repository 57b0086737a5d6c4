"""Zero-shot classification of the labelled items with text prompts.

Each item's class probabilities are ``softmax(exp(logit_scale) * cosine)`` over the
labels' text embeddings (:func:`indexer.encoders.zero_shot.probabilities`, which
``/v1/classify`` and ``index label`` use too), as in the Azure MedImageInsight zero-shot
example; the prediction is the most probable label. The labels come from a prompts CSV
(columns ``label,prompt``, read by :func:`indexer.cli.curate.read_prompts`); a label with
several prompts gets their mean embedding, L2-normalised
(:func:`indexer.encoders.zero_shot.label_vectors`). Items whose label has no prompt cannot
be classified correctly: they are counted in ``unmatched`` and left out.

- accuracy: the fraction of items whose predicted label is their own;
- confusion matrix: ``confusion[i][j]`` items of label ``labels[i]`` predicted as
  ``labels[j]`` (the prompts file's label order);
- AUC per label, one-vs-rest with that label's probability as the score: the
  Mann-Whitney rank statistic with ties counted one half; ``null`` for a label with no
  items or no other items.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, Field

from indexer.encoders.zero_shot import probabilities
from indexer.errors import MedsearchError


class ZeroShotScores(BaseModel):
    labels: list[str] = Field(description="the classes, in the prompts file's order")
    items: int = Field(description="items classified (their label has prompts)")
    accuracy: float
    per_class_auc: dict[str, float | None]
    per_class_accuracy: dict[str, float | None] = Field(description="recall of each class")
    confusion: list[list[int]] = Field(description="rows: true label, columns: predicted")
    unmatched: dict[str, int] = Field(description="labels without prompts: items left out")
    logit_scale: float


class ZeroShotReport(ZeroShotScores):
    """What ``medsearch eval zero-shot`` reports."""

    label: str
    label_source: str
    prompts: dict[str, list[str]]
    unlabelled: int
    seconds: float


def evaluate_zero_shot(
    vectors: npt.NDArray[np.float32],
    labels: Sequence[str],
    classes: Sequence[str],
    class_vectors: npt.NDArray[np.float32],
    logit_scale: float,
) -> ZeroShotScores:
    """Classify ``vectors`` among ``classes`` (their text embeddings ``class_vectors``)."""
    index = {name: i for i, name in enumerate(classes)}
    unmatched: dict[str, int] = {}
    for label in labels:
        if label not in index:
            unmatched[label] = unmatched.get(label, 0) + 1
    keep = np.array([label in index for label in labels], dtype=bool)
    if not keep.any():
        raise MedsearchError("no labelled item has a label that the prompts name")
    truth = np.array([index[label] for label in labels if label in index], dtype=np.int64)
    cosine = vectors[keep] @ class_vectors.T
    probs = probabilities(cosine, logit_scale)
    predicted = probs.argmax(axis=1)
    confusion = np.zeros((len(classes), len(classes)), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    per_class_accuracy: dict[str, float | None] = {}
    for c, name in enumerate(classes):
        count = int(confusion[c].sum())
        per_class_accuracy[name] = confusion[c, c] / count if count else None
    return ZeroShotScores(
        labels=list(classes),
        items=len(truth),
        accuracy=float((predicted == truth).mean()),
        per_class_auc={name: auc(probs[:, c], truth == c) for c, name in enumerate(classes)},
        per_class_accuracy=per_class_accuracy,
        confusion=confusion.tolist(),
        unmatched=dict(sorted(unmatched.items())),
        logit_scale=logit_scale,
    )


def auc(scores: npt.NDArray[np.floating], positive: npt.NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve: the probability that a positive outscores a negative
    (ties one half), from the rank sum; ``None`` without positives or negatives."""
    positives = int(positive.sum())
    negatives = len(positive) - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    mid_rank = np.cumsum(counts) - (counts - 1) / 2.0  # ranks from 1, ties averaged
    rank_sum = float(mid_rank[inverse][positive].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
