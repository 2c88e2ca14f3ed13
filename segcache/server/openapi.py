"""The OpenAPI document as the server really behaves: errors are {"error": {...}}, never {"detail"}.

FastAPI documents every route with a 422 `HTTPValidationError` that this server never sends (its
handlers answer in OpenAI's shape). This rewrites the generated schema once: one `Error` schema,
the statuses each route can return, and the SSE body of the generation routes.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string", "description": "what went wrong and what to do next"},
        "type": {"type": "string", "examples": ["invalid_request_error", "authentication_error"]},
        "param": {"type": ["string", "null"], "description": "the request field at fault"},
        "code": {"type": "string", "examples": ["segment_not_found", "pin_quota_exceeded"]}}}}}

_STATUSES = {400: "Invalid request (bad JSON, a limit, an unknown segment)", 401: "Missing or invalid API key",
             404: "Unknown model, segment name or route", 405: "Method not allowed (see the Allow header)",
             409: "Conflict: pin quota exceeded, or the cache is in use", 413: "Too large: body, prompt or registry",
             422: "A field has the wrong type or value", 500: "Internal error"}
_GENERATION = ("/v1/chat/completions", "/v1/completions")
_SSE = {"schema": {"type": "string", "description": "Server-sent events: `data: <chunk JSON>` lines, then "
                   "`data: [DONE]`; an error after the headers arrives as `data: {\"error\": {...}}`"}}


def install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
            app.openapi_schema = rewrite(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def rewrite(schema: dict[str, Any]) -> dict[str, Any]:
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Error"] = ERROR_SCHEMA
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            responses.pop("422", None)
            for status in _statuses(path, operation):
                responses[str(status)] = {"description": _STATUSES[status], "content": error}
            if path in _GENERATION:
                responses["200"].setdefault("content", {})["text/event-stream"] = _SSE
    return schema


def _statuses(path: str, operation: dict[str, Any]) -> list[int]:
    statuses = [401, 405, 500]
    if "requestBody" in operation or "parameters" in operation:
        statuses += [400, 422]
    if path.startswith("/v1/"):
        statuses += [404]
    if path in (*_GENERATION, "/v1/cache/warm", "/v1/segments/{name}", "/v1/cache"):
        statuses += [409, 413]
    return sorted(set(statuses))
