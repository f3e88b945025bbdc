"""Choosing the asyncio event loop the server runs on.

uvloop, a loop built on libuv, spends less CPU per event than the standard
loop, and Tornado runs on either. The server depends on it, but an
installation without it (``pip install --no-deps``, an interpreter it has no
build for) still runs: ``auto`` then takes the standard loop.
"""

import asyncio
import importlib.util
from collections.abc import Callable, Coroutine
from typing import Any

EVENT_LOOPS = ("auto", "uvloop", "asyncio")


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def resolve_event_loop(choice: str) -> str:
    """Turn ``auto`` into the loop that will run: ``uvloop`` or ``asyncio``."""
    if choice == "auto":
        return "uvloop" if uvloop_installed() else "asyncio"
    return choice


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return the loop factory for ``asyncio.Runner``, or None for the standard loop."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, None], name: str) -> None:
    """Run ``main`` to completion on the event loop called ``name``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        runner.run(main)


def running_loop_name() -> str:
    """Name the running loop as the ``--event-loop`` option does."""
    module = type(asyncio.get_running_loop()).__module__
    return "uvloop" if module.startswith("uvloop") else "asyncio"
