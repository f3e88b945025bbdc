"""The ``poller-server`` command line."""

import argparse
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import MISSING

from .auth import TokenFileError
from .config import Config, config_fields
from .datadir import DataDirLocked
from .errors import StartupError, describe_os_error
from .event_loop import resolve_event_loop
from .event_loop import run as run_event_loop
from .logs import setup_logging
from .recovery import RecoveryError

ENV_PREFIX = "POLLER_"
BOOLEAN_WORDS = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}


def env_name(field_name: str) -> str:
    return ENV_PREFIX + field_name.upper()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poller-server",
        description="Serve the poller job API. Every option can also be set by the "
        "environment variable POLLER_<OPTION>, for example POLLER_DATA_DIR; "
        "the command line wins over the environment.",
    )
    for item in config_fields():
        flag = "--" + item.name.replace("_", "-")
        kwargs: dict = {"help": item.metadata["help"] + f"; env {env_name(item.name)}", "dest": item.name}
        if item.type in (bool, "bool"):
            kwargs["action"] = "store_true"
        else:
            kwargs["type"] = item.type
            kwargs["metavar"] = item.name.upper()
        if "choices" in item.metadata:
            kwargs["choices"] = item.metadata["choices"]
        default = item.default if item.default is not MISSING else None
        kwargs["default"] = default
        parser.add_argument(flag, **kwargs)
    return parser


def apply_environment(parser: argparse.ArgumentParser, environ: dict[str, str]) -> None:
    """Use ``POLLER_<OPTION>`` variables as defaults; a bad value is a usage error."""
    defaults = {}
    for action in parser._actions:
        name = env_name(action.dest)
        if action.dest == "help" or name not in environ:
            continue
        raw = environ[name]
        value: object
        if action.const is True:  # a store_true flag
            if raw.lower() not in BOOLEAN_WORDS:
                parser.error(f"invalid {name}={raw!r}: must be one of {', '.join(BOOLEAN_WORDS)}")
            value = BOOLEAN_WORDS[raw.lower()]
        else:
            convert: Callable[[str], object] = action.type if callable(action.type) else str
            try:
                value = convert(raw)
            except ValueError:
                parser.error(f"invalid {name}={raw!r}: expected {getattr(convert, '__name__', 'a value')}")
        if action.choices and value not in action.choices:
            parser.error(f"invalid {name}={raw!r}: must be one of {', '.join(action.choices)}")
        defaults[action.dest] = value
    parser.set_defaults(**defaults)


def parse_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    parser = build_parser()
    apply_environment(parser, dict(os.environ) if environ is None else environ)
    args = parser.parse_args(argv)
    config = Config(**vars(args))
    try:
        config.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return config


def main(argv: list[str] | None = None) -> int:
    config = parse_config(argv)
    setup_logging(config.log_level, config.log_format)
    from .server import serve

    try:
        run_event_loop(lambda: serve(config), resolve_event_loop(config.event_loop))
    except (DataDirLocked, RecoveryError, TokenFileError, StartupError) as exc:
        logging.getLogger("poller_server").error("Poller cannot start: %s", exc)
        return 1
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        logging.getLogger("poller_server").error("Poller cannot start: %s%s", describe_os_error(exc), where)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
