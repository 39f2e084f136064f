"""Client errors and OpenAI-style error bodies; 5xx bodies never carry exception text (that goes to the log)."""
from __future__ import annotations

from fastapi.responses import JSONResponse

from .protocol import ErrorInfo, ErrorResponse


class RequestError(Exception):
    """A client error: HTTP ``status`` with a message (and the offending field)."""

    def __init__(self, status: int, message: str, param: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param = status, message, param


class Busy(RequestError):
    """The server is saturated (503)."""

    def __init__(self, message: str = "the server is busy; retry later"):
        super().__init__(503, message)


def error_body(status: int, message: str, param: str | None = None) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    if status == 401:
        kind = "authentication_error"
    return ErrorResponse(error=ErrorInfo(message=message, type=kind, param=param, code=status)).model_dump()


def error_response(status: int, message: str, param: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, param), status_code=status, headers=headers)
