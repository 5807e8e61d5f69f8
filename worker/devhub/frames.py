"""Re-encode every outgoing performative with all of its fields, as a list32.

Why: `azure-eventhub` 5.15.1's own AMQP stack (`_pyamqp`) reads performative fields by fixed
position (`frame[9]` of open, `frame[13]` of attach, `frame[11]` of transfer...) and only
understands the list8/list32 forms, while proton - legally - omits trailing fields that are
null or default and uses the empty-list encoding. So every frame proton writes goes through
`FrameNormalizer` before it reaches the socket: protocol headers and heartbeats pass as they
are; each performative is rewritten with its full field count, nulls replaced by the spec's
default where the spec has one (null *means* that default, so nothing changes meaning), and a
transfer's payload copied behind it.
"""

from __future__ import annotations

import struct

from worker.devhub.codec import (
    FALSE,
    NULL,
    AmqpDecodeError,
    encode_list32,
    encode_ubyte,
    encode_uint,
    encode_ushort,
    skip_value,
)

__all__ = ["FrameNormalizer", "normalize_performative"]

_FRAME_HEADER = struct.Struct(">IBBH")  # size, data offset (4-byte words), type, channel
_PROTOCOL_HEADER = b"AMQP"

# code -> (field count, {index: encoded spec default}); AMQP 1.0 part 2.7 and 5.3.
_PERFORMATIVES: dict[int, tuple[int, dict[int, bytes]]] = {
    0x10: (10, {2: encode_uint(0xFFFFFFFF), 3: encode_ushort(0xFFFF)}),  # open
    0x11: (8, {4: encode_uint(0xFFFFFFFF)}),  # begin
    0x12: (14, {3: encode_ubyte(2), 4: encode_ubyte(0), 8: FALSE}),  # attach
    0x13: (11, {8: FALSE, 9: FALSE}),  # flow
    0x14: (11, {5: FALSE, 8: FALSE, 9: FALSE, 10: FALSE}),  # transfer
    0x15: (6, {3: FALSE, 5: FALSE}),  # disposition
    0x16: (3, {1: FALSE}),  # detach
    0x17: (1, {}),  # end
    0x18: (1, {}),  # close
    0x40: (1, {}),  # sasl-mechanisms
    0x41: (3, {}),  # sasl-init
    0x42: (1, {}),  # sasl-challenge
    0x43: (1, {}),  # sasl-response
    0x44: (2, {}),  # sasl-outcome
}


def normalize_performative(body: bytes | memoryview) -> bytes:
    """Rewrite one frame body (performative, then any payload) in the full-field form."""
    if len(body) < 4 or body[0] != 0x00:
        raise AmqpDecodeError("frame body is not a described performative")
    if body[1] == 0x53:
        code, pos = body[2], 3
    elif body[1] == 0x80:
        code, pos = struct.unpack_from(">Q", body, 2)[0], 10
    else:
        raise AmqpDecodeError("performative descriptor is not a numeric code")
    spec = _PERFORMATIVES.get(code)
    if spec is None:
        raise AmqpDecodeError(f"unknown performative 0x{code:02x}")
    count, defaults = spec
    constructor = body[pos]
    if constructor == 0x45:
        present, start = 0, pos + 1
    elif constructor == 0xC0:
        present, start = body[pos + 2], pos + 3
    elif constructor == 0xD0:
        present, start = struct.unpack_from(">I", body, pos + 5)[0], pos + 9
    else:
        raise AmqpDecodeError("performative fields are not a list")
    fields: list[bytes] = []
    cursor = start
    for _ in range(present):
        end = skip_value(body, cursor)
        fields.append(bytes(body[cursor:end]))
        cursor = end
    fields.extend(NULL for _ in range(count - len(fields)))
    for index, default in defaults.items():
        if fields[index] == NULL:
            fields[index] = default
    return b"\x00\x53" + bytes((code,)) + encode_list32(fields) + bytes(body[cursor:])


class FrameNormalizer:
    """Byte-stream filter: feed it what proton wrote, get back what may go on the wire.

    Keeps a partial frame until the rest arrives, so callers may feed any chunking.
    """

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending = bytearray()

    def feed(self, data: bytes) -> bytes:
        buf = bytes(self._pending) + data if self._pending else data
        view = memoryview(buf)
        out = bytearray()
        pos = 0
        total = len(buf)
        while total - pos >= 8:
            if buf[pos : pos + 4] == _PROTOCOL_HEADER:
                out += view[pos : pos + 8]
                pos += 8
                continue
            size, doff, frame_type, channel = _FRAME_HEADER.unpack_from(buf, pos)
            if total - pos < size:
                break
            body_start = pos + doff * 4
            frame_end = pos + size
            if body_start >= frame_end:  # an empty frame: a heartbeat
                out += view[pos:frame_end]
            else:
                body = normalize_performative(view[body_start:frame_end])
                out += _FRAME_HEADER.pack(8 + len(body), 2, frame_type, channel)
                out += body
            pos = frame_end
        self._pending = bytearray(view[pos:])
        return bytes(out)
