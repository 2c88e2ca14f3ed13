"""OpenAI-shaped errors: {"error": {"message", "type", "param", "code"}}."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from segcache.engine.prompt import PromptError

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
          409: "conflict_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "server_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param

    @classmethod
    def from_prompt_error(cls, exc: PromptError) -> "ApiError":
        return cls(exc.status, str(exc), exc.code, exc.param)

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}

    def response(self, headers: dict[str, str] | None = None) -> JSONResponse:
        headers = {**({"WWW-Authenticate": "Bearer"} if self.status == 401 else {}), **(headers or {})}
        return JSONResponse(self.body(), status_code=self.status, headers=headers or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(PromptError)
    async def _prompt_error(request: Request, exc: PromptError) -> JSONResponse:
        return ApiError.from_prompt_error(exc).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The framework's own 400s come from a body it could not read (e.g. invalid UTF-8).
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return ApiError(exc.status_code, str(exc.detail), code).response(exc.headers)   # e.g. Allow on a 405

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return ApiError(500, f"internal error: {type(exc).__name__}: {exc}", "internal_error").response()


def validation_error(exc: RequestValidationError) -> ApiError:
    """Malformed JSON is a 400; JSON of the wrong shape is a 422 naming the first bad field."""
    errors = exc.errors()
    first = errors[0] if errors else {}
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the request body is not valid JSON: {first.get('ctx', {}).get('error', '')}".strip(),
                        "invalid_json")
    location = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(location) or None
    message = first.get("msg", "invalid request")
    if param:
        message = f"{param}: {message}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''}: " + json.dumps(
            [".".join(str(p) for p in e.get("loc", ()) if p != "body") for e in errors[1:4]]) + ")"
    return ApiError(422, message, "invalid_request", param)


def validated(model: type[BaseModel], value, param: str):
    """A pydantic model of `value`, or a 400 naming the first bad field."""
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join([param, *map(str, first["loc"])])
        raise ApiError(400, f"{where}: {first['msg']}", "invalid_request", where) from None
