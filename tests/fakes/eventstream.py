"""The AWS event-stream encoder: the binary frames of Bedrock's ConverseStream (wire-formats §5.4).

It owns only the framing, and only the encoding side: botocore ships a decoder
(`botocore.eventstream.EventStreamBuffer`) and no encoder, and the fake upstream needs one. It does
no I/O and knows nothing of Bedrock's event payloads beyond the three headers every message carries.

One message, all integers big-endian:

    total_length uint32 | headers_length uint32 | prelude_crc uint32 (CRC32 of the first 8 bytes)
    headers: name_len uint8 | name | value_type uint8 (7 = string) | value_len uint16 | value
    payload
    message_crc uint32 (CRC32 of every byte before it)

Bedrock sends string headers only, so that is the only value type written here. A `messageStop`
with the payload `{"stopReason":"end_turn"}` has headers_length 81 and total_length 122.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any, Final

import orjson

PRELUDE_LENGTH: Final = 12
"""Bytes before the headers: the two lengths and the prelude CRC."""

_STRING: Final = 7


def _header(name: str, value: str) -> bytes:
    raw_name, raw_value = name.encode(), value.encode()
    return (
        struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", _STRING, len(raw_value)) + raw_value
    )


def encode_event_message(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event-stream message: string `headers` in their order, then `payload`, CRCs included."""
    encoded = b"".join(_header(name, value) for name, value in headers.items())
    total_length = PRELUDE_LENGTH + len(encoded) + len(payload) + 4
    prelude = struct.pack(">II", total_length, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def encode_event(event_type: str, payload: Mapping[str, Any] | bytes) -> bytes:
    """An event (`:message-type: event`) whose payload is the JSON of `payload`, not wrapped in its name."""
    headers = {":event-type": event_type, ":content-type": "application/json", ":message-type": "event"}
    return encode_event_message(headers, payload if isinstance(payload, bytes) else orjson.dumps(payload))


def encode_exception(exception_type: str, message: str, **fields: Any) -> bytes:
    """A modeled exception inside the stream (`:message-type: exception`).

    `exception_type` is the union member's name in camelCase (`throttlingException`): botocore looks
    the shape up by that exact string. The payload is `{"message": message, **fields}`.
    """
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event_message(headers, orjson.dumps({"message": message, **fields}))


def encode_error(code: str, message: str) -> bytes:
    """An unmodeled error (`:message-type: error`): the code and text travel as headers, no payload."""
    headers = {":message-type": "error", ":error-code": code, ":error-message": message}
    return encode_event_message(headers, b"")


def corrupt_message_crc(message: bytes) -> bytes:
    """The same message with a wrong message CRC (its last byte flipped): decoders must refuse it."""
    return message[:-1] + bytes([message[-1] ^ 0xFF])


__all__ = [
    "PRELUDE_LENGTH",
    "corrupt_message_crc",
    "encode_error",
    "encode_event",
    "encode_event_message",
    "encode_exception",
]
