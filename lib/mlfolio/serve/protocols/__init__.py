"""One module per protocol: request bodies to checked rows (:class:`~mlfolio.serve.columns.
Batch`), scores to answers. What they share: JSON bodies read with a depth limit."""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson

from mlfolio.errors import RequestError

MAX_JSON_DEPTH = 32  # every protocol here needs 5 levels at most
_JSON_STEP = np.zeros(256, dtype=np.int8)
_JSON_STEP[[ord("["), ord("{")]] = 1
_JSON_STEP[[ord("]"), ord("}")]] = -1
_JSON_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_JSON_NOT_MARK = bytes(c for c in range(256) if c not in b'"[]{}')


def json_depth(body: bytes) -> int:
    """How deep ``body``'s arrays and objects nest, without parsing it (C-speed passes).

    Escapes are dropped, then everything but quotes and brackets; adjacent quotes go too
    (an empty string, or the boundary of two strings): that keeps every bracket's side of
    the quotes, and leaves no quotes at all unless a string holds a bracket.
    """
    if b"\\" in body:
        body = _JSON_ESCAPE.sub(b"", body)
    marks = np.frombuffer(body.translate(None, _JSON_NOT_MARK).replace(b'""', b""), dtype=np.uint8)
    step = _JSON_STEP[marks].astype(np.int32)
    if (marks == 34).any():
        step[(np.cumsum(marks == 34) & 1) == 1] = 0  # inside a string
    return int(np.cumsum(step).max(initial=0))


def load_json(body: bytes, what: str) -> Any:
    """``json.loads`` for request bodies (see :func:`parse_json`)."""
    return parse_json(body, what)[0]


def parse_json(body: bytes, what: str) -> tuple[Any, bool]:
    """``json.loads`` for request bodies: malformed or nested deeper than MAX_JSON_DEPTH
    (which would exhaust the parser's recursion and fail as a server error) is a 400.

    orjson parses (~5x faster); what it refuses and ``json`` takes (NaN and Infinity,
    integers past 64 bits, lone surrogates) or refuses too goes through ``json``, so values
    and error messages are ``json``'s. The flag says whether orjson took it: then every
    string is valid Unicode, and text needs no UTF-8 check (``validate_columns``)."""
    if body.count(b"[") + body.count(b"{") > MAX_JSON_DEPTH and json_depth(body) > MAX_JSON_DEPTH:
        raise RequestError(
            f"{what}: nested deeper than {MAX_JSON_DEPTH} levels (arrays and "
            "objects); the scoring protocols need 5 at most"
        )
    try:
        return orjson.loads(body), True
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body), False
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"malformed {what}: {exc}") from None


def dump_json(doc: Any) -> bytes:
    """An answer as compact JSON bytes (orjson; ``json`` for what orjson refuses, e.g.
    integers past 64 bits)."""
    try:
        return orjson.dumps(doc)
    except TypeError:
        return json.dumps(doc).encode()
