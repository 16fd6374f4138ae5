"""POST /embed and the OpenAI-shaped POST /v1/embeddings."""

from __future__ import annotations

import base64
from typing import Literal

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.errors import BadRequest, NotFound
from service.gallery import normalize
from service.routes.common import FILE_SCHEMA, b64_images, get_state, json_body_doc, parse_model, read_payload

router = APIRouter(tags=["embeddings"])


class EmbedJSON(BaseModel):
    images: list[str] = Field(..., min_length=1, description="base64 images or data: URIs")
    normalize: bool = Field(True, description="L2-normalise each embedding")
    encoding: Literal["float", "base64"] = Field("float", description="base64: little-endian float32 bytes")


class OpenAIJSON(BaseModel):
    input: str | list[str] = Field(..., description="data: URIs or base64 images")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None


def _bool(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise BadRequest(f"{name} must be true or false, not {value!r}")


def encode_rows(vectors: np.ndarray, encoding: str) -> list:
    if encoding == "base64":
        return [base64.b64encode(v.astype("<f4").tobytes()).decode() for v in vectors]
    return vectors.astype(np.float32).tolist()


@router.post("/embed", summary="Embed images",
             openapi_extra=json_body_doc(EmbedJSON, {"files": {"type": "array", "items": FILE_SCHEMA},
                                                     "normalize": {"type": "boolean"},
                                                     "encoding": {"type": "string", "enum": ["float", "base64"]}}))
async def embed(request: Request) -> JSONResponse:
    """Embeddings of one or many images, in input order: multipart `files`, or JSON `{"images": [...]}`."""
    state = get_state(request)
    payload = await read_payload(request, state.settings.max_images_per_request)
    if payload.kind == "multipart":
        blobs = payload.uploads("files")
        if not blobs:
            raise BadRequest("no images: send one or more multipart fields named 'files'")
        body = parse_model(EmbedJSON, {"images": ["-"], **{k: v for k, v in payload.fields.items()
                                                           if k in ("normalize", "encoding")}})
    else:
        body = parse_model(EmbedJSON, payload.fields)
        blobs = b64_images(body.images, "images")
    vectors = await state.run("embed", await state.decode(blobs))
    if body.normalize:
        vectors = normalize(vectors)
    rt = state.require_ready()
    # A ready JSONResponse skips FastAPI's per-element jsonable_encoder walk over the float lists.
    return JSONResponse({"model": rt.info.name, "dim": rt.info.dim, "encoding": body.encoding,
                         "embeddings": encode_rows(vectors, body.encoding)})


@router.post("/v1/embeddings", summary="Embed images (OpenAI / infinity shape)",
             openapi_extra=json_body_doc(OpenAIJSON))
async def openai_embeddings(request: Request) -> JSONResponse:
    """Drop-in for OpenAI-style embedding clients: `input` holds data: URIs; embeddings are L2-normalised."""
    state = get_state(request)
    payload = await read_payload(request, 0)
    if payload.kind != "json":
        raise BadRequest("/v1/embeddings takes JSON: {'model': ..., 'input': ['data:image/jpeg;base64,...']}")
    body = parse_model(OpenAIJSON, payload.fields)
    rt = state.require_ready()
    if body.model and body.model != rt.info.name:
        raise NotFound(f"model {body.model!r} is not served here; this server serves {rt.info.name!r}")
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise BadRequest("input is empty: give one or more images")
    vectors = normalize(await state.run("embed", await state.decode(b64_images(inputs, "input"))))
    rows = encode_rows(vectors, body.encoding_format)
    return JSONResponse({
        "object": "list", "model": rt.info.name,
        "data": [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(rows)],
        # images have no tokens; one image counts as one unit so that clients reading usage work
        "usage": {"prompt_tokens": len(rows), "total_tokens": len(rows)}})
