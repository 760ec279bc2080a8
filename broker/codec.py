"""The one JSON codec: msgspec encoders/decoders with the request size limit and
errors a person can act on."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import msgspec

from broker.errors import BadRequest

MAX_REQUEST_BYTES = 256 * 1024
"""The largest request body the API accepts (bytes)."""

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoders: dict[Any, msgspec.json.Decoder] = {}


def encode(obj: Any) -> bytes:
    """JSON bytes of a Struct, dict, list or scalar."""
    return _encoder.encode(obj)


def to_builtins(obj: Any) -> Any:
    """Plain dicts/lists of a Struct (what it looks like on the wire)."""
    return msgspec.to_builtins(obj)


def decode(data: bytes, type: type[T] = Any) -> T:  # noqa: A002 - mirrors msgspec
    """Decode trusted JSON (our own stored objects and events)."""
    decoder = _decoders.get(type)
    if decoder is None:
        decoder = _decoders[type] = msgspec.json.Decoder(type)
    return decoder.decode(data)


def decode_request(data: bytes, type: type[T]) -> T:  # noqa: A002
    """Decode a request body into `type`; raise BadRequest saying what is wrong.

    An empty body counts as `{}`. A body with the same key twice in one object is refused
    (JSON leaves it undefined which one counts: a checker and a user could read
    different values), as is one that starts with a byte order mark.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest(
            f"request body is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES}",
            {"limit": MAX_REQUEST_BYTES, "size": len(data)},
        )
    if data.startswith(b"\xef\xbb\xbf"):
        raise BadRequest("malformed JSON: the body starts with a byte order mark (U+FEFF); send UTF-8 without one")
    try:
        decoded = decode(data or b"{}", type)
    except msgspec.ValidationError as err:
        raise BadRequest(f"invalid request: {err}") from None
    except msgspec.DecodeError as err:
        raise BadRequest(f"malformed JSON: {str(err).removeprefix('JSON is malformed: ')}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None
    if data.count(b":") > 1:  # one key cannot repeat
        _refuse_duplicate_keys(data)
    return decoded


class _DuplicateKey(ValueError):
    pass


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            raise _DuplicateKey(key)
        seen.add(key)
    return dict(pairs)


def _refuse_duplicate_keys(data: bytes) -> None:
    """BadRequest naming a key that appears twice in one object of `data` (valid JSON)."""
    try:
        json.loads(data, object_pairs_hook=_unique_pairs)
    except _DuplicateKey as err:
        raise BadRequest(f"malformed JSON: the key {str(err)!r} appears twice in one object",
                         {"duplicate_key": str(err)}) from None
    except (ValueError, RecursionError):
        pass  # msgspec read it; whatever json dislikes beyond duplicates is not ours to refuse


def convert(obj: Any, type: type[T]) -> T:  # noqa: A002
    """Validate plain data (e.g. a merged update) as `type`; raise BadRequest."""
    try:
        return msgspec.convert(obj, type)
    except msgspec.ValidationError as err:
        raise BadRequest(f"invalid request: {err}") from None
