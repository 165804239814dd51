"""Errors a handler raises to answer with an HTTP status."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._http import Response


class HttpError(Exception):
    """Raise it from a handler to answer with ``status`` and ``{"error": message}``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status} {message}")
        self.status = status
        self.message = message

    def to_response(self) -> Response:
        """The JSON error response."""
        from ._http import Response

        return Response.json({"error": self.message}, status=self.status)

    @classmethod
    def bad_request(cls, message: str) -> HttpError:
        """400 Bad Request."""
        return cls(400, message)

    @classmethod
    def not_found(cls, message: str) -> HttpError:
        """404 Not Found."""
        return cls(404, message)


class BodyError(HttpError):
    """The request body failed before its end: plugd aborted it (the client's upload broke,
    passed the route's ``max_body`` or went quiet; 400), or it is longer than the handler
    accepts (413). What arrived must not be taken as the whole body. Left uncaught, it answers
    with its status."""
