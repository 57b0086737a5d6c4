"""Request model of the combined query (``POST /v1/search``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from service.config import MAX_TEXT_CHARS
from service.schemas import SearchOptions, Strict

MAX_PARTS = 16
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]

FORMULA = (
    "q = sum(w_i * u(p_i)) - sum(w_j * u(n_j)), query = q / |q|, where u(x) = x / |x| and "
    "p_i, n_j are the embeddings of the positive and negative parts with their weights"
)


class QueryPart(Strict):
    """Exactly one of ``text``, ``image``, ``item_id`` and ``vector``, with a weight."""

    text: str | None = Field(default=None, min_length=1, max_length=MAX_TEXT_CHARS)
    image: str | None = Field(
        default=None, min_length=1, description="base64 of a PNG, JPEG or DICOM file"
    )
    item_id: int | None = Field(
        default=None, ge=1, le=2**62, description="an indexed item (its stored embedding)"
    )
    vector: list[FiniteFloat] | None = Field(
        default=None, min_length=1, max_length=4096,
        description="an embedding of the model's dimension (normalised by the service)",
    )  # fmt: skip
    weight: float = Field(default=1.0, gt=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_kind(self) -> QueryPart:
        given = [n for n in ("text", "image", "item_id", "vector") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of text, image, item_id, vector")
        return self


class CombinedSearchRequest(SearchOptions):
    queries: list[QueryPart] = Field(
        min_length=1, max_length=MAX_PARTS, description=f"positives; {FORMULA}"
    )
    negative: list[QueryPart] = Field(
        default_factory=list, max_length=MAX_PARTS, description="parts to move away from"
    )
