"""Netlink attribute encoding and netfilter sockets shared by the raw netlink clients
(`conntrack`, `nftset`, `nftmaps`): no pyroute2 on the per-session install path."""

from __future__ import annotations

import socket
import struct

from . import netns

NETLINK_NETFILTER = 12
NESTED = 0x8000


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def nest(kind: int, *parts: bytes) -> bytes:
    return attr(kind | NESTED, b"".join(parts))


def netfilter_socket(ns: str | None) -> socket.socket:
    """A bound NETLINK_NETFILTER socket in namespace `ns` (None: the current one)."""
    if ns is None:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    else:
        sock = netns.open_socket(ns, socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    return sock
