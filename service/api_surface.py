"""What every answer of the API shares: one error body, security headers, the OpenAPI error and
security declarations, and ``/docs`` served from this server.

The error model
    Every 4xx and 5xx answer, whoever raises it (a route, FastAPI's request validation, Starlette's
    routing 404/405 or multipart parser 400, an unexpected exception, a full disk), is JSON of one
    shape, :class:`ErrorBody`: ``detail`` says what is wrong in one sentence, ``status`` repeats
    the HTTP status, and request validation adds ``errors`` (one entry per bad parameter). The one
    structured ``detail`` is a refused target (unknown, or not served), where it is an object whose
    ``message`` is that sentence, with the names a client can act on (:class:`StructuredDetail`).
    The OpenAPI document declares that body for every error response of every operation.

Errors of the family (:mod:`model.errors`)
    Mapped here, once: a :class:`~model.errors.UserError` raised anywhere in a request is answered
    with its class's ``status`` (4xx), its ``detail()`` and its ``headers`` (plus ``Retry-After``
    where ``retry_later``); a :class:`~model.errors.ServerFault` is logged with its traceback and
    answered with its ``status`` (5xx) and the same sentence as any unexpected error (for 500),
    or its message (any other 5xx). Routes raise them as they are; they catch one only to clean
    up or to answer it differently from its class.

Storage full
    An ``OSError`` for a full disk or an exhausted quota (``ENOSPC``, ``EDQUOT``) anywhere in a
    request, or :class:`service.queueing.storage.StorageFull` (the upload validator's child met one),
    becomes ``507 Insufficient Storage`` with ``Retry-After``; routes remove what they had
    written before it reaches here.

Headers
    Every response gets ``X-Content-Type-Options: nosniff``, and ``Cache-Control: no-store``
    unless the route chose its own caching (job results, statuses and errors are never cached;
    the self-hosted documentation assets may be).

``/docs``
    Swagger UI from the ``swagger-ui-bundle`` package's files, served under ``/docs/assets``:
    hospital networks are often offline, so no CDN is ever named. ReDoc (which FastAPI loads from
    a CDN) is not served.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from model.errors import ServerFault, UserError
from service.queueing.storage import StorageFull, is_storage_full

__all__ = [
    "ErrorBody",
    "FieldError",
    "SecurityHeadersMiddleware",
    "StructuredDetail",
    "error_response",
    "install_api_surface",
]

log = logging.getLogger(__name__)

DOCS_ASSETS = "/docs/assets"
STORAGE_RETRY_AFTER_S = 60
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# Errors any operation can give, beyond the ones it declares itself.
_COMMON_ERRORS = {"500": "an unexpected server error (logged); the body says nothing more"}
_SECURED_ERRORS = {"401": "missing or invalid API key (see the bearer security scheme)"}
_VALIDATED_ERRORS = {"422": "a parameter is missing or invalid: `errors` lists each one"}
_FOUND_ERRORS = {"404": "no such job or file (another key's job is answered the same way)"}


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where: ['query', 'ensemble'], ['path', 'job_id'] ...")
    msg: str
    type: str


class StructuredDetail(BaseModel):
    """``detail`` of a refused target: the sentence in ``message``, and the names a client can act on."""

    model_config = ConfigDict(extra="allow")

    message: str = Field(description="the sentence, as `detail` is everywhere else")
    unknown: list[str] | None = Field(None, description="unknown target names or prompts")
    valid: list[str] | None = Field(None, description="every valid target name")
    suggestions: dict[str, list[str]] | None = Field(None, description="closest names per unknown prompt")


class ErrorBody(BaseModel):
    """The body of every error answer (4xx and 5xx) of this API."""

    detail: str | StructuredDetail = Field(
        description="what is wrong, in one sentence (for a refused target: an object whose `message` is that sentence)"
    )
    status: int = Field(description="the HTTP status code, repeated")
    errors: list[FieldError] | None = Field(None, description="request validation only: each invalid parameter")


def error_response(
    status: int, detail: object, headers: Mapping[str, str] | None = None, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    """The one error shape (:class:`ErrorBody`)."""
    if not isinstance(detail, str | dict):
        detail = str(detail)
    body: dict[str, Any] = {"detail": detail, "status": status}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


# ---------------------------------------------------------------- exception handlers


def _where(loc: Iterable[object]) -> str:
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] in ("query", "path", "header", "cookie"):
        return f"{parts[0]} parameter {'.'.join(parts[1:])!r}"
    if parts and parts[0] == "body":
        return "the body" + (f" field {'.'.join(parts[1:])!r}" if len(parts) > 1 else "")
    return ".".join(parts) or "the request"


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(exc.status_code, exc.detail, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {"loc": [p if isinstance(p, int) else str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")),
         "type": str(e.get("type", ""))}
        for e in exc.errors()
    ]
    sentences = [f"{_where(e['loc'])}: {e['msg']}" for e in errors[:3]]
    more = f" (and {len(errors) - 3} more)" if len(errors) > 3 else ""
    return error_response(422, "invalid request: " + "; ".join(sentences) + more, errors=errors)


def _family_handlers(retry_after_s: int) -> tuple[Any, Any]:
    """The handlers of :class:`UserError` and :class:`ServerFault` (module docstring)."""

    def headers(exc: UserError | ServerFault) -> dict[str, str]:
        extra = {"Retry-After": str(retry_after_s)} if exc.retry_later else {}
        return {**exc.headers, **extra}

    async def user_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, UserError)
        return error_response(exc.status, exc.detail(), headers(exc))

    async def server_fault(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ServerFault)
        # Handled here, so nothing re-raises it: the traceback goes to the log now.
        log.error("%s during %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
        if exc.status == 500:
            return _internal_error()
        return error_response(exc.status, exc.detail(), headers(exc))

    return user_error, server_fault


async def _storage_full(request: Request, exc: Exception) -> JSONResponse:
    log.error("storage full (%s) during %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(
        507, "storage full: the server has no room for this upload now; nothing was kept, retry later",
        {"Retry-After": str(STORAGE_RETRY_AFTER_S)},
    )


async def _os_error(request: Request, exc: Exception) -> JSONResponse:
    if is_storage_full(exc):
        return await _storage_full(request, exc)
    # Handled here, so nothing re-raises it: the traceback goes to the log now.
    log.error("unexpected %s during %s %s", type(exc).__name__, request.method, request.url.path, exc_info=exc)
    return _internal_error()


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises it after this answer and uvicorn logs the traceback; the client learns nothing.
    log.error("unexpected %s during %s %s", type(exc).__name__, request.method, request.url.path)
    return _internal_error()


def _internal_error() -> JSONResponse:
    return error_response(500, "internal server error; the server log has the details")


# ---------------------------------------------------------------- headers


class SecurityHeadersMiddleware:
    """Adds ``X-Content-Type-Options: nosniff`` everywhere and ``Cache-Control: no-store`` where
    the route set no caching of its own (the documentation assets are left cacheable)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        cacheable = str(scope.get("path", "")).startswith(DOCS_ASSETS + "/")

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"cache-control" not in names and not cacheable:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


# ---------------------------------------------------------------- OpenAPI


def _declare_errors(schema: dict[str, Any]) -> None:
    """Every error response of every operation gets :class:`ErrorBody` (in place)."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    body = ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(body.pop("$defs", {}))
    components["ErrorBody"] = body
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            responses: dict[str, Any] = operation["responses"]
            extra = dict(_COMMON_ERRORS)
            if operation.get("security"):
                extra.update(_SECURED_ERRORS)
            if operation.get("parameters") or operation.get("requestBody"):
                extra.update(_VALIDATED_ERRORS)
            if "{" in path:
                extra.update(_FOUND_ERRORS)
            for code, description in extra.items():
                responses.setdefault(code, {"description": description})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    if code == "422" and "Validation Error" in str(response.get("description", "")):
                        response["description"] = _VALIDATED_ERRORS["422"]
                    response["content"] = {"application/json": {"schema": dict(_ERROR_REF)}}
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


def _install_openapi(app: FastAPI) -> None:
    base = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = base()
        _declare_errors(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# ---------------------------------------------------------------- /docs


def _install_docs(app: FastAPI) -> None:
    try:
        import swagger_ui_bundle
    except ImportError:
        log.warning("swagger-ui-bundle is not installed: /docs is not served (the schema is at %s)", app.openapi_url)
        return
    from starlette.staticfiles import StaticFiles

    app.mount(DOCS_ASSETS, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")
    title = f"{app.title} API"
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=title, oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js", swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
            swagger_ui_parameters={"validatorUrl": None},  # no badge fetched from swagger.io
        )

    @app.get(redirect_url, include_in_schema=False)
    def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()


def install_api_surface(app: FastAPI, *, retry_after_s: int) -> None:
    """Error handlers, security headers, OpenAPI error declarations and ``/docs`` (module docstring).

    Create the app with ``docs_url=None, redoc_url=None``: this serves ``/docs`` itself.
    ``retry_after_s``: the ``Retry-After`` of an error whose class says ``retry_later``.
    """
    user_error, server_fault = _family_handlers(retry_after_s)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(UserError, user_error)
    app.add_exception_handler(StorageFull, _storage_full)  # a ServerFault with its own answer (nearest class wins)
    app.add_exception_handler(ServerFault, server_fault)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(SecurityHeadersMiddleware)
    _install_openapi(app)
    _install_docs(app)
