"""Request and response models of series and study search (``POST /v1/search/series``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from indexer.store.filters import Filters
from service.config import MAX_K
from service.schemas import UID_PATTERN, Strict

MAX_QUERY_SLICES = 64  # uploaded slices pooled into one query


class SeriesSearchRequest(Strict):
    """Exactly one query: ``text``, ``series_uid``, ``study_uid`` or ``images``."""

    text: str | None = Field(default=None, min_length=1, max_length=2000)
    series_uid: str | None = Field(
        default=None, pattern=UID_PATTERN, max_length=64,
        description="a series in the catalog (its vector), else in the configured PACS",
    )  # fmt: skip
    study_uid: str | None = Field(
        default=None, pattern=UID_PATTERN, max_length=64,
        description="a study in the catalog: its series' vectors pooled",
    )  # fmt: skip
    images: list[str] | None = Field(
        default=None, min_length=1, max_length=MAX_QUERY_SLICES,
        description="base64 PNG, JPEG or DICOM files: slices pooled into one query",
    )  # fmt: skip
    level: Literal["series", "study"] = "series"
    k: int = Field(default=10, ge=1, le=MAX_K)
    filters: Filters | None = None
    min_score: float | None = Field(default=None, ge=-1.0, le=1.0)
    rerank: bool = Field(
        default=False,
        description="re-rank the top candidates exactly by slice-level late interaction",
    )

    @model_validator(mode="after")
    def _one_query(self) -> SeriesSearchRequest:
        given = [n for n in ("text", "series_uid", "study_uid", "images") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of text, series_uid, study_uid, images")
        if self.rerank and self.level == "study":
            raise ValueError("rerank applies to level=series")
        return self


class BestItem(BaseModel):
    id: int
    score: float
    sop_instance_uid: str | None = None
    frame: int | None = None
    thumbnail_url: str


class SeriesResult(BaseModel):
    series_instance_uid: str
    study_instance_uid: str | None = None
    modality: str | None = None
    series_description: str | None = None
    body_part_examined: str | None = None
    instances: int = Field(description="indexed images of the series (instances or frames)")
    score: float
    best_items: list[BestItem]
    viewer_url: str | None = None
    wado_url: str | None = None


class StudyResult(BaseModel):
    study_instance_uid: str
    score: float
    series: list[SeriesResult] = Field(description="the study's series, best first")
    viewer_url: str | None = None


class SeriesSearchResponse(BaseModel):
    level: Literal["series", "study"]
    pooling: str
    scoring: str = Field(description="how score is computed")
    reranked: bool
    results: list[SeriesResult] = Field(default_factory=list, description="level=series")
    studies: list[StudyResult] = Field(default_factory=list, description="level=study")
    index_version: str
    model_fingerprint: str
    took_ms: float
