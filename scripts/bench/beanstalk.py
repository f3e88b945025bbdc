"""A small beanstalkd protocol client: put, reserve-with-timeout, delete.

The protocol is text lines ending in CRLF; a job body follows its command
line and is itself followed by CRLF (see protocol.txt in the beanstalkd
sources). Only the commands the benchmark uses are implemented.
"""

import asyncio


class BeanstalkError(Exception):
    """beanstalkd replied with an error line or closed the connection."""


class BeanstalkConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> "BeanstalkConnection":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def _line(self) -> bytes:
        assert self.reader is not None
        try:
            return (await self.reader.readuntil(b"\r\n"))[:-2]
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise BeanstalkError(f"beanstalkd at {self.host}:{self.port} closed the connection") from exc

    async def put(self, body: bytes, priority: int = 0, delay: int = 0, ttr: int = 300) -> int:
        """Queue ``body`` as a job and return its id once beanstalkd has accepted it."""
        assert self.writer is not None
        self.writer.write(b"put %d %d %d %d\r\n%s\r\n" % (priority, delay, ttr, len(body), body))
        reply = await self._line()
        if not reply.startswith(b"INSERTED "):
            raise BeanstalkError(f"put failed: {reply.decode(errors='replace')}")
        return int(reply.split()[1])

    async def reserve(self, timeout: int) -> tuple[int, bytes] | None:
        """Wait up to ``timeout`` seconds for a job; return ``(id, body)`` or None on time-out."""
        assert self.writer is not None and self.reader is not None
        self.writer.write(b"reserve-with-timeout %d\r\n" % timeout)
        reply = await self._line()
        if reply == b"TIMED_OUT":
            return None
        if not reply.startswith(b"RESERVED "):
            raise BeanstalkError(f"reserve failed: {reply.decode(errors='replace')}")
        _, job_id, size = reply.split()
        body = await self.reader.readexactly(int(size) + 2)
        return int(job_id), body[:-2]

    async def delete(self, job_id: int) -> None:
        assert self.writer is not None
        self.writer.write(b"delete %d\r\n" % job_id)
        reply = await self._line()
        if reply != b"DELETED":
            raise BeanstalkError(f"delete of job {job_id} failed: {reply.decode(errors='replace')}")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
