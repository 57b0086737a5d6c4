"""The Azure MedImageInsight embedding API, request and response exactly as documented.

``{"input_data": {"columns": ["image", "text"], "index": [0], "data": [[b64, text]]},
"params": {"get_scaling_factor": true}}`` -> ``{"image_features": [...], "text_features":
[...], "scaling_factor": logit_scale}``. A row may hold an image, a text, or both (empty
string for the missing one); features come in row order. As Microsoft's sample code sends
them, images may be wrapped base64 (``base64.encodebytes``) and ``get_scaling_factor`` may
be ``true``, ``"true"`` or ``"True"``.
"""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import RuntimeDep
from service.errors import ServiceError
from service.runtime import all_of, b64decode
from service.schemas import AzureRequest, AzureResponse

router = APIRouter(tags=["azure"])


async def _score(body: AzureRequest, rt: RuntimeDep) -> AzureResponse:
    if len(body.input_data.data) > rt.settings.max_texts:  # the schema's bound, lowered
        raise ServiceError(422, "too many rows", f"at most {rt.settings.max_texts}")
    columns = body.input_data.columns
    if len(set(columns)) != len(columns):
        raise ServiceError(422, "invalid columns", "columns must not repeat")
    images, texts = [], []
    for n, row in enumerate(body.input_data.data):
        if len(row) != len(columns):
            raise ServiceError(422, "invalid row", f"row {n} has {len(row)} values for {columns}")
        values = dict(zip(columns, row, strict=True))
        if values.get("image"):
            images.append(b64decode(values["image"], rt.settings.max_body_bytes))
        if values.get("text"):
            texts.append(values["text"])
    if not images and not texts:
        raise ServiceError(422, "empty request", "no row holds an image or a text")
    image_vectors = await all_of(rt.embed_image(data) for data in images)
    text_vectors = await rt.embed_texts(texts)
    return AzureResponse(
        image_features=[vector.tolist() for vector, _ in image_vectors],
        text_features=[vector.tolist() for vector in text_vectors],
        scaling_factor=rt.encoder.logit_scale if body.params.get_scaling_factor else None,
    )


@router.post("/score", response_model=AzureResponse, response_model_exclude_none=True)
async def score(body: AzureRequest, rt: RuntimeDep) -> AzureResponse:
    """Embeddings in the Azure MedImageInsight online-endpoint shape."""
    return await _score(body, rt)


@router.post("/v1/embed", response_model=AzureResponse, response_model_exclude_none=True)
async def embed(body: AzureRequest, rt: RuntimeDep) -> AzureResponse:
    """The same as ``/score``, under the versioned prefix."""
    return await _score(body, rt)
