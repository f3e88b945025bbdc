"""Request parameters: read from the query string and the body, strictly.

GET takes the query string. POST takes the query string plus a form body
(``application/x-www-form-urlencoded`` or ``multipart/form-data``) or a
JSON object body (``application/json``). A name given twice, in any mix of
places, is rejected. Form values are strings; JSON values keep their types.

JSON is parsed as RFC 8259 allows and no looser: no NaN or Infinity, no
number that overflows to one, no duplicate object keys, no unpaired
surrogates, and at most ``MAX_JSON_DEPTH`` levels of nesting.
"""

import json
import math
from urllib.parse import unquote

from tornado.httputil import HTTPServerRequest, parse_body_arguments

from .errors import BadRequest, UnsupportedMediaType, show

MAX_JSON_DEPTH = 32
# msgpack stores integers from -2**63 to 2**64 - 1; larger ones cannot be journaled.
MIN_JSON_INT = -(2**63)
MAX_JSON_INT = 2**64 - 1


def _reject_constant(name: str) -> None:
    raise BadRequest(f"invalid JSON: {name} is not allowed")


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"invalid JSON: number {text} is out of range")
    return value


def _parse_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"invalid JSON: integer {text[:40]}... is too long") from None
    if not MIN_JSON_INT <= value <= MAX_JSON_INT:
        raise BadRequest(f"invalid JSON: integer {text} is out of range")
    return value


def _pairs_without_duplicates(pairs: list[tuple[str, object]]) -> dict:
    result: dict = {}
    for key, value in pairs:
        if key in result:
            raise BadRequest(f"invalid JSON: key {show(key)} appears more than once in an object")
        result[key] = value
    return result


def _check_tree(value: object) -> None:
    """Reject nesting deeper than MAX_JSON_DEPTH and strings with unpaired surrogates."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            _check_text(item)
        elif isinstance(item, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise BadRequest(f"invalid JSON: nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key)
                    stack.append((child, depth + 1))
            else:
                stack.extend((child, depth + 1) for child in item)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadRequest(f"invalid JSON: string {text[:40]!r} contains an unpaired surrogate") from None


def parse_json(text: str, what: str = "JSON body") -> object:
    """Parse ``text`` as strict JSON; raise BadRequest saying what is wrong with ``what``."""
    try:
        value = json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
            parse_int=_parse_int,
            object_pairs_hook=_pairs_without_duplicates,
        )
    except json.JSONDecodeError as exc:
        raise BadRequest(f"invalid {what}: {exc}") from None
    except RecursionError:
        raise BadRequest(f"invalid {what}: nested deeper than {MAX_JSON_DEPTH} levels") from None
    except BadRequest as exc:
        raise BadRequest(exc.message.replace("invalid JSON", f"invalid {what}", 1)) from None
    _check_tree(value)
    return value


def _decode_utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{where} is not valid UTF-8 (byte {exc.start})") from None


def _parse_form(text: str, where: str) -> list[tuple[str, str]]:
    """Split ``a=1&b=x%20y`` into name and value pairs, as urllib's parse_qsl does.

    A part without ``=`` has an empty value. Only names and values that
    contain ``%`` or ``+`` are decoded, which makes the common case cheap.
    """
    pairs = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "%" in name or "+" in name:
            name = _unquote(name, where)
        if "%" in value or "+" in value:
            value = _unquote(value, where)
        pairs.append((name, value))
    return pairs


def _unquote(text: str, where: str) -> str:
    try:
        return unquote(text.replace("+", " "), encoding="utf-8", errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(f"{where} contains a percent-encoded value that is not valid UTF-8") from None


class Params(dict):
    """Request parameters by name; ``from_json`` is true when values keep JSON types."""

    from_json = False

    def add(self, name: str, value: object) -> None:
        if name in self:
            raise BadRequest(f"parameter {show(name)} is given more than once")
        self[name] = value


def read_params(request: HTTPServerRequest, body: bytes) -> Params:
    """Collect the parameters of ``request``; see the module docstring."""
    params = Params()
    # Tornado keeps the query string as latin-1 text of the raw bytes.
    query = _decode_utf8(request.query.encode("latin-1"), "query string")
    for name, value in _parse_form(query, "query string"):
        params.add(name, value)
    if request.method != "POST" or not body:
        return params

    content_type = request.headers.get("Content-Type", "")
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json":
        document = parse_json(_decode_utf8(body, "request body"))
        if not isinstance(document, dict):
            raise BadRequest(f"invalid JSON body: expected an object, got {type(document).__name__}")
        params.from_json = True
        for name, value in document.items():
            params.add(name, value)
    elif media_type == "application/x-www-form-urlencoded":
        for name, value in _parse_form(_decode_utf8(body, "request body"), "form body"):
            params.add(name, value)
    elif media_type == "multipart/form-data":
        arguments: dict[str, list[bytes]] = {}
        files: dict = {}
        parse_body_arguments(content_type, body, arguments, files)
        if not arguments and not files:
            raise BadRequest("multipart body could not be parsed: check the boundary")
        for name, values in arguments.items():
            for raw in values:
                params.add(name, _decode_utf8(raw, f"form field {show(name)}"))
        for name, uploads in files.items():
            for upload in uploads:
                params.add(name, _decode_utf8(upload.body, f"form field {show(name)}"))
    else:
        raise UnsupportedMediaType(
            f"unsupported Content-Type {show(media_type)}: send application/x-www-form-urlencoded, "
            "multipart/form-data or application/json"
        )
    return params
