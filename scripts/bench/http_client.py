"""A minimal HTTP/1.1 keep-alive client on asyncio streams.

The benchmark needs thousands of concurrent connections and timestamps taken
the moment a response is complete, with little client overhead. A general
client adds pooling and queueing, which would sit inside the measurement.
Responses may use Content-Length or chunked transfer encoding.
"""

import asyncio

# Headers longer than this are a broken server, not a slow one.
MAX_HEADER_BYTES = 64 * 1024


class HttpError(Exception):
    """The server closed the connection or sent something that is not HTTP/1.1."""


class HttpConnection:
    """One persistent connection; requests on it run one at a time."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> "HttpConnection":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=MAX_HEADER_BYTES)
        return self

    def send(self, method: str, target: str, body: bytes = b"", content_type: str | None = None) -> None:
        """Write one request without waiting for its response."""
        assert self.writer is not None
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host}:{self.port}"]
        if body or method == "POST":
            lines.append(f"Content-Length: {len(body)}")
            lines.append(f"Content-Type: {content_type or 'application/x-www-form-urlencoded'}")
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    async def receive(self) -> tuple[int, bytes]:
        """Read one response and return its status code and body."""
        assert self.reader is not None
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise HttpError(f"connection to {self.host}:{self.port} closed before a response") from exc
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"invalid status line {status_line!r}")
        status = int(parts[1])
        headers = {}
        for line in header_lines:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body = await self._read_chunked()
        else:
            length = int(headers.get("content-length", "0"))
            body = await self.reader.readexactly(length) if length else b""
        return status, body

    async def _read_chunked(self) -> bytes:
        assert self.reader is not None
        chunks = []
        while True:
            size_line = await self.reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return b"".join(chunks)
            chunks.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    async def request(self, method: str, target: str, body: bytes = b"") -> tuple[int, bytes]:
        self.send(method, target, body)
        return await self.receive()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


async def open_connections(host: str, port: int, count: int, batch: int = 200) -> list[HttpConnection]:
    """Open ``count`` connections, ``batch`` at a time, to stay within the server's listen backlog (128 in Tornado)."""
    connections: list[HttpConnection] = []
    for start in range(0, count, batch):
        size = min(batch, count - start)
        connections.extend(await asyncio.gather(*(HttpConnection(host, port).connect() for _ in range(size))))
    return connections
