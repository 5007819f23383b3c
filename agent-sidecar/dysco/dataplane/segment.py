"""Cut an IPv4/TCP super-packet into MTU-sized packets.

The core may hand back an extra segment as large as the 64 KiB GSO packet it came
from. The kernel segments such a packet when it re-enters the stack through NFQUEUE,
but a raw socket refuses anything larger than the device MTU, so injected packets are
cut here: same headers and options, sequence numbers advanced, FIN and PSH only on the
last piece, fresh IP id and checksums.
"""

from __future__ import annotations

import struct

from .checksum import with_tcp_checksum

_FIN_PSH = 0x01 | 0x08


def _ip_checksum(header: bytearray) -> None:
    header[10] = header[11] = 0
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    struct.pack_into("!H", header, 10, ~total & 0xFFFF)


def split(packet: bytes, mtu: int) -> list[bytes]:
    """`packet` itself if it fits in `mtu`, else TCP segments that each do."""
    total_len = int.from_bytes(packet[2:4], "big")
    if total_len <= mtu:
        return [packet]
    ihl = (packet[0] & 0x0F) * 4
    doff = (packet[ihl + 12] >> 4) * 4
    head = ihl + doff
    mss = mtu - head
    payload = packet[head:total_len]
    seq = int.from_bytes(packet[ihl + 4:ihl + 8], "big")
    ip_id = int.from_bytes(packet[4:6], "big")
    flags = packet[ihl + 13]
    out = []
    for k, off in enumerate(range(0, len(payload), mss)):
        chunk = payload[off:off + mss]
        hdr = bytearray(packet[:head])
        struct.pack_into("!H", hdr, 2, head + len(chunk))
        struct.pack_into("!H", hdr, 4, (ip_id + k) & 0xFFFF)
        struct.pack_into("!I", hdr, ihl + 4, (seq + off) & 0xFFFFFFFF)
        last = off + mss >= len(payload)
        hdr[ihl + 13] = flags if last else flags & ~_FIN_PSH
        out.append(bytes(hdr) + chunk)
    return [_finish(p, ihl) for p in out]


def _finish(packet: bytes, ihl: int) -> bytes:
    buf = bytearray(packet)
    header = buf[:ihl]
    _ip_checksum(header)
    buf[:ihl] = header
    return with_tcp_checksum(buf)
