"""Request and response models of ``POST /v1/qc`` (quality control of an image)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.schemas import Strict

MAX_QC_K = 100


class QcRequest(Strict):
    image: str = Field(min_length=1, description="base64 of a PNG, JPEG or DICOM file")
    k: int = Field(default=10, ge=1, le=MAX_QC_K, description="nearest indexed items to average")


class QcNeighbor(BaseModel):
    id: int
    cosine: float


class QcResponse(BaseModel):
    score: float = Field(
        description="mean cosine distance (1 - cosine) to the k nearest indexed items"
    )
    percentile: float = Field(
        description="share of the reference items whose own score (to their k nearest other "
        "items) is lower or equal: near 1, unlike what is indexed"
    )
    k: int = Field(description="neighbours averaged (the requested k, at most items - 1)")
    neighbors: list[QcNeighbor]
    reference_items: int = Field(description="items whose scores the percentile is over")
    index_items: int = Field(description="active items in the index version")
    index_version: str
    model_fingerprint: str
