"""``json``: the server's request decoding and JSON code per run configuration, against orjson.

The server encodes every created job's configuration once and parses every
JSON request body with duplicate-key, constant and depth checks. This
scenario times both on the real run configurations, in this process, next to
the standard library's plain ``json.loads`` and, when it is installed, orjson.
It also times the whole decoding of a ``POST new`` form body: parameters,
user name and configuration checks, and the configuration's JSON text.
Compare the figures with ``create``'s server CPU per request to see what a
change could save.
"""

import functools
import importlib.util
import json
import time
from collections.abc import Callable

from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

from poller_server.config import Config
from poller_server.handlers import parse_config
from poller_server.jobs import encode_json
from poller_server.params import parse_json, read_params
from poller_server.store import validate_user

from .context import BenchContext, ScenarioResult
from .datasets import create_form_body, load_runs
from .stats import summarize

# Each timing loops over all configurations this many times, so that one
# timing lasts long enough for the clock; the quick mode uses fewer.
PASSES_FULL = 200
PASSES_QUICK = 20
DEFAULTS = Config()


def time_per_item(function: Callable[[object], object], items: list, passes: int) -> float:
    """Return the microseconds ``function`` takes per item, over ``passes`` loops through ``items``."""
    started = time.perf_counter()
    for _ in range(passes):
        for item in items:
            function(item)
    return 1e6 * (time.perf_counter() - started) / (passes * len(items))


def decode_create_form(request: HTTPServerRequest, body: bytes) -> bytes:
    """Decode a ``POST new`` form body as the server does; return the configuration's JSON text."""
    params = read_params(request, body)
    validate_user(params["user"])
    return parse_config(params, DEFAULTS.max_config_keys, DEFAULTS.max_value_length)


def run(context: BenchContext) -> ScenarioResult:
    result = ScenarioResult("json")
    configurations = [{name: value for name, value in run.items() if name != "user"}
                      for run in load_runs(context.data_dir)]
    texts = [encode_json(configuration) for configuration in configurations]
    form_bodies = [create_form_body(run) for run in load_runs(context.data_dir)]
    # Tornado builds the request object before the handler runs, so it is not timed.
    form_request = HTTPServerRequest(start_line=RequestStartLine("POST", "/poller/update/", "HTTP/1.1"),
                                     headers=HTTPHeaders({"Host": "127.0.0.1",
                                                          "Content-Type": "application/x-www-form-urlencoded"}))
    passes = PASSES_QUICK if context.quick else PASSES_FULL
    codecs: dict[str, tuple[Callable, list]] = {
        "server_encode": (encode_json, configurations),
        "server_strict_parse": (parse_json, texts),
        "stdlib_plain_parse": (json.loads, texts),
        "server_create_form_decode": (functools.partial(decode_create_form, form_request), form_bodies),
    }

    if importlib.util.find_spec("orjson") is None:
        result.skipped["orjson"] = "orjson is not installed (pip install -e '.[bench]')"
    else:
        import orjson

        # orjson must give the very bytes the server writes, or it is no substitute.
        differing = sum(orjson.dumps(configuration) != text.encode()
                        for configuration, text in zip(configurations, texts))
        result.metrics["orjson_encode_differs"] = summarize([float(differing)], "configurations")
        codecs["orjson_encode"] = (orjson.dumps, configurations)
        codecs["orjson_parse"] = (orjson.loads, texts)

    timings: dict[str, list[float]] = {name: [] for name in codecs}
    for _ in range(context.sizes.rounds):
        for name, (function, items) in codecs.items():
            timings[name].append(time_per_item(function, items, passes))
    for name, rounds in timings.items():
        result.metrics[f"{name}_us"] = summarize(rounds, "µs/config")
    context.log("json: " + ", ".join(f"{name} {summarize(rounds, '')['median']:.2f} µs"
                                     for name, rounds in timings.items()))
    result.notes.append(f"{len(configurations)} run configurations, mean {sum(map(len, texts)) / len(texts):.0f} "
                        "bytes of JSON each; orjson cannot reject duplicate keys, which the strict parse does")
    return result
