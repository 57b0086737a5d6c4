"""The OHIF viewer from the pinned ``@ohif/app`` npm package, served for tests the way the
compose ``viewer`` service serves it (``deploy/ohif/``): the package's built ``dist/`` with
``deploy/ohif/app-config.js``, unknown paths answered with ``index.html`` (OHIF routes in
the browser), and ``/dicom-web/`` proxied read-only to a test Orthanc with its credentials,
on one origin. ``scripts/install-viewer.sh`` puts the dist in ``.cache/ohif/<version>/``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import httpx
import pytest
import yaml
from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import FileResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from tests.pacs.orthanc import PASSWORD, USER, Orthanc
from tests.service.live import serve

ROOT = Path(__file__).parents[2]
DEPLOY = ROOT / "deploy" / "ohif"
VERSION = (DEPLOY / "VERSION").read_text().strip()
DIST = ROOT / ".cache" / "ohif" / VERSION / "dist"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_ORIGIN = "${VIEWER_ORIGIN:-http://localhost:3000}"


@dataclass
class Viewer:
    url: str
    requested: list[str] = field(default_factory=list)  # DICOMweb paths, with query


def compose_link_template(origin: str) -> str:
    """The compose file's ``MEDSEARCH_VIEWER_URL_TEMPLATE``, for a viewer at ``origin``."""
    template: str = yaml.safe_load(COMPOSE.read_text())["x-medsearch-env"][
        "MEDSEARCH_VIEWER_URL_TEMPLATE"
    ]
    assert template.startswith(COMPOSE_ORIGIN + "/"), template
    return origin + template.removeprefix(COMPOSE_ORIGIN)


class SinglePageFiles(StaticFiles):
    """Static files; a path that is no file gets ``index.html``, as nginx's ``try_files``."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        try:
            return await super().get_response(path, scope)
        except HTTPException as exc:
            if exc.status_code != 404:
                raise
            return await super().get_response("index.html", scope)


def pacs_client(request: Request) -> httpx.AsyncClient:
    client: httpx.AsyncClient = request.app.state.pacs
    return client


PacsDep = Annotated[httpx.AsyncClient, Depends(pacs_client)]


def viewer_app(dicomweb: str, requested: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with httpx.AsyncClient(auth=(USER, PASSWORD), timeout=30) as client:
            app.state.pacs = client
            yield

    app = FastAPI(lifespan=lifespan, openapi_url=None)

    @app.get("/readyz")  # what tests.service.live.serve polls
    def readyz() -> PlainTextResponse:
        return PlainTextResponse("ok")

    @app.get("/app-config.js")
    def app_config() -> FileResponse:
        return FileResponse(DEPLOY / "app-config.js", media_type="text/javascript")

    @app.get("/dicom-web/{path:path}")
    async def dicom_web(path: str, request: Request, client: PacsDep) -> Response:
        query = request.url.query
        requested.append(f"{path}?{query}" if query else path)
        upstream = await client.get(
            f"{dicomweb}/{path}",
            params=httpx.QueryParams(query),
            headers={"accept": request.headers.get("accept", "*/*")},
        )
        return Response(
            upstream.content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type"),
        )

    app.mount("/", SinglePageFiles(directory=DIST))
    return app


@contextmanager
def ohif_viewer(pacs: Orthanc) -> Iterator[Viewer]:
    """OHIF on a free loopback port, reading ``pacs`` over its DICOMweb."""
    if not (DIST / "index.html").is_file():
        pytest.skip(f"the OHIF viewer {VERSION} is not installed (scripts/install-viewer.sh)")
    requested: list[str] = []
    with serve(viewer_app(pacs.dicomweb, requested)) as url:
        yield Viewer(url, requested)
