"""Request and response models: the OpenAPI document is the contract."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema

from indexer.store.filters import Filters
from service.config import MAX_K, MAX_LABELS, MAX_TEXT_CHARS, MAX_TEXTS

GroupBy = Literal["study", "series"]


class Strict(BaseModel):
    """A request: unknown fields and lax conversions (``"10"`` or ``true`` for an integer, ``1``
    for a boolean) are refused, so that what is accepted is what the document declares."""

    model_config = ConfigDict(extra="forbid", strict=True)


class SearchOptions(Strict):
    k: int = Field(default=10, ge=1, le=MAX_K, description="results per page")
    filters: Filters | None = None
    nprobe: int | None = Field(default=None, ge=1, le=65536, description="IVF lists to scan")
    group_by: GroupBy | None = Field(default=None, description="best hit per study or series")
    min_score: float | None = Field(
        default=None, ge=-1.0, le=1.0,
        description="drop results scoring below this (cosine); no result is an empty list",
    )  # fmt: skip
    page_token: str | None = Field(
        default=None, min_length=1, max_length=512,
        description="next_page_token of the previous page of the same query",
    )  # fmt: skip
    return_vectors: bool = Field(default=False, description="return the query embedding")
    collapse: Literal["near_duplicates"] | None = Field(
        default=None,
        description="one result per group of near-duplicate images (the best), with duplicates",
    )


class TextSearchRequest(SearchOptions):
    text: str = Field(
        min_length=1, max_length=MAX_TEXT_CHARS, examples=["x-ray chest anteroposterior"]
    )


class ImageSearchRequest(SearchOptions):
    image: str = Field(min_length=1, description="base64 of a PNG, JPEG or DICOM file")
    exclude_same_study: bool = Field(default=False, description="drop the query's own study")
    exclude_same_patient: bool = Field(
        default=False, description="drop the query's own patient (needs a hashed identity)"
    )


class ItemMetadata(BaseModel):
    format: str
    width: int
    height: int
    modality: str | None = None
    body_part_examined: str | None = None
    view_position: str | None = None
    laterality: str | None = None
    study_date: dt.date | None = None
    series_description: str | None = None
    manufacturer: str | None = None
    photometric_interpretation: str | None = None
    number_of_frames: int | None = None
    burned_in_annotation: bool | None = None
    labels: dict[str, str] | None = None


class Item(BaseModel):
    id: int
    source_uri: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    frame: int | None = None
    metadata: ItemMetadata
    thumbnail_url: str


class Hit(Item):
    score: float
    duplicates: int | None = Field(
        default=None, description="with collapse: near-duplicates folded into this result"
    )
    viewer_url: str | None = None
    wado_url: str | None = None


UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"


class DicomSearchRequest(SearchOptions):
    study_uid: str = Field(pattern=UID_PATTERN, max_length=64)
    series_uid: str | None = Field(default=None, pattern=UID_PATTERN, max_length=64)
    sop_uid: str | None = Field(default=None, pattern=UID_PATTERN, max_length=64)
    exclude_same_study: bool = Field(default=False, description="drop the query's own study")


class SearchResponse(BaseModel):
    results: list[Hit]
    next_page_token: str | None = Field(
        default=None, description="the next page of this query (same index version)"
    )
    query_vector: list[float] | None = Field(
        default=None, description="the query embedding, with return_vectors"
    )
    index_version: str
    model_fingerprint: str
    took_ms: float


class ClassifyRequest(Strict):
    image: str = Field(min_length=1, description="base64 of a PNG, JPEG or DICOM file")
    labels: list[str] = Field(min_length=1, max_length=MAX_LABELS)
    multilabel: bool = Field(default=False, description="sigmoid per label instead of softmax")


class LabelScore(BaseModel):
    label: str
    probability: float
    cosine: float


class ClassifyResponse(BaseModel):
    results: list[LabelScore]
    scaling_factor: float


# -- the Azure MedImageInsight schema, as documented
DOCUMENTED_BOOLS = {"true": True, "True": True, "false": False, "False": False}


def _documented_bool(value: object) -> object:
    return DOCUMENTED_BOOLS.get(value, value) if isinstance(value, str) else value


# The how-to's field table gives "True"/"False", its request example "true", its sample
# code a JSON boolean: those, and nothing else ("yes", 1), are accepted.
DocumentedBool = Annotated[
    bool,
    BeforeValidator(_documented_bool),
    WithJsonSchema(
        {"anyOf": [{"type": "boolean"}, {"type": "string", "enum": list(DOCUMENTED_BOOLS)}]}
    ),
]


class AzureInputData(Strict):
    columns: list[Literal["image", "text"]] = Field(min_length=1, max_length=2)
    index: (
        Annotated[list[int], Field(max_length=MAX_TEXTS)] | Annotated[int, Field(ge=0, le=1024)]
    ) = Field(
        default_factory=list,
        description="row labels (the examples send a list, the field table a count); unused",
    )
    data: list[list[str]] = Field(
        min_length=1,
        max_length=MAX_TEXTS,
        description=(
            "one row per input, values in the order of columns; an image is standard base64"
            " of a PNG, JPEG or DICOM file (line breaks, as base64.encodebytes writes them,"
            ' are accepted), a missing image or text is ""'
        ),
    )


class AzureParams(Strict):
    get_scaling_factor: DocumentedBool = Field(
        default=True,
        description="return the model's logit scale as scaling_factor (default true, as "
        "Microsoft documents it)",
    )


class AzureRequest(Strict):
    input_data: AzureInputData
    params: AzureParams = Field(default_factory=AzureParams)


class AzureResponse(BaseModel):
    image_features: list[list[float]]
    text_features: list[list[float]]
    scaling_factor: float | None = None


class ErrorBody(BaseModel):
    error: str
    detail: Any = None


class Health(BaseModel):
    status: str
    index_version: str | None = None
    items: int | None = None
    model_fingerprint: str | None = None
    thumbnail_policy: str | None = None  # safe | all | none (MEDSEARCH_THUMBNAIL_POLICY)
    rerank_store: str | None = None  # memory | catalog (MEDSEARCH_RERANK_STORE)
    rerank_vectors_held: int | None = None  # float32 vectors in memory for re-ranking
    rerank_store_full: bool | None = None  # held up to MEDSEARCH_RERANK_STORE_MAX_GB
