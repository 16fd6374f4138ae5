"""GET /models, /healthz, /readyz, /metrics and the web page."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.routes.common import get_state
from service.settings import PACKAGE_DIR

router = APIRouter(tags=["service"])
WEB_DIR = PACKAGE_DIR / "web"


@router.get("/models", summary="The served model")
def models(request: Request) -> dict:
    return {"models": [get_state(request).describe_model()]}


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, warmed up, galleries indexed")
def readyz(request: Request) -> JSONResponse:
    state = get_state(request)
    if state.ready:
        return JSONResponse({"status": "ready"})
    status = "failed" if state.failure else "starting"
    body = {"status": status, "error": {"type": "not_ready", "message": state.failure or "the model is loading"}}
    return JSONResponse(body, status_code=503, headers={"Retry-After": "2"})


@router.get("/metrics", summary="Prometheus metrics")
def metrics(request: Request) -> Response:
    state = get_state(request)
    if state.batcher is not None:
        state.metrics.queue_depth.set(state.batcher.depth)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(WEB_DIR / "index.html", media_type="text/html")
