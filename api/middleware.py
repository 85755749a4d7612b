"""Pure ASGI middleware for every response: a bounded request body, and security headers.

Pure ASGI rather than ``BaseHTTPMiddleware``: that one costs about twice per request
(measured in bench/api.py) and buffers streamed bodies.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response

# What every response gets unless the route set its own (the dashboard and the docs do):
# no sniffing a JSON body into HTML, no framing, nothing loaded or run from a response.
DEFAULT_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
)


class BodyTooLarge(HTTPException):
    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request bodies are at most {max_bytes} bytes")


class BodyLimitMiddleware:
    """413 for a request body over ``max_bytes``, on every path, before it is buffered.

    A declared ``Content-Length`` over the limit is refused without reading the body; a
    chunked body is counted as it arrives and refused when it passes the limit (the handler
    reading it gets ``BodyTooLarge``, answered 413 in the common error shape).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0  # the server refuses a malformed length itself
                if declared > self.max_bytes:
                    response = error_response(
                        413, "payload_too_large", f"request bodies are at most {self.max_bytes} bytes"
                    )
                    await response(scope, receive, send)
                    return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, limited_receive, send)


class SecurityHeadersMiddleware:
    """Adds ``DEFAULT_HEADERS`` to every response that does not carry its own."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((n, v) for n, v in DEFAULT_HEADERS if n not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)
