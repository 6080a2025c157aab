"""AWS event stream: Bedrock's binary stream framing (wire-formats §5.4), string headers only.

The lean upstream encodes ConverseStream answers with `encode_event` (botocore has a decoder and no
encoder) and checks its own frames with botocore's parser once at start-up; a direct run's check
cuts a body into messages by their length prefixes (`event_frames`), which is cheap and leaves the
CRCs to the proxy.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from typing import Final

import orjson

from .common import Json

EVENTSTREAM: Final = "application/vnd.amazon.eventstream"
_PRELUDE: Final = 12  # total length, headers length, prelude CRC: three big-endian uint32


def event_header(name: str, value: str) -> bytes:
    """One string header: name length (uint8), name, value type 7 (string), value length (uint16), value."""
    raw_name, raw_value = name.encode(), value.encode()
    return struct.pack(">B", len(raw_name)) + raw_name + struct.pack(">BH", 7, len(raw_value)) + raw_value


def encode_event(event_type: str, payload: Json) -> bytes:
    """One event message: the prelude and its CRC32, the three headers, the JSON payload, the CRC32
    of everything before it. botocore has a decoder and no encoder; `check_event_frames` checks this one."""
    headers = (event_header(":event-type", event_type) + event_header(":content-type", "application/json")
               + event_header(":message-type", "event"))
    body = orjson.dumps(payload)
    prelude = struct.pack(">II", _PRELUDE + len(headers) + len(body) + 4, len(headers))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + headers + body
    return message + struct.pack(">I", zlib.crc32(message))


def check_event_frames(frames: Sequence[bytes], events: Sequence[tuple[str, Json]]) -> None:
    """Decode `frames` with botocore's own parser (CRCs checked) and insist they read back as `events`."""
    from botocore.eventstream import EventStreamBuffer

    # wire-formats §5.4's worked size: a messageStop of these headers and payload is 122 bytes.
    if len(encode_event("messageStop", {"stopReason": "end_turn"})) != 122:
        raise RuntimeError("event-stream encoder: a messageStop is not the 122 bytes of wire-formats §5.4")
    buffer = EventStreamBuffer()
    buffer.add_data(b"".join(frames))
    decoded = [(message.headers, orjson.loads(message.payload)) for message in buffer]
    expected = [({":event-type": name, ":content-type": "application/json", ":message-type": "event"}, payload)
                for name, payload in events]
    if decoded != expected:
        raise RuntimeError(f"event-stream encoder: botocore reads {decoded[:2]}..., not {expected[:2]}...")


def event_frames(data: bytes) -> list[bytes] | None:
    """`data` cut into messages by their length prefixes (CRCs unchecked), or None when it is not
    whole messages."""
    frames: list[bytes] = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _PRELUDE:
            return None
        (total,) = struct.unpack_from(">I", data, offset)
        if total < _PRELUDE + 4 or offset + total > len(data):
            return None
        frames.append(data[offset:offset + total])
        offset += total
    return frames


TEXT_DELTA: Final = event_header(":event-type", "contentBlockDelta")
METADATA: Final = event_header(":event-type", "metadata")
