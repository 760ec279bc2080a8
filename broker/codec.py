"""The one JSON codec: msgspec encoders/decoders with the request size limit and
errors a person can act on."""

from __future__ import annotations

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

    An empty body counts as `{}`.
    """
    if len(data) > MAX_REQUEST_BYTES:
        raise BadRequest(
            f"request body is {len(data)} bytes; the limit is {MAX_REQUEST_BYTES}",
            {"limit": MAX_REQUEST_BYTES, "size": len(data)},
        )
    try:
        return decode(data or b"{}", type)
    except msgspec.ValidationError as err:
        raise BadRequest(f"invalid request: {err}") from None
    except msgspec.DecodeError as err:
        raise BadRequest(f"malformed JSON: {str(err).removeprefix('JSON is malformed: ')}") from None
    except RecursionError:
        raise BadRequest("malformed JSON: nested too deeply") from None


def convert(obj: Any, type: type[T]) -> T:  # noqa: A002
    """Validate plain data (e.g. a merged update) as `type`; raise BadRequest."""
    try:
        return msgspec.convert(obj, type)
    except msgspec.ValidationError as err:
        raise BadRequest(f"invalid request: {err}") from None
