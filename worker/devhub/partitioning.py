"""Map a partition key to a partition, deterministically across processes and restarts.

Why not `hash()`: Python salts it per process, so the same key would land elsewhere after a
restart, breaking per-object ordering. This is Bob Jenkins' lookup3 (`hashlittle2`) over the
key's UTF-8 bytes, folded to a signed 16-bit code and taken modulo the partition count - the
same mapping azure-eventhub's buffered producer (`_buffered_producer/_partition_resolver.py`)
and the .NET client's `PartitionResolver` use to predict where Event Hubs puts a key.
"""

from __future__ import annotations

__all__ = ["hash_code", "partition_index"]

_MASK = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _MASK
    a ^= _rot(c, 4)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 6)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 8)
    b = (b + a) & _MASK
    a = (a - c) & _MASK
    a ^= _rot(c, 16)
    c = (c + b) & _MASK
    b = (b - a) & _MASK
    b ^= _rot(a, 19)
    a = (a + c) & _MASK
    c = (c - b) & _MASK
    c ^= _rot(b, 4)
    b = (b + a) & _MASK
    return a, b, c


def _final(a: int, b: int, c: int) -> tuple[int, int, int]:
    c ^= b
    c = (c - _rot(b, 14)) & _MASK
    a ^= c
    a = (a - _rot(c, 11)) & _MASK
    b ^= a
    b = (b - _rot(a, 25)) & _MASK
    c ^= b
    c = (c - _rot(b, 16)) & _MASK
    a ^= c
    a = (a - _rot(c, 4)) & _MASK
    b ^= a
    b = (b - _rot(a, 14)) & _MASK
    c ^= b
    c = (c - _rot(b, 24)) & _MASK
    return a, b, c


def _hashlittle2(data: bytes) -> tuple[int, int]:
    length = len(data)
    a = b = c = (0xDEADBEEF + length) & _MASK
    pos = 0
    while length > 12:
        a = (a + int.from_bytes(data[pos : pos + 4], "little")) & _MASK
        b = (b + int.from_bytes(data[pos + 4 : pos + 8], "little")) & _MASK
        c = (c + int.from_bytes(data[pos + 8 : pos + 12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        pos += 12
        length -= 12
    if length == 0:
        return c, b
    tail = data[pos:] + bytes(12 - length)  # zero-padded: adds nothing for missing bytes
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    a, b, c = _final(a, b, c)
    return c, b


def hash_code(partition_key: str) -> int:
    """The signed 16-bit hash code of a partition key (0 for the empty key)."""
    if not partition_key:
        return 0
    c, b = _hashlittle2(partition_key.encode("utf-8"))
    folded = (c ^ b) & 0xFFFF
    return folded - 0x10000 if folded >= 0x8000 else folded


def partition_index(partition_key: str, partition_count: int) -> int:
    """Index of the partition a key maps to (C#'s `Math.Abs(code % count)`)."""
    return abs(hash_code(partition_key)) % partition_count
