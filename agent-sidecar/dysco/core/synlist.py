"""The SYN address-list payload that carries the rest of the chain to the next agent.

Layout (all big-endian; see docs/protocol.md for why it differs from the prototype):

    magic u16 = 0xD15C | version u8 = 1 | count u8
    session src u32 | session dst u32 | session sport u16 | session dport u16
    revision u32 (chain revision, opaque to the protocol)
    count x hop address u32   (hops[0] is the agent receiving this SYN)

The magic keeps a TCP Fast Open SYN (which may legitimately carry data) from being
mistaken for a Dysco SYN.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from .errors import SynPayloadError, TruncatedError

MAGIC = 0xD15C
VERSION = 1
MAX_HOPS = 16
_HEAD = struct.Struct("!HBBIIHHI")

Tuple4 = tuple[int, int, int, int]


@dataclass(frozen=True, slots=True)
class SynList:
    session: Tuple4
    hops: tuple[int, ...]
    revision: int = 0

    def encode(self) -> bytes:
        if not 1 <= len(self.hops) <= MAX_HOPS:
            raise ValueError(f"a chain has 1..{MAX_HOPS} hops, not {len(self.hops)}")
        s = self.session
        head = _HEAD.pack(MAGIC, VERSION, len(self.hops), s[0], s[1], s[2], s[3], self.revision)
        return head + struct.pack(f"!{len(self.hops)}I", *self.hops)


def looks_like_synlist(payload: bytes) -> bool:
    return len(payload) >= 2 and payload[0] == 0xD1 and payload[1] == 0x5C


def decode(payload: bytes) -> SynList:
    if len(payload) < _HEAD.size:
        raise TruncatedError(f"SYN list needs {_HEAD.size} bytes, got {len(payload)}")
    magic, version, count, src, dst, sport, dport, revision = _HEAD.unpack_from(payload)
    if magic != MAGIC:
        raise SynPayloadError("SYN payload without the Dysco magic", "bad_magic")
    if version != VERSION:
        raise SynPayloadError(f"SYN list version {version} unsupported", "bad_version")
    if not 1 <= count <= MAX_HOPS:
        raise SynPayloadError(f"SYN list with {count} hops", "bad_hop_count")
    need = _HEAD.size + 4 * count
    if len(payload) != need:
        raise SynPayloadError(f"SYN list of {count} hops needs {need} bytes, got {len(payload)}")
    hops = struct.unpack_from(f"!{count}I", payload, _HEAD.size)
    if 0 in hops or 0 in (src, dst):
        raise SynPayloadError("zero address in SYN list", "bad_address")
    return SynList((src, dst, sport, dport), tuple(int(h) for h in hops), revision)
