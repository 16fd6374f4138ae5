"""Galleries (items in, items out) and POST /knn."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from service.errors import BadRequest, Conflict, Invalid, NotFound
from service.routes.common import (
    FILE_SCHEMA,
    b64_images,
    form_json,
    get_state,
    json_body_doc,
    parse_model,
    read_payload,
    require_api_key,
)
from service.state import ServiceState

router = APIRouter(tags=["galleries"])


class ItemsJSON(BaseModel):
    images: list[str] | None = Field(None, description="base64 images or data: URIs")
    vectors: list[list[float]] | None = Field(None, description="precomputed embeddings instead of images")
    labels: list[str | None] | None = None
    metadata: list[dict[str, Any] | None] | dict[str, Any] | None = None


class KnnJSON(BaseModel):
    image: str | None = Field(None, description="a base64 image or data: URI")
    embedding: list[float] | None = None
    k: int = 10
    gallery: str | None = Field(None, description="default: the server's default gallery")


def _per_item(values: Any, n: int, name: str) -> list:
    if values is None:
        return [None] * n
    if isinstance(values, dict):  # one metadata object for every item
        return [values] * n
    if isinstance(values, str | int | float):
        values = [values]
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else type(values).__name__
        raise BadRequest(f"{name} must give one entry per item: {n} items, {got} {name}")
    return values


@router.post("/galleries/{name}/items", summary="Add items to a gallery (created on first use)",
             dependencies=[Depends(require_api_key)],
             openapi_extra=json_body_doc(ItemsJSON, {"files": {"type": "array", "items": FILE_SCHEMA},
                                                     "labels": {"type": "array", "items": {"type": "string"}},
                                                     "metadata": {"type": "string", "description": "JSON"}}))
async def add_items(name: str, request: Request) -> dict:
    state = get_state(request)
    rt = state.require_ready()
    payload = await read_payload(request, state.settings.max_images_per_request)
    thumbs: list[bytes | None] | None = None
    if payload.kind == "multipart":
        blobs = payload.uploads("files")
        if not blobs:
            raise BadRequest("no images: send one or more multipart fields named 'files'")
        labels = payload.fields.get("labels")
        if isinstance(labels, str) and labels.startswith("["):
            labels = form_json(labels, "labels")
        labels = _per_item(labels, len(blobs), "labels")
        metadata = _per_item(form_json(payload.fields.get("metadata"), "metadata"), len(blobs), "metadata")
        vectors = None
    else:
        body = parse_model(ItemsJSON, payload.fields)
        if (body.images is None) == (body.vectors is None):
            raise Invalid("give either 'images' (base64) or 'vectors' (precomputed embeddings), not both or none")
        if body.vectors is not None:
            vectors = np.asarray(body.vectors, dtype=np.float32)
            if vectors.ndim != 2 or len(vectors) == 0 or vectors.shape[1] != rt.info.dim:
                raise BadRequest(f"vectors must be a non-empty list of {rt.info.dim}-dimensional lists "
                                 f"(the served model's dimension); got shape {list(vectors.shape)}")
            if not np.isfinite(vectors).all():
                raise BadRequest("vectors contain NaN or infinity")
            blobs = []
        else:
            blobs = b64_images(body.images, "images")
            vectors = None
        n = len(blobs) or len(vectors)
        labels = _per_item(body.labels, n, "labels")
        metadata = _per_item(body.metadata, n, "metadata")
    if len(blobs) > state.settings.max_images_per_request:
        raise BadRequest(f"{len(blobs)} images in one request; the limit is {state.settings.max_images_per_request}")
    if vectors is None:
        decoded = await state.decode_with_thumbnails(blobs)
        vectors = await state.run("embed", [a for a, _ in decoded])
        thumbs = [t for _, t in decoded]
    labels = [None if v is None else str(v) for v in labels]
    assert state.store is not None
    ids = await _in_thread(state, lambda: state.store.add(
        name, vectors, rt.info.fingerprint, rt.info.name, labels, metadata, thumbs, check_model=blobs != []))
    info = state.store.get(name)
    state.metrics.gallery_items.labels(name).set(info["count"])
    return {"gallery": name, "ids": ids, "count": info["count"]}


async def _in_thread(state: ServiceState, fn):
    return await asyncio.get_running_loop().run_in_executor(None, fn)


@router.get("/galleries", summary="List galleries")
def list_galleries(request: Request) -> dict:
    state = get_state(request)
    state.require_ready()
    return {"galleries": state.store.list(), "default": state.settings.default_gallery}


@router.get("/galleries/{name}", summary="Describe a gallery")
def get_gallery(name: str, request: Request) -> dict:
    state = get_state(request)
    state.require_ready()
    return state.store.get(name)


@router.delete("/galleries/{name}/items/{item_id}", summary="Delete one item",
               dependencies=[Depends(require_api_key)])
def delete_item(name: str, item_id: int, request: Request) -> dict:
    state = get_state(request)
    state.require_ready()
    state.store.delete_item(name, item_id)
    state.metrics.gallery_items.labels(name).dec()
    return {"gallery": name, "deleted": item_id}


@router.delete("/galleries/{name}", summary="Delete a gallery and all its items",
               dependencies=[Depends(require_api_key)])
def delete_gallery(name: str, request: Request) -> dict:
    state = get_state(request)
    state.require_ready()
    state.store.delete_gallery(name)
    with contextlib.suppress(KeyError):
        state.metrics.gallery_items.remove(name)
    return {"deleted": name}


@router.get("/galleries/{name}/items/{item_id}/thumbnail", summary="An item's thumbnail (JPEG)",
            response_class=Response, responses={200: {"content": {"image/jpeg": {}}}})
def thumbnail(name: str, item_id: int, request: Request) -> Response:
    state = get_state(request)
    state.require_ready()
    data = state.store.thumbnail(name, item_id)
    if data is None:
        raise NotFound(f"item {item_id} of gallery {name!r} has no thumbnail (it was added as a vector)")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


@router.post("/knn", summary="Nearest gallery items of an image or an embedding",
             openapi_extra=json_body_doc(KnnJSON, {"file": FILE_SCHEMA, "k": {"type": "integer"},
                                                   "gallery": {"type": "string"}}))
async def knn(request: Request) -> dict:
    state = get_state(request)
    rt = state.require_ready()
    payload = await read_payload(request, 1)
    if payload.kind == "multipart":
        body = parse_model(KnnJSON, {k: v for k, v in payload.fields.items() if k in ("k", "gallery")})
        blobs = payload.uploads("file") or payload.uploads("files")
        if len(blobs) != 1:
            raise BadRequest(f"send exactly one image as the multipart field 'file' (got {len(blobs)})")
    else:
        body = parse_model(KnnJSON, payload.fields)
        if (body.image is None) == (body.embedding is None):
            raise Invalid("give either 'image' (base64) or 'embedding', not both or none")
        blobs = b64_images([body.image], "image") if body.image is not None else []
    if not 1 <= body.k <= state.settings.max_k:
        raise Invalid(f"k must be between 1 and {state.settings.max_k} (ZOO_MAX_K), not {body.k}")
    gallery = body.gallery or state.settings.default_gallery
    store = state.store
    if blobs:
        if store.gallery_model(gallery) != rt.info.fingerprint:
            raise Conflict(f"gallery {gallery!r} was filled by another model than the one served "
                           f"({rt.info.name!r}); its vectors are not comparable with this model's")
        query = await state.run("embed", await state.decode(blobs))
    else:
        query = np.asarray([body.embedding], dtype=np.float32)
        if not np.isfinite(query).all():
            raise BadRequest("embedding contains NaN or infinity")
    neighbors = (await _in_thread(state, lambda: store.search(gallery, query, body.k)))[0]
    return {"gallery": gallery, "k": body.k, "neighbors": neighbors}
