"""Zero-shot labels: ``softmax(exp(logit_scale) * cosine)`` (sigmoid per label if multilabel)."""

from __future__ import annotations

import numpy as np
from fastapi import APIRouter

from indexer.encoders.zero_shot import probabilities
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.runtime import b64decode
from service.schemas import ClassifyRequest, ClassifyResponse, LabelScore

router = APIRouter(prefix="/v1", tags=["classify"])


@router.post("/classify", response_model=ClassifyResponse)
async def classify(body: ClassifyRequest, rt: RuntimeDep) -> ClassifyResponse:
    """Probabilities of each label for an image (label embeddings are cached)."""
    if len(body.labels) > rt.settings.max_labels:  # the schema's bound, lowered by settings
        raise ServiceError(422, "too many labels", f"at most {rt.settings.max_labels}")
    data = b64decode(body.image, rt.settings.max_body_bytes)
    vector, _ = await rt.embed_image(data)
    labels = np.stack(await rt.embed_texts(body.labels))
    cosine = labels @ vector
    probs = probabilities(cosine, rt.encoder.logit_scale, multilabel=body.multilabel)
    return ClassifyResponse(
        results=[
            LabelScore(label=label, probability=float(p), cosine=float(c))
            for label, p, c in zip(body.labels, probs, cosine, strict=True)
        ],
        scaling_factor=rt.encoder.logit_scale,
    )
