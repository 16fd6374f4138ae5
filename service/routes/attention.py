"""POST /attention: the CLS token's last-block attention over patches (ViT models), as JSON or a PNG overlay."""

from __future__ import annotations

import asyncio
from typing import Literal

from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, Field

from service.attention_maps import keep_top_mass, overlay_png, select_heads
from service.errors import BadRequest, Invalid
from service.images import crop_for_display, decode_image, preprocess
from service.routes.common import FILE_SCHEMA, b64_images, get_state, json_body_doc, parse_model, read_payload

router = APIRouter(tags=["attention"])


class AttentionJSON(BaseModel):
    image: str | None = Field(None, description="a base64 image or data: URI (JSON requests)")
    threshold: float | None = Field(None, gt=0, le=1, description="keep the top fraction of attention mass")
    head: int | Literal["mean"] | None = Field(None, description="one head index, 'mean', or none for all")
    format: Literal["json", "png"] = "json"


@router.post("/attention", summary="Attention maps of a ViT (JSON or PNG)",
             responses={200: {"content": {"image/png": {}}}},
             openapi_extra=json_body_doc(AttentionJSON, {
                 "file": FILE_SCHEMA, "threshold": {"type": "number"}, "head": {"type": "string"},
                 "format": {"type": "string", "enum": ["json", "png"]}}))
async def attention(request: Request):
    state = get_state(request)
    rt = state.require_ready()
    if not rt.supports_attention:
        why = "attention maps need a ViT" if not rt.info.is_vit else "the ONNX export has no attention output"
        raise BadRequest(f"{why}; the served model {rt.info.name!r} is a {rt.info.arch}")
    payload = await read_payload(request, 1)
    fields = {**dict(request.query_params), **payload.fields}
    if payload.kind == "multipart":
        blobs = payload.uploads("file") or payload.uploads("files")
        if len(blobs) != 1:
            raise BadRequest(f"send exactly one image as the multipart field 'file' (got {len(blobs)})")
        fields.pop("image", None)
    if fields.get("head") not in (None, "", "mean") and isinstance(fields.get("head"), str):
        if not fields["head"].lstrip("-").isdigit():
            raise Invalid(f"head must be a head index or 'mean', not {fields['head']!r}")
    fields = {k: v for k, v in fields.items() if v != ""}
    body = parse_model(AttentionJSON, fields)
    if payload.kind == "json":
        if body.image is None:
            raise Invalid("give 'image' (base64 or data: URI)")
        blobs = b64_images([body.image], "image")
    heads = rt.info.num_heads or 0
    if isinstance(body.head, int) and not 0 <= body.head < heads:
        raise Invalid(f"head must be between 0 and {heads - 1} (the model has {heads} heads), or 'mean'")

    name, data = blobs[0]
    pre = rt.info.preprocessing
    img = await asyncio.get_running_loop().run_in_executor(
        state.pool, lambda: decode_image(data, state.limits, name, target_side=pre.image_size))
    array = await asyncio.get_running_loop().run_in_executor(state.pool, preprocess, img, pre)
    attn = (await state.run("attention", [array]))[0]  # (heads, h*w)
    grid = rt.info.grid
    maps, captions = select_heads(attn, body.head)
    if body.threshold is not None:
        maps = keep_top_mass(maps, body.threshold)
    if body.format == "png":
        png = await asyncio.get_running_loop().run_in_executor(
            state.pool, lambda: overlay_png(crop_for_display(img, pre), maps, grid, captions))
        return Response(png, media_type="image/png")
    return {"model": rt.info.name, "heads": int(attn.shape[0]), "grid": list(grid), "head": body.head,
            "threshold": body.threshold, "maps": maps.astype(float).round(6).tolist()}
