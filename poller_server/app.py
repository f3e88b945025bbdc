"""The Tornado application: routes and the objects handlers share."""

from tornado.web import Application

from .config import Config
from .handlers import PollerHandler, log_request
from .service import JobService


def make_app(service: JobService, config: Config) -> Application:
    handler_args = {"service": service, "config": config}
    return Application(
        [(r"/poller/update/?", PollerHandler, handler_args)],
        log_function=log_request,
    )
