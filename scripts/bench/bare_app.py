"""A bare Tornado application on the poller's route that returns a constant body.

It is the ceiling for the stack: the same HTTP server and routing as the
poller, with no parameter parsing, store, journal or access log. Requests
to ``/hold/`` get no response until the client disconnects, which gives the
stack's own memory cost of a request that waits, as a waiting ``next`` does.
"""

import argparse
import asyncio
import signal

from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

BODY = b"{}"


class ConstantHandler(RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.write(BODY)

    def post(self) -> None:
        self.get()


class HoldHandler(RequestHandler):
    """Handler that keeps each request open until its client disconnects."""

    async def get(self) -> None:
        self._closed = asyncio.get_running_loop().create_future()
        await self._closed

    def on_connection_close(self) -> None:
        closed = getattr(self, "_closed", None)
        if closed is not None and not closed.done():
            closed.set_result(None)


def no_access_log(handler: RequestHandler) -> None:
    """Skip the access log, as the poller does at --log-level warning."""


async def serve(host: str, port: int) -> None:
    app = Application([(r"/poller/update/?", ConstantHandler), (r"/hold/", HoldHandler)],
                      log_function=no_access_log)
    server = HTTPServer(app)
    server.listen(port, host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve a constant JSON body on /poller/update/.")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    parser.add_argument("--port", type=int, required=True, help="TCP port to listen on")
    parser.add_argument("--event-loop", choices=("asyncio", "uvloop"), default="asyncio",
                        help="event loop to run on, as the poller's option of that name (default: %(default)s)")
    args = parser.parse_args()
    factory = None
    if args.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
