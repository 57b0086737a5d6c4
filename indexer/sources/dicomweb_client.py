"""A small DICOMweb client: QIDO-RS to list, WADO-RS to fetch, with retries and auth.

Retries with exponential back-off (honouring ``Retry-After``) on connection errors,
timeouts, 429 and 5xx; 4xx other than 429 fail at once. Credentials come from settings
(basic or bearer), never from a URI a client sent. Responses are never logged: QIDO
answers carry patient names.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import httpx
from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from indexer.errors import SourceError, SourceUnavailableError

logger = logging.getLogger(__name__)

UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
# transfer-syntax=*: the instance as stored, never transcoded by the PACS
DICOM_MULTIPART = 'multipart/related; type="application/dicom"; transfer-syntax=*'
TOKEN68 = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # a bearer token (RFC 7235, RFC 6750)


class DicomWebSettings(BaseSettings):
    """``MEDSEARCH_DICOMWEB_*``: credentials and transport for DICOMweb servers."""

    model_config = SettingsConfigDict(env_prefix="MEDSEARCH_DICOMWEB_", extra="ignore")

    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = Field(default=None, description="bearer token")
    timeout_s: float = Field(default=30.0, gt=0)
    retries: int = Field(default=4, ge=0, le=10)
    backoff_s: float = Field(default=0.5, ge=0)
    page_size: int = Field(default=100, ge=1, le=10_000)
    max_instance_bytes: int = Field(default=1 << 30, ge=1)

    @field_validator("username", "password", "token", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes an empty value for an unset variable
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("username")
    @classmethod
    def _basic_auth_user(cls, value: str | None) -> str | None:
        if value is not None and ":" in value:
            raise ValueError("a user name cannot contain ':' in Basic authentication (RFC 7617)")
        return value

    @field_validator("token")
    @classmethod
    def _bearer_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not TOKEN68.fullmatch(value.get_secret_value()):
            raise ValueError(
                "a bearer token is letters, digits and -._~+/ with '=' padding at the end "
                "(token68, RFC 7235)"
            )
        return value

    @model_validator(mode="after")
    def _one_kind_of_auth(self) -> DicomWebSettings:
        if self.token is not None and (self.username is not None or self.password is not None):
            raise ValueError(
                "set MEDSEARCH_DICOMWEB_TOKEN (bearer) or MEDSEARCH_DICOMWEB_USERNAME and "
                "MEDSEARCH_DICOMWEB_PASSWORD (basic), not both"
            )
        if self.password is not None and self.username is None:
            raise ValueError(
                "MEDSEARCH_DICOMWEB_PASSWORD is set without MEDSEARCH_DICOMWEB_USERNAME"
            )
        return self


T = TypeVar("T")
Read = Callable[[httpx.Response], T]


def _read_all(response: httpx.Response) -> bytes:
    return response.read()


def check_uid(uid: str) -> str:
    if not (0 < len(uid) <= 64 and UID.match(uid)):
        raise SourceError("not a DICOM UID (digits and dots, at most 64 characters)")
    return uid


def tag_value(record: dict[str, Any], tag: str) -> Any:
    values = (record.get(tag) or {}).get("Value") or []
    return values[0] if values else None


def split_multipart(body: bytes, content_type: str) -> list[bytes]:
    """The parts of a ``multipart/related`` body (WADO-RS)."""
    match = re.search(r'boundary="?([^";]+)"?', content_type)
    if not match:
        raise SourceError("WADO-RS answer is not multipart (no boundary)")
    delimiter = b"--" + match.group(1).encode()
    parts = []
    for chunk in body.split(delimiter)[1:]:
        if chunk.startswith(b"--"):
            break
        _head, sep, content = chunk.partition(b"\r\n\r\n")
        if not sep:
            continue
        parts.append(content[:-2] if content.endswith(b"\r\n") else content)
    return parts


class DicomWebClient:
    def __init__(self, base_url: str, settings: DicomWebSettings | None = None) -> None:
        self.settings = settings or DicomWebSettings()
        self.base_url = base_url.rstrip("/")
        auth: httpx.Auth | None = None
        headers = {}
        if self.settings.token is not None:
            headers["Authorization"] = f"Bearer {self.settings.token.get_secret_value()}"
        elif self.settings.username is not None:
            password = self.settings.password.get_secret_value() if self.settings.password else ""
            auth = httpx.BasicAuth(self.settings.username, password)
        self._auth, self._headers = auth, headers
        self._http = self._new_client()
        self._reopen = threading.Lock()  # the pipeline fetches from several threads

    def _new_client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url,
            auth=self._auth,
            headers=self._headers,
            timeout=self.settings.timeout_s,
        )

    def close(self) -> None:
        """Close the connections; a later request opens new ones (items outlive a scan)."""
        self._http.close()

    def _get(self, path: str, params: dict[str, Any] | None, accept: str, read: Read[T]) -> T:
        """GET with retries; ``read`` consumes the streamed body inside the retry loop."""
        delay = self.settings.backoff_s
        host = httpx.URL(self.base_url).host
        unavailable = True
        for attempt in range(self.settings.retries + 1):
            with self._reopen:
                if self._http.is_closed:
                    self._http = self._new_client()
            try:
                with self._http.stream(
                    "GET", path, params=params, headers={"Accept": accept}
                ) as response:
                    if response.status_code < 400:
                        return read(response)
                    problem = f"the PACS at {host} answered {response.status_code}"
                    if response.status_code != 429 and response.status_code < 500:
                        raise SourceError(problem)
                    # 429, 502, 503, 504: the PACS is overloaded or away; 500: this resource
                    unavailable = response.status_code in (429, 502, 503, 504)
                    after = response.headers.get("Retry-After", "")
                    if after.isdigit():
                        delay = max(delay, min(float(after), 30.0))
            except httpx.HTTPError as exc:
                problem = f"cannot reach the PACS at {host} ({type(exc).__name__})"
                unavailable = True
            if attempt < self.settings.retries:
                logger.warning("%s; retry %d in %.1f s", problem, attempt + 1, delay)
                time.sleep(delay)
                delay *= 2
        message = f"{problem}; gave up after {self.settings.retries + 1} tries"
        raise SourceUnavailableError(message) if unavailable else SourceError(message)

    def qido(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """Every record of a QIDO-RS query, page by page (``offset``/``limit``)."""
        offset = 0
        while True:
            page = {**params, "offset": offset, "limit": self.settings.page_size}
            content = self._get(path, page, "application/dicom+json", _read_all)
            try:
                records = json.loads(content) if content else []
            except ValueError:
                raise SourceError("QIDO-RS answer is not JSON") from None
            if not isinstance(records, list):
                raise SourceError("QIDO-RS answer is not a JSON array")
            yield from records
            if len(records) < self.settings.page_size:
                return
            offset += len(records)

    def instance(self, study: str, series: str, sop: str) -> bytes:
        path = f"/studies/{check_uid(study)}/series/{check_uid(series)}/instances/{check_uid(sop)}"
        limit = self.settings.max_instance_bytes

        def read(response: httpx.Response) -> tuple[bytes, str]:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise SourceError("the instance is larger than the limit")
            body = bytearray()
            for chunk in response.iter_bytes():  # stop reading at the limit, not after
                body += chunk
                if len(body) > limit:
                    raise SourceError("the instance is larger than the limit")
            return bytes(body), response.headers.get("content-type", "")

        content, content_type = self._get(path, None, DICOM_MULTIPART, read)
        parts = split_multipart(content, content_type)
        if len(parts) != 1:
            raise SourceError(f"WADO-RS answered {len(parts)} parts for one instance")
        return parts[0]
