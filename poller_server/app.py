"""The Tornado application: routes and the objects handlers share."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tornado.web import Application

from .auth import TokenFile
from .config import Config
from .handlers import NotFoundHandler, PollerHandler, log_request
from .health import HealthHandler
from .metrics import Metrics, MetricsHandler
from .service import JobService

if TYPE_CHECKING:
    from .server import Runtime


def make_app(
    service: JobService, config: Config, tokens: TokenFile | None = None, runtime: Runtime | None = None
) -> Application:
    """Build the application; without ``tokens`` every request is allowed.

    ``runtime`` adds snapshot and recovery state to /healthz and /metrics.
    """
    metrics = Metrics(service, runtime, tokens)
    handler_args = {"service": service, "config": config, "tokens": tokens}
    return Application(
        [
            (r"/poller/update/?", PollerHandler, handler_args),
            (r"/healthz", HealthHandler, {"service": service, "config": config, "runtime": runtime}),
            (r"/metrics", MetricsHandler, {**handler_args, "metrics": metrics}),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"service": service, "config": config},
        log_function=log_request,
        metrics=metrics,
    )
