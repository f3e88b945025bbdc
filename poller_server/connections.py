"""An HTTP server that limits how many client connections are open at once.

Tornado's ``HTTPServer`` accepts every connection. Past ``max_connections``
this one writes a short 503 response without reading the request and closes
the connection, so a flood of idle sockets cannot use up the file
descriptors that the journal and snapshots need.
"""

import asyncio
import logging
import time

from tornado.httpserver import HTTPServer
from tornado.iostream import IOStream, StreamClosedError

from .jobs import encode_json

logger = logging.getLogger(__name__)

# Rejected connections are logged at most once per this many seconds, with the count rejected in between.
REJECT_LOG_INTERVAL = 10.0


def rejection_response(max_connections: int) -> bytes:
    body = encode_json(
        {"error": f"too many open connections: the maximum is {max_connections} (--max-connections); retry later"}
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\n"
        "Content-Type: application/json; charset=UTF-8\r\n"
        "Retry-After: 1\r\n"
        "Connection: close\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


class LimitedHTTPServer(HTTPServer):
    """``HTTPServer`` that rejects connections beyond ``max_connections``."""

    def initialize(self, *args: object, max_connections: int, **kwargs: object) -> None:  # type: ignore[override]
        super().initialize(*args, **kwargs)  # type: ignore[arg-type]
        self.max_connections = max_connections
        self.open_connections = 0
        self.rejected_connections = 0
        self._rejected_since_log = 0
        self._last_reject_log = float("-inf")
        self._rejections: set[asyncio.Task] = set()

    def handle_stream(self, stream: IOStream, address: tuple) -> None:
        if self.open_connections >= self.max_connections:
            self._reject(stream, address)
            return
        self.open_connections += 1
        super().handle_stream(stream, address)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.open_connections -= 1

    def _reject(self, stream: IOStream, address: tuple) -> None:
        self.rejected_connections += 1
        self._rejected_since_log += 1
        now = time.monotonic()
        if now - self._last_reject_log >= REJECT_LOG_INTERVAL:
            logger.warning(
                "Connection from %s rejected: %d connections are open, the maximum set by --max-connections "
                "(%d rejected since the last warning)",
                address[0] if address else "unknown", self.open_connections, self._rejected_since_log,
            )
            self._last_reject_log = now
            self._rejected_since_log = 0
        task = asyncio.ensure_future(self._send_rejection(stream))
        self._rejections.add(task)
        task.add_done_callback(self._rejections.discard)

    async def _send_rejection(self, stream: IOStream) -> None:
        try:
            await stream.write(rejection_response(self.max_connections))
        except StreamClosedError:
            pass
        finally:
            stream.close()
