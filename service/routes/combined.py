"""One combined query: ``POST /v1/search`` (positives and negatives, weighted).

The query vector is ``q = sum(w_i * u(p_i)) - sum(w_j * u(n_j))``, renormalised, where
``u(x) = x / |x|`` and ``p_i``/``n_j`` are the embeddings of the positive and negative
parts: texts and images embedded as the other routes embed them, indexed items by their
stored embedding, vectors as given (of the model's dimension). "More like these" is
several ``item_id``s: the items given as positives are left out of the results.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
from fastapi import APIRouter

from service.combined_schemas import CombinedSearchRequest, QueryPart
from service.deps import RuntimeDep
from service.errors import ServiceError
from service.routes.search import request_digest, run_search
from service.runtime import Runtime, all_of, b64decode
from service.schemas import SearchResponse

router = APIRouter(prefix="/v1", tags=["search"])
Vector = npt.NDArray[np.float32]


def _unit(vector: npt.NDArray[np.floating[Any]], what: str) -> Vector:
    """``vector / |vector|``, in float64 and scaled by its largest value first: a vector of
    1e20s or of 1e-23s has a direction (its squares would overflow or vanish)."""
    values = np.asarray(vector, dtype=np.float64)
    scale = float(np.max(np.abs(values))) if values.size else 0.0
    if not np.isfinite(scale) or scale == 0.0:
        raise ServiceError(422, "invalid query", f"{what} has no direction (zero vector)")
    values = values / scale
    return (values / np.linalg.norm(values)).astype(np.float32)


async def _embed(rt: Runtime, part: QueryPart, dim: int) -> npt.NDArray[np.floating[Any]]:
    if part.text is not None:
        return await rt.embed_text(part.text)
    if part.image is not None:
        data = b64decode(part.image, rt.settings.max_body_bytes)
        if not data:
            raise ServiceError(422, "empty image", "an image part is empty")
        vector, _ = await rt.embed_image(data)
        return vector
    if part.item_id is not None:
        item_id = part.item_id
        found = await rt.run(rt.catalog.embeddings, [item_id])
        rows = await rt.run(rt.catalog.items, [item_id])
        if item_id not in found or rows[item_id].status != "active":
            raise ServiceError(404, "not found", f"no item {item_id}")
        return found[item_id]
    assert part.vector is not None
    if len(part.vector) != dim:
        raise ServiceError(
            422, "invalid query", f"a vector has {len(part.vector)} values; the model has {dim}"
        )
    return np.asarray(part.vector, dtype=np.float64)  # float32 overflows past 3.4e38


async def combine(rt: Runtime, body: CombinedSearchRequest) -> Vector:
    dim = rt.searcher.binding.embedding_dim
    parts = [*body.queries, *body.negative]
    vectors = await all_of(_embed(rt, part, dim) for part in parts)
    total = np.zeros(dim, dtype=np.float32)
    for n, (part, vector) in enumerate(zip(parts, vectors, strict=True)):
        sign = 1.0 if n < len(body.queries) else -1.0
        total += sign * part.weight * _unit(vector, f"part {n + 1}")
    return _unit(total, "the combined query (positives and negatives cancel out)")


@router.post("/search", response_model=SearchResponse)
async def search_combined(body: CombinedSearchRequest, rt: RuntimeDep) -> SearchResponse:
    """Images nearest to a weighted combination of texts, images, indexed items and
    vectors, minus the negatives: ``normalise(sum(w * u(positive)) - sum(w * u(negative)))``
    with ``u(x) = x / |x|``. Positive items are left out of the results."""
    vector = await combine(rt, body)
    exclude = {p.item_id for p in body.queries if p.item_id is not None}
    return await run_search(
        rt, vector, body, query=request_digest("search", body), exclude_ids=exclude or None
    )
