"""`create_app(settings) -> FastAPI`: routes, JSON errors, body-size limit, metrics and the model's life cycle."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PayloadTooLarge, ServiceError
from service.metrics import Metrics
from service.routes import attention, embed, galleries, system
from service.routes.common import validation_message
from service.settings import Settings
from service.state import ServiceState

log = logging.getLogger("service")


def error_body(kind: str, message: str) -> dict:
    return {"error": {"type": kind, "message": message}}


class BodyLimit:
    """Refuse bodies over `limit` bytes with 413, by Content-Length or while streaming (no length given)."""

    def __init__(self, app: ASGIApp, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = (f"the request body is larger than {self.limit:,} bytes (ZOO_MAX_BODY_BYTES); "
                   "send fewer or smaller images per request")
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            response = JSONResponse(error_body("payload_too_large", message), status_code=413,
                                    headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            msg = await receive()
            seen += len(msg.get("body", b""))
            if seen > self.limit:
                raise PayloadTooLarge(message)
            return msg

        return await self.app(scope, limited, send)


class RequestMetrics:
    """Counts requests by route template and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), 500

        async def send_wrapper(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)


def create_app(settings: Settings | None = None, state: ServiceState | None = None) -> FastAPI:
    settings = settings or Settings()
    state = state or ServiceState(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state.start_in_background()

        async def save_indexes_now_and_then() -> None:
            while True:
                await asyncio.sleep(settings.index_save_every_s)
                if state.store is not None:
                    await asyncio.get_running_loop().run_in_executor(None, state.store.save_indexes)

        saver = asyncio.create_task(save_indexes_now_and_then())
        try:
            yield
        finally:
            saver.cancel()
            await asyncio.get_running_loop().run_in_executor(None, state.close)

    app = FastAPI(title="ssl-zoo service", version="0.1.0", lifespan=lifespan,
                  description="Embeddings, kNN retrieval over persistent galleries and DINO attention maps "
                              "of a self-supervised encoder.")
    app.state.service = state
    for router in (embed.router, galleries.router, attention.router, system.router):
        app.include_router(router)

    @app.exception_handler(ServiceError)
    async def service_error(request: Request, exc: ServiceError) -> JSONResponse:
        return JSONResponse(error_body(exc.type, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body("invalid_request", validation_message(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = str(exc.detail)
        if exc.status_code in (404, 405):
            message = f"{message}: no route {request.method} {request.url.path}; the API is listed at /docs"
        return JSONResponse(error_body(kind, message), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body("internal_error", f"a bug in the service: {type(exc).__name__}: {exc}"),
                            status_code=500)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"])
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    return app
