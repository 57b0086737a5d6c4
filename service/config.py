"""Service settings: one pydantic-settings class (``MEDSEARCH_*``), built once at start-up.

Unsafe combinations are refused when it is built: binding to a non-loopback address
without API keys needs ``MEDSEARCH_ALLOW_UNAUTHENTICATED=true``. The addresses are the
ones the server will bind: ``""`` is every interface, a name may resolve to several.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.imaging.burned_in import ThumbnailPolicy
from indexer.settings import CatalogSettings, CatalogUrl, EncoderSettings, ImagingSettings
from indexer.store.rerank_store import RerankSource

if TYPE_CHECKING:
    from indexer.sources.dicomweb_client import DicomWebSettings

# The request schemas' bounds (the OpenAPI contract); the settings may only lower them.
MAX_K, MAX_TEXT_CHARS, MAX_LABELS, MAX_TEXTS = 1000, 2000, 100, 64


def bind_addresses(host: str | None, port: int) -> list[str]:
    """The addresses a server listening on ``host`` binds, as asyncio's ``create_server``.

    ``""`` and ``None`` are every interface (``0.0.0.0`` and ``::``); a name resolves to
    one address or more. Raises ``OSError`` (``socket.gaierror``) when it does not resolve.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    return sorted({str(info[4][0]) for info in infos})


def is_loopback_address(address: str) -> bool:
    """``address`` (an IP literal, IPv6 maybe with a ``%scope``) reaches this host only."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def open_addresses(host: str, port: int) -> list[str]:
    """The addresses beyond loopback that binding ``host`` would listen on."""
    return [a for a in bind_addresses(host, port) if not is_loopback_address(a)]


def is_http_url(value: str) -> bool:
    """``http(s)://host[:port]/...``, without spaces or control characters."""
    if not value.isprintable() or " " in value:
        return False
    try:
        parts = urlsplit(value)
        _ = parts.port  # ValueError when not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)


class ServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_", extra="ignore")

    index_dir: Path = Field(description="index directory built by `medsearch index build`")
    model_dir: Path = Field(description="exported model directory (the index's model)")
    catalog_url: CatalogUrl = Field(
        default=None, description="the index's catalog database (default: its SQLite file)"
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_keys: list[SecretStr] = Field(
        default_factory=list, description="bearer keys; when set, every route needs one"
    )
    allow_unauthenticated: bool = Field(
        default=False, description="allow a non-loopback bind without API keys"
    )
    cors_origins: list[str] = Field(default_factory=list, description="e.g. the viewer's origin")
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = Field(default=0, ge=0)
    # limits
    max_body_bytes: int = Field(default=32 << 20, ge=1024)
    body_budget_mb: int = Field(
        default=256,
        ge=8,
        description="request bodies all requests in flight may hold at once (JSON read "
        "whole, multipart spooled to /tmp); beyond it a request gets 503",
    )
    body_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="a client that sends nothing of its request body for this long gets 408",
    )
    max_multipart_parts: int = Field(default=8, ge=1)
    max_pixels: int = Field(default=40_000_000, ge=1)
    max_text_chars: int = Field(default=MAX_TEXT_CHARS, ge=1, le=MAX_TEXT_CHARS)
    max_k: int = Field(default=MAX_K, ge=1, le=MAX_K)
    max_labels: int = Field(
        default=MAX_LABELS, ge=1, le=MAX_LABELS, description="labels of one /v1/classify request"
    )
    max_texts: int = Field(
        default=MAX_TEXTS, ge=1, le=MAX_TEXTS, description="rows of one Azure /score request"
    )
    max_json_depth: int = Field(
        default=32, ge=1, le=128, description="nesting of JSON bodies and multipart options"
    )
    decode_budget_mb: int = Field(
        default=256,
        ge=8,
        description="uploads waiting for a decoder and the model inputs coming back may "
        "hold this much memory at once; beyond it requests wait, then get 503",
    )
    # serving
    batch_window_ms: float = Field(default=3.0, ge=0, description="micro-batching window")
    max_batch: int = Field(default=16, ge=1)
    queue_size: int = Field(default=128, ge=1, description="queued requests before 503")
    workers: int = Field(default=2, ge=1, description="threads for decoding and search")
    text_cache_size: int = Field(default=4096, ge=0)
    thumbnail_cache_size: int = Field(default=512, ge=0)
    thumbnail_policy: ThumbnailPolicy = Field(
        default=ThumbnailPolicy.SAFE,
        description="burned-in text: safe (items at risk get known text regions blacked "
        "out, else no thumbnail), all, or none (no thumbnails)",
    )
    index_poll_s: float = Field(
        default=2.0,
        gt=0,
        description="check for new index versions, and for index or model paths (symlinks) "
        "that lead somewhere new (blue/green)",
    )
    rerank_store: RerankSource = Field(
        default="memory",
        description="where a compressed index's candidates get their float32 vectors for "
        "exact re-ranking: memory (4 bytes x dim per item, filled in the background at "
        "start) or catalog (a database read per query)",
    )
    rerank_store_max_gb: float = Field(
        default=8.0,
        gt=0,
        description="most memory the re-rank store takes (GB, 10^9 bytes; 8: 2M vectors at "
        "1024-d); the vectors of rows past it are read from the catalog per query",
    )
    # PACS and viewer
    pacs_url: str | None = Field(
        default=None,
        description="DICOMweb base URL the service fetches from for /v1/search/dicom "
        "(credentials: MEDSEARCH_DICOMWEB_USERNAME/PASSWORD or _TOKEN)",
    )
    wado_base_url: str | None = Field(
        default=None, description="DICOMweb base URL put in results (default: pacs_url)"
    )
    viewer_url_template: str | None = Field(
        default=None,
        description="e.g. http://viewer:3000/viewer?StudyInstanceUIDs={study_uid}"
        "&SeriesInstanceUIDs={series_uid}; also {sop_uid}",
    )

    @field_validator("api_keys")
    @classmethod
    def _keys_long_enough(cls, value: list[SecretStr]) -> list[SecretStr]:
        if any(len(k.get_secret_value()) < 16 for k in value):
            raise ValueError("API keys must be at least 16 characters")
        return value

    @field_validator("pacs_url", "wado_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():  # docker-compose passes "" for an unset one
            return None
        if not is_http_url(value):
            raise ValueError("not an http(s) URL, e.g. http://pacs:8042/dicom-web")
        return value

    @model_validator(mode="after")
    def _budget_holds_a_body(self) -> ServiceSettings:
        if self.body_budget_mb << 20 < self.max_body_bytes:
            raise ValueError(
                f"MEDSEARCH_BODY_BUDGET_MB ({self.body_budget_mb}) must hold one body of "
                f"MEDSEARCH_MAX_BODY_BYTES ({self.max_body_bytes})"
            )
        return self

    @model_validator(mode="after")
    def _refuse_open_bind(self) -> ServiceSettings:
        if self.api_keys or self.allow_unauthenticated:
            return self
        try:
            reachable = open_addresses(self.host, self.port)
        except (OSError, ValueError) as exc:  # gaierror; a bad IDNA name, a NUL
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ValueError(
                f"cannot resolve host {self.host!r} to check that it is loopback only ({reason})"
            ) from None
        if reachable:
            raise ValueError(
                f"binding to {self.host!r} ({', '.join(reachable)}) without API keys: set "
                "MEDSEARCH_API_KEYS, or MEDSEARCH_ALLOW_UNAUTHENTICATED=true if the network "
                "is trusted"
            )
        return self

    @model_validator(mode="after")
    def _viewer_template_fields(self) -> ServiceSettings:
        if self.viewer_url_template:
            try:
                url = self.viewer_url_template.format(study_uid="1", series_uid="2", sop_uid="3")
            except (KeyError, IndexError, ValueError) as exc:
                raise ValueError(
                    "viewer_url_template may use {study_uid}, {series_uid}, {sop_uid} only"
                ) from exc
            if not is_http_url(url):
                raise ValueError("viewer_url_template is not an http(s) URL")
        return self

    def key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys]


@dataclass(frozen=True)
class EngineSettings:
    """The indexer's settings the service runs with, built once at start-up from
    :class:`ServiceSettings` and the other ``MEDSEARCH_*`` variables (``serve`` builds them
    before the server starts, so that a bad value is refused, not a start-up traceback)."""

    encoder: EncoderSettings
    imaging: ImagingSettings
    catalog: CatalogSettings
    dicomweb: DicomWebSettings | None  # only with a PACS (pacs_url)

    @classmethod
    def for_service(cls, settings: ServiceSettings) -> EngineSettings:
        from indexer.sources.dicomweb_client import DicomWebSettings

        return cls(
            encoder=EncoderSettings(
                model_dir=settings.model_dir,
                provider=settings.provider,
                intra_op_threads=settings.intra_op_threads,
            ),
            # uploads are searched by one image: the middle frame of a multi-frame object
            imaging=ImagingSettings(max_pixels=settings.max_pixels, frames="middle"),
            catalog=CatalogSettings(catalog_url=settings.catalog_url),
            dicomweb=DicomWebSettings() if settings.pacs_url else None,
        )
