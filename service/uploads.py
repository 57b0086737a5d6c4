"""An image upload with its options: multipart (``file`` + ``options`` JSON) or JSON with
the image in base64, validated into a request model that has an ``image`` field.

The same rules as ``POST /v1/search/image``: a malformed body, parts the schema does not
declare and invalid options are 422; a part over the size limit 413; another content
type 415.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile

from service.errors import ServiceError
from service.json_limits import load_object
from service.runtime import Runtime, b64decode

M = TypeVar("M", bound=BaseModel)


def upload_body_doc(model: type[BaseModel], *, component: bool = False) -> dict[str, Any]:
    """The ``requestBody`` of a route that reads its upload with :func:`read_image_upload`:
    ``model`` inline (it has no nested models), or with ``component`` a reference to the
    schema the app adds to its components."""
    schema = (
        {"$ref": f"#/components/schemas/{model.__name__}"}
        if component
        else model.model_json_schema()
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["file"],
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "options": {
                                "type": "string",
                                "description": f"JSON of {model.__name__} fields except image",
                            },
                        },
                    }
                },
            },
        }
    }


def only_declared_parts(names: Iterable[str]) -> None:
    """422 for a multipart part other than ``file`` and ``options`` (a misspelt
    ``option`` would otherwise be ignored, and the request run with default options)."""
    unknown = sorted(set(names) - {"file", "options"})
    if unknown:
        raise ServiceError(
            422, "invalid multipart body",
            f"unknown part {unknown[0][:40]!r}: send 'file' and, optionally, 'options'",
        )  # fmt: skip


async def read_image_upload(request: Request, rt: Runtime, model: type[M]) -> tuple[bytes, M]:
    """The uploaded image's bytes (not empty) and the request's options as ``model``."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = rt.settings.max_body_bytes
    if ctype == "multipart/form-data":
        data, options = await _multipart(request, rt, model)
    elif ctype == "application/json":
        try:
            options = model.model_validate_json(await request.body())
        except ValidationError as exc:
            errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()[:20]]
            raise ServiceError(422, "invalid request", errors) from None
        data = b64decode(str(getattr(options, "image")), limit)  # noqa: B009 - any model
    else:
        raise ServiceError(
            415, "unsupported media type", "send multipart/form-data or application/json"
        )
    if not data:
        raise ServiceError(422, "empty image", "the uploaded file is empty")
    return data, options


async def _multipart(request: Request, rt: Runtime, model: type[M]) -> tuple[bytes, M]:
    limit = rt.settings.max_body_bytes
    try:
        form = await request.form(
            max_files=1, max_fields=rt.settings.max_multipart_parts, max_part_size=limit
        )
    except Exception as exc:  # noqa: BLE001 - malformed or oversized multipart
        message = str(getattr(exc, "detail", exc))
        status = 413 if "exceeded" in message else 422  # too many parts: 422 (schema)
        raise ServiceError(status, "invalid multipart body", message[:200]) from None
    only_declared_parts(form.keys())
    upload = form.get("file")
    if not isinstance(upload, UploadFile):
        raise ServiceError(422, "invalid multipart body", "a 'file' part is required")
    data = await upload.read(limit + 1)
    if len(data) > limit:
        raise ServiceError(413, "image too large", f"at most {limit} bytes")
    try:
        fields = load_object(form.get("options"), rt.settings.max_json_depth)
        options = model.model_validate({**fields, "image": "-"})
    except (ValueError, ValidationError) as exc:
        raise ServiceError(422, "invalid options", str(exc)[:300]) from None
    return data, options
