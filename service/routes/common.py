"""Reading requests that come either as multipart uploads or as JSON with base64 images."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from service.errors import BadRequest, Invalid, Unauthorized, UnsupportedMedia
from service.images import decode_base64
from service.state import ServiceState


def get_state(request: Request) -> ServiceState:
    return request.app.state.service


@dataclass
class Payload:
    """A request body: uploaded files by field name, and the other fields (form values or JSON keys)."""

    kind: str  # "multipart" or "json"
    files: dict[str, list[tuple[str, bytes]]] = field(default_factory=dict)
    fields: dict[str, Any] = field(default_factory=dict)

    def uploads(self, name: str) -> list[tuple[str, bytes]]:
        return self.files.get(name, [])


async def read_payload(request: Request, max_files: int) -> Payload:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        try:
            form = await request.form(max_files=max_files, max_fields=1000, max_part_size=16 * 1024 * 1024)
        except MultiPartException as e:
            raise BadRequest(f"the multipart body could not be parsed: {e}") from e
        payload = Payload("multipart")
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                data = await value.read()
                label = f"{key}[{len(payload.files.get(key, []))}] ({value.filename or 'no name'})"
                payload.files.setdefault(key, []).append((label, data))
            else:
                payload.fields.setdefault(key, []).append(value)
        payload.fields = {k: v[0] if len(v) == 1 else v for k, v in payload.fields.items()}
        return payload
    if ctype == "application/json":
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise Invalid(f"the JSON body must be an object, not {type(body).__name__}")
        return Payload("json", fields=body)
    raise UnsupportedMedia(f"content type {ctype or 'none'!r} is not accepted: send multipart/form-data "
                           "(image files) or application/json (base64 images)")


def parse_model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate `data` with a pydantic model; a failure is a 422 naming the field and the problem."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise Invalid(validation_message(e.errors())) from e


def validation_message(errors: list[dict[str, Any]] | Any) -> str:
    parts = []
    for err in list(errors)[:5]:
        loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body") or "body"
        parts.append(f"{loc}: {err.get('msg')}")
    return "; ".join(parts)


def b64_images(values: list[Any], where: str) -> list[tuple[str, bytes]]:
    return [(f"{where}[{i}]", decode_base64(v, f"{where}[{i}]")) for i, v in enumerate(values)]


def form_json(value: Any, name: str) -> Any:
    """A form field that holds JSON (metadata, label lists)."""
    if value is None or not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as e:
        raise BadRequest(f"form field {name!r} must be JSON ({e})") from e


def require_api_key(request: Request) -> None:
    key = get_state(request).settings.api_key
    if not key:
        return
    given = request.headers.get("x-api-key") or ""
    auth = request.headers.get("authorization", "")
    if not given and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if not secrets.compare_digest(given.encode(), key.encode()):
        raise Unauthorized("this operation needs the API key: send it as 'X-API-Key: KEY' or "
                           "'Authorization: Bearer KEY'")


def json_body_doc(model: type[BaseModel], multipart: dict[str, Any] | None = None) -> dict[str, Any]:
    """OpenAPI request-body docs for a route that reads JSON or multipart itself."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart:
        content["multipart/form-data"] = {"schema": {"type": "object", "properties": multipart}}
    return {"requestBody": {"required": True, "content": content}}


FILE_SCHEMA = {"type": "string", "format": "binary"}
