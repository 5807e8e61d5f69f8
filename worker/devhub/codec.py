"""The slice of the AMQP 1.0 type system dev-hub needs, on raw bytes.

Why not proton's `Data` for everything: the hot paths (re-encoding every outgoing frame,
splitting batches, stamping annotations on each event) only need to *measure* values and copy
bytes, and doing that on `bytes` is several times cheaper than building Python objects through
the binding. The decoder is complete enough for what clients put in requests, annotations and
application properties; the encoders cover what dev-hub itself writes.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

__all__ = [
    "AmqpDecodeError",
    "Described",
    "Symbol",
    "Timestamp",
    "decode_value",
    "encode_binary",
    "encode_described",
    "encode_int",
    "encode_list32",
    "encode_long",
    "encode_map",
    "encode_section",
    "encode_string",
    "encode_symbol",
    "encode_timestamp",
    "encode_value",
    "skip_value",
]


class AmqpDecodeError(ValueError):
    """Bytes that are not a well-formed AMQP encoding (truncated or unknown constructor)."""


class Symbol(str):
    """An AMQP `symbol` (ASCII), kept distinct from `string` so it re-encodes as one."""

    __slots__ = ()


class Timestamp(int):
    """An AMQP `timestamp`: milliseconds since the Unix epoch."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Described:
    """A described value whose descriptor dev-hub does not interpret (e.g. a filter)."""

    descriptor: Any
    value: Any


_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_I64 = struct.Struct(">q")
_U32x2 = struct.Struct(">II")
_F32 = struct.Struct(">f")
_F64 = struct.Struct(">d")

# Bytes after the constructor for fixed-width types; -1 = 1-byte size prefix, -4 = 4-byte size
# prefix, -2 = described (descriptor then value).
_WIDTH: list[int | None] = [None] * 256
for _c in range(0x40, 0x46):
    _WIDTH[_c] = 0
for _c in range(0x50, 0x57):
    _WIDTH[_c] = 1
for _c in (0x60, 0x61):
    _WIDTH[_c] = 2
for _c in range(0x70, 0x75):
    _WIDTH[_c] = 4
for _c in range(0x80, 0x85):
    _WIDTH[_c] = 8
for _c in (0x94, 0x98):
    _WIDTH[_c] = 16
for _c in (0xA0, 0xA1, 0xA3, 0xC0, 0xC1, 0xE0):
    _WIDTH[_c] = -1
for _c in (0xB0, 0xB1, 0xB3, 0xD0, 0xD1, 0xF0):
    _WIDTH[_c] = -4
_WIDTH[0x00] = -2


def _end_of(constructor: int, buf: bytes | memoryview, p: int) -> int:
    """Position after a value whose constructor has been read and whose data starts at `p`."""
    width = _WIDTH[constructor]
    if width is None:
        raise AmqpDecodeError(f"unknown constructor 0x{constructor:02x}")
    if width >= 0:
        end = p + width
    elif width == -1:
        if p >= len(buf):
            raise AmqpDecodeError("truncated value")
        end = p + 1 + buf[p]
    elif width == -4:
        if p + 4 > len(buf):
            raise AmqpDecodeError("truncated value")
        end = p + 4 + _U32.unpack_from(buf, p)[0]
    else:
        end = skip_value(buf, skip_value(buf, p))
    if end > len(buf):
        raise AmqpDecodeError("truncated value")
    return end


def skip_value(buf: bytes | memoryview, pos: int) -> int:
    """Return the position just after the encoded value that starts at `pos`."""
    if pos >= len(buf):
        raise AmqpDecodeError("truncated value")
    return _end_of(buf[pos], buf, pos + 1)


def decode_value(buf: bytes | memoryview, pos: int = 0) -> tuple[Any, int]:
    """Decode the value at `pos` into Python; return it and the position after it.

    strings -> `str`, symbols -> `Symbol`, binary -> `bytes`, timestamps -> `Timestamp`, uuids
    -> `uuid.UUID`, lists and arrays -> `list`, maps -> `dict`, described -> `Described`.
    """
    if pos >= len(buf):
        raise AmqpDecodeError("truncated value")
    constructor = buf[pos]
    if constructor == 0x00:
        descriptor, p = decode_value(buf, pos + 1)
        inner, end = decode_value(buf, p)
        return Described(descriptor, inner), end
    return _decode_data(constructor, buf, pos + 1)


def _decode_data(c: int, buf: bytes | memoryview, p: int) -> tuple[Any, int]:
    """Decode the data at `p` of a value with (non-described) constructor `c`."""
    end = _end_of(c, buf, p)
    value: Any
    if c == 0x40:
        value = None
    elif c == 0x41:
        value = True
    elif c == 0x42:
        value = False
    elif c in (0x43, 0x44):
        value = 0
    elif c == 0x45:
        value = []
    elif c == 0x56:
        value = buf[p] != 0
    elif c in (0x50, 0x52, 0x53):
        value = buf[p]
    elif c in (0x51, 0x54, 0x55):
        value = buf[p] - 256 if buf[p] > 127 else buf[p]
    elif c == 0x60:
        value = _U16.unpack_from(buf, p)[0]
    elif c == 0x61:
        value = struct.unpack_from(">h", buf, p)[0]
    elif c == 0x70:
        value = _U32.unpack_from(buf, p)[0]
    elif c == 0x71:
        value = _I32.unpack_from(buf, p)[0]
    elif c == 0x72:
        value = _F32.unpack_from(buf, p)[0]
    elif c == 0x73:
        value = chr(_U32.unpack_from(buf, p)[0])
    elif c == 0x80:
        value = _U64.unpack_from(buf, p)[0]
    elif c == 0x81:
        value = _I64.unpack_from(buf, p)[0]
    elif c == 0x82:
        value = _F64.unpack_from(buf, p)[0]
    elif c == 0x83:
        value = Timestamp(_I64.unpack_from(buf, p)[0])
    elif c == 0x98:
        value = uuid.UUID(bytes=bytes(buf[p:end]))
    elif c in (0x74, 0x84, 0x94):
        value = bytes(buf[p:end])  # decimals: kept raw, nothing in dev-hub reads them
    elif c in (0xA0, 0xB0):
        value = bytes(buf[p + (1 if c == 0xA0 else 4) : end])
    elif c in (0xA1, 0xB1):
        value = bytes(buf[p + (1 if c == 0xA1 else 4) : end]).decode("utf-8")
    elif c in (0xA3, 0xB3):
        value = Symbol(bytes(buf[p + (1 if c == 0xA3 else 4) : end]).decode("ascii"))
    elif c in (0xC0, 0xC1, 0xD0, 0xD1):
        small = c in (0xC0, 0xC1)
        count = buf[p + 1] if small else _U32.unpack_from(buf, p + 4)[0]
        q = p + (2 if small else 8)
        items = []
        for _ in range(count):
            item, q = decode_value(buf, q)
            items.append(item)
        value = dict(zip(items[0::2], items[1::2], strict=True)) if c in (0xC1, 0xD1) else items
    else:  # arrays: 0xe0, 0xf0
        small = c == 0xE0
        count = buf[p + 1] if small else _U32.unpack_from(buf, p + 4)[0]
        value = _decode_array(buf, p + (2 if small else 8), count)
    return value, end


def _decode_array(buf: bytes | memoryview, q: int, count: int) -> list[Any]:
    """Decode `count` array elements that share the constructor at `q`."""
    if not count:
        return []
    element = buf[q]
    q += 1
    descriptor: Any = None
    if element == 0x00:
        descriptor, q = decode_value(buf, q)
        element = buf[q]
        q += 1
    items: list[Any] = []
    for _ in range(count):
        value, q = _decode_data(element, buf, q)
        items.append(value if descriptor is None else Described(descriptor, value))
    return items


# --- encoders ------------------------------------------------------------------------------

NULL = b"\x40"
TRUE = b"\x41"
FALSE = b"\x42"


def encode_ubyte(value: int) -> bytes:
    return b"\x50" + _U8.pack(value)


def encode_ushort(value: int) -> bytes:
    return b"\x60" + _U16.pack(value)


def encode_uint(value: int) -> bytes:
    return b"\x70" + _U32.pack(value)


def encode_ulong(value: int) -> bytes:
    return b"\x80" + _U64.pack(value)


def encode_int(value: int) -> bytes:
    return b"\x71" + _I32.pack(value)


def encode_long(value: int) -> bytes:
    return b"\x81" + _I64.pack(value)


def encode_timestamp(ms: int) -> bytes:
    return b"\x83" + _I64.pack(ms)


def _variable(small: int, large: int, data: bytes) -> bytes:
    if len(data) < 256:
        return bytes((small, len(data))) + data
    return bytes((large,)) + _U32.pack(len(data)) + data


def encode_binary(data: bytes) -> bytes:
    return _variable(0xA0, 0xB0, data)


def encode_string(text: str) -> bytes:
    return _variable(0xA1, 0xB1, text.encode("utf-8"))


def encode_symbol(name: str) -> bytes:
    return _variable(0xA3, 0xB3, name.encode("ascii"))


def encode_list32(encoded_items: Iterable[bytes]) -> bytes:
    """A list in the 32-bit form (what `_pyamqp`'s frame decoder expects for performatives)."""
    items = list(encoded_items)
    body = b"".join(items)
    return b"\xd0" + _U32x2.pack(len(body) + 4, len(items)) + body


def encode_map(encoded_pairs: bytes, count: int) -> bytes:
    """A map from already-encoded key/value bytes; `count` is the number of pairs."""
    return b"\xd1" + _U32x2.pack(len(encoded_pairs) + 4, count * 2) + encoded_pairs


def encode_described(code: int, encoded_value: bytes) -> bytes:
    """A value described by a small-ulong code (performatives, sections, outcomes)."""
    if code < 256:
        return b"\x00\x53" + bytes((code,)) + encoded_value
    return b"\x00\x80" + _U64.pack(code) + encoded_value


def encode_section(code: int, encoded_value: bytes) -> bytes:
    return encode_described(code, encoded_value)


def _encode_array_of_strings(values: list[str]) -> bytes:
    elements = b"".join(_U32.pack(len(v.encode())) + v.encode() for v in values)
    return b"\xf0" + _U32x2.pack(len(elements) + 5, len(values)) + b"\xb1" + elements


def encode_value(value: Any) -> bytes:
    """Encode a Python value the way dev-hub's management replies need it.

    `bool` -> boolean, `Timestamp` -> timestamp, other `int` -> long, `Symbol` -> symbol, `str` ->
    string, `bytes` -> binary, `uuid.UUID` -> uuid, a list of `str` -> array of string (what Event
    Hubs sends for `partition_ids`), other lists -> list, `dict` -> map, `None` -> null.
    """
    if value is None:
        return NULL
    if isinstance(value, bool):
        return TRUE if value else FALSE
    if isinstance(value, Timestamp):
        return encode_timestamp(int(value))
    if isinstance(value, int):
        return encode_long(value)
    if isinstance(value, Symbol):
        return encode_symbol(value)
    if isinstance(value, str):
        return encode_string(value)
    if isinstance(value, bytes | bytearray):
        return encode_binary(bytes(value))
    if isinstance(value, uuid.UUID):
        return b"\x98" + value.bytes
    if isinstance(value, list):
        if value and all(isinstance(v, str) and not isinstance(v, Symbol) for v in value):
            return _encode_array_of_strings(value)
        return encode_list32(encode_value(v) for v in value)
    if isinstance(value, dict):
        pairs = b"".join(encode_value(k) + encode_value(v) for k, v in value.items())
        return encode_map(pairs, len(value))
    raise TypeError(f"cannot encode {type(value).__name__} as AMQP")
