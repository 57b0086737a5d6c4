"""Orthanc's change feed: ``GET /changes?since=SEQ`` (its REST API, beside DICOMweb).

Each ``NewInstance`` change names an Orthanc id; its UIDs come from ``/instances/{id}``,
``/series/{id}`` and ``/studies/{id}`` (the series and study answers are cached for the
poll). The cursor is the sequence number of the last change read.

Deletions: Orthanc does not log them. Deleting a resource removes it *and its changes*
from the log (checked against Orthanc 1.10), so the feed cannot say what went. Instead,
at the end of each backlog the feed reads ``/statistics``: when Orthanc holds fewer
instances than it did at the last check plus the instances added since, something was
deleted and the poll asks for a reconciliation (:mod:`indexer.watch.reconcile`). A
deletion hidden by uploads arriving between the two reads is caught by the watcher's
periodic reconciliation.

Orthanc is recognised by its ``/system`` answer at the DICOMweb root's parent
(``http://host:8042/dicom-web`` -> ``http://host:8042``), or named with ``--orthanc``.
"""

from __future__ import annotations

import json
import logging
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from indexer.errors import SourceError, SourceUnavailableError
from indexer.sources.dicomweb_client import DicomWebSettings, check_uid
from indexer.watch.feed import InstanceRef, Poll, read_cursor

logger = logging.getLogger(__name__)

CURSOR_KEY = "orthanc_seq"
M = TypeVar("M", bound=BaseModel)


class _Answer(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


class Change(_Answer):
    change_type: str = Field(alias="ChangeType")
    resource_type: str = Field(alias="ResourceType")
    id: str = Field(alias="ID")
    seq: int = Field(alias="Seq")


class ChangesPage(_Answer):
    changes: list[Change] = Field(alias="Changes")
    done: bool = Field(alias="Done")
    last: int = Field(alias="Last")


class Resource(_Answer):
    main_dicom_tags: dict[str, str] = Field(alias="MainDicomTags")
    parent_series: str | None = Field(default=None, alias="ParentSeries")
    parent_study: str | None = Field(default=None, alias="ParentStudy")


class Statistics(_Answer):
    count_instances: int = Field(alias="CountInstances")


class System(_Answer):
    version: str = Field(alias="Version")
    api_version: int = Field(alias="ApiVersion")


def rest_root(dicomweb_base: str) -> str:
    """Orthanc's REST root under the usual layout: the DICOMweb root's parent."""
    url = httpx.URL(dicomweb_base)
    parent = url.path.rstrip("/").rsplit("/", 1)[0]
    return str(url.copy_with(path=parent or "/")).rstrip("/")


class OrthancApi:
    """GETs on Orthanc's REST API with the ``MEDSEARCH_DICOMWEB_*`` credentials. No retries:
    the watcher backs off and polls again."""

    def __init__(self, root: str, settings: DicomWebSettings) -> None:
        auth: httpx.Auth | None = None
        headers = {}
        if settings.token is not None:
            headers["Authorization"] = f"Bearer {settings.token.get_secret_value()}"
        elif settings.username is not None:
            password = settings.password.get_secret_value() if settings.password else ""
            auth = httpx.BasicAuth(settings.username, password)
        self.root = root
        self._http = httpx.Client(
            base_url=root, auth=auth, headers=headers, timeout=settings.timeout_s
        )

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, model: type[M], params: dict[str, Any] | None = None) -> M | None:
        """The answer as ``model``; ``None`` when Orthanc has no such resource (404)."""
        host = httpx.URL(self.root).host
        try:
            response = self._http.get(path, params=params)
        except httpx.HTTPError as exc:
            raise SourceUnavailableError(
                f"cannot reach Orthanc at {host} ({type(exc).__name__})"
            ) from None
        if response.status_code == 404:
            return None
        if response.status_code == 429 or response.status_code >= 500:
            raise SourceUnavailableError(f"Orthanc at {host} answered {response.status_code}")
        if response.status_code >= 400:
            raise SourceError(f"Orthanc at {host} answered {response.status_code} to {path}")
        try:
            return model.model_validate_json(response.content)
        except ValidationError:
            raise SourceError(f"Orthanc at {host}: unexpected answer to {path}") from None


def detect(dicomweb_base: str, settings: DicomWebSettings) -> str | None:
    """Orthanc's REST root when the server at ``dicomweb_base`` is an Orthanc, else
    ``None``. A server that cannot be reached raises :class:`SourceUnavailableError`."""
    root = rest_root(dicomweb_base)
    api = OrthancApi(root, settings)
    try:
        system = api.get("/system", System)
    except SourceError as exc:
        if isinstance(exc, SourceUnavailableError):
            raise
        return None  # 401, 403, or not JSON of Orthanc's shape: not (this) Orthanc
    finally:
        api.close()
    if system is None:
        return None
    logger.info("following Orthanc %s's change feed at %s", system.version, root)
    return root


class OrthancFeed:
    kind = "orthanc"

    def __init__(self, root: str, settings: DicomWebSettings, *, limit: int = 64) -> None:
        self.api = OrthancApi(root, settings)
        self.limit = limit  # changes per poll: a small batch
        self._count: int | None = None  # instances at the last check
        self._added = 0  # NewInstance changes read since

    def close(self) -> None:
        self.api.close()

    def poll(self, cursor: str | None) -> Poll:
        seq = read_cursor(cursor, CURSOR_KEY)
        since = seq if isinstance(seq, int) and seq >= 0 else 0
        page = self.api.get("/changes", ChangesPage, {"since": since, "limit": self.limit})
        if page is None:
            raise SourceError("Orthanc has no /changes")
        if not page.changes and page.last < since:
            logger.warning(
                "Orthanc's change log ends at %d, before the cursor %d (a new Orthanc "
                "database?): reading it from the start",
                page.last, since,
            )  # fmt: skip
            return Poll([], _cursor(0), more=True, reconcile=True)
        new = self._resolve(page.changes)
        reconcile = False
        if page.done:
            stats = self.api.get("/statistics", Statistics)
            if stats is not None:
                expected = None if self._count is None else self._count + self._added
                reconcile = expected is not None and stats.count_instances < expected
                self._count, self._added = stats.count_instances, 0
        return Poll(new, _cursor(max(since, page.last)), more=not page.done, reconcile=reconcile)

    def _resolve(self, changes: list[Change]) -> list[InstanceRef]:
        """The UIDs of the new instances that still exist, in change order."""
        series: dict[str, Resource | None] = {}
        studies: dict[str, Resource | None] = {}
        refs = []
        for change in changes:
            if change.change_type != "NewInstance" or change.resource_type != "Instance":
                continue
            self._added += 1
            instance = self.api.get(f"/instances/{change.id}", Resource)
            if instance is None or instance.parent_series is None:
                continue  # deleted since
            sid = instance.parent_series
            if sid not in series:
                series[sid] = self.api.get(f"/series/{sid}", Resource)
            parent = series[sid]
            if parent is None or parent.parent_study is None:
                continue
            tid = parent.parent_study
            if tid not in studies:
                studies[tid] = self.api.get(f"/studies/{tid}", Resource)
            study = studies[tid]
            if study is None:
                continue
            try:
                refs.append(
                    InstanceRef(
                        check_uid(study.main_dicom_tags.get("StudyInstanceUID", "")),
                        check_uid(parent.main_dicom_tags.get("SeriesInstanceUID", "")),
                        check_uid(instance.main_dicom_tags.get("SOPInstanceUID", "")),
                    )
                )
            except SourceError:
                logger.warning("Orthanc instance %s has no valid UIDs: skipped", change.id)
        return refs


def _cursor(seq: int) -> str:
    return json.dumps({CURSOR_KEY: seq})
