"""The web view's HTTP routes: each one call (or a few) of the cloud's Operator / Detections API, made with the
caller's own token.

``GET /api/cameras`` · ``GET /api/frames?camera=&limit=&max_frame=`` ·
``GET /api/frame?camera=&frame=&quality=[&rate=]`` (``rate``: the residual rate of a human view) ·
``POST /api/config`` (JSON ``camera`` + rates) · ``GET /api/detections?camera=&class=&min_confidence=`` (NDJSON
stream: ``{"result": ...}`` lines, ``{"ping": ms}`` while idle, an ``{"error": ...}`` line when the call ends
in an error). Requests without ``Authorization: Bearer TOKEN`` get 401 here; gRPC refusals come back as HTTP
errors (``UNAUTHENTICATED`` 401, ``PERMISSION_DENIED`` 403, ...) with the cloud's reason. Everything else is
the static page (``static/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icmh.rpc import detections_pb2, detections_pb2_grpc, operator_pb2, operator_pb2_grpc
from icmh.service.edge_config import CONFIG_FIELDS, config_to_proto, validate_config
from icmh.service.grpc_setup import bearer_metadata, bearer_token, channel_options

from . import convert

log = logging.getLogger("icmh.web")
STATIC = Path(__file__).with_name("static")
BPP_FRAMES = 16  # recent frames a camera's bits per pixel are averaged over
MAX_FRAMES = 1000  # largest timeline page
MAX_BODY_BYTES = 16 * 1024
HEARTBEAT_S = 15.0
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: 400, grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401, grpc.StatusCode.PERMISSION_DENIED: 403, grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.FAILED_PRECONDITION: 409, grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429, grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                                 b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
]


@dataclass(frozen=True)
class CloudTarget:
    """Where the cloud's gRPC API is and how to reach it (TLS files, as for ``icmh-operator``)."""

    address: str
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both --tls-cert and --tls-key")
        if self.server_name and self.ca is None:
            raise ValueError("--tls-server-name needs TLS (--tls-ca)")
        if self.cert is not None and self.ca is None:
            raise ValueError("a client certificate needs TLS (--tls-ca)")

    def channel(self) -> grpc.aio.Channel:
        """An asyncio channel (open it inside the serving event loop); TLS files are read now."""
        options = channel_options(server_name=self.server_name)
        if self.ca is None:
            return grpc.aio.insecure_channel(self.address, options=options)
        files = {}
        for name in ("ca", "cert", "key"):
            path = getattr(self, name)
            try:
                files[name] = path.read_bytes() if path is not None else None
            except OSError as exc:
                raise ValueError(f"cannot read TLS {name} {path}: {exc.strerror}") from None
        credentials = grpc.ssl_channel_credentials(root_certificates=files["ca"], private_key=files["key"],
                                                   certificate_chain=files["cert"])
        return grpc.aio.secure_channel(self.address, credentials, options=options)


class ApiError(Exception):
    """An HTTP error with a JSON body ``{"error": CODE, "detail": text}``."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail

    @classmethod
    def from_rpc(cls, exc: grpc.aio.AioRpcError) -> ApiError:
        return cls(HTTP_STATUS.get(exc.code(), 502), exc.code().name, exc.details() or "")

    def body(self) -> dict[str, str]:
        return {"error": self.code, "detail": self.detail}


def caller_metadata(request: Request) -> tuple[tuple[str, str], ...]:
    """The caller's token as gRPC metadata; 401 without one (the cloud is never called anonymously, so a client
    certificate of this gateway never identifies a web user)."""
    token = bearer_token(request.headers.get("authorization", ""))
    if token is None:
        raise ApiError(401, "UNAUTHENTICATED", "log in with an operator token (Authorization: Bearer TOKEN)")
    return bearer_metadata(token)


def query_rate(request: Request) -> float | None:
    """The optional ``rate`` parameter (the residual rate of a human view), a number in [0, 1]."""
    text = request.query_params.get("rate")
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"rate must be a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise ApiError(400, "INVALID_ARGUMENT", f"rate must be in [0, 1], got {value:g}")
    return value


def query_int(request: Request, name: str, default: int | None = None, low: int = 0,
              high: int = 2**63 - 1) -> int:
    text = request.query_params.get(name)
    if text is None or text == "":
        if default is None:
            raise ApiError(400, "INVALID_ARGUMENT", f"query parameter {name!r} is required")
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be an integer, got {text!r}") from None
    if not low <= value <= high:
        raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be in [{low}, {high}], got {value}")
    return value


def query_camera(request: Request) -> str:
    camera = request.query_params.get("camera", "")
    if not camera:
        raise ApiError(400, "INVALID_ARGUMENT", "query parameter 'camera' is required")
    return camera


class Gateway:
    """The routes' shared state: one asyncio channel to the cloud, opened with the app's lifespan."""

    def __init__(self, target: CloudTarget) -> None:
        self.target = target
        self.channel: grpc.aio.Channel | None = None
        self.operator: operator_pb2_grpc.OperatorStub | None = None
        self.detections: detections_pb2_grpc.DetectionsStub | None = None

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        self.channel = self.target.channel()
        self.operator = operator_pb2_grpc.OperatorStub(self.channel)
        self.detections = detections_pb2_grpc.DetectionsStub(self.channel)
        try:
            yield
        finally:
            await self.channel.close(grace=1.0)

    async def _call(self, method: Callable[..., Awaitable[Any]], request: Any, metadata: Any) -> Any:
        try:
            return await method(request, metadata=metadata, timeout=self.target.timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise ApiError.from_rpc(exc) from None

    async def cameras(self, request: Request) -> JSONResponse:
        metadata = caller_metadata(request)
        reply = await self._call(self.operator.ListCameras, operator_pb2.ListCamerasRequest(), metadata)
        recent = await asyncio.gather(*(
            self._call(self.operator.ListFrames, operator_pb2.ListFramesRequest(camera_id=c.camera_id,
                                                                                limit=BPP_FRAMES), metadata)
            for c in reply.cameras))
        return JSONResponse({"cameras": [convert.camera(c, list(r.frames))
                                         for c, r in zip(reply.cameras, recent, strict=True)]})

    async def frames(self, request: Request) -> JSONResponse:
        metadata = caller_metadata(request)
        message = operator_pb2.ListFramesRequest(camera_id=query_camera(request),
                                                 limit=query_int(request, "limit", 60, 1, MAX_FRAMES),
                                                 max_frame_id=query_int(request, "max_frame", 0))
        reply = await self._call(self.operator.ListFrames, message, metadata)
        return JSONResponse({"frames": [convert.frame(f) for f in reply.frames]})

    async def frame(self, request: Request) -> JSONResponse:
        metadata = caller_metadata(request)
        quality = request.query_params.get("quality", "machine")
        if quality not in convert.QUALITIES:
            raise ApiError(400, "INVALID_ARGUMENT", f"quality must be one of {sorted(convert.QUALITIES)}")
        message = operator_pb2.GetFrameRequest(camera_id=query_camera(request),
                                               frame_id=query_int(request, "frame", None, 1),
                                               quality=convert.QUALITIES[quality], residual_rate=query_rate(request))
        start = time.perf_counter()
        reply = await self._call(self.operator.GetFrame, message, metadata)
        return JSONResponse(convert.inspection(reply, 1000 * (time.perf_counter() - start)))

    async def configure(self, request: Request) -> JSONResponse:
        metadata = caller_metadata(request)
        raw = b""
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise ApiError(413, "INVALID_ARGUMENT", f"the body is larger than {MAX_BODY_BYTES} bytes")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "INVALID_ARGUMENT", "the body must be a JSON object") from None
        if not isinstance(body, dict) or not isinstance(body.get("camera"), str) or not body["camera"]:
            raise ApiError(400, "INVALID_ARGUMENT", 'give a JSON object with "camera" and the rates to set')
        fields = {k: v for k, v in body.items() if k != "camera" and v is not None}
        for name, value in fields.items():
            if name in CONFIG_FIELDS and (type(value) not in (int, float) or not math.isfinite(value)):
                raise ApiError(400, "INVALID_ARGUMENT", f"{name} must be a number, got {value!r}")
        try:
            config = validate_config(fields)
        except ValueError as exc:
            raise ApiError(400, "INVALID_ARGUMENT", str(exc)) from None
        if not config:
            raise ApiError(400, "INVALID_ARGUMENT", f"give at least one of {list(CONFIG_FIELDS)}")
        message = operator_pb2.ConfigureCameraRequest(camera_id=body["camera"], config=config_to_proto(config))
        reply = await self._call(self.operator.ConfigureCamera, message, metadata)
        return JSONResponse({"camera_id": body["camera"], "config": convert.config(reply.config),
                             "delivered": reply.delivered})

    async def subscribe(self, request: Request) -> StreamingResponse:
        metadata = caller_metadata(request)
        try:
            min_confidence = float(request.query_params.get("min_confidence", "0"))
        except ValueError:
            min_confidence = math.nan
        if not 0.0 <= min_confidence <= 1.0:
            raise ApiError(400, "INVALID_ARGUMENT", "min_confidence must be a number in [0, 1]")
        message = detections_pb2.SubscribeRequest(camera_ids=request.query_params.getlist("camera"),
                                                  class_names=request.query_params.getlist("class"),
                                                  min_confidence=min_confidence)
        call = self.detections.Subscribe(message, metadata=metadata)
        return StreamingResponse(self._stream(call), media_type="application/x-ndjson")

    @staticmethod
    async def _stream(call: Any) -> AsyncIterator[bytes]:
        """NDJSON lines of a ``Subscribe`` call; ``{"ping": ms}`` after every idle ``HEARTBEAT_S``. The call is
        cancelled when the browser goes away."""
        lines: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

        async def read() -> None:
            try:
                async for result in call:
                    await lines.put({"result": convert.result(result)})
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.CANCELLED:
                    await lines.put({**ApiError.from_rpc(exc).body(), "status": HTTP_STATUS.get(exc.code(), 502)})
            await lines.put(None)

        reader = asyncio.create_task(read())
        try:
            yield b'{"open": true}\n'
            while True:
                try:
                    line = await asyncio.wait_for(lines.get(), HEARTBEAT_S)
                except asyncio.TimeoutError:
                    line = {"ping": time.time() * 1000}
                if line is None:
                    return
                yield json.dumps(line).encode() + b"\n"
        finally:
            call.cancel()
            reader.cancel()


async def _api_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return JSONResponse(exc.body(), status_code=exc.status)


class SecurityHeaders:
    """Adds a strict Content-Security-Policy and friends to every response; ``no-store`` to API responses."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        api = scope["path"].startswith("/api/")

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS,
                                      *([(b"cache-control", b"no-store")] if api else [])]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def create_app(target: CloudTarget) -> Starlette:
    """The web view of the cloud at ``target``: JSON API under ``/api``, the page at ``/``."""
    gateway = Gateway(target)
    routes = [
        Route("/api/cameras", gateway.cameras),
        Route("/api/frames", gateway.frames),
        Route("/api/frame", gateway.frame),
        Route("/api/config", gateway.configure, methods=["POST"]),
        Route("/api/detections", gateway.subscribe),
        Mount("/", StaticFiles(directory=STATIC, html=True)),
    ]
    app = Starlette(routes=routes, lifespan=gateway.lifespan, exception_handlers={ApiError: _api_error})
    app.add_middleware(SecurityHeaders)
    return app
