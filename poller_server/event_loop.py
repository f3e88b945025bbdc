"""Choosing the asyncio event loop the server runs on.

uvloop, a loop built on libuv, spends less CPU per event than the standard
loop, and Tornado runs on either. The server depends on it, but an
installation without it (``pip install --no-deps``, an interpreter it has no
build for) still runs: ``auto`` then takes the standard loop. So does an
installation whose uvloop is present but fails to import (a build for
another Python, a missing shared library); ``auto`` then logs why.
"""

import asyncio
import functools
import logging
from collections.abc import Callable, Coroutine
from typing import Any

EVENT_LOOPS = ("auto", "uvloop", "asyncio")

logger = logging.getLogger(__name__)


@functools.cache
def _uvloop_failure() -> Exception | None:
    """Import uvloop once and return the exception that the import raised, or None if it worked.

    Importing, rather than only looking the package up, catches a uvloop that
    is installed but broken.
    """
    try:
        import uvloop  # noqa: F401
    except Exception as exc:  # an extension module can fail with more than ImportError
        return exc
    return None


def uvloop_import_error() -> str | None:
    """Return why ``import uvloop`` fails, such as ``ImportError: libuv.so...``, or None if it works."""
    exc = _uvloop_failure()
    return None if exc is None else f"{type(exc).__name__}: {exc}"


def uvloop_installed() -> bool:
    """Tell whether uvloop can be imported."""
    return _uvloop_failure() is None


def uvloop_missing() -> bool:
    """Tell whether uvloop is not installed at all, as opposed to installed but failing to import."""
    exc = _uvloop_failure()
    return isinstance(exc, ModuleNotFoundError) and exc.name == "uvloop"


def resolve_event_loop(choice: str) -> str:
    """Turn ``auto`` into the loop that will run: ``uvloop`` or ``asyncio``.

    When uvloop is installed but cannot be imported, ``auto`` logs one
    warning naming the import error and takes the standard loop.
    """
    if choice != "auto":
        return choice
    if uvloop_installed():
        return "uvloop"
    if not uvloop_missing():
        logger.warning(
            "uvloop failed to import (%s); running on the standard asyncio event loop instead. "
            "Reinstall uvloop to get it back, or pass --event-loop asyncio to choose the standard loop",
            uvloop_import_error(),
        )
    return "asyncio"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the loop factory for ``asyncio.Runner``, or None for the standard loop."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Callable[[], Coroutine[Any, Any, None]], name: str) -> None:
    """Run the coroutine that ``main()`` returns to completion on the event loop called ``name``.

    ``main`` is called only once the loop exists, so that a loop that cannot
    be made leaves no coroutine behind unawaited.
    """
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        runner.run(main())


def running_loop_name() -> str:
    """Name the running loop as the ``--event-loop`` option does."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
